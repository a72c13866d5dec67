"""``report``: one self-contained HTML page (data inline; no scripts, styles or fonts from elsewhere, so it
works offline) for a quick look at a model: info, the head census, spectra, composition heatmaps, the
top bigram entries and the top OV/QK entries of a few heads.

Heads detailed (spectra, OV/QK tables): ``heads`` when given, else for each score of CRITERIA the
PER_CRITERION heads with the highest value (ties: lower layer, then lower head; NaN/None not ranked),
their union shown once each in (layer, head) order. The page states the rule and why each head is there.

Composition heatmaps: one colour scale per kind (q, k, v), from the random baseline b (compose.baseline)
to the kind's largest score m: a cell s ≤ b is neutral grey, s > b is coloured ramp((s − b) / (m − b));
cells without a finite score (no pair, or 0/0 for a zero matrix) are blank. Every number is formatted
NaN/inf-safe: non-finite values are drawn as empty cells (their value in the tooltip)."""

from __future__ import annotations

import html
import math

import numpy as np

from . import circuits
from .compose import compose as compose_table
from ..core.stream import Request
from ..errors import InputError
from .heads import census
from .info import info_record
from .ranked import bigram, ov, qk
from ..output.table import visible

PER_CRITERION = 2  # heads detailed per criterion (automatic choice)
CRITERIA = (("copying_score", "highest copying score"), ("induction_score", "highest induction score"),
            ("prev_token_score", "highest previous-token score"), ("ov_frobenius", "largest OV Frobenius norm"),
            ("qk_frobenius", "largest QK Frobenius norm"))
MAX_GRID = 64  # composition heatmaps head by head up to this many earlier (and later) heads
NEUTRAL, BLANK = "#d9d9d9", "#ffffff"
RAMP = ((255, 237, 160), (254, 178, 76), (240, 59, 32), (128, 0, 38))  # pale yellow → dark red

STYLE = """
*{box-sizing:border-box}
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;color:#222;max-width:1200px}
h1{font-size:1.5em;overflow-wrap:anywhere}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ccc}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{padding:2px 8px;border-bottom:1px solid #eee;text-align:right}
th{background:#f4f4f4}td.t{text-align:left;font-family:monospace;white-space:pre}
table.grid td{width:18px;min-width:18px;height:18px;padding:0;border:1px solid #fff}
table.grid th{padding:0 3px;font-weight:normal}
.flex{display:flex;flex-wrap:wrap;gap:1.5em}.flex>*{min-width:0;max-width:100%}
.card{border:1px solid #ddd;border-radius:6px;padding:.5em 1em}small{color:#666}
svg text{font-size:10px;fill:#444}
"""


# ---------------------------------------------------------------- numbers and text

