"""The paper's circuits as factored matrices (row-vector orientation, SPEC §3).

Legend: V = d_vocab, d = d_model, e = d_head, n_ctx = positions.
  direct     W_E W_U                      [V, V]   rows: current token, cols: next-token logit
  ov (full)  W_E W_V^h W_O^h W_U          [V, V]   rows: attended (source) token, cols: logit raised
  qk (full)  W_E W_Q^h (W_E W_K^h)^T      [V, V]   rows: query (destination), cols: key (source); raw scores
  wov        W_V^h W_O^h                  [d, d]
  wqk        W_Q^h W_K^h^T                [d, d]
  qk_pos     W_pos W_Q^h (W_pos W_K^h)^T  [n_ctx, n_ctx]
Rotary models: the token QK circuit is the content term at relative offset N (default 0): the
query side is rotated by N positions, as the forward pass rotates it (exact: rotary scores
depend on the offset only).
"""

from __future__ import annotations

import numpy as np

from ..core.factored import Factored
from ..errors import InputError
from ..forward import rotary_tables, apply_rotary

CIRCUITS = ("direct", "ov", "qk", "wov", "wqk")


def direct(w) -> Factored:
    return Factored(w["embed.W_E"], w["unembed.W_U"])


def wov(w, l: int, h: int) -> Factored:
    return Factored(w[f"blocks.{l}.attn.W_V"][h], w[f"blocks.{l}.attn.W_O"][h])


def wqk(w, l: int, h: int) -> Factored:
    return Factored(w[f"blocks.{l}.attn.W_Q"][h], w[f"blocks.{l}.attn.W_K"][h].T)


def ov(w, l: int, h: int, via: tuple[int, int] | None = None) -> Factored:
    """Full OV circuit W_E W_V W_O W_U, factored through d_head: [V, e] @ [e, V].

    ``via`` = (l1, h1), l1 < l: the virtual OV circuit W_E W_OV^{h1} W_OV^{h} W_U (V-composition), factored
    through h1's d_head: (W_E W_V^{h1}) [V, e] @ (W_O^{h1} W_V^h W_O^h W_U) [e, V], the same inner size."""
    V, O = _vo(w, l, h)
    if via is None:
        return Factored(w["embed.W_E"] @ V, O @ w["unembed.W_U"])
    V1, O1 = _vo(w, *via)
    return Factored(w["embed.W_E"] @ V1, ((O1 @ V) @ O) @ w["unembed.W_U"])


