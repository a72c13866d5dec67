"""Render a Table as a rich table, CSV, TSV, JSON or JSON lines; to stdout or atomically to a file."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path

from ..errors import InputError
from .table import Table, visible

FORMATS = ("table", "csv", "tsv", "json", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".txt": "table"}
TABLE_ROW_LIMIT = 2000


def choose_format(fmt: str | None, out: str | None) -> str:
    """--format if given; else from -o's extension; else table on a terminal, tsv when piped."""
    if fmt:
        if fmt not in FORMATS:
            raise InputError(f"unknown format '{fmt}'", f"choose one of {', '.join(FORMATS)}")
        return fmt
    if out:
        return EXTENSIONS.get(Path(out).suffix.lower(), "tsv")
    return "table" if sys.stdout.isatty() else "tsv"


def tsv_escape(value) -> str:
    if value is None:
        return ""
    s = str(value)
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _cell(value) -> str:
    return "" if value is None else str(value)


def _csv_quote(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(c in s for c in ',"\r\n') else s


_INT_TEXT: list = []


def _int_text(values) -> list[str]:
    """Non-negative ints as text through a growing table of their decimal strings (ids, ranks)."""
    import numpy as np

    top = int(values.max()) if values.size else 0
    if values.size and values.min() < 0 or top > 10_000_000:
        return values.astype(str).tolist()
    if top >= len(_INT_TEXT):
        _INT_TEXT[:] = np.arange(max(top + 1, 2 * len(_INT_TEXT))).astype(str).astype(object).tolist()
    return np.asarray(_INT_TEXT, dtype=object)[values].tolist()


def _text_column(values, escape, memo: dict) -> list[str]:
    """One column of a chunk as text: numbers in their shortest round-trip form, strings escaped
    (``memo`` keeps each distinct string's escaped form across chunks)."""
    import numpy as np

    if isinstance(values, np.ndarray) and values.dtype.kind in "iu":
        return _int_text(values)
    if isinstance(values, np.ndarray) and values.dtype.kind in "fb":
        return values.astype(str).tolist()
    out = []
    for v in values:
        key = (v.__class__, v)  # True == 1, but they print differently
        t = memo.get(key)
        if t is None:
            t = memo[key] = escape(v) if isinstance(v, str) else _cell(v)
        out.append(t)
    return out


def _write_delimited(table: Table, fh, sep: str, escape, headers: bool) -> None:
    if headers:
        fh.write(sep.join(escape(c) for c in table.columns) + "\n")
    memos: dict = {c: {} for c in table.columns}
    for chunk in table.chunks:
        cols = [_text_column(chunk[c], escape, memos[c]) for c in table.columns]
        if cols and cols[0]:
            fh.write("\n".join(map(sep.join, zip(*cols))) + "\n")


def write_csv(table: Table, fh, headers: bool = True) -> None:
    """RFC 4180 CSV: fields with a comma, quote, CR or LF are quoted, quotes doubled."""
    _write_delimited(table, fh, ",", _csv_quote, headers)


def write_tsv(table: Table, fh, headers: bool = True) -> None:
    """Unquoted TSV: tab, LF, CR and backslash inside a value are written \\t, \\n, \\r, \\\\."""
    _write_delimited(table, fh, "\t", tsv_escape, headers)


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def write_json(table: Table, fh, lines: bool = False) -> None:
    if table.record and not lines:
        row = next(table.rows())
        fh.write(json.dumps({c: _json_value(v) for c, v in zip(table.columns, row)}, ensure_ascii=False, indent=2))
        fh.write("\n")
        return
    first = True
    if not lines:
        fh.write("[")
    for row in table.rows():
        obj = json.dumps({c: _json_value(v) for c, v in zip(table.columns, row)}, ensure_ascii=False)
        if lines:
            fh.write(obj + "\n")
        else:
            fh.write(("\n" if first else ",\n") + obj)
        first = False
    if not lines:
        fh.write("\n]\n" if not first else "]\n")


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if value == value else "nan"
    return _cell(value)


def write_table(table: Table, fh, color: bool | None = None, width: int | None = None) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    force = os.environ.get("CLICOLOR_FORCE", "0") not in ("", "0") and "NO_COLOR" not in os.environ
    console = Console(file=fh, color_system="auto" if color is not False else None, force_terminal=force or None,
                      no_color=color is False, width=width, highlight=False)
    if table.record:
        table = Table.from_rows(["key", "value"], zip(table.columns, next(table.rows())), title=table.title)
    rt = RichTable(title=table.title or None, title_justify="left", show_edge=False, pad_edge=False)
    numeric: set[str] = set()
    rows = []
    truncated = False
    for i, row in enumerate(table.rows()):
        if i == TABLE_ROW_LIMIT:
            truncated = True
            break
        rows.append(row)
        numeric.update(c for c, v in zip(table.columns, row) if isinstance(v, (int, float)) and not isinstance(v, bool))
    for c in table.columns:
        rt.add_column(c, justify="right" if c in numeric else "left", overflow="fold")
    bar_i = table.columns.index(table.bar) if table.bar in table.columns else None
    if bar_i is not None:
        rt.add_column("", justify="left", no_wrap=True)
        top = max((abs(r[bar_i]) for r in rows if isinstance(r[bar_i], (int, float))), default=0) or 1.0
    for row in rows:
        cells = [visible(v) if c in table.token_columns else _fmt(v) for c, v in zip(table.columns, row)]
        if bar_i is not None:
            v = row[bar_i] if isinstance(row[bar_i], (int, float)) else 0.0
            n = int(round(20 * abs(v) / top))
            cells.append(("[red]" if v < 0 else "[green]") + "█" * n + "[/]")
        rt.add_row(*cells)
    console.print(rt)
    from .plots import draw_heatmap

    for fig in table.figures:
        if fig.kind == "heatmap" and len(fig.cols) <= max(20, console.width - 20):
            draw_heatmap(console, fig.data, fig.rows, fig.cols, fig.title)
    for note in table.notes:
        console.print(note, style="dim", markup=False)
    if truncated:
        console.print(f"(first {TABLE_ROW_LIMIT} rows shown; use --format csv or -o FILE for all)", style="dim")


def _primed(table: Table) -> Table:
    """The same table with its first chunk already computed, so that an error raised while
    computing it happens before anything (even the header) is written."""
    import itertools

    it = iter(table.chunks)
    first = next(it, None)
    table.chunks = itertools.chain([first] if first is not None else [], it)
    return table


def render(table: Table, fmt: str, out: str | None = None, headers: bool = True) -> None:
    """Write the table to stdout, or to ``out`` through a temporary file renamed on success."""
    table = _primed(table)
    def emit(fh):
        if fmt == "csv":
            write_csv(table, fh, headers)
        elif fmt == "tsv":
            write_tsv(table, fh, headers)
        elif fmt in ("json", "jsonl"):
            write_json(table, fh, lines=fmt == "jsonl")
        else:
            write_table(table, fh, color=None if fh is sys.stdout else False)

    if fmt != "table":
        for note in table.notes:
            print(note, file=sys.stderr)
    if out is None:
        emit(sys.stdout)
        sys.stdout.flush()
        return
    atomic_write(out, emit)


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike):
    """Yield a temporary path beside ``out``; on success it is renamed to ``out`` (with the
    permissions a plainly created file gets), on failure removed: never a half-written file."""
    target = Path(out)
    if not target.parent.exists():
        raise InputError(f"cannot write {out}: folder {target.parent} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(out: str | os.PathLike, emit) -> None:
    """Call ``emit(fh)`` on a temporary text file that replaces ``out`` only once complete."""
    with atomic_path(out) as tmp, io.open(tmp, "w", encoding="utf-8", newline="") as fh:
        emit(fh)
