"""``tcli report``: a page for every sample and family, NaN-safe cells, escaped tokens, the stated choice of
heads (and --heads), one colour scale per composition kind from the baseline, no external resources, and a
real headless browser (Chromium) that parses and draws the page within the window's width."""

from __future__ import annotations

import re
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from builders import random_attn_only
from helpers import invoke
from test_errors import assert_one_line_error
from tcli.analyses.compose import baseline
from tcli.analyses.report import BLANK, NEUTRAL, cell_color
from tcli.checkpoint import open_checkpoint
from tcli.processing import process

SAMPLES = Path(__file__).resolve().parents[1] / "sample_weights"
SAMPLE_NAMES = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
CHROMIUM = "/usr/bin/chromium"
CELL = re.compile(r'<td title="(max )?L?(\d+)(?:\.(\d+))? → L?(\d+)(?:\.(\d+))?: ([^"]*)" style="background:([^"]+)">')


def page_of(*args) -> str:
    out = Path(args[-1])
    invoke("report", *args[:-1], "-o", out)
    return out.read_text(encoding="utf-8")


def edit(path: Path, fn) -> Path:
    """Apply ``fn`` to the tensors of a tcli-format checkpoint in place."""
    t = load_file(str(path / "model.safetensors"))
    fn(t)
    save_file(t, str(path / "model.safetensors"))
    return path


def weights(path):
    return process(open_checkpoint(path).weights(np.float64))


def scores(w, kind: str, l1: int, l2: int) -> np.ndarray:
    """Dense composition scores ‖A B‖_F / (‖A‖_F ‖B‖_F), A = W_V W_O of (l1, h1), B of (l2, h2) by kind."""
    def blk(l, n):
        return w[f"blocks.{l}.attn.W_{n}"]
    H = blk(l1, "O").shape[0]
    out = np.empty((H, H))
    for h1 in range(H):
        A = blk(l1, "V")[h1] @ blk(l1, "O")[h1]
        for h2 in range(H):
            B = {"q": blk(l2, "Q")[h2] @ blk(l2, "K")[h2].T, "k": blk(l2, "K")[h2] @ blk(l2, "Q")[h2].T,
                 "v": blk(l2, "V")[h2] @ blk(l2, "O")[h2]}[kind]
            with np.errstate(invalid="ignore", divide="ignore"):
                out[h1, h2] = np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B))
    return out


def cells(page: str, kind: str) -> dict:
    """(l1, h1, l2, h2) -> (tooltip value, colour) for the head grid of ``kind``; (l1, l2) -> ... for its
    per-layer-pair grid."""
    card = next(c for c in page.split("<div class='card'><b>")[1:] if c.startswith(f"{kind}-composition"))
    out = {}
    for m in CELL.finditer(card):
        mx, l1, h1, l2, h2, value, colour = m.groups()
        key = (int(l1), int(l2)) if mx else (int(l1), int(h1), int(l2), int(h2))
        out[key] = (value, colour)
    return out


def rgb(colour: str) -> tuple:
    if colour.startswith("#"):
        return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))
    return tuple(int(x) for x in re.findall(r"\d+", colour))


def close(c1: str, c2: str) -> bool:
    """Same colour up to the rounding of one channel step (float32 vs float64 scores)."""
    return max(abs(a - b) for a, b in zip(rgb(c1), rgb(c2))) <= 1


# ---------------------------------------------------------------- every sample, every family


@pytest.mark.parametrize("name", SAMPLE_NAMES + ["family:bert", "family:llama"])
def test_every_sample_and_family_gives_a_page(name, hf_dirs, tmp_path):
    path = hf_dirs[name.split(":")[1]][1] if name.startswith("family:") else SAMPLES / name
    page = page_of(path, tmp_path / "r.html")
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    cfg = open_checkpoint(path).config
    for section, present in (("Head census", cfg.n_layers > 0), ("Heads detailed", cfg.n_layers > 0),
                             ("Composition scores", cfg.n_layers > 1), ("Spectra", True),
                             ("Strongest bigrams", True)):
        assert (f"<h2>{section}" in page) == present, section


