"""Sweeps: one command over several checkpoints, printed as one table.

``tcli COMMAND A B C …`` (paths, model ids, ``org/name@rev``) or ``tcli COMMAND org/name --revision
step1000,step2000,…`` runs the command once per checkpoint, in argument order, one checkpoint in memory at
a time. The table gets a leading ``checkpoint`` column (the argument as given, ``org/name@rev`` for an
expanded revision) and, where a revision is ``stepN``, a ``step`` column (N). ``--sort``/``--limit`` apply
within each checkpoint (the checkpoints stay in argument order); ``--columns`` may name ``checkpoint`` and
``step``.

Machine formats stream checkpoint by checkpoint: stdout is flushed after each one; ``-o FILE`` is one
atomic file for the whole sweep. The table format of ``heads``/``compose`` shows each score of each row
as a trend across the checkpoints (a sparkline and the last value); other tables are concatenated.
``--plot`` draws each score against the checkpoint (or step). ``--workers``/``--scheduler`` run the
checkpoints on a Dask cluster (tcli/distributed.py); the rows are those of the sequential run.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import sys
from dataclasses import dataclass

from .errors import InputError

PREFIX = ("checkpoint", "step")
SPARKS = "▁▂▃▄▅▆▇█"
TRENDS = {"heads": ["layer", "head"], "compose": ["kind", "layer1", "head1", "layer2", "head2"]}
TREND_SKIP = {"compose": ("baseline",)}  # constant for one architecture
PLOT_LINES = 12  # compose --plot: the pairs with the largest peak |score|


@dataclass
class Unit:
    """One checkpoint of a sweep: ``label`` (the checkpoint column), what ``open_checkpoint`` gets
    (``path``, ``revision``), and ``step`` (N of a ``stepN`` revision, else None)."""

    label: str
    path: str
    revision: str | None
    step: int | None


def expand(checkpoints: list[str], revision: str | None) -> list[Unit]:
    """The sweep's units: each argument once, or with ``--revision r1,r2,…`` each model id once per revision."""
    from .checkpoint import hub

    if revision is not None and "," in revision:
        revisions = hub.parse_revisions(revision)
        if not checkpoints:
            raise InputError(f"--revision {revision}: a list of revisions expands a model id: name one "
                             "(org/name)")
        units = []
        for a in checkpoints:
            if not hub.looks_like_model_id(a):
                raise InputError(f"--revision {revision}: {a!r} is not a model id in the Hugging Face cache "
                                 "(a list of revisions expands model ids, org/name)")
            if "@" in a:
                raise InputError(f"{a!r} pins a revision: --revision {revision} expands unpinned model ids")
            units += [Unit(f"{a}@{r}", a, r, hub.step_of(r)) for r in revisions]
        return units
    units = []
    for a in checkpoints:
        step = None
        if hub.looks_like_model_id(a):
            step = hub.step_of(revision if revision is not None else a.partition("@")[2])
        units.append(Unit(a, a, revision, step))
    return units


def check_units(opts, units: list[Unit]) -> None:
    """Open every checkpoint (headers only, nothing kept) before any work, so that a missing file or
    revision, or a vocabulary that --minus cannot use, stops the sweep before a row is written."""
    from .checkpoint import open_checkpoint

    minus_vocab = None
    if opts.minus:
        from .checkpoint.tokens import Vocab

        other = open_checkpoint(opts.minus, opts.arch, None, opts.cache_dir)
        minus_vocab = Vocab(other.config.d_vocab, other.tokenizer_path)
    for u in units:
        ckpt = open_checkpoint(u.path, opts.arch, u.revision, opts.cache_dir)
        if minus_vocab is not None:
            from .analyses.diff import check_vocab
            from .checkpoint.tokens import Vocab

            check_vocab(Vocab(ckpt.config.d_vocab, ckpt.tokenizer_path), minus_vocab, u.label, opts.minus)


def run_unit(name: str, kwargs: dict, opts):
    """One checkpoint of a sweep on a Dask worker: run command ``name`` and return its table with every
    chunk computed, ``(table, plot, notes)`` (picklable)."""
    import numpy as np

    from . import cli
    from .core import device as engine

    fn = getattr(cli, name)._tcli_fn
    engine.use(opts.device)
    got = {}

    def capture(o, table, plot):
        table.chunks = list(table.chunks)
        got.update(table=table, plot=plot)

    opts.sink = capture
    with np.errstate(over="raise", invalid="raise"):
        fn(opts, **kwargs)
    if "table" not in got:
        raise InputError(f"{name} printed no table")
    return got["table"], got["plot"], list(opts.notes)