def _finite(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(v)


def _fmt(v, digits: int = 4) -> str:
    """Display text of a value; "" for None, NaN and ±inf (drawn as empty cells)."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.{digits}g}" if math.isfinite(v) else ""
    if isinstance(v, np.integer):
        return str(int(v))
    return str(v)


def _esc(s) -> str:
    return html.escape(str(s), quote=True)


def _token(s: str) -> str:
    """A token as inert HTML text: whitespace visible (␣ ↵ ⇥ ␍), controls escaped, <>&"' as entities."""
    return _esc(visible(s))


def _td(v) -> str:
    if isinstance(v, (float, np.floating)) and not math.isfinite(v):
        return f'<td class="na" title="{float(v)}"></td>'
    return f"<td>{_esc(_fmt(v))}</td>"


def html_table(table, limit: int = 20, drop: tuple = ()) -> str:
    """An analysis table as HTML (first ``limit`` rows), in a container that scrolls sideways if wide.
    Headers use the table's short names (``table.short``; full name in the tooltip and a legend below)."""
    cols = [c for c in table.columns if c not in drop]
    short = {c: table.short[c] for c in cols if table.short.get(c, c) != c}
    heads = "".join(f'<th title="{_esc(c)}">{_esc(short[c])}</th>' if c in short else f"<th>{_esc(c)}</th>"
                    for c in cols)
    out = [f'<div class="scroll"><table><tr>{heads}</tr>']
    for i, row in enumerate(table.rows()):
        if i == limit:
            break
        rec = dict(zip(table.columns, row))
        out.append("<tr>" + "".join(f'<td class="t">{_token(rec[c])}</td>' if c in table.token_columns
                                    else _td(rec[c]) for c in cols) + "</tr>")
    key = ", ".join(f"{_esc(v)} = {_esc(c)}" for c, v in short.items())
    return "".join(out) + "</table></div>" + (f"<p><small>{key}</small></p>" if key else "")


# ---------------------------------------------------------------- charts

def _nice_step(span: float, n: int) -> float:
    """A step of 1, 2 or 5 × 10^k giving about ``n`` intervals over ``span`` > 0."""
    raw = span / n
    k = 10.0 ** math.floor(math.log10(raw))
    return next(m * k for m in (1, 2, 5, 10) if m * k >= raw * (1 - 1e-9))


def _tick(v: float) -> str:
    """Axis label: whole numbers below 10^6 in full (1500, not 1.5e+03), else 3 significant digits."""
    return str(int(round(v))) if abs(v) < 1e6 and abs(v - round(v)) < 1e-9 * max(1.0, abs(v)) else f"{v:.3g}"


def svg_bars(values, title: str = "", width: int = 300, height: int = 150) -> str:
    """Inline SVG bar chart of singular values (largest first) with axes: x = index (from 1), y = value.

    y runs from 0 to a round number ≥ the largest finite value; non-finite values get no bar (a note
    says how many); an empty input gives an empty chart with a note."""
    v = np.asarray(values, dtype=float).ravel()
    ok = np.isfinite(v)
    vmax = float(v[ok].max()) if ok.any() else 0.0
    L, R, T, B = 46, 8, 8, 30
    pw, ph = width - L - R, height - T - B
    step = _nice_step(vmax, 4) if vmax > 0 else 0.25
    top = step * math.ceil(vmax / step - 1e-9) if vmax > 0 else 1.0
    y = lambda s: T + ph * (1 - s / top)  # noqa: E731
    n = v.size
    parts = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
             f'xmlns="http://www.w3.org/2000/svg"><title>{_esc(title)}</title>']
    if n:
        bw = pw / n
        if n <= 100:
            parts += [f'<rect x="{L + i * bw:.2f}" y="{y(s):.2f}" width="{max(bw * 0.85, 0.5):.2f}" '
                      f'height="{T + ph - y(s):.2f}" fill="#3b6ea5"><title>{i + 1}: {s:.4g}</title></rect>'
                      for i, s in enumerate(v) if math.isfinite(s)]
        else:  # a filled step outline: one path instead of hundreds of rects
            d = [f"M{L:.2f},{T + ph:.2f}"]
            for i, s in enumerate(v):
                s = s if math.isfinite(s) else 0.0
                d.append(f"L{L + i * bw:.2f},{y(s):.2f}L{L + (i + 1) * bw:.2f},{y(s):.2f}")
            d.append(f"L{L + pw:.2f},{T + ph:.2f}Z")
            parts.append(f'<path d="{"".join(d)}" fill="#3b6ea5"/>')
    # axes, ticks and labels
    parts.append(f'<g class="axes" stroke="#444" fill="none"><path d="M{L},{T}V{T + ph}H{L + pw}"/>')
    yt = [k * step for k in range(int(round(top / step)) + 1)]
    parts += [f'<path d="M{L - 4},{y(t):.2f}H{L}"/>' for t in yt]
    xstep = max(1, int(_nice_step(max(n - 1, 1), 5))) if n else 1
    xs = sorted({1, *range(xstep, n + 1, xstep)}) if n else []  # 1, then the multiples of the step
    if xs and n > 1 and xs[-1] != n and (n - xs[-1]) * pw / n > 18:
        xs.append(n)
    bw = pw / n if n else 0
    parts += [f'<path d="M{L + (i - 0.5) * bw:.2f},{T + ph}v4"/>' for i in xs]
    parts.append("</g>")
    parts += [f'<text x="{L - 6}" y="{y(t) + 3:.2f}" text-anchor="end">{_tick(t)}</text>' for t in yt]
    parts += [f'<text x="{L + (i - 0.5) * bw:.2f}" y="{T + ph + 14}" text-anchor="middle">{i}</text>' for i in xs]
    parts.append(f'<text x="{L + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">index</text>')
    parts.append(f'<text transform="translate(10,{T + ph / 2:.1f}) rotate(-90)" text-anchor="middle">'
                 "singular value</text>")
    bad = int((~ok).sum())
    note = "no values" if not n else (f"{bad} non-finite value{'s' if bad > 1 else ''} not drawn" if bad else "")
    if note:
        parts.append(f'<text x="{L + pw / 2:.1f}" y="{T + 14}" text-anchor="middle">{note}</text>')
    return "".join(parts) + "</svg>"