def _vo(w, l: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return w[f"blocks.{l}.attn.W_V"][h], w[f"blocks.{l}.attn.W_O"][h]


def _through(x: np.ndarray, w, via: tuple[int, int] | None) -> np.ndarray:
    """x W_OV^{via} (x unchanged without ``via``): what head ``via`` writes when it attends to rows x."""
    if via is None:
        return x
    V1, O1 = _vo(w, *via)
    return (x @ V1) @ O1


def check_via(cfg, heads, via: tuple[int, int] | None, option: str = "--via") -> None:
    """A path goes from an earlier layer to a later one: via = (l1, h1) needs l1 < l for every head."""
    if via is None:
        return
    check_heads(cfg, [via])
    for l, h in heads:
        if via[0] >= l:
            raise InputError(f"{option} {via[0]}.{via[1]} must be in an earlier layer than head {l}.{h}",
                             "a path runs from an earlier head into a later one")


def few_rows(cfg) -> int:
    """Below this many rows a full OV/QK circuit is cheaper factored through d_model with the rows'
    head factors folded in (n·d·V multiply-adds) than through d_head (2·V·d·e + n·e·V): n < 2de/(d−e)."""
    d, e = cfg.d_model, cfg.d_head
    return 2 * d * e // max(1, d - e) if d > e else 0


def ov_rows(w, l: int, h: int, rows, via: tuple[int, int] | None = None) -> Factored:
    """Rows ``rows`` of the full (or ``via``: virtual) OV circuit: (W_E[rows] [W_OV^{via}] W_V W_O) [n, d] @ W_U."""
    V, O = _vo(w, l, h)
    return Factored((_through(w["embed.W_E"][rows], w, via) @ V) @ O, w["unembed.W_U"])


def qk_rows(w, l: int, h: int, rows, offset: int = 0, key_via=None, query_via=None) -> Factored:
    """Rows ``rows`` (queries) of the full QK circuit (or its K-/Q-composition term, see ``qk``):
    (rot(W_E[rows] [W_OV^{query_via}] W_Q) (W_OV^{key_via} W_K)^T) [n, d] @ W_E^T [d, V]."""
    check_offset(w.cfg, offset)
    q = _rotate(_through(w["embed.W_E"][rows], w, query_via) @ w[f"blocks.{l}.attn.W_Q"][h], w.cfg, offset, l)
    q = q @ w[f"blocks.{l}.attn.W_K"][h].T  # [n, d]: the key side's last map, transposed
    if key_via is not None:
        V1, O1 = _vo(w, *key_via)
        q = (q @ O1.T) @ V1.T  # (W_V1 W_O1 W_K)^T = W_K^T W_O1^T W_V1^T
    return Factored(q, w["embed.W_E"].T)


def _rotate(x: np.ndarray, cfg, position: int, layer: int | None = None) -> np.ndarray:
    """Rows of x [n, e] rotated as a query or key at ``position``, with ``layer``'s RoPE (per-layer bases)."""
    if cfg.positional != "rotary" or position == 0:
        return x
    cos, sin = rotary_tables(cfg, np.array([position]), layer)
    return apply_rotary(x[None], cos, sin, cfg.rotary_dim)[0]


def check_offset(cfg, offset: int) -> None:
    if offset and cfg.positional != "rotary":
        raise InputError("--offset applies to rotary models only",
                         f"this {cfg.family} model has {cfg.positional} positions")


def qk(w, l: int, h: int, offset: int = 0, key_via=None, query_via=None) -> Factored:
    """Full QK circuit (W_E W_Q)(W_E W_K)^T, factored through d_head; keys ``offset`` positions back.

    ``key_via`` = (l1, h1): the K-composition term W_E W_Q (W_E W_OV^{h1} W_K)^T, columns = the token h1
    moves into the key position; ``query_via``: the Q-composition term (W_E W_OV^{h1} W_Q)(W_E W_K)^T,
    rows = the token h1 moves into the query position (SPEC 3c). Both: [V, e] @ [e, V]."""
    cfg = w.cfg
    check_offset(cfg, offset)
    W_E, W_Q, W_K = w["embed.W_E"], w[f"blocks.{l}.attn.W_Q"][h], w[f"blocks.{l}.attn.W_K"][h]
    q = _rotate(_path_side(W_E, w, query_via, W_Q), cfg, offset, l)
    k = _path_side(W_E, w, key_via, W_K)
    return Factored(q, k.T)


def _path_side(W_E: np.ndarray, w, via, W: np.ndarray) -> np.ndarray:
    """W_E [W_OV^{via}] W [V, e], with the vocab-sized product through via's d_head: (W_E W_V1)(W_O1 W)."""
    if via is None:
        return W_E @ W
    V1, O1 = _vo(w, *via)
    return (W_E @ V1) @ (O1 @ W)


def qk_positional(w, l: int, h: int) -> Factored:
    """Positional QK circuit (W_pos W_Q)(W_pos W_K)^T [n_ctx, n_ctx] for learned positions."""
    if w.cfg.positional != "learned":
        raise InputError(f"--positional needs learned position embeddings; this model's are {w.cfg.positional}")
    W_pos = w["embed.W_pos"]
    return Factored(W_pos @ w[f"blocks.{l}.attn.W_Q"][h], (W_pos @ w[f"blocks.{l}.attn.W_K"][h]).T)


def embedding_cores(w) -> tuple[np.ndarray, np.ndarray]:
    """R_E, R_U [d, d] from thin QRs W_E = Q_E R_E and W_Uᵀ = Q_U R_U, computed once per model.

    Q_E and Q_U have orthonormal columns, so a full circuit Q_E (core) Q_Uᵀ has the singular values
    of its small core: W_E W_V W_O W_U → R_E W_V W_O R_Uᵀ, W_E W_QK W_Eᵀ → R_E W_QK R_Eᵀ,
    W_E W_U → R_E R_Uᵀ. Exact (no Gram matrices), and vocab-sized work happens once, not per head."""
    cores = w.__dict__.get("_embedding_cores")
    if cores is None:
        cores = w.__dict__["_embedding_cores"] = (np.linalg.qr(w["embed.W_E"], mode="r"),
                                                  np.linalg.qr(w["unembed.W_U"].T, mode="r"))
    return cores


def reduced(w, name: str, l: int | None = None, h: int | None = None) -> Factored:
    """A d-sized factored matrix with the same singular values as circuit ``name`` (see embedding_cores)."""
    if name in ("wov", "wqk"):
        return circuit(w, name, l, h)
    R_E, R_U = embedding_cores(w)
    if name == "direct":
        return Factored(R_E, R_U.T)
    if name == "ov":
        return Factored(R_E @ w[f"blocks.{l}.attn.W_V"][h], w[f"blocks.{l}.attn.W_O"][h] @ R_U.T)
    return Factored(R_E @ w[f"blocks.{l}.attn.W_Q"][h], (R_E @ w[f"blocks.{l}.attn.W_K"][h]).T)


def circuit(w, name: str, l: int | None = None, h: int | None = None) -> Factored:
    if name == "direct":
        return direct(w)
    return {"ov": ov, "qk": qk, "wov": wov, "wqk": wqk}[name](w, l, h)


def preload(w, heads, names=("W_Q", "W_K", "W_V", "W_O")) -> None:
    """Read (and so validate) every tensor the heads' circuits need before any output is written."""
    w["embed.W_E"], w["unembed.W_U"]
    for l in sorted({l for l, _ in heads}):
        for n in names:
            w[f"blocks.{l}.attn.{n}"]


def all_heads(cfg) -> list[tuple[int, int]]:
    return [(l, h) for l in range(cfg.n_layers) for h in range(cfg.n_heads)]


def check_heads(cfg, heads: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Validate (layer, head) pairs against the model; one clear error for the first bad one."""
    for l, h in heads:
        if not 0 <= l < cfg.n_layers:
            raise InputError(f"layer {l} out of range: the model has {cfg.n_layers} layers (0–{cfg.n_layers - 1})")
        if not 0 <= h < cfg.n_heads:
            raise InputError(f"head {l}.{h} out of range: layer {l} has {cfg.n_heads} heads (0–{cfg.n_heads - 1})")
    return heads
