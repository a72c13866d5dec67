"""``spectrum``: singular values (or eigenvalues) of a circuit, exact from its factors.

Singular values come from QR of the thin factors and the SVD of the small core, never from a
vocab × vocab matrix; the vocabulary-sized QRs of W_E and W_Uᵀ are done once per model
(circuits.embedding_cores), so each head costs d_model-sized work.
Eigenvalues of a square circuit A B are the nonzero ones of B A [r, r].
"""

from __future__ import annotations

import numpy as np

from ..core.factored import effective_rank
from ..errors import InputError
from ..output.table import Figure, Table
from . import circuits
from .. import columns

COLUMNS, EIGEN_COLUMNS = columns.SPECTRUM, columns.EIGEN


def spectrum(w, circuit: str, heads, k: int | None = None, eigen: bool = False, top: int = 5) -> Table:
    """One row per singular value (index from 1, descending) of ``circuit`` for each head.

    cumulative_variance = Σ_{i ≤ index} σ_i² / Σ σ². Notes give the effective rank
    (exp of the entropy of σ/Σσ) and the variance share of the top ``top`` values."""
    if circuit not in circuits.CIRCUITS:
        raise InputError(f"unknown circuit '{circuit}'", f"choose one of {', '.join(circuits.CIRCUITS)}")
    targets = [(None, None)] if circuit == "direct" else heads
    if not targets:
        raise InputError(f"--circuit {circuit} needs heads", "name them as L.H or pass --all-heads")
    notes: list[str] = []
    chunks = []
    for l, h in targets:
        where = circuit if l is None else f"{circuit} {l}.{h}"
        if eigen:
            lam = circuits.circuit(w, circuit, l, h).eigvals()[:k]
            chunks.append({"circuit": [circuit] * len(lam), "layer": [l] * len(lam), "head": [h] * len(lam),
                           "index": np.arange(1, len(lam) + 1), "real": lam.real.astype(np.float64),
                           "imag": lam.imag.astype(np.float64), "abs": np.abs(lam).astype(np.float64)})
            continue
        s = circuits.reduced(w, circuit, l, h).svdvals()  # same σ as the full circuit, d-sized work
        var = s.astype(np.float64) ** 2
        cum = np.cumsum(var) / var.sum() if var.sum() > 0 else np.zeros_like(var)
        notes.append(f"{where}: effective rank {effective_rank(s):.2f}, top-{min(top, len(s))} variance share "
                     f"{cum[min(top, len(s)) - 1]:.3f}")
        s, cum = s[:k], cum[:k]
        chunks.append({"circuit": [circuit] * len(s), "layer": [l] * len(s), "head": [h] * len(s),
                       "index": np.arange(1, len(s) + 1), "singular_value": s, "cumulative_variance": cum})
    kind = "Eigenvalues" if eigen else "Singular values"
    series = [(c["circuit"][0] if c["layer"][0] is None else f"{circuit} {c['layer'][0]}.{c['head'][0]}",
               np.asarray(c["abs"] if eigen else c["singular_value"], dtype=float)) for c in chunks]
    n = max((len(v) for _, v in series), default=0)
    data = np.full((len(series), n), np.nan)
    for i, (_, v) in enumerate(series):
        data[i, :len(v)] = v
    figures = [Figure("lines", f"{kind} of the {circuit} circuit", data, [s for s, _ in series],
                      list(range(1, n + 1)), "index", "|λ|" if eigen else "σ")]
    return Table(EIGEN_COLUMNS if eigen else COLUMNS, chunks, title=f"{kind} of the {circuit} circuit",
                 notes=notes, bar="abs" if eigen else "singular_value", figures=figures)


TOKEN_COLUMNS = columns.SPECTRUM_TOKENS
SIDES = {"direct": ("current token", "next token"), "ov": ("source token", "output token"),
         "qk": ("query token", "key token")}


def singular_directions(w, vocab, circuit: str, heads, n_values: int = 5, k: int = 10) -> Table:
    """For each of the ``n_values`` largest singular values σ_i of the full circuit M = U S Vᵀ [V, V]:
    the ``k`` tokens with the largest entries of u_i (side ``left``: M's rows) and of v_i (``right``:
    its columns). Signs: the largest-magnitude entry of u_i is positive (v_i flipped with it, so
    M = Σ σ_i u_i v_iᵀ still holds). U, V from the thin factors (QR of [V, r] factors, SVD of an
    r × r core): never a vocab × vocab matrix."""
    if circuit not in SIDES:
        raise InputError(f"--tokens lists tokens of a vocabulary circuit: --circuit {circuit} is d_model × d_model",
                         "use --circuit ov, qk or direct")
    strings = np.array(vocab.strings(), dtype=object)
    targets = [(None, None)] if circuit == "direct" else heads
    chunks = []
    for l, h in targets:
        U, S, Vh = circuits.circuit(w, circuit, l, h).svd()
        n = min(n_values, len(S))
        for i in range(n):
            u, v = U[:, i], Vh[i]
            if u[np.argmax(np.abs(u))] < 0:
                u, v = -u, -v
            for side, vec in (("left", u), ("right", v)):
                kk = min(k, len(vec))
                top = np.argpartition(-vec, kk - 1)[:kk] if kk < len(vec) else np.arange(len(vec))
                top = top[np.lexsort((top, -vec[top]))]
                chunks.append({"circuit": [circuit] * kk, "layer": [l] * kk, "head": [h] * kk,
                               "index": np.full(kk, i + 1), "singular_value": np.full(kk, S[i]),
                               "side": [side] * kk, "rank": np.arange(1, kk + 1), "token_id": top,
                               "token": strings[top], "weight": vec[top]})
    rows, cols = SIDES[circuit]
    return Table(TOKEN_COLUMNS, chunks, title=f"Singular directions of the {circuit} circuit (left: {rows}s, "
                 f"right: {cols}s)", token_columns=("token",),
                 notes=[f"left = {rows} side (u_i), right = {cols} side (v_i); sign: the largest |entry| of u_i "
                        "is positive"])
