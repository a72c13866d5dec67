"""``report``: one self-contained HTML page (data inline, no scripts from elsewhere) for a quick look
at a model: info, the head census, spectra, composition heatmaps and the top bigram/OV/QK entries."""

from __future__ import annotations

import html

import numpy as np

from . import circuits
from .compose import compose as compose_table
from .heads import census
from .info import info_record
from .ranked import bigram, ov, qk

MAX_HEADS = 12  # heads shown in the per-head sections (the strongest by OV norm)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1200px}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4}td.t{text-align:left;font-family:monospace;white-space:pre}
.grid td{width:18px;height:18px;padding:0;border:1px solid #fff}.flex{display:flex;flex-wrap:wrap;gap:1.5em}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em}small{color:#666}
"""


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "" if v is None else str(v)


def _token(s: str) -> str:
    return html.escape(s.replace(" ", "␣").replace("\n", "↵").replace("\t", "⇥")) if s else "∅"


def html_table(table, limit: int = 20) -> str:
    cols = table.columns
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for i, row in enumerate(table.rows()):
        if i == limit:
            break
        cells = [f'<td class="t">{_token(v)}</td>' if c in table.token_columns else f"<td>{_fmt(v)}</td>"
                 for c, v in zip(cols, row)]
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def svg_bars(values, width: int = 260, height: int = 80) -> str:
    """Inline SVG bar chart of non-negative values (singular values, largest first)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0 or v.max() <= 0:
        return ""
    bw = width / v.size
    bars = "".join(f'<rect x="{i * bw:.2f}" y="{height - h:.2f}" width="{max(bw - 0.5, 0.5):.2f}" height="{h:.2f}"/>'
                   for i, h in enumerate(v / v.max() * height))
    return f'<svg width="{width}" height="{height}" fill="#3b6ea5" role="img">{bars}</svg>'


def _color(x: float) -> str:
    x = float(np.clip(x, 0, 1))
    return f"rgb({int(40 + 215 * x)},{int(30 + 200 * x ** 0.8)},{int(90 + 40 * (1 - x))})"


def heatmap(grid: np.ndarray, rows: list[str], cols: list[str]) -> str:
    finite = grid[np.isfinite(grid)]
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    out = ['<table class="grid"><tr><th></th>' + "".join(f"<th><small>{c}</small></th>" for c in cols) + "</tr>"]
    for r, label in enumerate(rows):
        cells = "".join(f'<td title="{label} → {cols[c]}: {v:.4f}" '
                        f'style="background:{_color((v - lo) / (hi - lo or 1))}">'
                        "</td>" for c, v in enumerate(grid[r]))
        out.append(f"<tr><th><small>{label}</small></th>{cells}</tr>")
    return "".join(out) + f"</table><small>{lo:.3g} (dark) … {hi:.3g} (light)</small>"


def report(w, vocab, ckpt, behaviour: bool = True) -> str:
    cfg = w.cfg
    info = info_record(ckpt, w)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>tcli report: {html.escape(str(ckpt.path))}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>tcli report: {html.escape(str(ckpt.path))}</h1>",
             "<table>" + "".join(f"<tr><th>{k}</th><td class='t'>{html.escape(_fmt(v))}</td></tr>"
                                 for k, v in info.items()) + "</table>"]
    heads_table = census(w, behaviour=behaviour) if cfg.n_layers else None
    if heads_table is not None:
        rows = [dict(zip(heads_table.columns, r)) for r in heads_table.rows()]
        parts.append("<h2>Head census</h2>" + html_table(heads_table, limit=10_000))
        chosen = sorted(rows, key=lambda r: -r["ov_frobenius"])[:MAX_HEADS]
        chosen = sorted((r["layer"], r["head"]) for r in chosen)
    else:
        chosen = []
    parts.append("<h2>Spectra (singular values, largest first)</h2><div class='flex'>")
    parts.append(f"<div class='card'><b>direct path W_E W_U</b><br>{svg_bars(circuits.direct(w).svdvals())}</div>")
    for l, h in chosen:
        s_ov, s_qk = circuits.ov(w, l, h).svdvals(), circuits.qk(w, l, h).svdvals()
        parts.append(f"<div class='card'><b>head {l}.{h}</b><br><small>OV</small><br>{svg_bars(s_ov)}"
                     f"<br><small>QK</small><br>{svg_bars(s_qk)}</div>")
    parts.append("</div>")
    if cfg.n_layers > 1:
        table = compose_table(w)
        H = cfg.n_heads
        parts.append("<h2>Composition scores (rows: earlier head, columns: later head)</h2><div class='flex'>")
        for kind in ("q", "k", "v"):
            grid = np.full(((cfg.n_layers - 1) * H, (cfg.n_layers - 1) * H), np.nan)
            for r in table.rows():
                k_, l1, h1, l2, h2, score, _ = r
                if k_ == kind:
                    grid[l1 * H + h1, (l2 - 1) * H + h2] = score
            labels_r = [f"{l}.{h}" for l in range(cfg.n_layers - 1) for h in range(H)]
            labels_c = [f"{l}.{h}" for l in range(1, cfg.n_layers) for h in range(H)]
            if len(labels_r) <= 64:
                parts.append(f"<div class='card'><b>{kind}-composition</b>{heatmap(grid, labels_r, labels_c)}</div>")
        parts.append(f"</div><small>{html.escape(table.notes[0])}</small>")
    parts.append("<h2>Strongest bigrams (direct path)</h2>" + html_table(bigram(w, vocab, global_n=20)))
    for l, h in chosen[:6]:
        parts.append(f"<h2>Head {l}.{h}</h2><div class='flex'><div><b>OV: source → output</b>"
                     f"{html_table(ov(w, vocab, [(l, h)], global_n=12))}</div><div><b>QK: query ← key</b>"
                     f"{html_table(qk(w, vocab, [(l, h)], global_n=12))}</div></div>")
    parts.append("<p><small>Generated by tcli; every number is computed from the checkpoint's weights "
                 "(see docs/commands.md for the definitions).</small></p></body></html>")
    return "\n".join(parts)
