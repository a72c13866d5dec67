"""``bigram``, ``ov``, ``qk``: ranked entries of a vocab × vocab circuit, streamed over row blocks.

One ``core.stream.Request`` says what to take: per row (the k best columns of each selected row),
global (the n best entries of the whole matrix) or diagonal (M[t, t] and its rank in row t);
``bottom`` ranks the most negative entries instead. Path circuits (``--via``, ``--key-via``,
``--query-via``, SPEC 3c) are other factor pairs of the same shapes (``circuits``).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..core.factored import Factored
from ..core.stream import Request, ranked, select_topk
from ..output.table import Table
from . import circuits
from .. import columns

BIGRAM_COLUMNS, OV_COLUMNS, QK_COLUMNS = columns.BIGRAM, columns.OV, columns.QK


def _columns(plain: list[str], diagonal_cols: list[str], request: Request, path: bool, minus=None) -> list[str]:
    cols = diagonal_cols if request.diagonal else plain
    cols = columns.via(cols) if path else cols
    return cols + ["value_a", "value_b"] if minus is not None else cols


def ranked_chunks(F, names: tuple[str, str, str, str], strings, request: Request,
                  fixed: dict | None = None, progress: Callable[[int], None] | None = None, row_map=None,
                  notes: list | None = None, what: str = "") -> Iterator[dict]:
    """Chunks of (row id, row token, rank, col id, col token, value) for the entries of F that
    ``request`` selects; diagonal mode: (token_id, token, value, row_rank), and a note appended to
    ``notes`` once the rows are streamed (share of rows whose diagonal is rank 1 / in the top 5).

    ``names`` are the four id/token column names; ``strings`` an object array of token strings
    (None: positions, no tokens); ``fixed`` extra constant columns (layer, head); ``row_map``: F holds
    only these rows, in this order (F's row i is row row_map[i]; all of them are selected).
    F a pair (F_A, F_B): the difference M_A − M_B (``Factored.__sub__``, inner size r_A + r_B), with
    each entry's ``value_a`` and ``value_b`` beside it."""
    row_id, row_tok, col_id, col_tok = names
    fixed = fixed or {}
    parts = F if isinstance(F, tuple) else None
    F = parts[0] - parts[1] if parts else F

    def both(hit, cols):
        return {"value_a": parts[0].entries(hit.local, cols), "value_b": parts[1].entries(hit.local, cols)} if parts \
            else {}

    def tokens(ids):
        return strings[ids] if strings is not None else np.full(len(ids), "")

    def constant(n):
        return {name: np.full(n, value) for name, value in fixed.items()}

    if request.diagonal:
        n = top1 = top5 = 0
        for hit in ranked(F.A, F.B, request, progress, row_map):
            n, top1, top5 = n + len(hit.row), top1 + int((hit.rank == 1).sum()), top5 + int((hit.rank <= 5).sum())
            yield {**constant(len(hit.row)), "token_id": hit.row, "token": tokens(hit.row), "value": hit.value,
                   "row_rank": hit.rank, **both(hit, hit.row)}
        if notes is not None and n:
            notes.append(f"{what}: diagonal is rank 1 in {top1}/{n} rows ({top1 / n:.1%}), in the top 5 in "
                         f"{top5}/{n} ({top5 / n:.1%}); chance 1/{F.shape[1]} = {1 / F.shape[1]:.2%}")
        return
    for hit in ranked(F.A, F.B, request, progress, row_map):
        yield {**constant(len(hit.row)), row_id: hit.row, col_id: hit.col, "rank": hit.rank, "value": hit.value,
               row_tok: tokens(hit.row), col_tok: tokens(hit.col), **both(hit, hit.col)}


def _few(w, request: Request) -> bool:
    """A per-row query with few enough rows for the d_model factoring (``circuits.few_rows``)."""
    return request.rows is not None and request.global_n is None and len(request.rows) < circuits.few_rows(w.cfg)


def _strings(vocab) -> np.ndarray:
    return np.array(vocab.strings(), dtype=object)


def _what(request: Request, bottom_word: str = "most suppressed") -> str:
    return "diagonal entries" if request.diagonal else (f"{bottom_word} entries" if request.bottom else "top entries")


def _pair(make, w, minus):
    """make(w), or the pair (make(w), make(minus)) of a difference (ranked_chunks)."""
    return make(w) if minus is None else (make(w), make(minus))


def _check_minus(w, minus, heads=()) -> None:
    if minus is None:
        return
    from ..errors import InputError

    for l, h in heads:
        if l >= minus.cfg.n_layers or h >= minus.cfg.n_heads:
            raise InputError(f"--minus: head {l}.{h} is not in the second checkpoint ({minus.cfg.n_layers} layers of "
                             f"{minus.cfg.n_heads} heads)")


def _diff_title(title: str, minus) -> str:
    return f"{title}: difference A − B" if minus is not None else title


def bigram(w, vocab, request: Request, progress=None, minus=None) -> Table:
    """Direct path W_E W_U [V, V]: rows = current token, columns = next-token logit (logit units).
    ``minus``: the processed weights of a second checkpoint; the table ranks M_A − M_B."""
    notes: list[str] = []
    chunks = ranked_chunks(_pair(circuits.direct, w, minus), ("src_id", "src_token", "dst_id", "dst_token"),
                           _strings(vocab), request, progress=progress, notes=notes, what="direct path")
    return Table(_columns(BIGRAM_COLUMNS, columns.DIAGONAL, request, False, minus), chunks, notes=notes,
                 title=_diff_title(f"Direct path W_E W_U ({_what(request)}, logits)", minus),
                 token_columns=("token",) if request.diagonal else ("src_token", "dst_token"))


def ov(w, vocab, heads, request: Request, via: tuple[int, int] | None = None, progress=None, minus=None) -> Table:
    """Full OV circuit W_E W_V W_O W_U per head: rows = attended token, columns = logit it raises.
    ``via`` = (l1, h1): the virtual OV circuit W_E W_OV^{h1} W_OV^{h} W_U of each (later-layer) head."""
    strings = _strings(vocab)
    circuits.check_via(w.cfg, heads, via)
    circuits.preload(w, heads + ([via] if via else []), ("W_V", "W_O"))
    _check_minus(w, minus, heads + ([via] if via else []))
    few = _few(w, request)
    notes: list[str] = []

    def chunks():
        for l, h in heads:
            F = _pair(lambda w_: circuits.ov_rows(w_, l, h, request.row_ids(), via) if few else
                      circuits.ov(w_, l, h, via), w, minus)
            fixed = {"layer": l, "head": h, **({"via_layer": via[0], "via_head": via[1]} if via else {})}
            what = f"ov {l}.{h}" + (f" via {via[0]}.{via[1]}" if via else "")
            yield from ranked_chunks(F, ("src_id", "src_token", "out_id", "out_token"), strings, request, fixed,
                                     progress, row_map=request.row_ids() if few else None, notes=notes, what=what)

    name = "Virtual OV circuit W_E W_OV^via W_OV W_U" if via else "Full OV circuit W_E W_OV W_U"
    return Table(_columns(OV_COLUMNS, columns.OV_DIAGONAL, request, via is not None, minus), chunks(), notes=notes,
                 title=_diff_title(f"{name} ({_what(request)}, logits)", minus),
                 token_columns=("token",) if request.diagonal else ("src_token", "out_token"))


def qk(w, vocab, heads, request: Request, offset=0, scaled=False, positional=False, key_via=None, query_via=None,
       progress=None, minus=None) -> Table:
    """Full QK circuit per head: rows = query (destination) token, columns = key (source) token.

    Raw attention scores (``scaled``: times the model's own factor, 1/sqrt(d_head) unless its config
    turns that off, and 1/(layer + 1) where it asks). ``positional``: W_pos W_QK W_pos^T,
    rows/cols are positions, keys after the query are excluded in causal models. ``key_via`` /
    ``query_via`` = (l1, h1): the K- / Q-composition term through head h1 (circuits.qk)."""
    from ..forward import attention_scale

    via = key_via or query_via
    strings = None if positional else _strings(vocab)
    if positional:
        circuits.qk_positional(w, *heads[0])  # validates: learned positions only
    circuits.check_offset(w.cfg, offset)
    circuits.check_via(w.cfg, heads, key_via, "--key-via")
    circuits.check_via(w.cfg, heads, query_via, "--query-via")
    circuits.preload(w, heads, ("W_Q", "W_K"))
    if via:
        circuits.preload(w, [via], ("W_V", "W_O"))
    if minus is not None and positional:
        from ..errors import InputError

        raise InputError("--minus ranks a difference of token circuits: --positional does not apply")
    _check_minus(w, minus, heads + ([via] if via else []))
    few = not positional and _few(w, request)
    notes: list[str] = []

    def chunks():
        for l, h in heads:
            def make(w_):
                if positional:
                    F = circuits.qk_positional(w_, l, h)
                elif few:
                    F = circuits.qk_rows(w_, l, h, request.row_ids(), offset, key_via, query_via)
                else:
                    F = circuits.qk(w_, l, h, offset, key_via, query_via)
                scale = attention_scale(w_.cfg, l) if scaled else 1.0
                return Factored(F.A * np.asarray(scale, F.A.dtype), F.B)

            F = _pair(make, w, minus)
            fixed = {"layer": l, "head": h, **({"via_layer": via[0], "via_head": via[1]} if via else {})}
            names = ("query_id", "query_token", "key_id", "key_token")
            if positional:
                yield _positional_chunk(F, w.cfg.causal, request, fixed)
            else:
                side = "key" if key_via else "query"
                what = f"qk {l}.{h}" + (f" {side} via {via[0]}.{via[1]}" if via else "")
                yield from ranked_chunks(F, names, strings, request, fixed, progress,
                                         row_map=request.row_ids() if few else None, notes=notes, what=what)

    if positional:
        what = "positional QK circuit W_pos W_QK W_pos^T"
    elif via:
        what = ("K-composition term W_E W_Q (W_E W_OV^via W_K)^T" if key_via else
                "Q-composition term W_E W_OV^via W_Q W_K^T W_E^T")
    else:
        what = "Full QK circuit W_E W_QK W_E^T"
    units = "scaled scores" if scaled else "raw scores"
    if request.diagonal:
        units = "diagonal, " + units
    return Table(_columns(QK_COLUMNS, columns.QK_DIAGONAL, request, via is not None, minus), chunks(), notes=notes,
                 title=_diff_title(f"{what} ({units}, offset {offset})" if offset else f"{what} ({units})", minus),
                 token_columns=("token",) if request.diagonal else ("query_token", "key_token"))


def _positional_chunk(F, causal, request: Request, fixed) -> dict:
    """Positional QK (n_ctx × n_ctx, small): dense, keys after the query masked out in causal models."""
    M = F.dense()
    n = M.shape[0]
    rows, k, global_n, bottom = request.rows, request.k, request.global_n, request.bottom
    fill = -np.inf if not bottom else np.inf
    if causal:
        M = np.where(np.tril(np.ones((n, n), bool)), M, fill)
    if global_n is not None:
        key = (M if bottom else -M).ravel()
        order = np.lexsort((np.arange(key.size), key))[:global_n]
        r, c = np.divmod(order, n)
        v, rank = M.ravel()[order], np.arange(1, len(order) + 1)
    else:
        ids = np.arange(n) if rows is None else np.asarray(rows)
        vals, cols = select_topk(M[ids], k, largest=not bottom)
        kk = vals.shape[1]
        r, c, v, rank = np.repeat(ids, kk), cols.ravel(), vals.ravel(), np.tile(np.arange(1, kk + 1), len(ids))
    keep = np.isfinite(v)
    out = {name: np.full(keep.sum(), value) for name, value in fixed.items()}
    out.update(query_id=r[keep], key_id=c[keep], rank=rank[keep], value=v[keep],
               query_token=np.full(keep.sum(), ""), key_token=np.full(keep.sum(), ""))
    return out
