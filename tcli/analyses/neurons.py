"""``neurons``: FFN neurons read in vocabulary space (SPEC §3b), streamed like ``bigram --all``.

Legend: V = d_vocab, d = d_model, m = d_mlp, L = n_layers. Processed weights (SPEC §2): in
pre-norm models ln2 is folded into W_in/W_gate and the final norm into W_U; LayerNorm models
have W_out and W_U centred (so an ``out`` row has mean 0 over the vocabulary).

Each side of layer l is one factored [m, V] matrix, row n = neuron n, columns = tokens:
  out   M[n, v] = W_out[n] · W_U[:, v]      Factored(W_out [m, d], W_U [d, V])     logits
  in    M[n, v] = W_E[v] · W_in[:, n]       Factored(W_inᵀ [m, d], W_Eᵀ [d, V])    pre-activation units
  gate  M[n, v] = W_E[v] · W_gate[:, n]     Factored(W_gateᵀ [m, d], W_Eᵀ [d, V])  (gated MLPs only)
``in``/``gate`` are the direct-path part of the neuron's input only: the token's embedding as it
reaches the MLP with nothing else in the stream (no positions, no attention, no norm scale).

Per-neuron rows (named neurons, or ``--all`` for whole layers): the top (``bottom``: most negative)
k entries of each row, through ``core.stream.topk_rows`` in row blocks (memory O(block · V)).

Census (one row per neuron, the best k per layer): token-likeness of row n is the z-score of its
top entry over its own row,
    z_n = (max_v M[n, v] − μ_n) / σ_n       (``bottom``: (μ_n − min_v M[n, v]) / σ_n)
with μ_n = A[n] · b̄, b̄ = B 1 / V [d] (the mean column of B), and σ_n² = A[n] C A[n]ᵀ / V with
C = (B − b̄ 1ᵀ)(B − b̄ 1ᵀ)ᵀ [d, d], the centred Gram of B: exact from the factors, in float64
(``row_moments``; it equals W_out[n] (W_U W_Uᵀ) W_out[n]ᵀ / V − μ_n², without the cancellation). The max is the exact
streamed top-1 of the row. Tests: tests/test_neurons.py (dense numpy oracle, planted neuron).
"""

from __future__ import annotations

import json
from typing import Callable

import numpy as np

from ..core.factored import Factored
from ..core.stream import topk_rows
from ..errors import InputError
from ..model import has_moe
from ..output.table import Table
from .. import columns

SIDES = ("out", "in", "gate")
NEURON_COLUMNS, CENSUS_COLUMNS = columns.NEURONS, columns.CENSUS  # census gate_norm: gated MLPs only
CENSUS_TOKENS = 5  # tokens listed in the census column top_tokens


# ------------------------------------------------------------------ validation
def check_mlp(cfg) -> None:
    if cfg.attn_only or not cfg.d_mlp:
        raise InputError("this model is attention-only: it has no MLP neurons")
    if has_moe(cfg):
        raise InputError(f"this {cfg.family} model's MLPs are mixtures of experts ({cfg.n_experts} experts per layer): "
                         "neuron commands read one [d, m] MLP per layer and are not computed for them")


def check_layers(cfg, layers) -> list[int]:
    """Layer indices, validated, duplicates dropped (order kept)."""
    check_mlp(cfg)
    for l in layers:
        if not 0 <= l < cfg.n_layers:
            raise InputError(f"layer {l} out of range: the model has {cfg.n_layers} layers (0–{cfg.n_layers - 1})")
    return list(dict.fromkeys(layers))


def check_neurons(cfg, neurons) -> list[tuple[int, np.ndarray]]:
    """(layer, neuron) pairs → [(layer, neuron ids)], grouped by layer in order of first appearance."""
    check_layers(cfg, [l for l, _ in neurons])
    groups: dict[int, list[int]] = {}
    for l, n in neurons:
        if not 0 <= n < cfg.d_mlp:
            raise InputError(f"neuron {l}.{n} out of range: layer {l} has {cfg.d_mlp} neurons (0–{cfg.d_mlp - 1})")
        groups.setdefault(l, [])
        if n not in groups[l]:
            groups[l].append(n)
    return [(l, np.array(ns, dtype=np.int64)) for l, ns in groups.items()]


