"""``skiptrigram``: the paper's "A … B → C" tables for a head, from its full QK and OV circuits.

B (destination, the current token) attends to A (an earlier source token) by QK[B, A]; having
attended, A raises the logit of C by OV[A, C]. Each link is standardised over its whole circuit,
z_qk = (QK[B, A] − mean QK) / std QK and z_ov = (OV[A, C] − mean OV) / std OV (means and stds
exact from the factors), and a triple scores

    score = min(z_qk, z_ov)

— a skip-trigram is as strong as its weaker link; equal scores are ranked by the stronger link,
max(z_qk, z_ov), then by A, B, C. The top-n triples in this order are exact:
for each A only its n best B (by QK[:, A]) and n best C (by OV[A, :]) can enter the top n, so
each block of sources is reduced to n × n candidates per A and merged.
"""

from __future__ import annotations

import numpy as np

from ..core.stream import block_rows, select_topk
from ..output.table import Table
from . import circuits
from .. import columns

COLUMNS = columns.SKIPTRIGRAM


def top_triples(QK, OV, n: int, sources=None, progress=None):
    """Top-n (A, B, C) by min(z_qk, z_ov). QK [V_dst, V_src], OV [V_src, V_out] as Factored.

    Returns arrays A, B, C, qk, ov, score (best first), and the tie-breaking stronger-link z."""
    qk_mean, qk_std = QK.mean_and_std()
    ov_mean, ov_std = OV.mean_and_std()
    QKt = QK.T  # rows = source A
    V = QKt.shape[0]
    src = np.arange(V) if sources is None else np.asarray(sources)
    step = max(1, block_rows(max(QKt.shape[1], OV.shape[1]), 4) // 2)
    best = [np.empty(0, np.int64)] * 3 + [np.empty(0, QK.A.dtype)] * 2 + [np.empty(0)] * 2
    for start in range(0, len(src), step):
        a = src[start:start + step]
        qv, qb = select_topk(QKt.rows(a), n)  # [b, n] best destinations B for each A
        ov_v, oc = select_topk(OV.rows(a), n)  # [b, n] best outputs C for each A
        zq = (qv.astype(np.float64) - qk_mean) / (qk_std or 1.0)
        zo = (ov_v.astype(np.float64) - ov_mean) / (ov_std or 1.0)
        score = np.minimum(zq[:, :, None], zo[:, None, :])  # [b, n_B, n_C]
        second = np.maximum(zq[:, :, None], zo[:, None, :])  # tie-break: the stronger link
        A = np.broadcast_to(a[:, None, None], score.shape).ravel()
        B = np.broadcast_to(qb[:, :, None], score.shape).ravel()
        C = np.broadcast_to(oc[:, None, :], score.shape).ravel()
        Q = np.broadcast_to(qv[:, :, None], score.shape).ravel()
        O = np.broadcast_to(ov_v[:, None, :], score.shape).ravel()
        cand = [np.concatenate([x, y]) for x, y in zip(best, (A, B, C, Q, O, score.ravel(), second.ravel()))]
        order = np.lexsort((cand[2], cand[1], cand[0], -cand[6], -cand[5]))[:n]
        best = [x[order] for x in cand]
        if progress:
            progress(len(a))
    return best


def skiptrigram(w, vocab, heads, k: int = 10, sources=None, progress=None) -> Table:
    strings = np.array(vocab.strings(), dtype=object)
    circuits.preload(w, heads)

    def chunks():
        for l, h in heads:
            A, B, C, q, o, s, _ = top_triples(circuits.qk(w, l, h), circuits.ov(w, l, h), k, sources, progress)
            yield {"layer": np.full(len(A), l), "head": np.full(len(A), h), "rank": np.arange(1, len(A) + 1),
                   "src_id": A, "src_token": strings[A], "dst_id": B, "dst_token": strings[B],
                   "out_id": C, "out_token": strings[C], "qk": q, "ov": o, "score": s}

    return Table(COLUMNS, chunks(), title="Skip-trigrams A … B → C (score = min of standardised qk, ov)",
                 token_columns=("src_token", "dst_token", "out_token"))