def test_no_behaviour_and_bad_heads_are_one_line_errors(tmp_path):
    d = random_attn_only(tmp_path / "m")
    page = page_of(d, "--no-behaviour", tmp_path / "r.html")
    assert "were not computed (--no-behaviour)" in page
    assert_one_line_error(invoke("report", d, "--heads", "0:1", "-o", tmp_path / "x.html", ok=False),
                          "'0:1' is not a head", "LAYER.HEAD")
    assert_one_line_error(invoke("report", d, "--heads", "0.1,7.0", "-o", tmp_path / "x.html", ok=False),
                          "layer 7 out of range")
    assert_one_line_error(invoke("report", d, "--heads", "0.9", "-o", tmp_path / "x.html", ok=False),
                          "head 0.9 out of range")
    assert_one_line_error(invoke("report", d, "--heads", ",", "-o", tmp_path / "x.html", ok=False), "empty")
    assert_one_line_error(invoke("report", d, "0.1", "-o", tmp_path / "x.html", ok=False), "takes no heads")
    assert_one_line_error(invoke("report", SAMPLES / "attn-only-0l", "--heads", "0.0", "-o", tmp_path / "x.html",
                                 ok=False), "no attention layers")
    assert not (tmp_path / "x.html").exists()


# ---------------------------------------------------------------- NaN cells


def test_nan_scores_are_empty_cells(tmp_path):
    # head 0.1 writes nothing (W_O = 0): its copying scores and its composition scores are 0/0
    d = edit(random_attn_only(tmp_path / "m"), lambda t: t["blocks.0.attn.W_O"].__setitem__(1, 0.0))
    w = weights(d)
    assert np.isnan(scores(w, "q", 0, 1)[1]).all() and np.isfinite(scores(w, "q", 0, 1)[0]).all()
    page = page_of(d, tmp_path / "r.html")
    census = page.split("<h2>Head census</h2>")[1].split("</table>")[0]
    row = [r for r in census.split("<tr>") if r.startswith("<td>0</td><td>1</td>")][0]
    assert '<td class="na" title="nan"></td>' in row  # copying_score: 0/0
    for kind in "qkv":
        grid = cells(page, kind)
        for h2 in range(3):
            assert grid[(0, 1, 1, h2)] == ("no score", BLANK)
            assert grid[(0, 0, 1, h2)][0] != "no score"
    for h2 in range(3):
        assert f'<td title="0.1 → 1.{h2}: no score" style="background:{BLANK}"></td>' in page
    assert not re.search(r"<td[^>]*>[^<]*\b(nan|inf)", page, re.I)  # never drawn as cell text


def test_a_layer_without_scores_is_blank_in_the_layer_pair_grid(tmp_path):
    d = edit(random_attn_only(tmp_path / "m", n_layers=3), lambda t: t["blocks.0.attn.W_O"].__setitem__(Ellipsis, 0))
    page = page_of(d, tmp_path / "r.html")
    for kind in "qkv":
        grid = cells(page, kind)
        assert grid[(0, 1)] == ("no score", BLANK) and grid[(0, 2)] == ("no score", BLANK)
        assert grid[(1, 2)][0] != "no score"


def test_an_all_zero_model_gives_a_page(tmp_path):
    d = edit(random_attn_only(tmp_path / "m"), lambda t: [t[k].__setitem__(Ellipsis, 0) for k in t])
    page = page_of(d, tmp_path / "r.html")
    assert page.count("<small>no finite score</small>") == 3  # one legend per kind


# ---------------------------------------------------------------- escaping


def test_token_strings_and_paths_are_html_escaped(tmp_path):
    from tokenizers import Tokenizer, models

    d = random_attn_only(tmp_path / "a<i>&b", d_vocab=4)
    vocab = {"<script>alert(1)</script>": 0, "x&y": 1, '"q"\'': 2, "z": 3}
    Tokenizer(models.WordLevel(vocab, unk_token="z")).save(str(d / "tokenizer.json"))
    page = page_of(d, tmp_path / "r.html")
    bigrams = page.split("Strongest bigrams")[1].split("</table>")[0]  # 16 entries, all shown: every token
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in bigrams and "x&amp;y" in bigrams
    assert "&quot;q&quot;&#x27;" in bigrams
    ov_part = page.split("OV: source")[1]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ov_part
    assert "<script" not in page.lower() and "<i>" not in page and "a&lt;i&gt;&amp;b" in page


# ---------------------------------------------------------------- which heads


