"""``--plot FILE.png|.svg``: a table's figures drawn with matplotlib (optional: pip install 'tcli[plot]')."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import InputError


MAX_FIGURES = 64


def save_figures(figures, path: str) -> None:
    """Draw every figure (heatmaps with imshow, line series on a log scale) into one image file."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {path}: the file must end in .png, .svg or .pdf")
    if not figures:
        raise InputError("this command has no picture to plot")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise InputError("--plot needs matplotlib", "pip install 'tcli[plot]'") from None
    if len(figures) > MAX_FIGURES:
        import sys

        print(f"tcli: --plot draws the first {MAX_FIGURES} of {len(figures)} figures", file=sys.stderr)
        figures = figures[:MAX_FIGURES]
    n = len(figures)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 4.5 * nrows), squeeze=False)
    for ax, f in zip(axes.ravel(), figures):
        data = np.asarray(f.data, dtype=float)
        if f.kind == "heatmap":
            im = ax.imshow(data, cmap="viridis", aspect="auto", interpolation="nearest")
            fig.colorbar(im, ax=ax, shrink=0.8)
            for labels, setter in ((f.cols, ax.set_xticks), (f.rows, ax.set_yticks)):
                if 0 < len(labels) <= 40:
                    setter(range(len(labels)), labels=[str(x) for x in labels], fontsize=7)
        else:
            for label, row in zip(f.rows, data):
                ax.plot(np.arange(1, row.size + 1), row, label=str(label), lw=1)
            if np.nanmin(data) > 0:
                ax.set_yscale("log")
            if len(f.rows) <= 12:
                ax.legend(fontsize=7)
        ax.set_title(f.title, fontsize=9)
        ax.set_xlabel(f.xlabel)
        ax.set_ylabel(f.ylabel)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    from .render import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=suffix[1:])
    finally:
        plt.close(fig)
