"""Terminal pictures: the data they draw, and their colourless fallback."""

from __future__ import annotations

import io

import numpy as np

from tcli.analyses.compose import compose, composition_scores
from tcli.checkpoint import open_checkpoint
from tcli.output.plots import SHADES, heatmap_lines
from tcli.output.render import write_table
from tcli.processing import process


def test_shades_map_values_monotonically():
    lines = heatmap_lines([[0.0, 0.25, 0.5, 0.75, 1.0]], color=False)
    assert lines[0].plain == SHADES[0] + SHADES[1] + SHADES[2] + SHADES[3] + SHADES[4]


def test_colour_heatmap_packs_two_rows_per_line():
    lines = heatmap_lines(np.zeros((5, 3)), color=True)
    assert len(lines) == 3 and all(l.plain == "▀▀▀" for l in lines)


def test_compose_heatmap_draws_the_scores(attn_only_dir):
    w = process(open_checkpoint(attn_only_dir).weights(np.float64))
    table = compose(w, kinds=("k",))
    buf = io.StringIO()
    write_table(table, buf, color=False, width=100)
    text = buf.getvalue()
    assert "k-composition" in text
    S = composition_scores(w, "k", 0, 1)
    lo, hi = S.min(), S.max()
    # one line per earlier head, one shade per later head; the darkest cell is the minimum score
    grid_lines = [l for l in text.splitlines() if l.strip().startswith(("0.0 ", "0.1 ", "0.2 "))]
    assert len(grid_lines) == 3
    for h1, line in enumerate(grid_lines):
        cells = line.split(" ", 1)[1].strip("\n")
        expect = "".join(SHADES[int(round((v - lo) / (hi - lo) * 4))] for v in S[h1])
        assert cells.rstrip() == expect.rstrip()


def test_report_is_one_self_contained_page(attn_only_dir, tmp_path):
    import re

    from helpers import invoke

    out = tmp_path / "r.html"
    invoke("report", attn_only_dir, "-o", out)
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert not re.search(r"(src|href)=[\"']?https?:", page) and "<script" not in page  # works offline
    for section in ("Head census", "Spectra", "Composition scores", "Strongest bigrams", "OV: source"):
        assert section in page
    # census: one row per head (2 layers x 3 heads) plus the header row
    census = page.split("<h2>Head census</h2>")[1].split("</table>")[0]
    assert census.count("<tr>") == 1 + 6
    # composition heatmaps: 3 earlier heads x 3 later heads per kind, each cell titled with its score
    assert len(re.findall(r'title="0\.\d → 1\.\d: ', page)) == 3 * 9
    assert oct(out.stat().st_mode & 0o777) != "0o600"


def test_plot_files_and_missing_matplotlib(attn_only_dir, tmp_path, monkeypatch):
    import sys

    from helpers import invoke
    from test_errors import assert_one_line_error

    png, svg = tmp_path / "c.png", tmp_path / "s.svg"
    invoke("compose", attn_only_dir, "--plot", png, "--csv")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    invoke("spectrum", attn_only_dir, "--circuit", "ov", "--plot", svg, "--csv")
    assert "<svg" in svg.read_text()[:2000]
    invoke("attention", attn_only_dir, "--ids", "1,2,3,4", "--head", "1.0", "--plot", tmp_path / "a.png", "--csv")
    assert_one_line_error(invoke("compose", attn_only_dir, "--plot", tmp_path / "x.gif", ok=False), ".png, .svg")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert_one_line_error(invoke("compose", attn_only_dir, "--plot", tmp_path / "y.png", ok=False),
                          "needs matplotlib", "tcli[plot]")
    assert not (tmp_path / "y.png").exists()
