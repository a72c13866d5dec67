"""A numpy forward pass for every supported family, keeping the residual-stream pieces it adds.

Legend: T = prompt length, d = d_model, H = n_heads, e = d_head, m = d_mlp, V = d_vocab.
Pre-norm block (GPT-2, NeoX, Llama):   x = x + attn(ln1(x));  x = x + mlp(ln2(x))
Parallel block (NeoX):                 x = x + attn(ln1(x)) + mlp(ln2(x))
Post-norm block (BERT):                x = ln1(x + attn(x));  x = ln2(x + mlp(x))
Logits: ln_final(x) @ W_U + b_U (BERT: x @ W_E^T, no final norm).
Every norm records its frozen linear map (mean and scale per position), so that any part of
its input can be pushed through it exactly as the real run did (``Norm.apply``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import ModelConfig


# ------------------------------------------------------------------ elementwise functions
def erf(x: np.ndarray) -> np.ndarray:
    """The error function to float64 precision, vectorised (numpy has none).

    |x| < 3: erf(x) = 2/√π e^{-x²} Σ_n 2^n x^{2n+1} / (1·3·…·(2n+1)) (all terms positive);
    |x| ≥ 3: erfc from its continued fraction (Lentz-free backward evaluation, 60 terms).
    """
    x = np.asarray(x, dtype=np.float64)
    a = np.abs(x)
    out = np.empty_like(a)
    small = a < 3.0
    if small.any():
        s = a[small]
        term = s.copy()
        total = s.copy()
        s2 = 2.0 * s * s
        for n in range(1, 100):
            term = term * s2 / (2 * n + 1)
            total += term
        out[small] = 2.0 / np.sqrt(np.pi) * np.exp(-s * s) * total
    if (~small).any():
        s = a[~small]
        frac = np.zeros_like(s)
        for n in range(60, 0, -1):
            frac = (n / 2.0) / (s + frac)
        out[~small] = 1.0 - np.exp(-s * s) / np.sqrt(np.pi) / (s + frac)
    return np.sign(x) * out


def act(name: str, x: np.ndarray) -> np.ndarray:
    if name == "gelu_new":  # tanh approximation (GPT-2): 0.5 x (1 + tanh(√(2/π) (x + 0.044715 x³))), in place
        t = x * x
        t *= 0.044715
        t += 1.0
        t *= x
        t *= math.sqrt(2.0 / math.pi)
        np.tanh(t, out=t)
        t += 1.0
        t *= x
        t *= 0.5
        return t
    if name == "gelu":  # exact
        return (0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))).astype(x.dtype)
    if name == "relu":
        return np.maximum(x, 0)
    if name == "silu":
        return x / (1.0 + np.exp(-x))
    raise ValueError(name)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


# ------------------------------------------------------------------ norms
@dataclass
class Norm:
    """A norm applied to x [T, d], frozen: y = (x - mean) * scale * w + b (RMSNorm: mean = 0)."""

    kind: str
    mean: np.ndarray  # [T, 1]
    scale: np.ndarray  # [T, 1]
    w: np.ndarray  # [d]
    b: np.ndarray  # [d]

    def apply(self, part: np.ndarray, pos=slice(None), bias: bool = False) -> np.ndarray:
        """Push ``part`` (a summand of the norm's input at positions ``pos``) through the frozen map.

        Linear in ``part``: the sum over all parts of the input, plus ``b`` once, is the real output."""
        centred = part - part.mean(-1, keepdims=True) if self.kind == "layernorm" else part
        out = centred * self.scale[pos] * self.w
        return out + self.b if bias else out


def norm(cfg: ModelConfig, x: np.ndarray, w: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, Norm]:
    """LayerNorm or RMSNorm over the last axis of x [T, d]; returns (output, frozen Norm)."""
    if cfg.norm == "none":
        n = Norm("none", np.zeros(x.shape[:-1] + (1,), x.dtype), np.ones(x.shape[:-1] + (1,), x.dtype), w, b)
        return x, n
    if cfg.norm == "layernorm":
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
    else:
        mean = np.zeros(x.shape[:-1] + (1,), x.dtype)
        var = (x**2).mean(-1, keepdims=True)
    scale = 1.0 / np.sqrt(var + cfg.eps)
    n = Norm(cfg.norm, mean, scale, w, b)
    return (x - mean) * scale * w + b, n


# ------------------------------------------------------------------ rotary
def rotary_tables(cfg: ModelConfig, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, rotary_dim / 2] for rotate-half RoPE: θ_i = base^(-2i / rotary_dim)."""
    rd = cfg.rotary_dim
    inv_freq = 1.0 / (cfg.rotary_base ** (np.arange(0, rd, 2, dtype=np.float64) / rd))
    if cfg.extras.get("rope_llama3"):
        inv_freq = llama3_frequencies(inv_freq, **cfg.extras["rope_llama3"])
    angles = (np.asarray(positions, dtype=np.float64) / cfg.rotary_scale)[:, None] * inv_freq[None]
    return np.cos(angles), np.sin(angles)


def llama3_frequencies(inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
                       original_max_position_embeddings: int) -> np.ndarray:
    """Llama 3.x RoPE scaling: wavelengths λ = 2π/θ longer than L/low (L the original context) are
    stretched by ``factor``, shorter than L/high kept, and those between interpolated linearly in L/λ."""
    L = float(original_max_position_embeddings)
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > L / low_freq_factor, inv_freq / factor, inv_freq)
    smooth = (L / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    medium = (wavelen >= L / high_freq_factor) & (wavelen <= L / low_freq_factor)
    return np.where(medium, (1 - smooth) * scaled / factor + smooth * scaled, scaled)


def apply_rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, rotary_dim: int) -> np.ndarray:
    """Rotate the first rotary_dim features of x [..., T, e] pairwise (i, i + rotary_dim/2), as HF."""
    half = rotary_dim // 2
    x1, x2 = x[..., :half], x[..., half:rotary_dim]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rotary_dim:]], axis=-1)


