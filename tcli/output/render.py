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
from .table import Table, inert, visible

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
        suffix = Path(out).suffix.lower()
        if suffix not in EXTENSIONS and not _special(out):
            raise InputError(f"-o {out}: cannot tell the format from the extension '{suffix or '(none)'}'",
                             f"end the name in {', '.join(EXTENSIONS)} or pass --format")
        return EXTENSIONS.get(suffix, "tsv")
    return "table" if sys.stdout.isatty() else "tsv"


def _special(out: str) -> bool:
    """A target that is not a regular file: a character device, FIFO, socket or /dev/std*."""
    import stat

    try:
        mode = os.stat(out).st_mode
    except OSError:
        return str(out).startswith("/dev/")
    return not stat.S_ISREG(mode) and not stat.S_ISDIR(mode)


TSV_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def tsv_escape(value) -> str:
    """One TSV field: backslash, tab, LF and CR written ``\\\\ \\t \\n \\r`` (every record is one line), then a
    field holding a double quote is quoted as the csv module does (``"a""b"``), so that readers whose
    default is to honour quotes (pandas, polars, DuckDB, csv excel-tab, sqlite-utils) never swallow rows."""
    if value is None:
        return ""
    s = str(value).translate(TSV_ESCAPES)
    return '"' + s.replace('"', '""') + '"' if '"' in s else s


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
    """TSV, one record per line: see ``tsv_escape`` (docs/recipes.md: how each reader loads it)."""
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
    return inert(_cell(value))


def console_for(fh, color: bool | None = None, width: int | None = None):
    """A rich Console honouring NO_COLOR, FORCE_COLOR / CLICOLOR_FORCE and TERM=dumb (rich reads the
    first two and TERM itself; ``color=False`` turns colour off)."""
    from rich.console import Console

    env = os.environ
    no_color = color is False or bool(env.get("NO_COLOR"))
    force = not no_color and (env.get("CLICOLOR_FORCE", "0") not in ("", "0") or bool(env.get("FORCE_COLOR")))
    return Console(file=fh, color_system=None if no_color else "auto", force_terminal=True if force else None,
                   no_color=no_color, width=width, highlight=False, emoji=False, markup=False)


def _fit(columns: list[str], headers: list[str], cells: list[list[str]], width: int, extra: int) -> int:
    """How many leading columns fit in ``width`` terminal cells (each column as wide as its widest cell,
    3 cells between columns, ``extra`` for a bar); at least one."""
    from rich.cells import cell_len

    used = extra
    for i, h in enumerate(headers):
        w = max([cell_len(h)] + [cell_len(r[i]) for r in cells])
        used += w + (3 if i else 0)
        if used > width:
            return max(1, i)
    return len(columns)


def write_table(table: Table, fh, color: bool | None = None, width: int | None = None) -> None:
    """A rich table. Cells are plain Text (no markup is interpreted, controls are escaped: ``inert``).
    Columns that do not fit the width are left out, with a note naming them (numbers are never split
    across lines); ``table.short`` abbreviates headers, with a legend."""
    from rich.table import Table as RichTable
    from rich.text import Text

    console = console_for(fh, color, width)
    colour = console.color_system is not None and not console.no_color
    if table.record:
        table = Table.from_rows(["key", "value"], zip(table.columns, next(table.rows())), title=table.title)
    numeric: set[str] = set()
    rows = []
    truncated = False
    for i, row in enumerate(table.rows()):
        if i == TABLE_ROW_LIMIT:
            truncated = True
            break
        rows.append(row)
        numeric.update(c for c, v in zip(table.columns, row) if isinstance(v, (int, float)) and not isinstance(v, bool))
    cells = [[visible(v) if c in table.token_columns and isinstance(v, str) else _fmt(v)
              for c, v in zip(table.columns, row)] for row in rows]
    headers = [table.short.get(c, c) for c in table.columns]
    bar_i = table.columns.index(table.bar) if table.bar in table.columns else None
    n_fit = len(table.columns) if table.record else _fit(table.columns, headers, cells, console.width,
                                                          23 if bar_i is not None else 0)
    left_out = table.columns[n_fit:]
    rt = RichTable(title=Text(inert(table.title)) if table.title else None, title_justify="left", show_edge=False,
                   pad_edge=False)
    for c, h in zip(table.columns[:n_fit], headers[:n_fit]):
        record_value = table.record and c == "value"
        right = c in numeric and not table.record
        rt.add_column(Text(h), justify="right" if right else "left", no_wrap=not record_value, overflow="fold")
    if bar_i is not None:
        rt.add_column("", justify="left", no_wrap=True)
        top = max((abs(r[bar_i]) for r in rows if isinstance(r[bar_i], (int, float))), default=0) or 1.0
    for row, text in zip(rows, cells):
        line = [Text(t) for t in text[:n_fit]]
        if bar_i is not None:
            v = row[bar_i] if isinstance(row[bar_i], (int, float)) else 0.0
            n = int(round(20 * abs(v) / top))
            sign = "−" if v < 0 else "+"  # the sign is readable without colour
            line.append(Text(sign + "█" * n, style=("red" if v < 0 else "green") if colour else ""))
        rt.add_row(*line)
    console.print(rt)
    from .plots import draw_heatmap

    for fig in table.figures:
        if fig.kind == "heatmap" and len(fig.cols) <= max(20, console.width - 20):
            draw_heatmap(console, fig.data, fig.rows, fig.cols, fig.title)
    shown = [c for c in table.columns[:n_fit] if c in table.short]
    if shown:
        console.print(Text("columns: " + ", ".join(f"{table.short[c]} = {c}" for c in shown), style="dim"))
    if left_out:
        console.print(Text(f"{len(left_out)} column(s) left out to fit {console.width} columns: {', '.join(left_out)} "
                           "(choose with --columns, or use --format csv/tsv/json)", style="dim"))
    for note in table.notes:
        console.print(Text(inert(note), style="dim"))
    if truncated:
        console.print(Text(f"(first {TABLE_ROW_LIMIT} rows shown; use --format csv or -o FILE for all)", style="dim"))


