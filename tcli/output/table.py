"""The ``Table`` every analysis returns: fixed column names and rows delivered in columnar chunks."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

Chunk = dict  # column name -> sequence (list or numpy array) of equal length


@dataclass
class Figure:
    """Picture data an analysis offers: a heatmap (``data`` [rows, cols]) or line series
    (``data`` [n_series, n_points], one label per series in ``rows``)."""

    kind: str  # "heatmap" | "lines"
    title: str
    data: object
    rows: list = field(default_factory=list)
    cols: list = field(default_factory=list)
    xlabel: str = ""
    ylabel: str = ""


@dataclass
class Table:
    """columns: machine column names in order; chunks: iterable of column-name -> values mappings.

    notes go to stderr in machine formats and under the table in table mode; ``token_columns``
    are shown with visible whitespace; ``bar`` names a numeric column drawn as a bar in table mode;
    ``figures`` are pictures of the data: heatmaps are drawn in table mode, and all of them by --plot;
    ``short`` abbreviates headers in table mode (a legend names them).
    """

    columns: list[str]
    chunks: Iterable[Chunk]
    title: str = ""
    notes: list[str] = field(default_factory=list)
    token_columns: tuple[str, ...] = ()
    bar: str | None = None
    figures: list = field(default_factory=list)
    record: bool = False  # one record: key/value in table mode, a JSON object (not an array) in json
    short: dict = field(default_factory=dict)  # table mode: column -> abbreviated header (a legend follows)

    def rows(self) -> Iterator[tuple]:
        """Rows as tuples of plain Python values (numpy scalars converted)."""
        for chunk in self.chunks:
            cols = [_plain(chunk[c]) for c in self.columns]
            yield from zip(*cols)

    @classmethod
    def from_rows(cls, columns: list[str], rows: Iterable[Sequence], **kw) -> "Table":
        rows = list(rows)
        chunk = {c: [r[i] for r in rows] for i, c in enumerate(columns)}
        return cls(columns, [chunk], **kw)


def _plain(values) -> list:
    """Python values: float32 arrays go through their shortest round-trip text, so 0.1f stays 0.1."""
    import numpy as np

    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return [float(s) for s in values.astype(str)]
        return values.tolist()
    return list(values)


VISIBLE = str.maketrans({" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"})
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def _escape_char(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def inert(text: str) -> str:
    """Text safe to show on a terminal: C0/C1 control characters, DEL and bidirectional controls
    become visible escapes (``\\x1b``, ``\\u202e``); everything else is unchanged. (Rich markup is
    never interpreted: tables are built from ``rich.text.Text`` cells.)"""
    if text.isprintable():
        return text
    return "".join(_escape_char(c) if (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in BIDI) else c for c in text)


def visible(token: str) -> str:
    """A token string for terminal tables: whitespace made visible (␣ ↵ ⇥ ␍), other controls escaped
    (``inert``), the empty string as ∅."""
    return inert(token.translate(VISIBLE)) if token else "∅"