def ramp(x: float) -> str:
    """x in [0, 1] onto the colour ramp RAMP (pale yellow → dark red), as rgb()."""
    x = min(max(float(x), 0.0), 1.0) * (len(RAMP) - 1)
    i = min(int(x), len(RAMP) - 2)
    f = x - i
    a, b = RAMP[i], RAMP[i + 1]
    return "rgb({},{},{})".format(*(int(round(p + (q - p) * f)) for p, q in zip(a, b)))


def cell_color(v: float, base: float, hi: float) -> str:
    """Background of a composition cell: BLANK if non-finite, NEUTRAL if v ≤ base, else
    ramp((v − base) / (hi − base))."""
    if not math.isfinite(v):
        return BLANK
    if v <= base:
        return NEUTRAL
    return ramp((v - base) / (hi - base) if hi > base else 1.0)


def heatmap(grid, rows: list[str], cols: list[str], base: float, hi: float, what: str = "",
            axes: tuple[str, str] = ("earlier head", "later head")) -> str:
    """A table of coloured cells (cell_color on the scale [base, hi]), each titled with its value; the
    line above it names the axes (rows, columns)."""
    grid = np.asarray(grid, dtype=float)
    out = [f'<div class="scroll"><small>rows: {_esc(axes[0])} ↓ · columns: {_esc(axes[1])} →</small>'
           '<table class="grid"><tr><th></th>'
           + "".join(f"<th><small>{_esc(c)}</small></th>" for c in cols) + "</tr>"]
    for r, label in enumerate(rows):
        cells = []
        for c, v in enumerate(grid[r]):
            tip = f"{label} → {cols[c]}: " + (f"{v:.4f}" if math.isfinite(v) else "no score")
            cells.append(f'<td title="{_esc(what + tip)}" style="background:{cell_color(v, base, hi)}"></td>')
        out.append(f"<tr><th><small>{_esc(label)}</small></th>{''.join(cells)}</tr>")
    return "".join(out) + "</table></div>"


def legend(base: float, hi: float, key: str) -> str:
    """The colour scale of one kind: neutral ≤ baseline, the ramp from baseline to the largest score, blank."""
    w = 200
    stops = "".join(f'<stop offset="{i / (len(RAMP) - 1):.3f}" stop-color="{ramp(i / (len(RAMP) - 1))}"/>'
                    for i in range(len(RAMP)))
    if not math.isfinite(hi):
        bar, words = "", "no finite score"
    elif hi > base:
        bar = (f'<rect x="62" y="4" width="{w}" height="12" fill="url(#ramp-{key})"/>'
               f'<text x="62" y="28" text-anchor="middle">{base:.3g}</text>'
               f'<text x="{62 + w}" y="28" text-anchor="middle">{hi:.3g}</text>')
        words = f"grey: at or below the baseline {base:.4f}; yellow → dark red: up to the largest score {hi:.4f}"
    else:
        bar = ""
        words = f"every score is at or below the baseline {base:.4f} (grey)"
    return (f'<div class="legend"><svg width="{w + 140}" height="32" role="img" xmlns="http://www.w3.org/2000/svg">'
            f'<title>{_esc(key)} colour scale: {_esc(words)}</title>'
            f'<defs><linearGradient id="ramp-{key}">{stops}</linearGradient></defs>'
            f'<rect x="2" y="4" width="18" height="12" fill="{NEUTRAL}" stroke="#999"/>'
            f'<text x="24" y="14">≤ base</text>{bar}'
            f'<rect x="{w + 80}" y="4" width="12" height="12" fill="{BLANK}" stroke="#999"/>'
            f'<text x="{w + 96}" y="14">no score</text></svg>'
            f"<br><small>{_esc(words)}</small></div>")