def _primed(table: Table) -> Table:
    """The same table with its first chunk already computed, so that an error raised while
    computing it happens before anything (even the header) is written."""
    import itertools

    it = iter(table.chunks)
    first = next(it, None)
    table.chunks = itertools.chain([first] if first is not None else [], it)
    return table


def select(table: Table, columns: list[str] | None = None, sort: str | None = None, limit: int | None = None) -> Table:
    """``--columns a,b`` (those columns, in that order), ``--sort COL`` (ascending; ``-COL`` descending,
    missing values last) and ``--limit N`` (the first N rows after sorting) on any table."""

    if columns:
        bad = [c for c in columns if c not in table.columns]
        if bad:
            raise InputError(f"--columns: no column {bad[0]!r}", f"this table has {', '.join(table.columns)}")
    key = sort.lstrip("-") if sort else None
    if key is not None and key not in table.columns:
        raise InputError(f"--sort: no column {key!r}", f"this table has {', '.join(table.columns)}")
    if limit is not None and limit < 0:
        raise InputError(f"--limit must be 0 or more, got {limit}")
    if key is None and limit is None and not columns:
        return table
    cols = columns or table.columns
    kw = dict(title=table.title, notes=table.notes, token_columns=table.token_columns,
              bar=table.bar if table.bar in cols else None, figures=table.figures, record=table.record,
              short=table.short)
    if key is None:  # stays streamed: chunks cut to the columns and the limit
        def chunks():
            left = limit
            for chunk in table.chunks:
                n = len(chunk[table.columns[0]])
                take = n if left is None else min(n, left)
                yield {c: chunk[c][:take] for c in cols}
                if left is not None:
                    left -= take
                    if left <= 0:
                        return
        return Table(list(cols), chunks(), **kw)
    i = table.columns.index(key)
    rows = list(table.rows())
    present = [r for r in rows if r[i] is not None and r[i] == r[i]]  # NaN != NaN: missing
    missing = [r for r in rows if not (r[i] is not None and r[i] == r[i])]
    rows = (sorted(present, key=lambda r: r[i], reverse=sort.startswith("-")) + missing)[:limit]
    idx = [table.columns.index(c) for c in cols]
    return Table.from_rows(list(cols), [[r[j] for j in idx] for r in rows], **kw)


def render(table: Table, fmt: str, out: str | None = None, headers: bool = True) -> None:
    """Write the table to stdout, or to ``out`` (atomically when it is a regular file); notes go to
    stderr after the data in machine formats. Any progress bar is erased before the terminal is written."""
    from .progress import stop

    table = _primed(table)

    def emit(fh):
        if fmt == "csv":
            write_csv(table, fh, headers)
        elif fmt == "tsv":
            write_tsv(table, fh, headers)
        elif fmt in ("json", "jsonl"):
            write_json(table, fh, lines=fmt == "jsonl")
        else:
            if fh is sys.stdout:
                table.chunks = list(table.chunks)  # compute everything before the bar is erased
                stop()
            write_table(table, fh, color=None if fh is sys.stdout else False)

    if out is None:
        if fmt != "table" and sys.stdout.isatty():
            stop()
        emit(sys.stdout)
        sys.stdout.flush()
    else:
        atomic_write(out, emit)
    if fmt != "table":
        stop()
        for note in table.notes:
            print(inert(note), file=sys.stderr)


@contextlib.contextmanager
def atomic_path(out: str | os.PathLike):
    """Yield a path to write ``out`` through, never leaving a half-written file.

    A regular file (or a new name): a temporary file beside it, renamed over it on success (keeping an
    existing file's permission bits), removed on failure or on a signal (the CLI turns SIGTERM, SIGHUP
    and SIGQUIT into exceptions). A symlink: the same for the file it points to (the link stays).
    A character device, FIFO, socket or /dev/std*: the target itself, written in place."""
    import stat

    target = Path(os.path.realpath(out))
    if _special(str(out)):
        yield str(out)
        return
    if target.is_dir():
        raise InputError(f"cannot write {out}: it is a directory")
    if not target.parent.is_dir():
        raise InputError(f"cannot write {out}: folder {target.parent} does not exist")
    tmp = None
    try:  # the temporary file is made inside the try, so that a signal right after leaves nothing behind
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + target.suffix, dir=target.parent)
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc.strerror} in {target.parent}") from None
        os.close(fd)
        yield tmp
        try:
            st = os.stat(target)
            mode = stat.S_IMODE(st.st_mode)
        except FileNotFoundError:
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(out: str | os.PathLike, emit) -> None:
    """Call ``emit(fh)`` on a text file that replaces ``out`` only once complete (see ``atomic_path``)."""
    with atomic_path(out) as path:
        try:
            fh = io.open(path, "w", encoding="utf-8", newline="")
        except OSError as exc:
            raise InputError(f"cannot write {out}: {exc.strerror}") from None
        with fh:
            emit(fh)
