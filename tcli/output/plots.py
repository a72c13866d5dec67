"""Terminal pictures drawn with rich alone: heatmaps of half-block cells (truecolour), or shade
characters ``░▒▓█`` when colour is off (NO_COLOR)."""

from __future__ import annotations

SHADES = " ░▒▓█"


def _rgb(x: float) -> str:
    """0..1 onto a dark-blue → yellow ramp."""
    x = min(max(x, 0.0), 1.0)
    r, g, b = int(40 + 215 * x), int(30 + 200 * x ** 0.8), int(90 + 40 * (1 - x))
    return f"rgb({r},{g},{b})"


def heatmap_lines(values, color: bool) -> list:
    """Rich Text lines for a matrix of values in [0, 1] (rows top to bottom).

    Colour: each character cell shows two rows (upper half-block ▀ in the foreground colour,
    the lower row as background). No colour: one row per line, one shade character per value."""
    from rich.text import Text

    rows = [list(r) for r in values]
    lines = []
    if not color:
        for r in rows:
            lines.append(Text("".join(SHADES[min(4, int(round(v * 4)))] if v == v else "?" for v in r)))
        return lines
    for i in range(0, len(rows), 2):
        top, bottom = rows[i], rows[i + 1] if i + 1 < len(rows) else None
        t = Text()
        for j, v in enumerate(top):
            style = _rgb(v) + (f" on {_rgb(bottom[j])}" if bottom is not None else "")
            t.append("▀", style=style)
        lines.append(t)
    return lines


def draw_heatmap(console, matrix, row_labels, col_labels, title: str) -> None:
    """Print a labelled heatmap of ``matrix``, its range [min, max] mapped onto the colour scale."""
    import numpy as np

    from rich.text import Text

    m = np.asarray(matrix, dtype=float)
    if m.size == 0 or not np.isfinite(m).any():
        return
    lo, hi = np.nanmin(m), np.nanmax(m)
    scaled = (m - lo) / (hi - lo) if hi > lo else np.ones_like(m)
    color = console.color_system is not None and not console.no_color
    width = max((len(r) for r in row_labels), default=0)
    console.print(Text(f"{title} (columns: {col_labels[0]} … {col_labels[-1]})", style="bold"))
    lines = heatmap_lines(scaled, color)
    step = 2 if color else 1
    for i, line in enumerate(lines):
        label = " / ".join(row_labels[i * step:i * step + step]) if color else row_labels[i]
        console.print(Text(label.rjust(width * step + 3 * (step - 1)) + " ") + line)
    legend = Text(f"scale: {lo:.3g} ")
    if color:
        for x in np.linspace(0, 1, 12):
            legend.append("█", style=_rgb(float(x)))
    else:
        legend.append("(blank) ░ ▒ ▓ █")
    legend.append(f" {hi:.3g}")
    console.print(legend)