def run_sweep(fn, opts, kwargs: dict) -> None:
    """Run command ``fn`` once per unit of ``opts.units`` and print one table (see the module's doc)."""
    units = opts.units
    if opts.fmt == "html":
        raise InputError(f"{fn.__name__} writes one page per model: give one checkpoint")
    check_units(opts, units)
    with contextlib.ExitStack() as stack:
        sink = Sweep(opts, units, fn.__name__, stack)
        if opts.workers is None and opts.scheduler is None:
            for unit in units:
                o = opts.bound(unit, functools.partial(sink.add_from, unit))
                fn(o, **kwargs)
                if not sink.seen(unit):
                    raise InputError(f"{fn.__name__} printed no table for {unit.label}")
        else:
            from .distributed import map_units

            task = functools.partial(run_unit, fn.__name__, kwargs)
            results = map_units(task, [opts.bound(u, local=False) for u in units], opts.workers, opts.scheduler)
            with contextlib.closing(results):
                for unit, (table, plot, notes) in zip(units, results):
                    sink.add(unit, table, plot, notes)
        sink.finish()


class Sweep:
    """Receives each checkpoint's table in order and writes the sweep's one table."""

    def __init__(self, opts, units: list[Unit], command: str, stack: contextlib.ExitStack):
        self.fmt, self.out, self.headers = opts.fmt, opts.out, opts.headers
        self.sort, self.limit, self.user_columns = opts.sort, opts.limit, opts.columns
        self.units, self.command, self.stack = units, command, stack
        self.prefix = ["checkpoint"] + (["step"] if any(u.step is not None for u in units) else [])
        self.own = [c for c in opts.columns if c not in PREFIX] if opts.columns else None
        if opts.columns:
            bad = [c for c in opts.columns if c == "step" and "step" not in self.prefix]
            if bad:
                raise InputError("--columns: no column 'step' (no checkpoint of this sweep has a stepN revision)")
        self.inner = None  # the columns of the first checkpoint's table (after --columns)
        self.first = None  # its label and table, for titles and column checks
        self.kept: list = []  # (unit, table with its chunks in a list): the table format, --plot
        self.plot = None
        self.notes: list[tuple[int, str, str]] = []  # (unit number, checkpoint label, note)
        self.done: set[int] = set()
        self.fh = None
        self.rows_written = 0  # json: rows in the array so far
        self.header_written = False

    # ------------------------------------------------------------ receiving
    def seen(self, unit: Unit) -> bool:
        return id(unit) in self.done

    def add_from(self, unit: Unit, o, table, plot) -> None:
        """The sink of a bound Options (its render()): runs inside the command, while its table streams."""
        self.add(unit, table, plot, o.notes)

    def add(self, unit: Unit, table, plot, notes) -> None:
        from .output.render import _primed, select

        if id(unit) in self.done:
            raise InputError(f"{self.command} printed two tables for {unit.label}: it cannot be swept")
        self.done.add(id(unit))
        table = _primed(select(table, self.own, self.sort, self.limit))
        if self.inner is None:
            import dataclasses

            # its title and display settings (not its chunks: nothing of a checkpoint outlives its turn)
            self.inner, self.first = list(table.columns), (unit.label, dataclasses.replace(table, chunks=[]))
            self.columns = self._columns(table.columns)
        elif list(table.columns) != self.inner:
            raise InputError(f"{unit.label}: its table has the columns {', '.join(table.columns)}, "
                             f"{self.first[0]}'s has {', '.join(self.inner)}: a sweep prints one table",
                             "sweep checkpoints of one kind, or run them one by one")
        self.notes += [(len(self.done), unit.label, n) for n in list(notes) + list(table.notes)]
        if plot and not self.plot:
            _check_plot(plot)
            self.plot = plot
        if self.fmt == "table" or plot:
            table.chunks = list(table.chunks)
            self.kept.append((unit, table))
        if self.fmt != "table":
            self._stream(unit, table)

    def _columns(self, inner: list[str]) -> list[str]:
        if not self.user_columns:
            return self.prefix + list(inner)
        return list(self.user_columns)

    def _prefixed(self, unit: Unit, table):
        """The table's chunks with the checkpoint (and step) columns, in the output's column order."""
        for chunk in table.chunks:
            n = len(chunk[table.columns[0]])
            full = {"checkpoint": [unit.label] * n, "step": [unit.step] * n, **chunk}
            yield {c: full[c] for c in self.columns}

    # ------------------------------------------------------------ writing
    def _file(self):
        if self.fh is None:
            if self.out is None:
                from .output.progress import stop

                if sys.stdout.isatty():
                    stop()
                self.fh = sys.stdout
            else:
                from .output.render import atomic_path

                path = self.stack.enter_context(atomic_path(self.out))
                try:
                    self.fh = io.open(path, "w", encoding="utf-8", newline="")
                except OSError as exc:
                    raise InputError(f"cannot write {self.out}: {exc.strerror}") from None
                self.stack.callback(self.fh.close)  # closed before atomic_path renames it
        return self.fh

    def _stream(self, unit: Unit, table) -> None:
        from .output.render import _json_value, write_csv, write_json, write_tsv
        from .output.table import Table

        part = Table(self.columns, self._prefixed(unit, table))
        fh = self._file()
        if self.fmt in ("csv", "tsv"):
            (write_csv if self.fmt == "csv" else write_tsv)(part, fh, self.headers and not self.header_written)
            self.header_written = True
        elif self.fmt == "jsonl":
            write_json(part, fh, lines=True)
        else:  # one JSON array across the checkpoints, as write_json writes one table
            for row in part.rows():
                fh.write(("[\n" if not self.rows_written else ",\n") + json.dumps(
                    {c: _json_value(v) for c, v in zip(self.columns, row)}, ensure_ascii=False))
                self.rows_written += 1
        if fh is sys.stdout:
            fh.flush()

    def finish(self) -> None:
        """Close the table (json's bracket, the table format), the notes, the --plot figure."""
        if self.first is None:
            raise InputError("the sweep has no checkpoint")
        from .output.progress import stop
        from .output.table import inert

        if self.fmt == "json":
            self._file().write("\n]\n" if self.rows_written else "[]\n")
        elif self.fmt == "table":
            from .output.render import write_table

            display = self._display()
            fh = self._file()
            if fh is sys.stdout:
                stop()
            write_table(display, fh, color=None if fh is sys.stdout else False)
        if self.fh is sys.stdout:
            sys.stdout.flush()
        if self.plot:
            self._plot()
        stop()
        if self.fmt != "table":
            for note in self._merged_notes():
                print(inert(note), file=sys.stderr)

    def _merged_notes(self) -> list[str]:
        """Each distinct note once: as it is where every checkpoint said it, else prefixed with the checkpoint."""
        said: dict[str, dict[int, str]] = {}  # note -> {unit number: label}
        for i, label, note in self.notes:
            said.setdefault(note, {})[i] = label
        n = len(self.units)
        return [note if len(by) == n else f"{', '.join(dict.fromkeys(by.values()))}: {note}"
                for note, by in said.items()]

    # ------------------------------------------------------------ the table format
    def _display(self):
        from .output.table import Table

        label0, t0 = self.first
        title = f"{t0.title} — {len(self.kept)} checkpoints" if t0.title else f"{len(self.kept)} checkpoints"
        if t0.record:  # one record per checkpoint: side by side, one column each
            records = [next(t.rows()) for _, t in self.kept]
            rows = [[c] + [r[i] for r in records] for i, c in enumerate(self.inner)]
            return Table.from_rows(["key"] + [u.label for u, _ in self.kept], rows, title=title,
                                   notes=self._merged_notes())
        trend = self._trend(title)
        if trend is not None:
            return trend
        names = short_labels([u.label for u, _ in self.kept])
        chunks = [c for (u, t), name in zip(self.kept, names)
                  for c in self._prefixed(Unit(name, u.path, u.revision, u.step), t)]
        legend = [f"checkpoint: {', '.join(f'{n} = {u.label}' for n, (u, _) in zip(names, self.kept) if n != u.label)}"]
        return Table(self.columns, chunks, title=title, notes=(legend if legend[0] != "checkpoint: " else []) +
                     self._merged_notes(), token_columns=t0.token_columns,
                     bar=t0.bar if t0.bar in self.columns else None, short=t0.short)

    def _series(self):
        """(keys, score columns, {key: {column: [value per checkpoint]}}) for a trend-capable command, else None."""
        keys = TRENDS.get(self.command)
        if keys is None or any(k not in self.inner for k in keys):
            return None
        skip = TREND_SKIP.get(self.command, ())
        scores = [c for c in self.inner if c not in keys and c not in skip and any(
            isinstance(v, (int, float)) and not isinstance(v, bool)
            for _, t in self.kept for v in _column(t, c))]
        if not scores:
            return None
        data: dict = {}
        for i, (_, t) in enumerate(self.kept):
            ki = [t.columns.index(k) for k in keys]
            si = [t.columns.index(c) for c in scores]
            for row in t.rows():
                cell = data.setdefault(tuple(row[j] for j in ki), {c: [None] * len(self.kept) for c in scores})
                for c, j in zip(scores, si):
                    cell[c][i] = row[j]
        return keys, scores, data

    def _trend(self, title: str):
        from .output.table import Table

        got = self._series()
        if got is None:
            return None
        keys, scores, data = got
        rows = [list(key) + [_trend_cell(series[c]) for c in scores] for key, series in data.items()]
        legend = ", ".join(f"{i + 1} = {u.label}" for i, (u, _) in enumerate(self.kept))
        notes = [f"each score: a sparkline over the checkpoints in order ({legend}), scaled to that row's "
                 "min…max (▄: constant), then the last checkpoint's value"]
        t0 = self.first[1]
        return Table.from_rows(keys + scores, rows, title=title.replace(" — ", ": trends over ", 1),
                               notes=notes + self._merged_notes(), short=t0.short)

    # ------------------------------------------------------------ --plot
    def _plot(self) -> None:
        got = self._series()
        if got is None:  # every checkpoint's own figures, titled with the checkpoint
            import dataclasses

            from .output.mpl import save_figures

            figures = [dataclasses.replace(f, title=f"{u.label}: {f.title}") for u, t in self.kept for f in t.figures]
            save_figures(figures, self.plot)
            return
        _plot_trends(self.plot, self.kept, *got)


