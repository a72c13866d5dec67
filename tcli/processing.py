"""Weight processing as TransformerLens does by default, applied lazily per tensor and only where exact.

Steps (SPEC §2), each a pure function of raw tensors:
  fold_ln            pre-norm models: a norm's weight w and bias b are folded into the matrices
                     that read from it: (x̂ w + b) W + c = x̂ (w[:, None] W) + (b W + c).
                     LayerNorm: the reading weights are then centred over d_model (x̂ has zero mean).
  center_writing     pre-LayerNorm models: W_E, W_pos, W_O, b_O, W_out, b_out lose their mean
                     over d_model (every reader of the stream subtracts it).
  center_unembed     W_U, b_U lose their mean over the vocabulary: all logits at a position move
                     by one constant, log-probabilities are unchanged.
  fold_value_biases  b_O += Σ_h b_V[h] W_O[h], b_V = 0 (exact: attention weights sum to 1).
After processing, norm weights read as ones and norm biases as zeros. Post-norm models (BERT) get only
fold_value_biases, as TransformerLens's HookedEncoder processes nothing that changes a circuit: their OV
and QK circuits, spectra and copying scores are those of the raw weights. Sandwich models (Gemma 2/3) fold
their pre-norms and the final norm; sublayer models (OLMo 2, no pre-norms) the final norm only.

Two folds are exact for circuits only (``CIRCUIT_STEPS``, applied with ``center_unembed``, the circuit
commands' processing); ``forward_view`` is the same view without them, and the forward pass uses it:
  fold_qk_norm       QK-norm q̂ = (x W_Q + b_Q) / rms · w_q: W_Q, b_Q (and K) take w_q, w_k; the
                     per-token 1/rms (a positive factor per query and per key) is left out. LayerNorm
                     QK-norm (Cohere): W_Q, b_Q are also centred over d_head (exact); 1/std left out.
  fold_sublayer_norms  a norm on a sublayer's output, RMS(o) · w: W_O, b_O take ln1_post.w and W_out,
                     b_out take ln2_post.w; the per-position 1/rms is left out.
  fold_embed_norm    an embedding norm of the token embedding alone (BLOOM): W_E rows go through it (exact).
``ProcessedWeights.notes`` says, one line each, what circuits leave out for the model (also soft-caps).
"""

from __future__ import annotations

import re

import numpy as np

from .model import ModelConfig, has_moe

STEPS = ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases", "fold_qk_norm",
         "fold_sublayer_norms", "fold_embed_norm")
# exact for circuits only: the forward pass leaves them out
CIRCUIT_STEPS = ("fold_qk_norm", "fold_sublayer_norms", "fold_embed_norm")
# mixture-of-experts tensors that read ln2's output (no biases: MoE models are pre-RMSNorm, loader._check_moe)
MOE_READERS = ("W_router", "W_shared_in", "W_shared_gate", "W_shared_expert_gate")


def applicable_steps(cfg: ModelConfig) -> tuple[str, ...]:
    """The processing steps that are exact for this architecture (circuit-only steps included)."""
    if cfg.norm_placement == "post":  # as TransformerLens's HookedEncoder: nothing that changes a circuit
        return ("fold_value_biases",)
    steps = []
    if cfg.norm != "none" and (cfg.norm_placement != "sublayer" or cfg.final_norm):
        steps.append("fold_ln")
    if cfg.norm_placement == "pre" and cfg.norm == "layernorm":
        steps.append("center_writing_weights")
    steps += ["center_unembed", "fold_value_biases"]
    if cfg.qk_norm != "none":
        steps.append("fold_qk_norm")
    if cfg.norm_placement in ("sandwich", "sublayer"):
        steps.append("fold_sublayer_norms")
    if embed_norm_foldable(cfg):
        steps.append("fold_embed_norm")
    return tuple(steps)


def embed_norm_foldable(cfg: ModelConfig) -> bool:
    """An embedding norm that reads the token embedding alone (no learned positions or token types added
    before it: BLOOM) is a function of the token: circuits may read W_E through it, exactly."""
    return cfg.embed_norm and cfg.positional != "learned" and not cfg.n_token_types


