"""The ``tcli`` command line: parse strings into typed requests, run one analysis, render its Table.

Grammar of every command: ``tcli COMMAND [CHECKPOINT] [L.H ...] [options]``. Heavy imports
(numpy, safetensors, tokenizers) happen inside the commands so that ``tcli --help`` is fast.
"""

import enum
import functools
import os
import re
import sys
from pathlib import Path
from typing import Annotated, List, Literal, Optional, Tuple

import typer
from typer.core import TyperGroup

from . import __version__
from .errors import InputError, TcliError, Terminated


# typer >= 0.22 vendors click: find its exception classes through typer's own
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineErrors(TyperGroup):
    """Usage errors (unknown option, bad choice, missing value) as one ``tcli: error:`` line on stderr,
    exit 2, like every other input error; ``tcli`` alone still prints the help."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # plain `tcli`: the help
                exc.show()
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} -h)" if ctx is not None else ""
            message = exc.format_message().replace("Value error, ", "")  # typer's pydantic wording
            print(f"tcli: error: {message}{hint}", file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:
            print("tcli: interrupted", file=sys.stderr)
            sys.exit(130)
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    name="tcli", cls=OneLineErrors, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    help="Interpretable tables from the weights of transformer checkpoints (Elhage et al., 2021).\n\n"
         "Every command: tcli COMMAND [CHECKPOINT] [L.H ...] [options]. CHECKPOINT is a folder, a .safetensors "
         "file or a Hugging Face model id in the local cache (org/name[@revision]). Without one the bundled "
         "sample in sample_weights/ is used (each command's --help names it).",
)

HEAD = re.compile(r"^(\d+)\.(\d+)$")
# what a head typed another way looks like: L0H3, l0.h3, 0:3, 0-3, 0_3, layer0head3, 0,3
LOOSE_HEAD = re.compile(r"^(?:l|layer)?\s*\d+\s*(?:[.:,/_-]\s*(?:h|head)?|h|head)\s*\d+$", re.IGNORECASE)


def choices(name: str, values: tuple[str, ...]):
    """A str Enum, for repeatable options whose values typer shows and completes (typer takes
    ``Literal`` only for single values)."""
    return enum.Enum(name, {v: v for v in values}, type=str)


Kind = choices("Kind", ("q", "k", "v"))
Side = choices("Side", ("out", "in", "gate"))

# ---------------------------------------------------------------- shared options
def complete_heads(ctx: typer.Context, incomplete: str) -> list[str]:
    """Shell completion of L.H head names, for the checkpoint already on the line (else the sample)."""
    try:
        from .checkpoint import open_checkpoint, resolve_default

        words = [w for w in (ctx.params.get("words") or []) if not HEAD.match(w)]
        cfg = open_checkpoint(words[0] if words else resolve_default()).config
        names = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(cfg.n_heads)]
        return [n for n in names if n.startswith(incomplete)]
    except Exception:  # completion must never fail loudly
        return []


Target = Annotated[Optional[List[str]], typer.Argument(
    help="[CHECKPOINT] [L.H ...]: a checkpoint directory or .safetensors file (omitted: the bundled sample), "
         "then heads as LAYER.HEAD, e.g. 1.3", show_default=False, metavar="[CHECKPOINT] [L.H ...]",
    autocompletion=complete_heads)]
Arch = Annotated[Optional[Path], typer.Option("--arch", help="Family YAML describing a custom tensor layout.")]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Model ids: branch, tag or commit in the "
                                                "local Hugging Face cache.")]
CacheDir = Annotated[Optional[Path], typer.Option("--cache-dir", help="Model ids: the Hugging Face hub cache "
                                                  "folder (default: $HF_HUB_CACHE, $HF_HOME/hub, …).")]
Raw = Annotated[bool, typer.Option("--raw", help="No weight processing (no LayerNorm folding or centering).")]
DType = Annotated[Literal["float32", "float64"], typer.Option("--dtype", help="Computation dtype.")]
Fmt = Annotated[Optional[Literal["table", "csv", "tsv", "json", "jsonl"]], typer.Option(
    "--format", "-f", help="Output format (default: table on a terminal, tsv when piped).", show_default=False)]
Out = Annotated[Optional[str], typer.Option("--output", "-o", help="Write to FILE (atomically); format from "
                                            "its extension unless --format is given.")]
Csv = Annotated[bool, typer.Option("--csv", help="Same as --format csv.")]
Tsv = Annotated[bool, typer.Option("--tsv", help="Same as --format tsv.")]
Json = Annotated[bool, typer.Option("--json", help="Same as --format json.")]
Nl = Annotated[bool, typer.Option("--nl", help="Same as --format jsonl (JSON lines).")]
NoHeaders = Annotated[bool, typer.Option("--no-headers", help="Omit the header row (csv, tsv).")]
Columns = Annotated[Optional[str], typer.Option("--columns", help="Only these columns, in this order: "
                                                "a,b,c.", show_default=False)]
Sort = Annotated[Optional[str], typer.Option("--sort", help="Sort the rows by COL (ascending; -COL: "
                                             "descending; missing values last).", show_default=False)]
Device = Annotated[str, typer.Option("--device", help="Where the streamed matrix products run: cpu (numpy), "
                                      "cuda, cuda:N, auto (cuda if visible) or torch:cpu; needs "
                                      "pip install 'tcli[gpu]' for all but cpu.")]
Limit = Annotated[Optional[int], typer.Option("--limit", help="Only the first N rows (after --sort).",
                                              show_default=False)]
Top = Annotated[int, typer.Option("--top", "-k", help="Entries per row (per-row modes).")]
RowTop = Annotated[Optional[int], typer.Option("--top", "-k", help="Entries per row, with --token or --all "
                                               "(default 10).", show_default=False)]
Tokens = Annotated[Optional[List[str]], typer.Option("--token", "-t", help="Row token: text (' the') or id "
                                                     "(#464). Repeatable.")]
AllRows = Annotated[bool, typer.Option("--all", help="Every row of the matrix.")]
Global = Annotated[Optional[int], typer.Option("--global", help="The N largest entries of the whole matrix "
                                               "(the default mode, with N = 30).")]
Bottom = Annotated[bool, typer.Option("--bottom", help="Rank the most negative entries instead.")]
Plot = Annotated[Optional[str], typer.Option("--plot", help="Also draw the figure into FILE.png, .svg or .pdf "
                                             "(needs matplotlib: pip install 'tcli[plot]').")]
AllHeads = Annotated[bool, typer.Option("--all-heads", help="Every head of the model.")]
Minus = Annotated[Optional[str], typer.Option("--minus", help="Difference with CHECKPOINT2 (same vocabulary): "
                                              "circuits M_A - M_B; census tables joined by their keys, with "
                                              "delta_* columns.", metavar="CHECKPOINT2", show_default=False)]
Workers = Annotated[Optional[int], typer.Option("--workers", help="Run the independent units (the checkpoints "
                                                "of a sweep) on a local Dask cluster of N worker processes "
                                                "(pip install 'tcli[distributed]').", show_default=False)]
Scheduler = Annotated[Optional[str], typer.Option("--scheduler", help="Run them on an existing Dask cluster: "
                                                  "its scheduler's address (tcp://host:8786).",
                                                  show_default=False)]
Diagonal = Annotated[bool, typer.Option("--diagonal", help="Per row token t: M[t, t] and its rank in row t "
                                        "(every row, or the --token rows); a note gives the share at rank 1.")]


CIRCUIT_COMMANDS = ("bigram", "ov", "qk", "skiptrigram", "spectrum", "heads", "compose")


class Options:
    """What every command shares: the checkpoint, processing and output choices."""

    def __init__(self, target, arch, raw, dtype, fmt, out, csv, tsv, json, nl, no_headers, sample,
                 revision=None, cache_dir=None, columns=None, sort=None, limit=None, command="", heads=True,
                 page=False, minus=None, workers=None, scheduler=None):
        from .output.render import choose_format

        flags = [f for f, on in (("csv", csv), ("tsv", tsv), ("json", json), ("jsonl", nl)) if on]
        if len(flags) > 1 or (flags and fmt and fmt != flags[0]):
            raise InputError("choose one output format", "--format, --csv, --tsv, --json or --nl")
        if page:
            self.fmt = "html"
            _page_options(command, fmt or (flags[0] if flags else None), out, columns, sort, limit, no_headers)
        else:
            self.fmt = choose_format(fmt or (flags[0] if flags else None), out)
        self.out, self.headers = out, not no_headers
        self.columns = [c.strip() for c in columns.split(",") if c.strip()] if columns else None
        self.sort, self.limit = sort, limit
        self.dtype, self.raw, self.arch = dtype, raw, arch
        self.revision, self.cache_dir = revision, cache_dir
        self.checkpoints, self.heads = split_target(target or [])
        self.checkpoint = self.checkpoints[0] if self.checkpoints else None
        self.command = command
        self.minus, self._minus = minus, {}  # --minus CHECKPOINT2; its loaded weights (shared by a sweep's units)
        self.workers, self.scheduler = workers, scheduler
        self.device = "cpu"
        self.sink = None  # in a sweep: where render() hands each checkpoint's table (tcli/sweep.py)
        self.units = None  # a sweep's checkpoints (tcli/sweep.py Unit), when several are given
        if len(self.checkpoints) > 1 or (revision is not None and "," in revision):
            from .sweep import expand

            self.units = expand(self.checkpoints, revision)
        if self.heads and not heads:
            raise InputError(f"{command} takes no heads (got {len(self.heads)}: "
                             f"{' '.join(f'{l}.{h}' for l, h in self.heads)})")
        self.sample = sample
        self.keep_logits = False  # decompose/lens: logits equal to the unprocessed model's
        self.notes: list[str] = []  # said on stderr once the analysis has passed its input checks
        self._loaded = None

    def load(self):
        """(checkpoint, processed weights, vocab), loaded once."""
        if self._loaded is None:
            import numpy as np

            from .checkpoint import open_checkpoint, resolve_default
            from .checkpoint.tokens import Vocab
            from .processing import process

            ckpt = open_checkpoint(self.checkpoint or resolve_default(self.sample), self.arch, self.revision,
                                   self.cache_dir)
            weights = process(ckpt.weights(np.dtype(self.dtype)), enabled=not self.raw,
                              center_unembed=not self.keep_logits)
            self._loaded = ckpt, weights, Vocab(ckpt.config.d_vocab, ckpt.tokenizer_path)
            if self.command in CIRCUIT_COMMANDS:  # what weight circuits leave out for this family (stderr)
                self.notes += [f"circuits: {n}" for n in weights.notes]
        return self._loaded

    def load_minus(self):
        """(checkpoint, processed weights, vocab) of ``--minus CHECKPOINT2``, processed as the first checkpoint
        is; exit 2 naming the first differing token id unless both share the vocabulary."""
        if not self.minus:
            raise InputError("no --minus CHECKPOINT2 given")
        _, _, vocab = self.load()
        key = (self.keep_logits, self.dtype, self.raw)
        if self._minus.get("key") != key:
            import numpy as np

            from .checkpoint import open_checkpoint
            from .checkpoint.tokens import Vocab
            from .processing import process

            ckpt = open_checkpoint(self.minus, self.arch, None, self.cache_dir)
            weights = process(ckpt.weights(np.dtype(self.dtype)), enabled=not self.raw,
                              center_unembed=not self.keep_logits)
            self._minus.clear()
            self._minus.update(key=key, loaded=(ckpt, weights, Vocab(ckpt.config.d_vocab, ckpt.tokenizer_path)))
        from .analyses.diff import check_vocab

        loaded = self._minus["loaded"]
        note = check_vocab(vocab, loaded[2], self.checkpoint or "the first checkpoint", self.minus)
        if note and note not in self.notes:
            self.notes.append(note)
        return loaded

    def map_units(self, fn, units):
        """``fn(unit)`` for each unit, in order: on the Dask cluster of --workers/--scheduler if given, else
        here (tcli/distributed.py). ``fn`` and the units must pickle (a module-level function)."""
        from .distributed import map_units

        self.distributed_used = True
        return map_units(fn, units, self.workers, self.scheduler)

    def bound(self, unit, sink=None, local: bool = True):
        """A copy of these options for one checkpoint of a sweep; its render() goes to ``sink``. ``local``:
        it runs in this process (else on a Dask worker: its own units run there, sequentially)."""
        import copy

        o = copy.copy(self)
        o.checkpoint, o.checkpoints, o.revision, o.units = unit.path, [unit.path], unit.revision, None
        o.heads, o.notes, o._loaded, o.sink = list(self.heads), [], None, sink
        if not local:
            o.workers = o.scheduler = None
            o._minus = {}
        return o

    def selected_heads(self, all_heads: bool, required: bool = True):
        from .analyses.circuits import all_heads as every_head, check_heads

        _, w, _ = self.load()
        self.need_layers(1, "analyses of attention heads need")
        if all_heads:
            return every_head(w.cfg)
        if required and not self.heads:
            raise InputError("no head given", "name heads as L.H (e.g. 0.1) or pass --all-heads")
        return check_heads(w.cfg, self.heads)

    def need_layers(self, n: int, what: str) -> None:
        """An analysis that needs ``n`` layers says why it does not apply, rather than print an empty table."""
        _, w, _ = self.load()
        if w.cfg.n_layers < n:
            raise InputError(f"{what} at least {n} layer{'s' if n > 1 else ''}; this model has {w.cfg.n_layers}")

    def render(self, table, plot: str | None = None):
        if self.sink is not None:  # one checkpoint of a sweep
            return self.sink(self, table, plot)
        from .output.render import render, select

        table = select(table, self.columns, self.sort, self.limit)
        for note in self.notes:
            print(note, file=sys.stderr)
        if plot:
            from .output.mpl import save_figures

            save_figures(table.figures, plot)
        render(table, self.fmt, self.out, self.headers)


def _page_options(command, fmt, out, columns, sort, limit, no_headers) -> None:
    """A command that writes an HTML page takes none of the table options, and needs ``-o`` (or a
    redirected stdout) rather than printing HTML on a terminal."""
    from .output.render import _special

    given = [o for o, v in (("--format/--" + str(fmt), fmt), ("--columns", columns), ("--sort", sort),
                            ("--limit", limit is not None), ("--no-headers", no_headers)) if v]
    if given:
        raise InputError(f"{command} writes one HTML page: {given[0]} does not apply")
    if out is None and sys.stdout.isatty():
        raise InputError(f"{command} writes an HTML page: give -o {command}.html (or redirect stdout)")
    if out is not None and Path(out).suffix.lower() not in (".html", ".htm") and not _special(out):
        raise InputError(f"-o {out}: {command} writes HTML; end the name in .html")


def split_target(args: list[str]) -> tuple[list[str], list[tuple[int, int]]]:
    """Positional words: ``L.H`` heads, and the checkpoints (several: a sweep), in argument order."""
    checkpoints, heads = [], []
    for a in args:
        m = HEAD.match(a)
        if m and not Path(a).exists():
            heads.append((int(m.group(1)), int(m.group(2))))
        elif LOOSE_HEAD.match(a) and not Path(a).exists():
            raise InputError(f"{a!r} is not a head: write heads as LAYER.HEAD, e.g. 0.3")
        elif re.search(r"\s", a) and not Path(a).exists():
            raise InputError(f"{a!r} is not a checkpoint (no such file, and a model id has no spaces)",
                             "a prompt goes in --prompt/-p TEXT")
        else:
            checkpoints.append(a)
    return checkpoints, heads


def handle_errors(fn):
    """Map tcli errors to one stderr line and exit code 2 (input) or 1 (internal); no tracebacks."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            import numpy as np

            with np.errstate(over="raise", invalid="raise"):  # inf/NaN never reach a ranking
                return fn(*args, **kwargs)
        except FloatingPointError as exc:
            print(f"tcli: error: the computation overflowed ({exc}): the weights are too large for "
                  "float32 (try --dtype float64)", file=sys.stderr)
            raise typer.Exit(2) from None
        except TcliError as exc:
            print(f"tcli: error: {exc}", file=sys.stderr)
            raise typer.Exit(exc.exit_code) from None
        except typer.Exit:
            raise
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            print("tcli: interrupted", file=sys.stderr)
            raise typer.Exit(130) from None
        except Terminated as exc:
            import signal

            print(f"tcli: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
            raise typer.Exit(128 + exc.signum) from None
        except MemoryError:
            print("tcli: error: out of memory (try a smaller --top, fewer heads, or float32)", file=sys.stderr)
            raise typer.Exit(1) from None
        except Exception as exc:
            if os.environ.get("TCLI_DEBUG"):
                raise
            print(f"tcli: internal error: {type(exc).__name__}: {exc} (set TCLI_DEBUG=1 for the traceback)",
                  file=sys.stderr)
            raise typer.Exit(1) from None

    return wrapper


def common(sample: str = "attn-only-1l", heads: bool = False, page: bool = False, minus: bool = False):
    """Decorator: the shared options, parsed into an ``Options`` passed as the first argument
    (``heads``: whether L.H words are accepted; ``minus``: whether --minus is). Several checkpoints: a
    sweep (tcli/sweep.py), the command run once per checkpoint."""

    def decorate(fn):
        def wrapper(words: Target = None, arch: Arch = None, revision: Revision = None, cache_dir: CacheDir = None,
                    raw: Raw = False, dtype: DType = "float32", fmt: Fmt = None, out: Out = None, csv: Csv = False,
                    tsv: Tsv = False, json: Json = False, nl: Nl = False, no_headers: NoHeaders = False,
                    columns: Columns = None, sort: Sort = None, limit: Limit = None, device: Device = "cpu",
                    minus: Minus = None, workers: Workers = None, scheduler: Scheduler = None, **kwargs):
            from .core import device as engine

            engine.use(device)
            opts = Options(words, arch, raw, dtype, fmt, out, csv, tsv, json, nl, no_headers, sample, revision,
                           cache_dir, columns, sort, limit, fn.__name__, heads, page, minus, workers, scheduler)
            opts.device = device
            if workers is not None or scheduler is not None:
                from .distributed import check_flags

                check_flags(workers, scheduler)
            if opts.units is not None:
                from .sweep import run_sweep

                return run_sweep(fn, opts, kwargs)
            result = fn(opts, **kwargs)
            if (workers is not None or scheduler is not None) and not getattr(opts, "distributed_used", False):
                print(f"note: --workers/--scheduler: {fn.__name__} on one checkpoint has nothing to distribute "
                      "(it ran here)", file=sys.stderr)
            return result

        import inspect

        shared = [p for p in list(inspect.signature(wrapper).parameters.values())[:-1]
                  if minus or p.name != "minus"]  # a command without --minus refuses it as an unknown option
        own = list(inspect.signature(fn).parameters.values())[1:]
        command = handle_errors(wrapper)
        command._tcli_fn = fn  # the command's own function, for a sweep's units on Dask workers (tcli/sweep.py)
        del command.__wrapped__  # typer must read the signature below
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        command.__signature__ = inspect.Signature(shared + own)
        command.__annotations__ = {p.name: p.annotation for p in shared + own}
        return command

    return decorate


def command(summary: str, examples: list[str], sample: str = "attn-only-1l", heads: bool = False,
            page: bool = False, minus: bool = False):
    """Register a command: ``summary`` for the command list, an Examples section in its help, the shared
    options (``common``)."""

    def decorate(fn):
        from .columns import TABLES, describe

        if fn.__name__ in TABLES:  # the column list comes from tcli/columns.py, as in docs/commands.md
            fn.__doc__ = fn.__doc__.rstrip() + "\n\n    " + describe(fn.__name__)
        epilog = "\b\nExamples:\n" + "\n".join(f"  {e}" for e in examples)
        return app.command(short_help=summary, epilog=epilog)(common(sample, heads, page, minus)(fn))

    return decorate


def _positive(name: str, value: int | None) -> None:
    if value is not None and value <= 0:
        raise InputError(f"{name} must be a positive integer, got {value}")


GLOBAL_MAX = 1_000_000  # --global N keeps N candidates in memory: 1e6 entries ≈ 16 MB; past that, --all streams


def _modes(tokens, all_rows: bool, global_n: int | None, k: int | None, diagonal: bool = False,
           bottom: bool = False) -> int:
    """The row modes of bigram/ov/qk exclude each other: --token, --all, --global (with -k only per row);
    --diagonal takes --token or --all (default: every row). Returns -k (default 10)."""
    _positive("--top", k)
    _positive("--global", global_n)
    if tokens and all_rows:
        raise InputError("give --token or --all, not both")
    if diagonal:
        clash = [o for o, on in (("--global", global_n is not None), ("-k/--top", k is not None),
                                 ("--bottom", bottom)) if on]
        if clash:
            raise InputError(f"--diagonal gives one entry per row (M[t, t] and its rank): {clash[0]} does not apply")
        return 1
    if global_n is not None and global_n > GLOBAL_MAX:
        raise InputError(f"--global {global_n} is past the limit of {GLOBAL_MAX:,} entries (the selection is held "
                         "in memory)", "stream every row with --all -k K instead")
    if global_n is not None and (tokens or all_rows):
        other = "--token" if tokens else "--all"
        raise InputError(f"--global ranks the whole matrix: it does not combine with {other}")
    if k is not None and not (tokens or all_rows):
        raise InputError("-k/--top is the number of entries per row: use it with --token or --all "
                         "(--global N sets the number of entries overall)")
    return 10 if k is None else k


def _request(opts: Options, tokens, all_rows: bool, global_n: int | None, k: int | None, bottom: bool = False,
             diagonal: bool = False, row_id=None):
    """The one row request of bigram/ov/qk (``core.stream.Request``), built from the mode options.
    ``row_id``: text -> row id (default: the vocabulary's token lookup; qk --positional: a position)."""
    from .core.stream import Request

    k = _modes(tokens, all_rows, global_n, k, diagonal, bottom)
    if row_id is None:
        row_id = opts.load()[2].token_id
    rows = tuple(row_id(t) for t in tokens) if tokens else None
    if diagonal:
        return Request(rows=rows, diagonal=True)
    if tokens or all_rows:
        return Request(rows=rows, k=k, bottom=bottom)
    return Request(global_n=global_n or 30, bottom=bottom)


def _minus_weights(opts: Options):
    """The processed weights of --minus CHECKPOINT2 (vocabulary checked), or None."""
    return opts.load_minus()[1] if opts.minus else None


def _via(text: str | None, option: str) -> tuple[int, int] | None:
    """A path option's head, LAYER.HEAD."""
    if text is None:
        return None
    m = HEAD.match(text.strip())
    if not m:
        raise InputError(f"{option} {text!r} is not a head: write it as LAYER.HEAD, e.g. 0.3")
    return int(m.group(1)), int(m.group(2))


def _progress_total(opts, request, n_units: int = 1) -> int:
    _, w, _ = opts.load()
    return (w.cfg.d_vocab if request.rows is None else len(request.rows)) * n_units


# ---------------------------------------------------------------- commands
@command("Family, dimensions and processing of a checkpoint.",
         ['tcli info',
          'tcli info path/to/model --json',
          'tcli info path/to/model --tensors'])
def info(opts: Options, tensors: Annotated[bool, typer.Option("--tensors", help="List tensor names, "
                                                              "shapes and dtypes.")] = False):
    """Family, dimensions, norm/positional/activation kinds, dtype, processing, tokenizer, parameters.

    Default checkpoint: attn-only-1l."""
    from .analyses.info import info_table, tensors_table

    ckpt, w, _ = opts.load()
    opts.render(tensors_table(ckpt) if tensors else info_table(ckpt, w))


@command("Direct path W_E W_U: the bigram logits.",
         ['tcli bigram',
          'tcli bigram --global 50 --csv > bigrams.csv',
          "tcli bigram -t ' the' -t '#464' -k 5",
          'tcli bigram --all -k 3 -o bigrams.tsv',
          'tcli bigram --diagonal --sort row_rank --limit 10',
          'tcli bigram finetuned/ --minus base/ --global 20'], sample="attn-only-0l", minus=True)
def bigram(opts: Options, k: RowTop = None, token: Tokens = None, all_rows: AllRows = False, global_n: Global = None,
           bottom: Bottom = False, diagonal: Diagonal = False):
    """Direct path W_E W_U: which next tokens each token promotes (logits).

    Rows are the current token (src), columns the next-token logit (dst). Default: the 30 largest
    entries overall (--global); --token/--all give the top -k per row. Default checkpoint:
    attn-only-0l (the zero-layer model, whose direct path is its bigram table)."""
    from .analyses.ranked import bigram as run
    from .output.progress import progress

    request = _request(opts, token, all_rows, global_n, k, bottom, diagonal)
    _, w, vocab = opts.load()
    with progress(_progress_total(opts, request), "direct path") as advance:
        opts.render(run(w, vocab, request, advance, _minus_weights(opts)))


@command("Full OV circuits: which logits an attended token raises.",
         ['tcli ov 0.3',
          'tcli ov --all-heads --global 20',
          "tcli ov 0.3 -t ' the' -k 5 --json",
          'tcli ov sample_weights/attn-only-2l 1.0 --via 0.5 --all -k 5 -o virtual.tsv',
          'tcli ov 0.3 --diagonal --sort row_rank --limit 20'], heads=True, minus=True)
def ov(opts: Options, k: RowTop = None, token: Tokens = None, all_rows: AllRows = False, global_n: Global = None,
       bottom: Bottom = False, all_heads: AllHeads = False, diagonal: Diagonal = False,
       via: Annotated[Optional[str], typer.Option("--via", metavar="L.H", help="The virtual OV circuit through "
                                                  "an earlier head: W_E W_OV^via W_OV W_U (V-composition).",
                                                  show_default=False)] = None):
    """Full OV circuit W_E W_V W_O W_U of heads: which logits each attended token raises.

    Rows are the attended (source) token, columns the output logit. Default checkpoint: attn-only-1l."""
    from .analyses.ranked import ov as run
    from .output.progress import progress

    path = _via(via, "--via")
    heads = _later(opts, opts.selected_heads(all_heads), path, all_heads)
    request = _request(opts, token, all_rows, global_n, k, bottom, diagonal)
    _, w, vocab = opts.load()
    with progress(_progress_total(opts, request, len(heads)), "OV circuits") as advance:
        if _distributed(opts):
            opts.render(_by_unit(opts, "ov", heads, request, path))
        else:
            opts.render(run(w, vocab, heads, request, path, advance, _minus_weights(opts)))


@command("Full QK circuits: which keys a query token attends to.",
         ['tcli qk 0.3',
          "tcli qk 0.3 -t ' the' -k 5",
          'tcli qk 0.3 --positional --global 10',
          'tcli qk sample_weights/attn-only-2l 1.0 --key-via 0.5 --diagonal -o induction.tsv'], heads=True,
         minus=True)
def qk(opts: Options, k: RowTop = None, token: Tokens = None, all_rows: AllRows = False, global_n: Global = None,
       bottom: Bottom = False, all_heads: AllHeads = False,
       positional: Annotated[bool, typer.Option("--positional", help="W_pos W_QK W_pos^T (learned positions); "
                                                "rows/cols are positions, --token takes #POSITION.")] = False,
       offset: Annotated[int, typer.Option("--offset", help="Rotary models: keys N positions before the "
                                           "query.")] = 0,
       scaled: Annotated[bool, typer.Option("--scaled", help="Scale scores as the model does "
                                                                    "(1/sqrt(d_head), unless its config says "
                                                                    "otherwise).")] = False,
       diagonal: Diagonal = False,
       key_via: Annotated[Optional[str], typer.Option("--key-via", metavar="L.H", help="The K-composition term "
                                                      "through an earlier head: columns = the token it moves into "
                                                      "the key.", show_default=False)] = None,
       query_via: Annotated[Optional[str], typer.Option("--query-via", metavar="L.H", help="The Q-composition "
                                                        "term: rows = the token the earlier head moves into the "
                                                        "query.", show_default=False)] = None):
    """Full QK circuit W_E W_Q W_K^T W_E^T of heads: which key tokens each query token attends to.

    Rows are the query (destination) token, columns the key (source) token, values raw attention
    scores. Default checkpoint: attn-only-1l."""
    from .analyses.ranked import qk as run
    from .output.progress import progress

    if key_via and query_via:
        raise InputError("give --key-via or --query-via, not both (one composition term at a time)")
    kv, qv = _via(key_via, "--key-via"), _via(query_via, "--query-via")
    if positional and (kv or qv or diagonal):
        raise InputError(f"--positional is the position circuit: {'--diagonal' if diagonal else 'a path option'} "
                         "does not apply")
    heads = _later(opts, opts.selected_heads(all_heads), kv or qv, all_heads)
    _, w, vocab = opts.load()
    position = (lambda t: _position(t, w.cfg.n_ctx)) if positional else None
    request = _request(opts, token, all_rows, global_n, k, bottom, diagonal, position)
    if offset < 0:
        raise InputError("--offset must be 0 or more (keys come before the query)")
    with progress(0 if positional else _progress_total(opts, request, len(heads)), "QK circuits") as advance:
        if _distributed(opts):
            opts.render(_by_unit(opts, "qk", heads, request, offset, scaled, positional, kv, qv))
        else:
            opts.render(run(w, vocab, heads, request, offset, scaled, positional, kv, qv, advance,
                            _minus_weights(opts)))


def _run_unit(name: str, args: tuple, kwargs: dict, opts: Options, unit):
    """One unit of ov/qk (a head) or neurons --all (a (side, layer)) as a Dask task: the analysis on that
    unit alone, every chunk computed (picklable)."""
    import numpy as np

    from .analyses import neurons, ranked
    from .core import device as engine

    engine.use(opts.device)
    _, w, vocab = opts.load()
    with np.errstate(over="raise", invalid="raise"):
        if name == "neurons":
            side, layer = unit
            table = neurons.neurons(w, vocab, [(layer, None)], [side], *args, **kwargs)
        else:
            table = getattr(ranked, name)(w, vocab, [unit], *args, minus=_minus_weights(opts), **kwargs)
        table.chunks = list(table.chunks)
    return table


def _by_unit(opts: Options, name: str, units, *args, title: str | None = None, **kwargs):
    """--workers/--scheduler on one checkpoint: each unit (head of ov/qk, (side, layer) of neurons --all) one
    task on the cluster (it loads the checkpoint itself); rows in unit order, as in the single-process run
    (tested); notes merged."""
    import copy
    import functools

    from .output.table import Table

    remote = copy.copy(opts)
    remote._loaded, remote._minus, remote.notes = None, {}, []
    remote.workers = remote.scheduler = None
    tables = opts.map_units(functools.partial(_run_unit, name, args, kwargs, remote), units)
    first = next(tables)
    notes = list(first.notes)

    def chunks():
        yield from first.chunks
        for t in tables:
            notes.extend(n for n in t.notes if n not in notes)
            yield from t.chunks

    return Table(first.columns, chunks(), title=title or first.title, notes=notes, token_columns=first.token_columns)


def _distributed(opts: Options) -> bool:
    return (opts.workers is not None or opts.scheduler is not None) and opts.units is None


def _later(opts: Options, heads, via, all_heads: bool):
    """With a path option and --all-heads: the heads after the via head's layer (a note says so)."""
    if via is None or not all_heads:
        return heads
    later = [(l, h) for l, h in heads if l > via[0]]
    if not later:
        raise InputError(f"no head is in a layer after {via[0]}.{via[1]}: a path runs into a later layer")
    opts.notes.append(f"--all-heads with a path through {via[0]}.{via[1]}: the {len(later)} heads of layers "
                      f"{via[0] + 1}–{opts.load()[1].cfg.n_layers - 1}")
    return later


def _position(text: str, n_ctx: int) -> int:
    t = text.lstrip("#")
    if not re.fullmatch(r"[0-9]+", t) or int(t) >= n_ctx:
        raise InputError(f"position {text!r} must be #0 … #{n_ctx - 1}")
    return int(t)


@command("Skip-trigrams A … B → C of heads.",
         ['tcli skiptrigram 0.3',
          'tcli skiptrigram --all-heads -k 20 --csv'], heads=True)
def skiptrigram(opts: Options, k: Top = 10, token: Tokens = None, all_heads: AllHeads = False,
                all_triples: Annotated[bool, typer.Option("--all-triples", help="The plain top -k of all triples "
                                                          "(default: distinct (A, B) and (A, C) pairs).")] = False):
    """Skip-trigrams "A … B → C" of heads: B attends back to A, and A raises C.

    score = min(z_qk, z_ov), where z_qk = (QK[B, A] − mean QK) / std QK and z_ov = (OV[A, C] − mean OV) /
    std OV over the whole circuits: a skip-trigram is as strong as its weaker link (equal scores are
    ranked by the stronger link). By default every (A, B) and every (A, C) pair appears at most once (the
    best triples, skipping any whose pair was already shown): source A's i-th strongest destination is
    listed with its i-th strongest output, so one strong pair cannot fill the table. --all-triples: the
    plain top -k of all triples. Both are exact. --token restricts the source A. Default checkpoint:
    attn-only-1l."""
    from .analyses.skiptrigram import skiptrigram as run
    from .output.progress import progress

    _positive("--top", k)
    heads = opts.selected_heads(all_heads)
    _, w, vocab = opts.load()
    sources = [vocab.token_id(t) for t in token] if token else None
    total = (len(set(sources)) if sources else w.cfg.d_vocab) * len(heads)
    with progress(total, "skip-trigrams") as advance:
        opts.render(run(w, vocab, heads, k, sources, all_triples, advance))


@command("Singular values or eigenvalues of a circuit.",
         ['tcli spectrum 0.3',
          'tcli spectrum -c direct -k 10',
          'tcli spectrum --all-heads -c qk --eigen --csv',
          'tcli spectrum 0.3 --tokens -k 8 --directions 3'], heads=True)
def spectrum(opts: Options, circuit: Annotated[Literal["direct", "ov", "qk", "wov", "wqk"], typer.Option(
                 "--circuit", "-c", help="The circuit (see below).")] = "ov",
             k: Annotated[Optional[int], typer.Option("--top", "-k", help="Only the first K values.")] = None,
             eigen: Annotated[bool, typer.Option("--eigen", help="Eigenvalues instead of singular values.")] = False,
             all_heads: AllHeads = False, plot: Plot = None,
             tokens: Annotated[bool, typer.Option("--tokens", help="The tokens of the top singular directions: "
                                                  "-k K tokens (default 10) of each left and right singular vector "
                                                  "(ov, qk, direct).")] = False,
             directions: Annotated[Optional[int], typer.Option("--directions", help="With --tokens: this many "
                                                               "singular directions (default 5).",
                                                               show_default=False)] = None):
    """Singular values (or eigenvalues) of a circuit, exact from its factors.

    Circuits: direct (W_E W_U), ov (W_E W_OV W_U), qk (W_E W_QK W_E^T), wov (W_V W_O), wqk (W_Q W_K^T).
    --tokens: for each of the top --directions singular values, the -k tokens with the largest entries
    of its left (rows') and right (columns') singular vectors, signs fixed so that the largest |entry|
    of the left vector is positive.
    Effective rank and top-5 variance share are
    printed as notes. Default checkpoint: attn-only-1l (--all-heads when no head is named)."""
    from .analyses.spectrum import singular_directions, spectrum as run

    _positive("--top", k)
    _positive("--directions", directions)
    if tokens and eigen:
        raise InputError("--tokens lists singular directions: it does not combine with --eigen")
    if directions is not None and not tokens:
        raise InputError("--directions goes with --tokens")
    if circuit == "direct" and (opts.heads or all_heads):
        raise InputError("--circuit direct (W_E W_U) has no heads: drop the heads / --all-heads")
    heads = [] if circuit == "direct" else opts.selected_heads(all_heads or not opts.heads)
    _, w, vocab = opts.load()
    if tokens:
        if plot:
            raise InputError("--plot draws the spectrum: it does not combine with --tokens")
        opts.render(singular_directions(w, vocab, circuit, heads, directions or 5, k or 10))
        return
    opts.render(run(w, circuit, heads, k, eigen), plot)


@command("Head census: copying, norms, spectra, behaviour.",
         ['tcli heads',
          'tcli heads --sort -induction_score --limit 5',
          'tcli heads --columns layer,head,copying_score --csv'], sample="attn-only-2l", minus=True)
def heads(opts: Options, no_behaviour: Annotated[bool, typer.Option("--no-behaviour", help="Skip the forward "
                                                                    "passes (behavioural columns empty).")] = False,
          no_diagonal: Annotated[bool, typer.Option("--no-diagonal", help="Skip ov_diagonal_top1 (a streamed "
                                                    "V × V pass per head).")] = False,
          plot: Plot = None):
    """Head census: copying scores, norms, spectra and behaviour, one row per head.

    Behavioural scores use seeded random tokens (see docs/commands.md). ov_diagonal_top1 is the share
    of tokens whose largest full-OV output is the token itself (exact; one streamed V × V pass per head).
    Default checkpoint: attn-only-2l."""
    from .analyses.behaviour import BATCH
    from .analyses.heads import census
    from .output.progress import progress

    _, w, _ = opts.load()
    opts.need_layers(1, "the head census needs")
    total = (0 if no_behaviour else 2 * BATCH) + (0 if no_diagonal else w.cfg.d_vocab * w.cfg.n_layers * w.cfg.n_heads)
    from .analyses.diff import minus

    with progress(total * (2 if opts.minus else 1), "head census") as advance:
        opts.render(minus(opts, "heads", census(w, not no_behaviour, advance, not no_diagonal),
                          lambda w2: census(w2, not no_behaviour, advance, not no_diagonal)), plot)


@command("Q/K/V composition scores between heads.",
         ['tcli compose',
          'tcli compose --kind k -k 10',
          'tcli compose --plot compose.png'], sample="attn-only-2l", minus=True)
def compose(opts: Options, kind: Annotated[Optional[List[Kind]], typer.Option("--kind", help="Repeatable; "
                                                                              "default all.")] = None,
            k: Annotated[Optional[int], typer.Option("--top", "-k", help="Only the K strongest pairs.")] = None,
            plot: Plot = None):
    """Q/K/V composition scores ‖A B‖_F / (‖A‖_F ‖B‖_F) for every pair of heads across layers.

    A = W_OV of the earlier head; B = W_QK (q), W_QK^T (k) or W_OV (v) of the later head. Ranked by
    score, with a seeded random baseline beside each. Default checkpoint: attn-only-2l."""
    from .analyses.compose import compose as run

    _positive("--top", k)
    kinds = tuple(dict.fromkeys(x.value for x in kind)) if kind else ("q", "k", "v")
    _, w, _ = opts.load()
    opts.need_layers(2, "composition (between heads of different layers) needs")
    from .analyses.diff import minus

    opts.render(minus(opts, "compose", run(w, kinds, k), lambda w2: run(w2, kinds, None)), plot)


Prompt = Annotated[Optional[str], typer.Option("--prompt", "-p", help="Prompt text, encoded with the "
                                              "checkpoint's tokenizer.")]
Ids = Annotated[Optional[str], typer.Option("--ids", help="Prompt as token ids: 1,2,3.")]


def _prompt(opts: Options, prompt: str | None, ids: str | None) -> list[int]:
    _, _, vocab = opts.load()
    if (prompt is None) == (ids is None):
        raise InputError("give the prompt with --prompt TEXT or --ids 1,2,3 (one of them)")
    if ids is not None:
        return vocab.parse_ids(ids)
    tokens = vocab.encode(prompt, specials=True)
    if vocab.added:
        shown = ", ".join(f"{t} at {i}" for i, t in vocab.added)
        opts.notes.append(f"note: the tokenizer added special tokens as for one input: {shown} "
                          "(--ids gives exact ids)")
    return tokens


@command("Direct logit attribution of one logit on a prompt.",
         ["tcli decompose -p 'To be, or not to'",
          "tcli decompose -p 'To be, or not to' --target ' be' --csv",
          "tcli decompose --ids 1,2,3 --diff ' the' ' a'"], sample="gpt2-2l")
def decompose(opts: Options, prompt: Prompt = None, ids: Ids = None,
              position: Annotated[int, typer.Option("--position", help="Position to explain (-1: the last).")] = -1,
              target: Annotated[Optional[str], typer.Option("--target", help="Target token (text or #id); "
                                                            "default: the model's top prediction.")] = None,
              diff: Annotated[Optional[Tuple[str, str]], typer.Option("--diff", help="Explain logit(A) - "
                                                                      "logit(B).")] = None,
              neurons: Annotated[Optional[int], typer.Option("--neurons", help="Split each MLP into its N "
                                                             "strongest neurons and an mlp_rest row.",
                                                             show_default=False)] = None):
    """Direct logit attribution: split a logit at a position into what each part of the model wrote.

    Components: embed, pos_embed, head (layer, head), attn_bias, mlp, norm_bias, unembed_bias (BERT adds
    token_type_embed; mixture-of-experts layers give one expert row per expert that fired, plus
    shared_expert, instead of mlp); each norm's scale is frozen from the real forward pass; the last row, total,
    equals the model's logit (the unprocessed model's: no unembedding centring). Default checkpoint: gpt2-2l."""
    from .analyses.residual import check_prompt, decompose as run_decompose

    opts.keep_logits = True
    _, w, vocab = opts.load()
    tokens = check_prompt(w.cfg, _prompt(opts, prompt, ids))
    if target is not None and diff is not None:
        raise InputError("give --target or --diff, not both")
    if diff is not None:
        a, b = vocab.token_id(diff[0]), vocab.token_id(diff[1])
    elif target is not None:
        a, b = vocab.token_id(target), None
    else:
        a, b = None, None  # the model's top prediction
    _positive("--neurons", neurons)
    opts.render(run_decompose(w, vocab, tokens, position, a, b, neurons))


@command("Logit lens: top tokens of the residual after each layer.",
         ["tcli lens -p 'To be, or not to'",
          "tcli lens -p 'To be, or not to' --position -1 -k 3 --json"], sample="gpt2-2l")
def lens(opts: Options, prompt: Prompt = None, ids: Ids = None, k: Top = 5,
         position: Annotated[Optional[int], typer.Option("--position", help="One position (-1: the last); "
                                                         "default: all.")] = None):
    """Logit lens: the top tokens decoded from the residual stream after each layer.

    Each layer's residual goes through the final norm computed on that residual itself (not the last
    layer's scale), then the unembedding. Layer -1 is the embeddings. Default checkpoint: gpt2-2l."""
    from .analyses.residual import lens as run_lens

    _positive("--top", k)
    opts.keep_logits = True
    _, w, vocab = opts.load()
    opts.render(run_lens(w, vocab, _prompt(opts, prompt, ids), k, position))


@command("Attention patterns of heads on a prompt.",
         ["tcli attention -p 'To be, or not to be'",
          "tcli attention 1.2 -p 'To be, or not to be' -k 1",
          "tcli attention -p 'To be' --plot attn.png"], sample="attn-only-2l", heads=True)
def attention(opts: Options, prompt: Prompt = None, ids: Ids = None, k: Top = 3,
              head: Annotated[Optional[List[str]], typer.Option("--head", help="L.H (repeatable); default: "
                                                                "the heads given as arguments, else all.")] = None,
              position: Annotated[Optional[int], typer.Option("--position", help="One destination position "
                                                              "(-1: the last); default: all.")] = None,
              plot: Plot = None):
    """Attention patterns on a prompt: the top -k source positions of each destination, per head.

    Default checkpoint: attn-only-2l."""
    from .analyses.residual import attention as run_attention

    _positive("--top", k)
    for h in head or []:
        m = HEAD.match(h)
        if not m:
            raise InputError(f"--head {h!r}: write heads as LAYER.HEAD, e.g. 1.3")
        opts.heads.append((int(m.group(1)), int(m.group(2))))
    heads = opts.selected_heads(all_heads=not opts.heads)
    _, w, vocab = opts.load()
    opts.render(run_attention(w, vocab, _prompt(opts, prompt, ids), heads, k, position), plot)


@command("FFN neurons in vocabulary space.",
         ['tcli neurons',
          'tcli neurons 0.17 1.3 -k 5',
          'tcli neurons --layer 1 --all --side in --csv'], sample="gpt2-2l", heads=True,
         minus=True)
def neurons(opts: Options, k: Top = 10,
            layer: Annotated[Optional[List[int]], typer.Option("--layer", help="A whole layer (repeatable): "
                                                               "its census, or with --all every neuron.")] = None,
            side: Annotated[Optional[List[Side]], typer.Option("--side", help="out (W_out[n] W_U, default), in "
                                                              "(W_E W_in[:, n]) or gate (W_E W_gate[:, n]); "
                                                              "repeatable.")] = None,
            all_rows: Annotated[bool, typer.Option("--all", help="Every neuron of the --layer layers (default: "
                                                   "every layer), top -k tokens each.")] = False,
            bottom: Bottom = False):
    """FFN neurons in vocabulary space: what each neuron writes (out) or reads from the embedding (in, gate).

    Neurons are L.N words (layer.neuron): the top -k tokens of each. --all: every neuron of the --layer
    layers, streamed. Otherwise a census: one row per neuron, the -k most token-like per layer, by the
    z-score of its top logit over its own row (exact). in/gate are the direct-path part of the input only
    (docs/commands.md, neurons). Default checkpoint: gpt2-2l."""
    from .analyses import neurons as nr
    from .output.progress import progress

    _positive("--top", k)
    _, w, vocab = opts.load()
    cfg = w.cfg
    sides = nr.check_sides(cfg, [x.value for x in side or []])
    if opts.heads and (layer or all_rows):
        raise InputError("name neurons as L.N, or select whole layers with --layer (and --all), not both")
    if opts.minus and (opts.heads or all_rows):
        raise InputError("--minus with neurons joins the census (one row per neuron): drop the L.N words / --all")
    if opts.heads:
        selected = nr.check_neurons(cfg, opts.heads)
        with progress(0, "neurons") as advance:
            opts.render(nr.neurons(w, vocab, selected, sides, k, bottom, advance))
        return
    layers = nr.check_layers(cfg, layer if layer else range(cfg.n_layers))
    total = len(sides) * len(layers) * cfg.d_mlp
    with progress(total, "neurons" if all_rows else "neuron census") as advance:
        if all_rows and _distributed(opts):
            whole = nr.neurons(w, vocab, [(l, None) for l in layers], sides, k, bottom)  # its title (lazy chunks)
            opts.render(_by_unit(opts, "neurons", [(s, l) for s in sides for l in layers], k, bottom,
                                 title=whole.title))
        elif all_rows:
            opts.render(nr.neurons(w, vocab, [(l, None) for l in layers], sides, k, bottom, advance))
        else:
            from .analyses.diff import minus

            opts.render(minus(opts, "neurons", nr.census(w, vocab, layers, sides, k, bottom, advance),
                              lambda w2: nr.census(w2, vocab, layers, sides, w2.cfg.d_mlp, bottom)))


@command("One self-contained HTML page about a model.",
         ['tcli report -o report.html',
          'tcli report path/to/model --no-behaviour -o model.html',
          'tcli report --heads 0.1,1.4 -o heads.html'], sample="attn-only-2l", page=True)
def report(opts: Options, no_behaviour: Annotated[bool, typer.Option("--no-behaviour", help="Skip the forward "
                                                                     "passes of the census.")] = False,
           heads: Annotated[Optional[List[str]], typer.Option(
               "--heads", help="The heads to detail, LAYER.HEAD separated by commas or spaces (0.1,1.4); "
               "repeatable. Default: the top heads of each census score (the page states the rule).",
               show_default=False, metavar="L.H,...")] = None):
    """One self-contained HTML page for a quick look at a model (-o report.html, or stdout when redirected).

    Info, the head census, spectra, composition heatmaps, the strongest bigrams and OV/QK entries of
    a few heads: those of --heads, else the two highest on each census score (copying, induction,
    previous-token, OV and QK Frobenius norm). Data inline, no external scripts: it works offline.
    Default checkpoint: attn-only-2l."""
    from .analyses.report import report as run_report
    from .output.render import atomic_write

    chosen = None
    if heads is not None:
        chosen = []
        for word in (x for h in heads for x in re.split(r"[\s,]+", h) if x):
            m = HEAD.match(word)
            if not m:
                raise InputError(f"--heads {word!r} is not a head: write heads as LAYER.HEAD, e.g. 0.1,1.4")
            chosen.append((int(m.group(1)), int(m.group(2))))
        if not chosen:
            raise InputError("--heads is empty: write heads as LAYER.HEAD, e.g. 0.1,1.4")
    ckpt, w, vocab = opts.load()
    page = run_report(w, vocab, ckpt, behaviour=not no_behaviour, heads=chosen)
    if opts.out:
        atomic_write(opts.out, lambda fh: fh.write(page))
    else:
        sys.stdout.write(page)


def _version(value: bool):
    if value:
        print(f"tcli {__version__}")
        raise typer.Exit()


@app.callback()
def root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                               help="Print the version and exit.")] = False,
         debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of internal errors.")] = False):
    """Interpretable tables from the weights of transformer checkpoints."""
    if debug:
        os.environ["TCLI_DEBUG"] = "1"


def main():
    # OpenBLAS threads spin for a while after each GEMM, taking the core that the parallel top-k
    # selection needs next (measured: selection of a [1334, 50304] block 72 → 37 ms with 2 cores once
    # they sleep at once). Read when numpy loads, which happens later, inside the commands.
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    app(prog_name="tcli")
