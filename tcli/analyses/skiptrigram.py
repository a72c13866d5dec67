"""``skiptrigram``: the paper's "A … B → C" tables for a head, from its full QK and OV circuits.

B (destination, the current token) attends to A (an earlier source token) by QK[B, A]; having
attended, A raises the logit of C by OV[A, C]. Each link is standardised over its whole circuit,
z_qk = (QK[B, A] − mean QK) / std QK and z_ov = (OV[A, C] − mean OV) / std OV (means and stds
exact from the factors), and a triple scores

    score = min(z_qk, z_ov)

— a skip-trigram is as strong as its weaker link. Triples are ordered by score, then by the
stronger link max(z_qk, z_ov), then by A, B, C (all descending, ids ascending).

Ranking. The score of (A, B, C) only grows with either link, so one strong (A, B) pair would pair
with every C (and one strong (A, C) with every B) and fill the table. By default (*distinct
pairs*) the triples are walked best first and one is kept only when neither its (A, B) nor its
(A, C) pair was kept before: every (A, B) and every (A, C) pair appears at most once. Because the
order is monotone in both links, the kept triples of a source A are exactly its diagonal
(A, B_i, C_i), i = 1, 2, …: its i-th strongest destination B_i (by QK[:, A]) with its i-th strongest
output C_i (by OV[A, :]). ``all_triples`` gives the plain top-n of all V³ triples instead.

Exact, in memory O(n + block·V) for any n. τ, a lower bound of the n-th best score, only rises; a
triple scoring below it cannot enter. Sources stream in blocks of rows of QKᵀ and OV; a source whose
best z_qk or best z_ov is below τ is dropped after a row maximum. The others, a few at a time (``LISTS``
bytes of lists), keep their best B and best C (ties: lower id), at most n and only those with z ≥ τ:
any other triple is beaten by n triples of the same source, or scores below τ. τ is raised to the
n-th best diagonal score of those sources (the diagonals are triples of both rankings). Distinct
pairs: the diagonal entries scoring ≥ τ are merged with the running best n. All triples:
(A, B_i, C_j) is beaten by the i·j − 1 triples (A, B_≤i, C_≤j), so only i·j ≤ n can enter; τ is
also raised to the best per-source bound (the largest t with #{z_qk ≥ t}·#{z_ov ≥ t} ≥ n for one
A), then only the pairs with z ≥ τ on both sides and i·j ≤ n are formed, ``PAIRS`` at a time
(about 2n per source without ties, at most n·(1 + ln n)).
"""

from __future__ import annotations

import numpy as np

from .. import columns
from ..core.stream import GROUP, block_rows, select_topk, select_topk_grouped
from ..output.table import Table
from . import circuits

COLUMNS = columns.SKIPTRIGRAM
PAIRS = 1 << 21  # candidate triples formed at once (all-triples mode)
LISTS = 1 << 26  # bytes of the per-source best-B / best-C lists formed at once
GATHER = 16  # entries above tau are gathered and sorted when at most 1/GATHER of a chunk, else selected
FIELDS = ("A", "B", "C", "qk", "ov", "z_qk", "z_ov")


def _stats(F) -> tuple[float, float]:
    mean, std = F.mean_and_std()
    return mean, (std or 1.0)


