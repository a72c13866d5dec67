"""``compose``: Q-, K- and V-composition scores between heads of different layers (the paper's §).

For h1 in layer l1 < l2 and h2 in l2, with A = W_OV^{h1} = W_V W_O [d, d] (row vectors):
  q: B = W_QK^{h2} = W_Q W_Kᵀ     k: B = W_QK^{h2}ᵀ = W_K W_Qᵀ     v: B = W_OV^{h2}
  score = ‖A B‖_F / (‖A‖_F ‖B‖_F).
With M = W_O^{h1} X^{h2} [e, e] (X = W_Q, W_K or W_V) the numerator is
  ‖W_V M Y‖_F² = tr(Mᵀ (W_VᵀW_V) M (Y Yᵀ)), so every pair costs e³ after one [H e, H e] product
per layer pair. Baseline: the mean score of BASELINE_SAMPLES pairs of random Gaussian matrices
with the same factor shapes ([d, e] @ [e, d]; the score ignores norms), seed 0.
"""

from __future__ import annotations

import numpy as np

from ..output.table import Figure, Table

COLUMNS = ["kind", "layer1", "head1", "layer2", "head2", "score", "baseline"]
BASELINE_SAMPLES = 16


def composition_scores(w, kind: str, l1: int, l2: int) -> np.ndarray:
    """Scores [H, H] (rows h1 of layer l1, cols h2 of layer l2) for kind q, k or v (float64)."""
    f64 = np.float64
    V1, O1 = w[f"blocks.{l1}.attn.W_V"].astype(f64), w[f"blocks.{l1}.attn.W_O"].astype(f64)
    Q2, K2 = w[f"blocks.{l2}.attn.W_Q"].astype(f64), w[f"blocks.{l2}.attn.W_K"].astype(f64)
    V2, O2 = w[f"blocks.{l2}.attn.W_V"].astype(f64), w[f"blocks.{l2}.attn.W_O"].astype(f64)
    gram_left = np.einsum("hde,hdf->hef", V1, V1)  # W_VᵀW_V of h1
    norm_a2 = np.einsum("hef,hfe->h", gram_left, np.einsum("hed,hfd->hef", O1, O1))
    X, Y = {"q": (Q2, np.transpose(K2, (0, 2, 1))), "k": (K2, np.transpose(Q2, (0, 2, 1))),
            "v": (V2, O2)}[kind]  # B = X Y per head h2: X [d, e], Y [e, d]
    gram_right = np.einsum("hed,hfd->hef", Y, Y)  # Y Yᵀ of h2
    norm_b2 = np.einsum("hef,hfe->h", np.einsum("hde,hdf->hef", X, X), gram_right)
    M = np.einsum("hed,gdf->hgef", O1, X)  # W_O^{h1} X^{h2}  [H1, H2, e, e]
    num2 = np.einsum("hgji,hjk,hgkl,gli->hg", M, gram_left, M, gram_right, optimize=True)
    denom = np.sqrt(np.outer(norm_a2, norm_b2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(np.clip(num2, 0, None)) / denom


def baseline(d_model: int, d_head: int, samples: int = BASELINE_SAMPLES, seed: int = 0) -> float:
    """Mean composition score of random [d, e] @ [e, d] factor pairs (seeded)."""
    rng = np.random.default_rng(seed)
    scores = []
    for _ in range(samples):
        A = rng.standard_normal((d_model, d_head)) @ rng.standard_normal((d_head, d_model))
        B = rng.standard_normal((d_model, d_head)) @ rng.standard_normal((d_head, d_model))
        scores.append(np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B)))
    return float(np.mean(scores))


def compose(w, kinds=("q", "k", "v"), top: int | None = None) -> Table:
    """Every (h1 in l1, h2 in l2 > l1) pair and kind, ranked by score (descending)."""
    cfg = w.cfg
    H = cfg.n_heads
    base = baseline(cfg.d_model, cfg.d_head)
    rows = []
    grids = {}  # kind -> [L·H, L·H] scores, rows = earlier head, cols = later head (NaN elsewhere)
    for kind in kinds:
        grid = np.full((cfg.n_layers * H, cfg.n_layers * H), np.nan)
        for l1 in range(cfg.n_layers):
            for l2 in range(l1 + 1, cfg.n_layers):
                S = composition_scores(w, kind, l1, l2)
                grid[l1 * H:(l1 + 1) * H, l2 * H:(l2 + 1) * H] = S
                rows += [(kind, l1, h1, l2, h2, float(S[h1, h2]), base) for h1 in range(H) for h2 in range(H)]
        grids[kind] = grid
    rows.sort(key=lambda r: (-(r[5] if r[5] == r[5] else -1), r[0], r[1], r[2], r[3], r[4]))
    notes = [f"baseline: mean score of {BASELINE_SAMPLES} random pairs of rank-{cfg.d_head} "
             f"{cfg.d_model}×{cfg.d_model} matrices (seed 0) = {base:.4f}"]
    if not rows:
        notes.append("the model has one layer: no pairs of heads across layers")
    table = Table.from_rows(COLUMNS, rows[:top] if top else rows, title="Composition scores", notes=notes)
    if rows:
        labels = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(H)]
        earlier, later = slice(0, (cfg.n_layers - 1) * H), slice(H, cfg.n_layers * H)
        table.figures = [Figure("heatmap", f"{kind}-composition", grid[earlier, later], labels[earlier], labels[later],
                                "later head", "earlier head") for kind, grid in grids.items()]
    return table