def circuit_notes(cfg: ModelConfig, steps: tuple[str, ...]) -> list[str]:
    """One line per input-dependent mechanism that weight circuits (ov, qk, bigram, …) leave out."""
    notes = []
    if cfg.qk_norm != "none":
        how = "folded into W_Q, W_K" if "fold_qk_norm" in steps else "not folded (--raw)"
        if cfg.qk_norm == "head_layernorm" and "fold_qk_norm" in steps:
            how += " with its centring over d_head"
        stat = "1/std" if cfg.qk_norm == "head_layernorm" else "1/rms"
        notes.append(f"QK-norm: its weights are {how}; the per-token {stat} of q and k is left out (QK circuits "
                     "are exact up to a positive factor per query and per key)")
    if cfg.clip_qkv:
        notes.append(f"clip_qkv: q, k, v are clamped to [-c, c], c = {cfg.clip_qkv:g}, in the forward pass; circuits "
                     "leave the clamp out (exact where no entry of q, k, v exceeds c)")
    if cfg.norm_placement in ("sandwich", "sublayer"):
        how = "folded into W_O, b_O, W_out, b_out" if "fold_sublayer_norms" in steps else "not folded (--raw)"
        notes.append(f"norms on the attention/MLP outputs: their weights are {how}; the per-position 1/rms is "
                     "left out (OV circuits and neuron writes are exact up to a positive factor per position)")
    if has_moe(cfg):
        notes.append(f"mixture of experts: {cfg.n_experts} experts, top-{cfg.experts_per_token} per token"
                     + (" and a shared expert" if cfg.d_shared_expert else "") + f", in {len(cfg.extras['moe_layers'])}"
                     f" of {cfg.n_layers} layers; weight circuits do not read MLPs (neuron commands are refused)")
    if cfg.positional == "alibi":
        notes.append("ALiBi: QK circuits give the token-token scores; the per-head position bias −slope·(i − j) "
                     "(added to every score, falling with distance) is left out")
    if embed_norm_foldable(cfg) and "fold_embed_norm" not in steps:
        notes.append("embedding norm: not folded (--raw); circuits read W_E without it")
    if cfg.attn_softcap:
        notes.append(f"attention soft-cap c·tanh(s / c), c = {cfg.attn_softcap:g}: QK circuits give the scores "
                     "before the cap (same order)")
    if cfg.final_softcap:
        notes.append(f"final-logit soft-cap c·tanh(l / c), c = {cfg.final_softcap:g}: circuits give logits "
                     "before the cap (same order)")
    return notes


def center(x: np.ndarray, axis: int = -1, inplace: bool = False) -> np.ndarray:
    """x minus its mean along ``axis`` (``inplace``: x is a fresh array this step may overwrite)."""
    mean = x.mean(axis=axis, keepdims=True)
    if inplace:
        x -= mean
        return x
    return x - mean


def fold_norm_weight(W: np.ndarray, w: np.ndarray, axis: int, inplace: bool = False) -> np.ndarray:
    """W scaled by the norm weight w [d_model] along its d_model ``axis`` (``inplace`` as in ``center``)."""
    shape = [1] * W.ndim
    shape[axis] = -1
    if inplace:
        W *= w.reshape(shape)
        return W
    return W * w.reshape(shape)


def fold_norm_bias(b: np.ndarray, W: np.ndarray, nb: np.ndarray) -> np.ndarray:
    """b + nb @ W for W [d_model, n] or per head W [H, d_model, e] (b [n] or [H, e])."""
    return b + np.einsum("d,...dn->...n", nb, W)