def _row_topk(block: np.ndarray, n_cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row of block [b, width] (columns ≥ n_cols are −inf padding): the k largest of the first n_cols,
    sorted by (value desc, column asc), exact also when values tie at the k-th place."""
    step = max(1, LISTS // (12 * block.shape[1]))  # rows at a time: the selection's temporaries stay ~LISTS
    if len(block) > step:
        parts = [_row_topk(block[i:i + step], n_cols, k) for i in range(0, len(block), step)]
        return np.concatenate([v for v, _ in parts]), np.concatenate([c for _, c in parts])
    if k >= n_cols:
        return select_topk(block[:, :n_cols], k)
    grouped = block.shape[1] % GROUP == 0 and (k + 1) * GROUP * 4 <= block.shape[1]  # the prefilter pays
    vals, idx = (select_topk_grouped if grouped else select_topk)(block, k + 1)
    tied = np.flatnonzero(vals[:, k - 1] == vals[:, k])  # the k-th place is ambiguous: sort those rows fully
    vals, idx = vals[:, :k].copy(), idx[:, :k].copy()
    if tied.size:
        rows = block[tied, :n_cols]
        idx[tied] = np.argsort(-rows, axis=1, kind="stable")[:, :k]
        vals[tied] = np.take_along_axis(rows, idx[tied], axis=1)
    return vals, idx


def _lists(block: np.ndarray, n_cols: int, k: int, tau: float, mean: float, std: float):
    """Per row of block [r, width]: its best entries (value desc, column asc) among the first n_cols, as many as
    k and as the row has with z = (x − mean)/std ≥ tau allow. Returns values, columns and z [r, k'], rows
    shorter than k' padded with z = −inf. With few entries above tau they are gathered and sorted, else selected."""
    if np.isfinite(tau):
        x = block[:, :n_cols]
        thr = tau * std + mean
        mask = x >= thr - 1e-6 * (abs(thr) + abs(mean) + std)  # loose (float32 rounding): keeps every z ≥ tau
        counts = mask.sum(axis=1)
        k = int(max(1, min(k, counts.max())))
        if counts.sum() * GATHER <= x.size:
            r, c = np.nonzero(mask)
            v = x[r, c]
            order = np.lexsort((c, -v, r))
            r, c, v = r[order], c[order], v[order]
            rank = np.arange(r.size) - (np.cumsum(counts) - counts)[r]
            r, c, v, rank = (t[rank < k] for t in (r, c, v, rank))
            vals, ids = np.full((len(x), k), -np.inf, x.dtype), np.zeros((len(x), k), np.int64)
            vals[r, rank], ids[r, rank] = v, c
            return vals, ids, (vals.astype(np.float64) - mean) / std
    vals, ids = _row_topk(block, n_cols, k)
    return vals, ids, (vals.astype(np.float64) - mean) / std


def _kth(values: np.ndarray, n: int) -> float:
    """The n-th largest of values (−inf when fewer)."""
    flat = values.ravel()
    return float(-np.partition(-flat, n - 1)[n - 1]) if flat.size >= n else -np.inf


def _source_bound(zQ: np.ndarray, zO: np.ndarray, n: int) -> float:
    """max over sources of the largest t with #{zQ ≥ t}·#{zO ≥ t} ≥ n: at least n triples of one source score
    ≥ t, so the global n-th best does too (−inf if no source has n triples). zQ [r, kq], zO [r, ko]."""
    merged = np.concatenate([zQ, zO], axis=1)
    order = np.argsort(-merged, axis=1, kind="stable")
    vals = np.take_along_axis(merged, order, axis=1)
    nq = np.cumsum(order < zQ.shape[1], axis=1)  # B-values among the first p + 1: a lower bound of #{zQ ≥ t}
    no = np.arange(1, merged.shape[1] + 1) - nq
    ok = nq * no >= n
    has = ok.any(axis=1)
    return float(vals[has, ok[has].argmax(axis=1)].max()) if has.any() else -np.inf


def _merge(best: dict, cand: dict, n: int) -> dict:
    """The n best of best ∪ cand in the table's order (score, stronger link desc; A, B, C asc)."""
    cat = {f: np.concatenate([best[f], cand[f]]) for f in FIELDS}
    zq, zo = cat["z_qk"], cat["z_ov"]
    order = np.lexsort((cat["C"], cat["B"], cat["A"], -np.maximum(zq, zo), -np.minimum(zq, zo)))[:n]
    return {f: v[order] for f, v in cat.items()}


def _pair_chunks(cnt: np.ndarray, budget: int):
    """Split the rows of cnt [r, kq] (pairs per (row, i)) into runs of rows with at most ``budget`` pairs
    (at least one row each); yield (rows, i, j) of every pair of each run, j < cnt[row, i] (0-based)."""
    per_row = cnt.sum(axis=1)
    start = 0
    while start < len(cnt):
        stop = max(start + 1, int(np.searchsorted(np.cumsum(per_row[start:]), budget, side="right")) + start)
        rr, ii = np.nonzero(cnt[start:stop])
        c = cnt[start:stop][rr, ii]
        first = np.repeat(np.cumsum(c) - c, c)
        yield np.repeat(rr + start, c), np.repeat(ii, c), np.arange(first.size) - first
        start = stop


def top_triples(QK, OV, n: int, sources=None, all_triples: bool = False, progress=None, block=None) -> dict:
    """The n best (A, B, C): distinct pairs by default (see the module docstring), or of all triples.

    QK [V_dst, V_src], OV [V_src, V_out] as Factored; sources: the A to consider (default all); block: sources
    per block (default: two [block, V] buffers within BLOCK_BYTES); progress(count) after each block starts.
    Returns arrays A, B, C, qk = QK[B, A], ov = OV[A, C], z_qk, z_ov (best first; score = min(z_qk, z_ov))."""
    QKt = QK.T  # rows = source A
    (qm, qs), (om, os_) = _stats(QK), _stats(OV)
    V_dst, V_out = QKt.shape[1], OV.shape[1]
    src = np.arange(QKt.shape[0]) if sources is None else np.unique(np.asarray(sources, dtype=np.int64))
    dtype = np.result_type(QKt.A, QKt.B, OV.A, OV.B)
    wq, wo = (-(-v // GROUP) * GROUP for v in (V_dst, V_out))  # padded to whole groups (−inf)
    step = block or block_rows(wq + wo, dtype.itemsize)
    bq, bo = (np.full((max(1, min(step, len(src))), w), -np.inf, dtype) for w in (wq, wo))
    best = {f: np.empty(0, np.int64 if f in "ABC" else np.float64) for f in FIELDS}
    kq, ko = min(n, V_dst), min(n, V_out)
    per_chunk = max(1, LISTS // (48 * max(kq, ko)))  # sources whose [k] lists are formed at once
    tau = -np.inf  # a lower bound of the n-th best score: only triples scoring ≥ tau can enter
    for start in range(0, len(src), step):
        a = src[start:start + step]
        if progress:
            progress(len(a))
        q = bq[:len(a)]
        np.matmul(QKt.A[a], QKt.B, out=q[:, :V_dst])
        top = (q.max(axis=1).astype(np.float64) - qm) / qs  # the best z_qk of each A
        keep = np.flatnonzero(top >= tau)
        if keep.size < len(a):
            a, q, top = a[keep], q[keep], top[keep]
        if not len(a):
            continue
        o = bo[:len(a)]
        np.matmul(OV.A[a], OV.B, out=o[:, :V_out])
        top = np.minimum(top, (o.max(axis=1).astype(np.float64) - om) / os_)  # the best score of each A
        for c0 in range(0, len(a), per_chunk):
            rows = c0 + np.flatnonzero(top[c0:c0 + per_chunk] >= tau)
            if not rows.size:
                continue
            Qv, Qi, zQ = _lists(q[rows], V_dst, kq, tau, qm, qs)  # [r, ≤ kq] best destinations B of each A
            Ov, Oi, zO = _lists(o[rows], V_out, ko, tau, om, os_)  # [r, ≤ ko] best outputs C of each A
            m = min(zQ.shape[1], zO.shape[1])
            diag = np.minimum(zQ[:, :m], zO[:, :m])  # (A, B_i, C_i): kept in both rankings
            tau = max(tau, _kth(diag, n))
            if all_triples:
                tau = max(tau, _source_bound(zQ, zO, n))
                nq, no = (zQ >= tau).sum(axis=1), (zO >= tau).sum(axis=1)
                rank = np.arange(1, zQ.shape[1] + 1)
                cnt = np.where(rank <= nq[:, None], np.minimum(no[:, None], n // rank), 0)  # j per (A, i): i·j ≤ n
                pairs = _pair_chunks(cnt, PAIRS)
            else:
                r, i = np.nonzero(diag >= tau)
                pairs = [(r, i, i)]
            for r, i, j in pairs:
                best = _merge(best, {"A": a[rows[r]], "B": Qi[r, i], "C": Oi[r, j], "qk": Qv[r, i],
                                     "ov": Ov[r, j], "z_qk": zQ[r, i], "z_ov": zO[r, j]}, n)
                if len(best["A"]) == n:
                    tau = max(tau, min(best["z_qk"][-1], best["z_ov"][-1]))
    return best


def skiptrigram(w, vocab, heads, k: int = 10, sources=None, all_triples: bool = False, progress=None) -> Table:
    strings = np.array(vocab.strings(), dtype=object)
    circuits.preload(w, heads)

    def chunks():
        for l, h in heads:
            t = top_triples(circuits.qk(w, l, h), circuits.ov(w, l, h), k, sources, all_triples, progress)
            A, B, C = t["A"], t["B"], t["C"]
            yield {"layer": np.full(len(A), l), "head": np.full(len(A), h), "rank": np.arange(1, len(A) + 1),
                   "src_id": A, "src_token": strings[A], "dst_id": B, "dst_token": strings[B],
                   "out_id": C, "out_token": strings[C], "qk": t["qk"], "ov": t["ov"],
                   "score": np.minimum(t["z_qk"], t["z_ov"]), "z_qk": t["z_qk"], "z_ov": t["z_ov"]}

    title = "all triples" if all_triples else "distinct (A, B) and (A, C) pairs"
    return Table(COLUMNS, chunks(), title=f"Skip-trigrams A … B → C (score = min(z_qk, z_ov); {title})",
                 token_columns=("src_token", "dst_token", "out_token"))