def short_labels(labels: list[str]) -> list[str]:
    """For the table format: each label's last path component, or as many as make it unique among the labels."""
    parts = [label.rstrip("/").split("/") for label in labels]
    out = []
    for p in parts:
        for n in range(1, len(p) + 1):
            tail = "/".join(p[-n:])
            if sum("/".join(q[-n:]) == tail for q in parts) == sum(q == p for q in parts):
                break
        out.append(tail)
    return out


def _column(table, name: str) -> list:
    i = table.columns.index(name)
    return [r[i] for r in table.rows()]


def _trend_cell(values: list) -> str:
    """``▁▃▆█ 0.8123``: a sparkline of the values (blank where missing), scaled to their min…max (▄ when
    they are all equal), and the last present value."""
    from .output.render import _fmt

    present = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v]
    if not present:
        return ""
    lo, hi = min(present), max(present)
    spark = []
    for v in values:
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and v == v):
            spark.append(" ")
        elif hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-300):
            spark.append(SPARKS[3])
        else:
            spark.append(SPARKS[min(len(SPARKS) - 1, int((v - lo) / (hi - lo) * len(SPARKS)))])
    last = next(v for v in reversed(values) if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v)
    return "".join(spark) + " " + _fmt(float(last) if isinstance(last, float) else last)