class ProcessedWeights:
    """A lazy view of ``Weights`` with the given processing steps applied (``steps=()``: raw)."""

    _LAYER = re.compile(r"blocks\.(\d+)\.(\w+)\.(\w+)$")

    def __init__(self, raw, steps: tuple[str, ...]):
        self.raw, self.cfg, self.dtype = raw, raw.cfg, raw.dtype
        self.steps = tuple(steps)
        self._cache: dict[str, np.ndarray] = {}
        self._forward_view = None

    @property
    def forward_view(self) -> "ProcessedWeights":
        """This view without the circuit-only folds (what the forward pass reads)."""
        if not set(self.steps) & set(CIRCUIT_STEPS):
            return self
        if self._forward_view is None:
            self._forward_view = ProcessedWeights(self.raw, tuple(s for s in self.steps if s not in CIRCUIT_STEPS))
        return self._forward_view

    @property
    def notes(self) -> list[str]:
        """What weight circuits leave out for this model (``circuit_notes``)."""
        return circuit_notes(self.cfg, self.steps)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._cache:
            self._cache[name] = self._compute(name) if self.steps else self.raw[name]
            if self.steps:  # vocab-sized: keep one copy (a raw one is re-read if needed again)
                for big in ("embed.W_E", "unembed.W_U"):
                    if big in self._cache:
                        self.raw.evict(big)
        return self._cache[name]

    def __contains__(self, name: str) -> bool:
        return name in self.raw

    def _compute(self, name: str) -> np.ndarray:
        raw, cfg = self.raw, self.cfg
        fold = "fold_ln" in self.steps
        center_read = fold and cfg.norm == "layernorm"
        center_write = "center_writing_weights" in self.steps
        fold_vb = "fold_value_biases" in self.steps
        if name == "embed.W_E" and "fold_embed_norm" in self.steps:  # each row through the embedding norm
            W = raw.take(name)
            mean = W.mean(-1, keepdims=True) if cfg.norm == "layernorm" else 0.0
            W -= mean
            W /= np.sqrt((W * W).mean(-1, keepdims=True) + cfg.eps)
            W = W * raw["embed.ln.w"] + raw["embed.ln.b"]
            return center(W, inplace=True) if center_write else W
        if name in ("embed.W_E", "embed.W_pos"):  # vocab-sized: processed in place on an owned copy
            return center(raw.take(name), inplace=True) if center_write else raw[name]
        if name == "unembed.W_U":
            if not (fold and cfg.final_norm) and "center_unembed" not in self.steps:
                return raw[name]
            W = raw.take(name)
            if fold and cfg.final_norm:
                W = fold_norm_weight(W, raw["ln_final.w"], 0, inplace=True)
                W = center(W, 0, inplace=True) if center_read else W
            return center(W, -1, inplace=True) if "center_unembed" in self.steps else W
        if name == "unembed.b_U":
            b = raw[name]
            if fold and cfg.final_norm:
                b = fold_norm_bias(b, raw["unembed.W_U"], raw["ln_final.b"])
            return center(b) if "center_unembed" in self.steps else b
        m = self._LAYER.match(name)
        fold_pre = fold and cfg.norm_placement != "sublayer"  # sublayer models have no pre-norms
        qk_fold = "fold_qk_norm" in self.steps
        post_fold = "fold_sublayer_norms" in self.steps
        if name.startswith("ln_final.") or (m and m.group(2) in ("ln1", "ln2")):
            if fold if name.startswith("ln_final.") else fold_pre:
                return (np.ones if name.endswith(".w") else np.zeros)(raw.shapes[name], self.dtype)
            return raw[name]
        if m and m.group(2) in ("ln1_post", "ln2_post") and post_fold and name.endswith(".w"):
            return np.ones(raw.shapes[name], self.dtype)
        if not m:
            return raw[name]
        l, block, short = int(m.group(1)), m.group(2), m.group(3)
        if short in ("q_norm_w", "k_norm_w") and qk_fold:
            return np.ones(raw.shapes[name], self.dtype)
        ln = f"blocks.{l}.ln1" if block == "attn" else f"blocks.{l}.ln2"
        out = self._pre_folded(name, l, block, short, ln, fold_pre, center_read, center_write, fold_vb)
        if qk_fold and short in ("W_Q", "W_K", "b_Q", "b_K"):  # w [e] or [H, e] on the head axis e
            wn = raw[f"blocks.{l}.attn.{short[-1].lower()}_norm_w"]
            if cfg.qk_norm == "head_layernorm":  # its centring over e is linear: exact in W_Q, b_Q (and K)
                out = center(out, -1)
            out = out * (wn[:, None, :] if wn.ndim == 2 and short.startswith("W") else wn)
        if post_fold and short in ("W_O", "b_O", "W_out", "b_out"):
            out = out * raw[f"blocks.{l}.{'ln1_post' if block == 'attn' else 'ln2_post'}.w"]
        return out

    def _pre_folded(self, name, l, block, short, ln, fold, center_read, center_write, fold_vb) -> np.ndarray:
        """Layer tensor ``name`` with the pre-norm folded in, centred and value biases folded (as enabled)."""
        raw = self.raw
        if short in ("W_Q", "W_K", "W_V", "W_in", "W_gate") + MOE_READERS:
            W = raw[name]
            if fold:  # mixture-of-experts layers (Routing): the router, each expert [E, d, f] and the shared expert
                axis = 1 if block == "attn" or W.ndim == 3 else 0  # the d_model axis
                W = fold_norm_weight(W, raw[ln + ".w"], axis)
                W = center(W, axis) if center_read else W
            return W
        if short in ("b_Q", "b_K", "b_V", "b_in", "b_gate"):
            if short == "b_V" and fold_vb:
                return np.zeros(raw.shapes[name], self.dtype)
            return self._folded_bias(name, ln) if fold else raw[name]
        if short == "b_O":
            b = raw[name]
            if fold_vb:
                bV = self._folded_bias(f"blocks.{l}.attn.b_V", ln) if fold else raw[f"blocks.{l}.attn.b_V"]
                b = b + np.einsum("he,hed->d", bV, raw[f"blocks.{l}.attn.W_O"])
            return center(b) if center_write else b
        if short in ("W_O", "W_out", "b_out"):
            return center(raw[name]) if center_write else raw[name]
        return raw[name]

    def _folded_bias(self, name: str, ln: str) -> np.ndarray:
        W = self.raw[name.replace(".b_", ".W_")]
        return fold_norm_bias(self.raw[name], W, self.raw[ln + ".b"])


def process(raw, enabled: bool = True, center_unembed: bool = True) -> ProcessedWeights:
    """Processed view of raw weights: every exact step for the architecture, or none (``--raw``).

    ``center_unembed=False`` keeps the raw model's logits (for decompose and lens) and leaves out the
    circuit-only folds (``CIRCUIT_STEPS``)."""
    steps = applicable_steps(raw.cfg) if enabled else ()
    keep = (lambda s: True) if center_unembed else (lambda s: s != "center_unembed" and s not in CIRCUIT_STEPS)
    return ProcessedWeights(raw, tuple(s for s in steps if keep(s)))
