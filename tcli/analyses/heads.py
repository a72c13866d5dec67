"""``heads``: the census, one row per head, computed from d_model-sized Gram matrices.

For a full circuit A B with A = W_E X [V, e] and B = Y W_U [e, V]:
  AᵀA = Xᵀ (W_Eᵀ W_E) X and B Bᵀ = Y (W_U W_Uᵀ) Yᵀ (e × e), so singular values (σ of A B from the
  Grams, core/factored.svdvals_from_grams) and ‖A B‖_F = sqrt(tr(AᵀA · B Bᵀ)) need no
  vocab-sized work per head; the eigenvalues of A B are those of B A = Y (W_U W_E) X [e, e].
Columns: copying_score (Σ Re λ / Σ |λ| of the full OV circuit), wov_copying_score (same for
W_V W_O), ov_frobenius / qk_frobenius (full circuits), ov_top_singular_value and ov_effective_rank
(full OV), prev_token_score and induction_score (behaviour.py), wov_frobenius, wqk_frobenius,
ov_diagonal_top1: the share of tokens t whose largest full-OV output is t itself (OV[t, t] at rank 1 of
row t: no entry of the row strictly greater), streamed exactly over the V × V circuit (V²·e work per
head, the one column that is not d-sized; ``diagonal=False`` leaves it empty).
"""

from __future__ import annotations

import numpy as np

from ..core.factored import copying_score, effective_rank, svdvals_from_grams
from ..core.stream import diagonal_rows
from . import circuits
from ..output.table import Table
from .behaviour import head_scores
from .. import columns

COLUMNS = columns.HEADS


SHORT = {"layer": "L", "head": "H", "copying_score": "copy", "wov_copying_score": "wov_copy", "ov_frobenius": "ov_F",
         "qk_frobenius": "qk_F", "ov_top_singular_value": "ov_σ1", "ov_effective_rank": "ov_rank",
         "prev_token_score": "prev", "induction_score": "induct", "wov_frobenius": "wov_F", "wqk_frobenius": "wqk_F",
         "ov_diagonal_top1": "ov_diag1"}


def ov_diagonal_top1(w, l: int, h: int, progress=None) -> float:
    """Share of tokens t with full OV[t, t] at rank 1 in row t (exact, streamed row blocks)."""
    F = circuits.ov(w, l, h)
    top1 = sum(int((rank == 1).sum()) for _, _, rank in diagonal_rows(F.A, F.B, progress=progress))
    return top1 / F.shape[0]


def census(w, behaviour: bool = True, progress=None, diagonal: bool = True) -> Table:
    cfg = w.cfg
    f64 = np.float64
    W_E, W_U = w["embed.W_E"].astype(f64), w["unembed.W_U"].astype(f64)
    G_E = W_E.T @ W_E  # [d, d]
    G_U = W_U @ W_U.T  # [d, d]
    UE = W_U @ W_E  # [d, d]
    prev, induction = head_scores(w, progress) if behaviour else (None, None)
    rows = []
    for l in range(cfg.n_layers):
        p = f"blocks.{l}.attn."
        WQ, WK, WV, WO = (w[p + n].astype(f64) for n in ("W_Q", "W_K", "W_V", "W_O"))
        for h in range(cfg.n_heads):
            GA, GB = WV[h].T @ G_E @ WV[h], WO[h] @ G_U @ WO[h].T  # full OV Grams [e, e]
            s = svdvals_from_grams(GA, GB)
            lam = np.linalg.eigvals(WO[h] @ UE @ WV[h])
            lam_w = np.linalg.eigvals(WO[h] @ WV[h])
            GQ, GK = WQ[h].T @ G_E @ WQ[h], WK[h].T @ G_E @ WK[h]
            rows.append((l, h, copying_score(lam), copying_score(lam_w), float(np.sqrt(max(np.trace(GA @ GB), 0))),
                         float(np.sqrt(max(np.trace(GQ @ GK), 0))), float(s[0]), effective_rank(s),
                         float(prev[l, h]) if prev is not None else None,
                         float(induction[l, h]) if induction is not None else None,
                         float(np.sqrt(max(np.trace((WV[h].T @ WV[h]) @ (WO[h] @ WO[h].T)), 0))),
                         float(np.sqrt(max(np.trace((WQ[h].T @ WQ[h]) @ (WK[h].T @ WK[h])), 0))),
                         ov_diagonal_top1(w, l, h, progress) if diagonal else None))
    return Table.from_rows(COLUMNS, rows, title="Head census", short=SHORT)