def check_sides(cfg, sides) -> list[str]:
    sides = list(dict.fromkeys(sides or ["out"]))
    for s in sides:
        if s not in SIDES:
            raise InputError(f"--side {s!r}: choose out, in or gate")
        if s == "gate" and not cfg.gated_mlp:
            raise InputError(f"--side gate: this {cfg.family} model's MLPs are not gated (choose out or in)")
    return sides


# ------------------------------------------------------------------ the matrices
def side_matrix(w, l: int, side: str) -> Factored:
    """Layer l's [m, V] neuron-by-token matrix of ``side`` (module doc), factored through d."""
    p = f"blocks.{l}.mlp."
    if side == "out":
        return Factored(w[p + "W_out"], w["unembed.W_U"])
    return Factored(w[p + ("W_in" if side == "in" else "W_gate")].T, w["embed.W_E"].T)


class _Moments:
    """Of one right factor B [d, V], in float64, formed in column chunks: b̄ = B 1 / V [d] and the
    centred Gram C = (B − b̄ 1ᵀ)(B − b̄ 1ᵀ)ᵀ [d, d], so that row n of A @ B has mean A[n] · b̄ and
    variance A[n] C A[n]ᵀ / V (centred first: no cancellation of E[x²] − μ²)."""

    def __init__(self, B: np.ndarray, chunk: int = 4096):
        d, V = B.shape
        self.V = V
        self.mean = np.zeros(d, np.float64)
        for c in range(0, V, chunk):
            self.mean += B[:, c:c + chunk].astype(np.float64).sum(1)
        self.mean /= V
        self.C = np.zeros((d, d), np.float64)
        for c in range(0, V, chunk):
            part = B[:, c:c + chunk].astype(np.float64) - self.mean[:, None]  # [d, chunk]
            self.C += part @ part.T

    def rows(self, A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(μ [m], σ [m]) of the rows of A @ B over their V entries, exactly (float64)."""
        A = A.astype(np.float64)
        var = np.einsum("nd,nd->n", A @ self.C, A) / self.V
        return A @ self.mean, np.sqrt(np.maximum(var, 0.0))


def row_moments(F: Factored) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation [m] of each row of F = A @ B over its columns, exact from the factors."""
    return _Moments(F.B).rows(F.A)


# ------------------------------------------------------------------ per-neuron rows
def neurons(w, vocab, selected: list[tuple[int, np.ndarray | None]], sides, k: int = 10, bottom: bool = False,
            progress: Callable[[int], None] | None = None, block: int | None = None) -> Table:
    """Top-k tokens of each selected neuron's row, per side.

    ``selected``: [(layer, neuron ids or None for every neuron of the layer)], validated. Rows of
    the output: for each side, layer and neuron, ranks 1…k of M[n, :] (module doc), streamed in row
    blocks (``block`` rows each; default: ≈256 MiB). Columns: layer, neuron, side, rank, token_id, token, value."""
    strings = np.array(vocab.strings(), dtype=object)

    def chunks():
        for side in sides:
            for l, rows in selected:
                F = side_matrix(w, l, side)
                for ids, vals, cols in topk_rows(F.A, F.B, k, rows, largest=not bottom, block=block,
                                                  progress=progress):
                    kk = vals.shape[1]
                    c = cols.ravel()
                    yield {"layer": np.full(c.size, l), "neuron": np.repeat(ids, kk), "side": np.full(c.size, side),
                           "rank": np.tile(np.arange(1, kk + 1), len(ids)), "token_id": c, "token": strings[c],
                           "value": vals.ravel()}

    what = "most negative" if bottom else "top"
    names = {"out": "W_out[n] W_U (logits)", "in": "W_E W_in[:, n]", "gate": "W_E W_gate[:, n]"}
    title = f"Neurons in vocabulary space, {what} tokens: " + ", ".join(f"{s} = {names[s]}" for s in sides)
    notes = ["in/gate: the direct-path part of the neuron's input only (the token embedding alone)"] \
        if set(sides) & {"in", "gate"} else []
    return Table(NEURON_COLUMNS, chunks(), title=title, notes=notes, token_columns=("token",))


# ------------------------------------------------------------------ census
def census(w, vocab, layers: list[int], sides, k: int = 10, bottom: bool = False,
           progress: Callable[[int], None] | None = None, n_tokens: int = CENSUS_TOKENS,
           block: int | None = None) -> Table:
    """One row per neuron, the k most token-like per layer and side, ranked by the z-score of the
    module doc (exact max streamed over all m rows of each layer; μ, σ from the factors).

    Columns: layer, neuron, side, rank, z_score, top_id, top_value, mean, std, in_norm, gate_norm
    (gated MLPs only), out_norm, top_tokens (the first ``n_tokens`` tokens of the row as a JSON list,
    the top token first; with ``bottom`` the most negative ones, and top_* is the most negative entry).
    Norms are Euclidean norms of the processed W_in[:, n], W_gate[:, n], W_out[n]."""
    cfg = w.cfg
    strings = np.array(vocab.strings(), dtype=object)
    moments: dict[str, _Moments] = {}

    def chunks():
        for side in sides:
            for l in layers:
                F = side_matrix(w, l, side)
                key = "out" if side == "out" else "embed"
                if key not in moments:
                    moments.clear()  # one vocabulary-side factor's moments at a time
                    moments[key] = _Moments(F.B)
                mean, std = moments[key].rows(F.A)
                best = np.empty(cfg.d_mlp, np.float64)
                for ids, vals, _ in topk_rows(F.A, F.B, 1, largest=not bottom, block=block, progress=progress):
                    best[ids] = vals[:, 0]
                with np.errstate(divide="ignore", invalid="ignore"):
                    z = (best - mean) / std if not bottom else (mean - best) / std
                z[std == 0] = np.nan  # a constant row (e.g. a dead neuron) has no token-likeness
                key_z = np.where(np.isnan(z), -np.inf, z)
                order = np.lexsort((np.arange(cfg.d_mlp), -key_z))[:k]
                tok_vals, tok_ids = _rows_topk(F, order, n_tokens, bottom)
                p = f"blocks.{l}.mlp."
                yield {"layer": np.full(len(order), l), "neuron": order, "side": np.full(len(order), side),
                       "rank": np.arange(1, len(order) + 1), "z_score": z[order],
                       "top_id": tok_ids[:, 0], "top_value": tok_vals[:, 0], "mean": mean[order], "std": std[order],
                       "in_norm": np.linalg.norm(w[p + "W_in"][:, order], axis=0),
                       "gate_norm": np.linalg.norm(w[p + "W_gate"][:, order], axis=0) if cfg.gated_mlp else None,
                       "out_norm": np.linalg.norm(w[p + "W_out"][order], axis=1),
                       "top_tokens": [json.dumps(list(strings[r]), ensure_ascii=False, separators=(",", ":"))
                                      for r in tok_ids]}

    sign = "(μ − min) / σ" if bottom else "(max − μ) / σ"
    columns = [c for c in CENSUS_COLUMNS if c != "gate_norm" or cfg.gated_mlp]
    return Table(columns, chunks(), title=f"Neuron census: the {k} most token-like neurons per layer, "
                 f"z = {sign} of each neuron's row", token_columns=("top_tokens",))


def _rows_topk(F: Factored, rows: np.ndarray, k: int, bottom: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-k (values [n, k], ids [n, k]) of a few rows of F, in the order of ``rows``."""
    vals, ids = np.empty((len(rows), 0)), np.empty((len(rows), 0), np.int64)
    for _, vals, ids in topk_rows(F.A, F.B, k, rows, largest=not bottom, block=max(1, len(rows))):
        pass
    return vals, ids