# ------------------------------------------------------------------ the model
@dataclass
class Cache:
    """What one forward pass computed, per layer l (lists indexed by l)."""

    tokens: np.ndarray  # [T]
    embed: np.ndarray  # [T, d] token embedding
    pos_embed: np.ndarray  # [T, d] learned positions (zeros otherwise)
    type_embed: np.ndarray  # [T, d] BERT token types (zeros otherwise)
    embed_norm: Norm | None = None
    resid_embed: np.ndarray | None = None  # [T, d] the stream entering block 0 (after any embedding norm)
    resid_pre: list = field(default_factory=list)  # [T, d] entering block l
    head_out: list = field(default_factory=list)  # [H, T, d] each head's write, z_h W_O^h
    attn_bias: list = field(default_factory=list)  # [d] b_O
    pattern: list = field(default_factory=list)  # [H, T, T] attention weights, rows = destination
    mlp_out: list = field(default_factory=list)  # [T, d] (includes b_out)
    mlp_act: list = field(default_factory=list)  # [T, m] post-activation hidden that multiplies W_out (None: attn-only)
    norms: list = field(default_factory=list)  # (ln1, ln2) frozen Norms of block l
    resid_post: list = field(default_factory=list)  # [T, d] leaving block l
    final_norm: Norm | None = None
    logits: np.ndarray | None = None  # [T, V]


def attention_scale(cfg: ModelConfig, l: int) -> float:
    """The factor on q·k: 1/sqrt(d_head) (unless the config turns it off), and 1/(l + 1) where asked."""
    s = 1.0 / math.sqrt(cfg.d_head) if cfg.scale_attn else 1.0
    return s / (l + 1) if cfg.scale_attn_by_layer else s


def layer_window(cfg: ModelConfig, l: int) -> int | None:
    """Layer l's sliding attention window (keys at most window − 1 positions back), or None."""
    windows = cfg.extras.get("layer_windows")
    return windows[l] if windows is not None else cfg.extras.get("sliding_window")


def attention(cfg: ModelConfig, w, l: int, x: np.ndarray, positions: np.ndarray):
    """Multi-head attention on x [T, d]: returns (head_out [H, T, d], pattern [H, T, T])."""
    p = f"blocks.{l}.attn."
    H, e, T = cfg.n_heads, cfg.d_head, x.shape[0]
    W = np.concatenate([w[p + "W_Q"], w[p + "W_K"], w[p + "W_V"]])  # [3H, d, e]
    qkv = x @ W.transpose(1, 0, 2).reshape(x.shape[1], 3 * H * e)  # one GEMM: [T, 3H·e]
    qkv = qkv.reshape(T, 3 * H, e).transpose(1, 0, 2)  # [3H, T, e]
    b = np.concatenate([w[p + "b_Q"], w[p + "b_K"], w[p + "b_V"]])[:, None]  # [3H, 1, e]
    q, k, v = np.split(qkv + b, 3)  # each [H, T, e]
    if cfg.positional == "rotary":
        cos, sin = rotary_tables(cfg, positions)
        q, k = apply_rotary(q, cos, sin, cfg.rotary_dim), apply_rotary(k, cos, sin, cfg.rotary_dim)
    scores = q @ k.transpose(0, 2, 1) * attention_scale(cfg, l)  # [H, T_dst, T_src]
    if cfg.causal:
        scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)
    window = layer_window(cfg, l)
    if window and cfg.causal:
        i = np.arange(T)
        scores = np.where(i[:, None] - i[None, :] < window, scores, -np.inf)
    pattern = softmax(scores)
    z = pattern @ v  # [H, T, e]
    return z @ w[p + "W_O"], pattern  # [H, T, e] @ [H, e, d] -> [H, T, d]