# ---------------------------------------------------------------- head choice

def _label(head) -> str:
    return f"{head[0]}.{head[1]}"


def choose_heads(rows: list[dict], per: int = PER_CRITERION) -> tuple[list[tuple[int, int]], dict, list]:
    """Automatic choice: for each criterion, the ``per`` heads with the highest finite value
    (sort key (−value, layer, head)). Returns (heads in (layer, head) order, head -> [reasons],
    [(criterion phrase, [heads])] for the criteria that had finite values)."""
    why: dict = {}
    lists = []
    for col, phrase in CRITERIA:
        ranked = sorted((r for r in rows if _finite(r.get(col))), key=lambda r: (-r[col], r["layer"], r["head"]))
        top = [(r["layer"], r["head"]) for r in ranked[:per]]
        if top:
            lists.append((phrase, top))
        for i, hd in enumerate(top):
            why.setdefault(hd, []).append(f"{phrase} (#{i + 1})")
    return sorted(why), why, lists


def _choice_html(chosen, lists, given: bool, behaviour: bool) -> str:
    links = ", ".join(f'<a href="#head-{l}-{h}">{l}.{h}</a>' for l, h in chosen) or "none"
    if given:
        return ("<p>Heads detailed on this page (spectra and top OV/QK entries): the ones asked for "
                f"(--heads): {links}.</p>")
    items = "".join(f"<li>{_esc(p)}: {', '.join(map(_label, hs))}</li>" for p, hs in lists)
    skipped = "" if behaviour else (" Induction and previous-token scores were not computed (--no-behaviour), so "
                                    "they choose no heads.")
    return (f"<p>Heads detailed on this page (spectra and top OV/QK entries) are chosen by a fixed rule: for each "
            f"score below, the {PER_CRITERION} heads with the highest value in the census (ties: lower layer, then "
            f"lower head; undefined values are not ranked); a head on several lists is shown once.{skipped} "
            f"Pass --heads to choose others.</p><ul>{items}</ul><p>{len(chosen)} head"
            f"{'s' if len(chosen) != 1 else ''}: {links}.</p>")


# ---------------------------------------------------------------- composition

def _composition(w) -> str:
    cfg = w.cfg
    table = compose_table(w)
    base = float(next(iter(table.rows()))[table.columns.index("baseline")])
    L, H = cfg.n_layers, cfg.n_heads
    parts = ["<h2>Composition scores (rows: earlier head, columns: later head)</h2>",
             f"<p><small>{_esc(table.notes[0])}. One colour scale per kind, shared by its heatmaps: grey at or "
             "below the baseline, then pale yellow to dark red up to the kind's largest score; blank: no score "
             "(not an earlier/later pair, or 0/0 for a head whose matrix is zero).</small></p><div class='flex'>"]
    for fig in table.figures:
        kind = fig.title.split("-")[0]
        grid = np.asarray(fig.data, dtype=float)
        finite = grid[np.isfinite(grid)]
        hi = max(float(finite.max()), base) if finite.size else math.nan
        card = [f"<div class='card'><b>{_esc(fig.title)}</b>", legend(base, hi, kind)]
        if len(fig.rows) <= MAX_GRID:
            card.append(heatmap(grid, fig.rows, fig.cols, base, hi))
        else:
            card.append(f"<p><small>{len(fig.rows)} × {len(fig.cols)} head pairs: too many cells to draw "
                        "(tcli compose lists them all).</small></p>")
        if L >= 3:  # per layer pair: the largest score over its head pairs, on the same scale
            summary = np.full((L - 1, L - 1), np.nan)
            for l1 in range(L - 1):
                for l2 in range(l1 + 1, L):
                    block = grid[l1 * H:(l1 + 1) * H, (l2 - 1) * H:l2 * H]
                    ok = block[np.isfinite(block)]
                    if ok.size:
                        summary[l1, l2 - 1] = ok.max()
            card.append("<small>per layer pair (largest over its heads):</small>"
                        + heatmap(summary, [f"L{l}" for l in range(L - 1)], [f"L{l}" for l in range(1, L)], base, hi,
                                  "max ", ("earlier layer", "later layer")))
        parts.append("".join(card) + "</div>")
    parts.append("</div><p><b>Strongest pairs</b></p>" + html_table(table, limit=12, drop=("baseline",)))
    return "".join(parts)