def test_heads_option_details_exactly_those_heads(tmp_path):
    page = page_of(SAMPLES / "attn-only-2l", "--no-behaviour", "--heads", "0.1", tmp_path / "r.html")
    assert re.findall(r"id='head-(\d+)-(\d+)'", page) == [("0", "1")]
    assert re.findall(r"<b>head (\d+\.\d+)</b>", page) == ["0.1"]  # one spectra card
    assert "the ones asked for (--heads)" in page and "fixed rule" not in page
    page = page_of(SAMPLES / "attn-only-2l", "--no-behaviour", "--heads", "1.4 0.1", "--heads", "1.4",
                   tmp_path / "r.html")
    assert re.findall(r"id='head-(\d+)-(\d+)'", page) == [("1", "4"), ("0", "1")]  # order kept, once each


def test_automatic_choice_is_stated_and_holds_the_largest_norms(tmp_path):
    path = SAMPLES / "attn-only-2l"
    page = page_of(path, tmp_path / "r.html")
    assert "chosen by a fixed rule: for each score below, the 2 heads with the highest value" in page
    w = weights(path)
    E, U = w["embed.W_E"], w["unembed.W_U"]
    cfg = w.cfg
    heads = [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]

    def blk(l, n):
        return w[f"blocks.{l}.attn.W_{n}"]
    ov_norm = {(l, h): np.linalg.norm(E @ blk(l, "V")[h] @ blk(l, "O")[h] @ U) for l, h in heads}
    qk_norm = {(l, h): np.linalg.norm(E @ blk(l, "Q")[h] @ blk(l, "K")[h].T @ E.T) for l, h in heads}
    detailed = {(int(a), int(b)) for a, b in re.findall(r"id='head-(\d+)-(\d+)'", page)}
    for phrase, norm in (("largest OV Frobenius norm", ov_norm), ("largest QK Frobenius norm", qk_norm)):
        top = sorted(heads, key=lambda k: -norm[k])[:2]
        assert f"<li>{phrase}: {top[0][0]}.{top[0][1]}, {top[1][0]}.{top[1][1]}</li>" in page
        assert set(top) <= detailed
    assert max(ov_norm, key=ov_norm.get) in detailed
    for l, h in detailed:  # each detailed head says why it is there
        assert re.search(rf"<h2 id='head-{l}-{h}'>Head {l}\.{h}</h2><p><small>[^<]*\(#[12]\)", page)


# ---------------------------------------------------------------- colour scale


def _check_scale(page: str, w) -> tuple[int, int]:
    """Every head cell's colour is cell_color(dense score, baseline, the kind's largest score); returns
    (neutral cells, coloured cells)."""
    cfg = w.cfg
    base = baseline(cfg.d_model, cfg.d_head)
    assert f"= {base:.4f}" in page
    neutral = coloured = 0
    for kind in "qkv":
        grid = cells(page, kind)
        exact = {(l1, l2): scores(w, kind, l1, l2) for l1 in range(cfg.n_layers) for l2 in range(l1 + 1, cfg.n_layers)}
        hi = max(max(float(s.max()) for s in exact.values()), base)
        for (l1, l2), S in exact.items():
            for h1 in range(cfg.n_heads):
                for h2 in range(cfg.n_heads):
                    value, colour = grid[(l1, h1, l2, h2)]
                    assert abs(float(value) - S[h1, h2]) < 1e-4
                    assert close(colour, cell_color(S[h1, h2], base, hi)), (kind, l1, h1, l2, h2, colour)
                    if S[h1, h2] <= base - 1e-6:
                        assert colour == NEUTRAL
                        neutral += 1
                    elif S[h1, h2] > base + 1e-6:
                        assert colour not in (NEUTRAL, BLANK)
                        coloured += 1
    return neutral, coloured


def test_one_scale_per_kind_same_score_same_colour(tmp_path):
    # three identical layers: every layer pair has the same scores, so must have the same colours
    def same(t):
        for k in [k for k in t if k.startswith("blocks.0.")]:
            t[k.replace("blocks.0.", "blocks.1.")] = t[k].copy()
            t[k.replace("blocks.0.", "blocks.2.")] = t[k].copy()
    d = edit(random_attn_only(tmp_path / "m", n_layers=3), same)
    w = weights(d)
    page = page_of(d, tmp_path / "r.html")
    for kind in "qkv":
        grid = cells(page, kind)
        colours = set()
        for h1 in range(3):
            for h2 in range(3):
                a, b, c = grid[(0, h1, 1, h2)], grid[(1, h1, 2, h2)], grid[(0, h1, 2, h2)]
                assert a == b == c, (kind, h1, h2, a, b, c)
                colours.add(a[1])
        assert len(colours) > 1  # the scale is not degenerate
        assert grid[(0, 1)] == grid[(1, 2)] == grid[(0, 2)]  # layer-pair maxima: same value, same colour
    neutral, coloured = _check_scale(page, w)
    assert neutral and coloured