def _check_plot(path: str) -> str:
    """--plot FILE's format (png, svg, pdf), checked before the sweep writes anything; matplotlib must import."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()
    if suffix not in (".png", ".svg", ".pdf"):
        raise InputError(f"--plot {path}: the file must end in .png, .svg or .pdf")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError("--plot needs matplotlib", "pip install 'tcli[plot]'") from None
    return suffix[1:]


def _plot_trends(path: str, kept, keys, scores, data) -> None:
    """One panel per score: one line per row (head, or pair of heads), the value against the step (or the
    checkpoint's index, labelled)."""
    import math

    import matplotlib

    fmt = _check_plot(path)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = [u for u, _ in kept]
    steps = all(u.step is not None for u in units)
    x = [u.step for u in units] if steps else list(range(1, len(units) + 1))
    items = list(data.items())
    if len(items) > PLOT_LINES and len(keys) > 2:  # pairs of heads: the strongest only

        def peak(item):
            vals = [abs(v) for v in item[1][scores[0]] if isinstance(v, (int, float)) and v == v]
            return max(vals, default=0.0)

        items = sorted(items, key=peak, reverse=True)[:PLOT_LINES]
    n = len(scores)
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
    for ax, c in zip(axes.ravel(), scores):
        for key, series in items:
            ys = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")
                  for v in series[c]]
            ax.plot(x, ys, marker="o", ms=3, lw=1, label=_key_label(keys, key))
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("step" if steps else "checkpoint")
        if not steps:
            ax.set_xticks(x, labels=[u.label for u in units], rotation=30, ha="right", fontsize=6)
        if len(items) <= PLOT_LINES:
            ax.legend(fontsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    import warnings

    with warnings.catch_warnings():  # long checkpoint names may not fit the margins: drawn all the same
        warnings.simplefilter("ignore")
        fig.tight_layout()
    from .output.render import atomic_path

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, format=fmt)
    finally:
        plt.close(fig)


def _key_label(keys, key) -> str:
    if keys == ["layer", "head"]:
        return f"{key[0]}.{key[1]}"
    if len(keys) == 5:
        return f"{key[0]} {key[1]}.{key[2]}→{key[3]}.{key[4]}"
    return " ".join(map(str, key))
