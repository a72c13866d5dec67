"""``bigram``, ``ov``, ``qk``: ranked entries of a vocab × vocab circuit, streamed over row blocks.

Modes: per row (``rows`` given: the k best columns of each row) or global (the n best entries
of the whole matrix). ``bottom`` ranks the most negative entries instead.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from ..core.factored import Factored
from ..core.stream import global_topk, select_topk, topk_rows
from ..output.table import Table
from . import circuits
from .. import columns

BIGRAM_COLUMNS, OV_COLUMNS, QK_COLUMNS = columns.BIGRAM, columns.OV, columns.QK


def ranked_chunks(F: Factored, names: tuple[str, str, str, str], strings, k: int = 10, rows=None,
                  global_n: int | None = None, bottom: bool = False, fixed: dict | None = None,
                  progress: Callable[[int], None] | None = None, row_ids=None) -> Iterator[dict]:
    """Chunks of (row id, row token, rank, col id, col token, value) for the selected entries of F.

    ``names`` are the four id/token column names; ``strings`` an object array of token strings
    (None: positions, no tokens); ``fixed`` extra constant columns (layer, head); ``row_ids``: F holds
    only these rows, in this order (F's row i is row row_ids[i]; all of them are selected, per row)."""
    if row_ids is not None:
        row_ids, rows = np.asarray(row_ids), np.arange(len(row_ids))
    row_id, row_tok, col_id, col_tok = names
    fixed = fixed or {}

    def chunk(r, c, v, rank):
        out = {name: np.full(len(r), value) for name, value in fixed.items()}
        out.update({row_id: r, col_id: c, "rank": rank, "value": v,
                    row_tok: strings[r] if strings is not None else np.full(len(r), ""),
                    col_tok: strings[c] if strings is not None else np.full(len(r), "")})
        return out

    if global_n is not None:
        r, c, v = global_topk(F.A, F.B, global_n, largest=not bottom, progress=progress)
        yield chunk(r, c, v, np.arange(1, len(r) + 1))
        return
    for ids, vals, cols in topk_rows(F.A, F.B, k, rows, largest=not bottom, progress=progress):
        kk = vals.shape[1]
        r = ids if row_ids is None else row_ids[ids]
        yield chunk(np.repeat(r, kk), cols.ravel(), vals.ravel(), np.tile(np.arange(1, kk + 1), len(ids)))


def _few(w, rows, global_n) -> bool:
    """A per-row query with few enough rows for the d_model factoring (``circuits.few_rows``)."""
    return rows is not None and global_n is None and len(rows) < circuits.few_rows(w.cfg)


def _strings(vocab) -> np.ndarray:
    return np.array(vocab.strings(), dtype=object)


def bigram(w, vocab, k=10, rows=None, global_n=None, bottom=False, progress=None) -> Table:
    """Direct path W_E W_U [V, V]: rows = current token, columns = next-token logit (logit units)."""
    chunks = ranked_chunks(circuits.direct(w), ("src_id", "src_token", "dst_id", "dst_token"), _strings(vocab),
                           k, rows, global_n, bottom, progress=progress)
    what = "most suppressed" if bottom else "top"
    return Table(BIGRAM_COLUMNS, chunks, title=f"Direct path W_E W_U ({what} entries, logits)",
                 token_columns=("src_token", "dst_token"))


def ov(w, vocab, heads, k=10, rows=None, global_n=None, bottom=False, progress=None) -> Table:
    """Full OV circuit W_E W_V W_O W_U per head: rows = attended token, columns = logit it raises."""
    strings = _strings(vocab)
    circuits.preload(w, heads, ("W_V", "W_O"))

    few = _few(w, rows, global_n)

    def chunks():
        for l, h in heads:
            F = circuits.ov_rows(w, l, h, rows) if few else circuits.ov(w, l, h)
            yield from ranked_chunks(F, ("src_id", "src_token", "out_id", "out_token"), strings, k, rows, global_n,
                                     bottom, {"layer": l, "head": h}, progress, row_ids=rows if few else None)

    return Table(OV_COLUMNS, chunks(), title="Full OV circuit W_E W_OV W_U (logits)",
                 token_columns=("src_token", "out_token"))


def qk(w, vocab, heads, k=10, rows=None, global_n=None, bottom=False, offset=0, scaled=False,
       positional=False, progress=None) -> Table:
    """Full QK circuit per head: rows = query (destination) token, columns = key (source) token.

    Raw attention scores (``scaled``: times the model's own factor, 1/sqrt(d_head) unless its config
    turns that off, and 1/(layer + 1) where it asks). ``positional``: W_pos W_QK W_pos^T,
    rows/cols are positions, keys after the query are excluded in causal models."""
    from ..forward import attention_scale

    strings = None if positional else _strings(vocab)
    if positional:
        circuits.qk_positional(w, *heads[0])  # validates: learned positions only
    circuits.check_offset(w.cfg, offset)
    circuits.preload(w, heads, ("W_Q", "W_K"))

    few = not positional and _few(w, rows, global_n)

    def chunks():
        for l, h in heads:
            if positional:
                F = circuits.qk_positional(w, l, h)
            else:
                F = circuits.qk_rows(w, l, h, rows, offset) if few else circuits.qk(w, l, h, offset)
            scale = attention_scale(w.cfg, l) if scaled else 1.0
            F = Factored(F.A * np.asarray(scale, F.A.dtype), F.B)
            fixed = {"layer": l, "head": h}
            names = ("query_id", "query_token", "key_id", "key_token")
            if positional:
                yield _positional_chunk(F, w.cfg.causal, k, rows, global_n, bottom, fixed)
            else:
                yield from ranked_chunks(F, names, strings, k, rows, global_n, bottom, fixed, progress,
                                         row_ids=rows if few else None)

    what = "positional QK circuit W_pos W_QK W_pos^T" if positional else "Full QK circuit W_E W_QK W_E^T"
    units = "scaled scores" if scaled else "raw scores"
    return Table(QK_COLUMNS, chunks(), title=f"{what} ({units}, offset {offset})" if offset else f"{what} ({units})",
                 token_columns=("query_token", "key_token"))


def _positional_chunk(F, causal, k, rows, global_n, bottom, fixed) -> dict:
    """Positional QK (n_ctx × n_ctx, small): dense, keys after the query masked out in causal models."""
    M = F.dense()
    n = M.shape[0]
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