def test_a_layer_pair_below_the_baseline_is_grey(tmp_path):
    # layer 0 writes mostly into dims 0-7, layer 1 reads mostly from dims 8-15: small 0 → 1 scores
    def split(t):
        t["blocks.0.attn.W_O"][:, :, 8:] *= 0.05
        for n in "QKV":
            t[f"blocks.1.attn.W_{n}"][:, :8, :] *= 0.05
    d = edit(random_attn_only(tmp_path / "m", n_layers=3, with_ln=False), split)
    w = weights(d)
    base = baseline(w.cfg.d_model, w.cfg.d_head)
    page = page_of(d, tmp_path / "r.html")
    for kind in "qkv":
        S = scores(w, kind, 0, 1)
        assert 0 < S.max() < base  # below the baseline, but not all equal
        grid = cells(page, kind)
        assert all(grid[(0, h1, 1, h2)][1] == NEUTRAL for h1 in range(3) for h2 in range(3))
        assert grid[(0, 1)][1] == NEUTRAL and grid[(1, 2)][1] not in (NEUTRAL, BLANK)
        assert "grey: at or below the baseline" in page
    _check_scale(page, w)


# ---------------------------------------------------------------- self-contained


def test_the_page_loads_nothing_from_elsewhere(tmp_path):
    page = page_of(SAMPLES / "gpt2-2l", tmp_path / "r.html")
    low = page.lower()
    assert not re.search(r"""(src|href|srcset|action|data)\s*=\s*["']?\s*(https?:|//|file:)""", low)
    assert not re.search(r"url\(", low) or not re.search(r"url\(\s*[\"']?(?!#)", low)  # only url(#gradient)
    for tag in ("<script", "<link", "<img", "<iframe", "<object", "<embed", "@import", "@font-face"):
        assert tag not in low, tag
    assert all(h.startswith("#") for h in re.findall(r"""href=["']([^"']*)""", page))


# ---------------------------------------------------------------- a real browser


class _Tables(HTMLParser):
    """Counts <table> elements and those not inside a <div class="scroll">."""

    def __init__(self):
        super().__init__()
        self.stack, self.tables, self.loose = [], 0, 0

    def handle_starttag(self, tag, attrs):
        if tag in ("br", "meta", "rect", "path", "stop", "img", "input"):
            return
        self.stack.append((tag, dict(attrs).get("class", "")))
        if tag == "table":
            self.tables += 1
            self.loose += not any(t == "div" and "scroll" in c.split() for t, c in self.stack[:-1])

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break


def _chromium(tmp: Path, *args, width=1280, height=4000) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp / 'profile'}", f"--window-size={width},{height}", *args],
                          capture_output=True, text=True, timeout=60, cwd=tmp)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no /usr/bin/chromium (apt-get install chromium)")
def test_in_a_headless_browser(tmp_path):
    page = tmp_path / "r.html"
    invoke("report", SAMPLES / "attn-only-2l", "-o", page)
    source = page.read_text(encoding="utf-8")
    # every table sits in a sideways-scrolling container
    parsed = _Tables()
    parsed.feed(source)
    assert parsed.tables >= 5 and parsed.loose == 0
    assert ".scroll{overflow-x:auto" in source
    # drawn: a screenshot of the window's size, not blank
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", page.as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", data[16:24]) == (1280, 4000)
    assert len(data) > 50_000, len(data)  # a blank 1280 × 4000 page compresses to a few kB
    # parsed as written: the same tables in the browser's DOM
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    assert dom.count("<table") == source.count("<table") == parsed.tables
    assert dom.count("<svg") == source.count("<svg") and "tcli report" in dom
    # laid out within the window: a copy of the page writes its document width into the DOM
    probe = tmp_path / "probe.html"
    for width in (1280, 700):
        probe.write_text(source.replace("</body>", "<script>document.body.setAttribute('data-width', "
                                        "document.documentElement.scrollWidth)</script></body>"), encoding="utf-8")
        dom = _chromium(tmp_path, "--dump-dom", probe.as_uri(), width=width, height=2000).stdout
        measured = int(re.search(r'data-width="(\d+)"', dom).group(1))
        assert measured <= width, (width, measured)

