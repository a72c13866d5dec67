"""Stream a factored vocab × vocab matrix in row blocks, selecting top-k per block in bounded memory.

M = A @ B with A [m, r], B [r, n]. A block of rows M[i:j] = A[i:j] @ B is formed, reduced to
its selection and dropped, so memory is O(block_rows · n), never O(m · n).
Ties are broken towards the lower column index, so results are deterministic.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

BLOCK_BYTES = 128 * 2**20


def block_rows(n_cols: int, itemsize: int = 4, budget: int = BLOCK_BYTES) -> int:
    """Rows per block so that one block of [rows, n_cols] stays within ``budget`` bytes."""
    return max(1, budget // max(1, n_cols * itemsize))


def select_topk(block: np.ndarray, k: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``block`` [b, n]: the k largest (or smallest) values and their column indices,
    sorted best first, ties towards the lower index. Returns (values [b, k'], indices [b, k']), k' = min(k, n)."""
    b, n = block.shape
    k = min(k, n)
    key = -block if largest else block  # ascending key: best first
    if k < n:
        idx = np.argpartition(key, k - 1, axis=1)[:, :k]
    else:
        idx = np.broadcast_to(np.arange(n), (b, n))
    kv = np.take_along_axis(key, idx, axis=1)
    order = np.lexsort((idx, kv), axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    return np.take_along_axis(block, idx, axis=1), idx


def topk_rows(A: np.ndarray, B: np.ndarray, k: int, rows: np.ndarray | None = None, largest: bool = True,
              block: int | None = None, progress: Callable[[int], None] | None = None
              ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield (row_ids [b], values [b, k], col_ids [b, k]) for each block of the selected rows of A @ B."""
    rows = np.arange(A.shape[0]) if rows is None else np.asarray(rows)
    step = block or block_rows(B.shape[1], B.dtype.itemsize)
    for start in range(0, len(rows), step):
        ids = rows[start:start + step]
        vals, cols = select_topk(A[ids] @ B, k, largest)
        yield ids, vals, cols
        if progress:
            progress(len(ids))


def global_topk(A: np.ndarray, B: np.ndarray, n: int, largest: bool = True, block: int | None = None,
                progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n largest (or smallest) entries of A @ B over all rows and columns.

    Returns (row_ids [n'], col_ids [n'], values [n']) best first, ties by (row, col) ascending."""
    m, ncols = A.shape[0], B.shape[1]
    best_r = np.empty(0, np.int64)
    best_c = np.empty(0, np.int64)
    best_v = np.empty(0, np.result_type(A, B))
    step = block or block_rows(ncols, B.dtype.itemsize)
    for start in range(0, m, step):
        blk = A[start:start + step] @ B
        flat = blk.ravel()
        key = -flat if largest else flat
        take = min(n, flat.size)
        cand = np.argpartition(key, take - 1)[:take] if take < flat.size else np.arange(flat.size)
        r, c = np.divmod(cand, ncols)
        best_r = np.concatenate([best_r, r + start])
        best_c = np.concatenate([best_c, c])
        best_v = np.concatenate([best_v, flat[cand]])
        order = np.lexsort((best_c, best_r, -best_v if largest else best_v))[:n]
        best_r, best_c, best_v = best_r[order], best_c[order], best_v[order]
        if progress:
            progress(blk.shape[0])
    return best_r, best_c, best_v