# ---------------------------------------------------------------- the page

def report(w, vocab, ckpt, behaviour: bool = True, heads: list[tuple[int, int]] | None = None) -> str:
    """The HTML page. ``heads``: the heads to detail (validated; order kept, duplicates dropped);
    None: the automatic choice (choose_heads), stated on the page."""
    cfg = w.cfg
    if heads is not None and not cfg.n_layers:
        raise InputError("--heads: this model has no attention layers (0 layers), so no heads to detail")
    if heads is not None:
        heads = list(dict.fromkeys(circuits.check_heads(cfg, [(int(l), int(h)) for l, h in heads])))
    info = info_record(ckpt, w)
    name = _esc(ckpt.path)
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'><title>tcli report: {name}"
             f"</title><style>{STYLE}</style></head><body>",
             f"<h1>tcli report: {name}</h1>",
             "<div class='scroll'><table>" + "".join(f"<tr><th>{_esc(k)}</th><td class='t'>{_esc(_fmt(v))}</td></tr>"
                                                     for k, v in info.items()) + "</table></div>"]
    why: dict = {}
    if cfg.n_layers:
        heads_table = census(w, behaviour=behaviour)
        rows = [dict(zip(heads_table.columns, r)) for r in heads_table.rows()]
        parts.append("<h2>Head census</h2>" + html_table(heads_table, limit=10_000)
                     + "<p><small>Blank cells: not computed (--no-behaviour) or undefined (NaN, e.g. the copying "
                       "score of a head whose OV circuit is zero).</small></p>")
        if heads is None:
            chosen, why, lists = choose_heads(rows)
        else:
            chosen, lists = heads, []
        parts.append("<h2>Heads detailed</h2>" + _choice_html(chosen, lists, heads is not None, behaviour))
    else:
        chosen = []
    parts.append("<h2>Spectra (singular values, largest first)</h2><div class='flex'>")
    parts.append("<div class='card'><b>direct path W_E W_U</b><br>"
                 f"{svg_bars(circuits.reduced(w, 'direct').svdvals(), 'direct path singular values')}</div>")
    for l, h in chosen:
        s_ov, s_qk = circuits.reduced(w, "ov", l, h).svdvals(), circuits.reduced(w, "qk", l, h).svdvals()
        parts.append(f"<div class='card'><b>head {l}.{h}</b><br><small>full OV circuit</small><br>"
                     f"{svg_bars(s_ov, f'head {l}.{h} OV singular values')}<br><small>full QK circuit</small><br>"
                     f"{svg_bars(s_qk, f'head {l}.{h} QK singular values')}</div>")
    parts.append("</div>")
    if cfg.n_layers > 1:
        parts.append(_composition(w))
    parts.append("<h2>Strongest bigrams (direct path)</h2>" + html_table(bigram(w, vocab, Request(global_n=20))))
    for l, h in chosen:
        reason = "; ".join(why.get((l, h), ["asked for"]))
        parts.append(f"<h2 id='head-{l}-{h}'>Head {l}.{h}</h2><p><small>{_esc(reason)}</small></p>"
                     "<div class='flex'><div><b>OV: source → output</b>"
                     f"{html_table(ov(w, vocab, [(l, h)], Request(global_n=12)), drop=('layer', 'head'))}</div>"
                     "<div><b>QK: query ← key</b>"
                     f"{html_table(qk(w, vocab, [(l, h)], Request(global_n=12)), drop=('layer', 'head'))}</div></div>")
    parts.append("<p><small>Generated by tcli; every number is computed from the checkpoint's weights "
                 "(see docs/commands.md for the definitions).</small></p></body></html>")
    return "\n".join(parts)
