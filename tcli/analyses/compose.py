"""``compose``: Q-, K- and V-composition scores between heads of different layers (the paper's §).

For h1 in layer l1 < l2 and h2 in l2, with A = W_OV^{h1} = W_V W_O [d, d] (row vectors):
  q: B = W_QK^{h2} = W_Q W_Kᵀ     k: B = W_QK^{h2}ᵀ = W_K W_Qᵀ     v: B = W_OV^{h2}
  score = ‖A B‖_F / (‖A‖_F ‖B‖_F).
With B = X Y per head and e × e roots R_V (R_VᵀR_V = W_VᵀW_V) and R_Y (R_YᵀR_Y = Y Yᵀ),
  ‖W_V W_O X Y‖_F = ‖(R_V W_O)(X R_Yᵀ)‖_F,
so all head pairs of a layer pair come from one [H·e, d] @ [d, H·e] product (layer_factors).
Baseline: the mean score of BASELINE_SAMPLES pairs of random Gaussian matrices
with the same factor shapes ([d, e] @ [e, d]; the score ignores norms), seed 0.
"""

from __future__ import annotations

import numpy as np

from ..output.table import Figure, Table
from .. import columns

COLUMNS = columns.COMPOSE
BASELINE_SAMPLES = 16


def _roots(G: np.ndarray) -> np.ndarray:
    """Per-head R [H, e, e] with RᵀR = G [H, e, e] (symmetric PSD)."""
    lam, Q = np.linalg.eigh(G)
    return np.sqrt(np.clip(lam, 0.0, None))[:, :, None] * Q.transpose(0, 2, 1)


def layer_factors(w, l: int) -> dict:
    """What layer l contributes to composition scores, from float64 e × e Grams.

    As the earlier head: P [H·e, d], rows R_V W_O with R_VᵀR_V = W_VᵀW_V, so ‖W_V W_O M‖ = ‖R_V W_O M‖,
    and ‖A‖² = ‖P_h‖². As the later head, for each kind: Z [d, H·e], columns X R_Yᵀ with
    R_YᵀR_Y = Y Yᵀ (B = X Y: X = W_Q, Y = W_Kᵀ for q; X = W_K, Y = W_Qᵀ for k; X = W_V, Y = W_O for v)."""
    W = {n: w[f"blocks.{l}.attn.W_{n}"] for n in "QKVO"}
    dtype = W["Q"].dtype
    f = {n: a.astype(np.float64) for n, a in W.items()}
    tr = lambda a: a.transpose(0, 2, 1)  # noqa: E731
    G = dict(Q=tr(f["Q"]) @ f["Q"], K=tr(f["K"]) @ f["K"], V=tr(f["V"]) @ f["V"], O=f["O"] @ tr(f["O"]))
    H, e, d = f["O"].shape
    P = _roots(G["V"]) @ f["O"]  # [H, e, d]
    out = {"P": P.reshape(H * e, d).astype(dtype), "norm_a2": (P**2).sum(axis=(1, 2))}
    for kind, X, GY in (("q", f["Q"], G["K"]), ("k", f["K"], G["Q"]), ("v", f["V"], G["O"])):
        Z = X @ tr(_roots(GY))  # [H, d, e]
        out[kind] = Z.transpose(1, 0, 2).reshape(d, H * e).astype(dtype)
        out["norm_b2_" + kind] = (Z**2).sum(axis=(1, 2))
    return out


def composition_scores(w, kind: str, l1: int, l2: int, cache: dict | None = None) -> np.ndarray:
    """Scores [H, H] (rows h1 of layer l1, cols h2 of layer l2) for kind q, k or v.

    ‖A B‖_F² for h1, h2 is the squared norm of the (h1, h2) e × e block of N = P(l1) @ Z(l2, kind):
    one [H·e, d] @ [d, H·e] product per layer pair and kind. ``cache`` (layer -> layer_factors)
    lets many pairs share the per-layer work."""
    cache = {} if cache is None else cache
    for l in (l1, l2):
        if l not in cache:
            cache[l] = layer_factors(w, l)
    a, b = cache[l1], cache[l2]
    N = (a["P"] @ b[kind]).astype(np.float64)  # [H1·e, H2·e]
    H = len(a["norm_a2"])
    num2 = (N**2).reshape(H, N.shape[0] // H, -1, N.shape[1] // len(b["norm_a2"])).sum(axis=(1, 3))
    denom = np.sqrt(np.outer(a["norm_a2"], b["norm_b2_" + kind]))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.sqrt(num2) / denom


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
    cache: dict = {}
    for kind in kinds:
        grid = np.full((cfg.n_layers * H, cfg.n_layers * H), np.nan)
        for l1 in range(cfg.n_layers):
            for l2 in range(l1 + 1, cfg.n_layers):
                S = composition_scores(w, kind, l1, l2, cache)
                grid[l1 * H:(l1 + 1) * H, l2 * H:(l2 + 1) * H] = S
                rows += [(kind, l1, h1, l2, h2, float(S[h1, h2]), base) for h1 in range(H) for h2 in range(H)]
        grids[kind] = grid
    rows.sort(key=lambda r: (-(r[5] if r[5] == r[5] else -1), r[0], r[1], r[2], r[3], r[4]))
    notes = [f"baseline: mean score of {BASELINE_SAMPLES} random pairs of rank-{cfg.d_head} "
             f"{cfg.d_model}×{cfg.d_model} matrices (seed 0) = {base:.4f}"]
    if not rows:
        notes.append("the model has one layer: no pairs of heads across layers")
    table = Table.from_rows(COLUMNS, rows[:top] if top else rows, title="Composition scores", notes=notes,
                           short={"layer1": "L1", "head1": "H1", "layer2": "L2", "head2": "H2"})
    if rows:
        labels = [f"{l}.{h}" for l in range(cfg.n_layers) for h in range(H)]
        earlier, later = slice(0, (cfg.n_layers - 1) * H), slice(H, cfg.n_layers * H)
        table.figures = [Figure("heatmap", f"{kind}-composition", grid[earlier, later], labels[earlier], labels[later],
                                "later head", "earlier head") for kind, grid in grids.items()]
    return table