def mlp(cfg: ModelConfig, w, l: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x [T, d] → (out [T, d], hidden [T, m]): hidden = act(x W_in + b_in), out = hidden W_out + b_out;
    gated (SwiGLU): hidden = act(x W_gate + b_gate) * (x W_in + b_in)."""
    p = f"blocks.{l}.mlp."
    pre = x @ w[p + "W_in"] + w[p + "b_in"]
    if cfg.gated_mlp:
        hidden = act(cfg.act_fn, x @ w[p + "W_gate"] + w[p + "b_gate"]) * pre
    else:
        hidden = act(cfg.act_fn, pre)
    return hidden @ w[p + "W_out"] + w[p + "b_out"], hidden


def run(w, tokens, token_types=None) -> Cache:
    """Run the model on token ids [T]; return the Cache with every residual-stream piece and the logits."""
    cfg: ModelConfig = w.cfg
    tokens = np.asarray(tokens)
    T = len(tokens)
    positions = np.arange(T)
    d, dt = cfg.d_model, w.dtype
    embed = w["embed.W_E"][tokens]
    pos = w["embed.W_pos"][positions] if cfg.positional == "learned" else np.zeros((T, d), dt)
    types = np.zeros((T, d), dt)
    if cfg.n_token_types:
        types = w["embed.W_tt"][np.zeros(T, int) if token_types is None else np.asarray(token_types)]
    cache = Cache(tokens, embed, pos, types)
    x = embed + pos + types
    if cfg.embed_norm:
        x, cache.embed_norm = norm(cfg, x, w["embed.ln.w"], w["embed.ln.b"])
    cache.resid_embed = x
    for l in range(cfg.n_layers):
        p = f"blocks.{l}."
        cache.resid_pre.append(x)
        ln2 = None
        if cfg.norm_placement == "post":
            heads, pattern = attention(cfg, w, l, x, positions)
            x, ln1 = norm(cfg, x + heads.sum(0) + w[p + "attn.b_O"], w[p + "ln1.w"], w[p + "ln1.b"])
            out, hidden = mlp(cfg, w, l, x) if not cfg.attn_only else (np.zeros_like(x), None)
            if not cfg.attn_only:
                x, ln2 = norm(cfg, x + out, w[p + "ln2.w"], w[p + "ln2.b"])
        else:
            a_in, ln1 = norm(cfg, x, w[p + "ln1.w"], w[p + "ln1.b"])
            heads, pattern = attention(cfg, w, l, a_in, positions)
            attn_out = heads.sum(0) + w[p + "attn.b_O"]
            hidden = None
            if cfg.attn_only:
                out = np.zeros_like(x)
                x = x + attn_out
            elif cfg.parallel_attn_mlp:
                m_in, ln2 = norm(cfg, x, w[p + "ln2.w"], w[p + "ln2.b"])
                out, hidden = mlp(cfg, w, l, m_in)
                x = x + attn_out + out
            else:
                x = x + attn_out
                m_in, ln2 = norm(cfg, x, w[p + "ln2.w"], w[p + "ln2.b"])
                out, hidden = mlp(cfg, w, l, m_in)
                x = x + out
        cache.head_out.append(heads)
        cache.attn_bias.append(w[p + "attn.b_O"])
        cache.pattern.append(pattern)
        cache.mlp_out.append(out)
        cache.mlp_act.append(hidden)
        cache.norms.append((ln1, ln2))
        cache.resid_post.append(x)
    if cfg.final_norm and cfg.norm != "none":
        x, cache.final_norm = norm(cfg, x, w["ln_final.w"], w["ln_final.b"])
    cache.logits = x @ w["unembed.W_U"] + w["unembed.b_U"]
    return cache
