"""A numpy forward pass for every supported family, keeping the residual-stream pieces it adds.

Legend: T = prompt length, d = d_model, H = n_heads, e = d_head, m = d_mlp, V = d_vocab.
One small function per block kind (``BLOCKS``), each returning the new residual and a ``Layer`` record:
  pre-norm (GPT-2, Llama):     x = x + attn(ln1(x));  x = x + mlp(ln2(x))
  parallel (NeoX, GPT-J):      x = x + attn(ln1(x)) + mlp(ln2(x))
  post-norm (BERT):            x = ln1(x + attn(x));  x = ln2(x + mlp(x))
  sandwich (Gemma 2/3):        x = x + ln1_post(attn(ln1(x)));  x = x + ln2_post(mlp(ln2(x)))
  sublayer (OLMo 2):           x = x + ln1_post(attn(x));       x = x + ln2_post(mlp(x))
Attention: q, k, v = x W + b per head; optional QK-norm (RMSNorm of q and k per head, or over the whole
projection); rotary; scores = q·k · scale (+ an ALiBi bias slope·j, itself · scale in Falcon); optional
soft-cap c·tanh(s / c); causal / sliding-window mask.
Logits: ln_final(x) @ W_U + b_U, then an optional soft-cap (BERT: x @ W_E^T, no final norm).
Every norm records its frozen linear map (mean and scale per position), so that any part of
its input can be pushed through it exactly as the real run did (``Norm.apply``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .model import ModelConfig, layer_rope, moe_layer


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
    """A norm applied to x [..., T, d], frozen: y = (x - mean) * scale * w + b (RMSNorm: mean = 0)."""

    kind: str
    mean: np.ndarray  # [..., T, 1]
    scale: np.ndarray  # [..., T, 1]
    w: np.ndarray  # [d]
    b: np.ndarray  # [d]

    def apply(self, part: np.ndarray, pos=slice(None), bias: bool = False) -> np.ndarray:
        """Push ``part`` (a summand of the norm's input at positions ``pos``) through the frozen map.

        Linear in ``part``: the sum over all parts of the input, plus ``b`` once, is the real output."""
        centred = part - part.mean(-1, keepdims=True) if self.kind == "layernorm" else part
        out = centred * self.scale[pos] * self.w
        return out + self.b if bias else out


def norm(cfg: ModelConfig, x: np.ndarray, w: np.ndarray, b: np.ndarray, kind: str | None = None
         ) -> tuple[np.ndarray, Norm]:
    """LayerNorm or RMSNorm (``kind``, default the model's) over the last axis of x [..., d];
    returns (output, frozen Norm)."""
    kind = kind or cfg.norm
    ones = np.ones(x.shape[:-1] + (1,), x.dtype)
    if kind == "none":
        return x, Norm("none", 0 * ones, ones, w, b)
    if kind == "layernorm":
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
    else:
        mean = 0 * ones
        var = (x**2).mean(-1, keepdims=True)
    scale = 1.0 / np.sqrt(var + cfg.eps)
    return (x - mean) * scale * w + b, Norm(kind, mean, scale, w, b)


def layer_norm(cfg: ModelConfig, w, name: str, x: np.ndarray) -> tuple[np.ndarray, Norm]:
    """The model's norm ``name`` (``blocks.l.ln1`` …: tensors ``name.w``, ``name.b``) applied to x [T, d]."""
    return norm(cfg, x, w[name + ".w"], w[name + ".b"])


# ------------------------------------------------------------------ rotary
def rotary_tables(cfg: ModelConfig, positions: np.ndarray, layer: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """cos, sin [T, rotary_dim / 2] for rotate-half RoPE: θ_i = base^(-2i / rotary_dim), angles p·θ_i / scale,
    rescaled as the RoPE type says (llama3, yarn, longrope, dynamic). LongRoPE and dynamic NTK depend on the
    length T = max(positions) + 1, as in transformers. (YaRN's and LongRoPE's attention factor on cos and sin
    is folded into the rotary coordinates of the queries and keys when they are read: ``rope_attention_factor``.)"""
    rd, rope = cfg.rotary_dim, layer_rope(cfg, layer)
    positions = np.asarray(positions, dtype=np.float64)
    T = int(positions.max()) + 1 if positions.size else 0
    base, exponents = rope["base"], np.arange(0, rd, 2, dtype=np.float64) / rd
    if rope.get("dynamic") and T > rope["dynamic"]["n_ctx"]:  # NTK: base · (f T / n_ctx − (f − 1))^(r / (r − 2))
        f, n = rope["dynamic"]["factor"], rope["dynamic"]["n_ctx"]
        base = base * (f * T / n - (f - 1)) ** (rd / (rd - 2))
    inv_freq = 1.0 / (base ** exponents)
    if rope.get("llama3"):
        inv_freq = llama3_frequencies(inv_freq, **rope["llama3"])
    if rope.get("yarn"):
        inv_freq = yarn_frequencies(rope["base"], rd, **rope["yarn"])
    if rope.get("longrope"):  # per-frequency factors: the long set once the prompt passes the original context
        lr = rope["longrope"]
        inv_freq = 1.0 / (np.asarray(lr["long"] if T > lr["original"] else lr["short"]) * base ** exponents)
    angles = (positions / rope.get("scale", 1.0))[:, None] * inv_freq[None]
    return np.cos(angles), np.sin(angles)


def yarn_frequencies(base: float, rd: int, factor: float, original: float, truncate: bool, beta_fast: float,
                     beta_slow: float, attention_factor: float = 1.0) -> np.ndarray:
    """YaRN: frequencies that turn fewer than beta_slow times over the original context are interpolated
    (θ / factor), those turning more than beta_fast times kept, with a linear ramp between (over the pair
    index); returns θ [rd / 2]."""
    def dim(rotations):  # the pair index whose frequency turns ``rotations`` times over the original context
        return rd * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim(beta_fast), dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rd - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(rd // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1.0 / base ** (np.arange(0, rd, 2, dtype=np.float64) / rd)
    keep = 1 - ramp
    return extrapolation / factor * (1 - keep) + extrapolation * keep


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
    """Rotate the first rotary_dim features of x [..., T, e] pairwise (i, i + rotary_dim/2), as HF.
    (Interleaved pairs (2i, 2i + 1), GPT-J's, are permuted to this form when loaded: ``rotary_pairs``.)"""
    half = rotary_dim // 2
    x1, x2 = x[..., :half], x[..., half:rotary_dim]
    cos, sin = cos.astype(x.dtype), sin.astype(x.dtype)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, x[..., rotary_dim:]], axis=-1)


# ------------------------------------------------------------------ ALiBi
def alibi_slopes(n_heads: int) -> np.ndarray:
    """ALiBi slopes [H] as transformers computes them (float32): with p the largest power of two ≤ H, heads
    0 … p−1 get 2^(−8k/p) (k = 1 … p); the remaining H − p heads get the odd powers of 2^(−4/p), 2^(−4k/p) for
    k = 1, 3, 5, …"""
    p = 2 ** math.floor(math.log2(n_heads))
    base = np.float32(2 ** (-(2 ** -(math.log2(p) - 3))))
    slopes = float(base) ** np.arange(1, p + 1, dtype=np.float64)
    if p != n_heads:
        extra = float(np.float32(2 ** (-(2 ** -(math.log2(2 * p) - 3)))))
        slopes = np.concatenate([slopes, extra ** np.arange(1, 1 + 2 * min(p, n_heads - p), 2, dtype=np.float64)])
    return slopes.astype(np.float32)


def to_bfloat16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to bfloat16 (round to nearest, ties to even), as float32."""
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    return ((u + (0x7FFF + ((u >> 16) & 1))) & 0xFFFF0000).astype(np.uint32).view(np.float32)


def alibi_bias(cfg: ModelConfig, T: int, dtype) -> np.ndarray:
    """The ALiBi bias [H, 1, T]: slope_h · (key position j), rounded as transformers rounds it (``alibi_rounding``:
    float32, or bfloat16 slopes and products: Falcon). Under the causal softmax it equals −slope_h · (i − j)."""
    slopes, j = alibi_slopes(cfg.n_heads), np.arange(T, dtype=np.float64)
    if cfg.extras.get("alibi_rounding") == "bfloat16":
        bias = to_bfloat16((to_bfloat16(slopes).astype(np.float64)[:, None] * j).astype(np.float32))
    else:
        bias = (slopes.astype(np.float64)[:, None] * j).astype(np.float32)
    return bias[:, None, :].astype(dtype)


# ------------------------------------------------------------------ per-layer record and cache
@dataclass
class Layer:
    """What block l computed (one record per layer). Shapes: [T, d] unless noted."""

    resid_pre: np.ndarray  # entering the block
    pattern: np.ndarray  # [H, T, T] attention weights, rows = destination
    head_out: np.ndarray  # [H, T, d] each head's write z_h W_O^h (before any post-sublayer norm)
    attn_bias: np.ndarray  # [d] b_O
    mlp_out: np.ndarray  # MLP output incl. b_out (before any post-sublayer norm); zeros when attention-only
    mlp_act: np.ndarray | None  # [T, m] post-activation hidden that multiplies W_out (None: attention-only)
    resid_post: np.ndarray  # leaving the block
    ln1: Norm | None = None  # before attention (pre, parallel, sandwich); after the attention add (post)
    ln2: Norm | None = None  # before the MLP; after the MLP add (post)
    attn_post: Norm | None = None  # sandwich / sublayer: on the attention output, before the residual add
    mlp_post: Norm | None = None  # sandwich / sublayer: on the MLP output, before the residual add
    q_norm: Norm | None = None  # QK-norm of the queries (scale [H, T, 1], or [T, 1] over the whole projection)
    k_norm: Norm | None = None
    moe: "Routing | None" = None  # mixture-of-experts layers: which experts fired and what each wrote


@dataclass
class Routing:
    """A mixture-of-experts MLP's run (k = experts_per_token, E = n_experts): mlp_out = Σ_j expert_out[:, j]
    + shared_out."""

    router_logits: np.ndarray  # [T, E] x W_router
    experts: np.ndarray  # [T, k] the experts that fired, by falling probability (ties: lower index first)
    weights: np.ndarray  # [T, k] their router weights (softmax, top-k, renormalised if norm_topk_prob)
    expert_out: np.ndarray  # [T, k, d] each fired expert's output times its weight
    shared_out: np.ndarray | None = None  # [T, d] the shared expert's output times its sigmoid gate (or None)
    tied: np.ndarray | None = None  # [T] bool: the k-th and (k+1)-th probabilities are exactly equal


@dataclass
class Cache:
    """What one forward pass computed: the embeddings, one ``Layer`` per block, the final norm and logits.
    The list attributes (``cache.pattern[l]`` …) are views over ``layers``."""

    tokens: np.ndarray  # [T]
    embed: np.ndarray  # [T, d] token embedding (times any embedding scale)
    pos_embed: np.ndarray  # [T, d] learned positions (zeros otherwise)
    type_embed: np.ndarray  # [T, d] BERT token types (zeros otherwise)
    embed_norm: Norm | None = None
    resid_embed: np.ndarray | None = None  # [T, d] the stream entering block 0 (after any embedding norm)
    layers: list[Layer] = field(default_factory=list)
    final_norm: Norm | None = None
    logits_precap: np.ndarray | None = None  # [T, V] before the final soft-cap (= logits without one)
    logits: np.ndarray | None = None  # [T, V]

    def _each(self, name: str) -> list:
        return [getattr(layer, name) for layer in self.layers]

    resid_pre = property(lambda self: self._each("resid_pre"))
    head_out = property(lambda self: self._each("head_out"))
    attn_bias = property(lambda self: self._each("attn_bias"))
    pattern = property(lambda self: self._each("pattern"))
    mlp_out = property(lambda self: self._each("mlp_out"))
    mlp_act = property(lambda self: self._each("mlp_act"))
    resid_post = property(lambda self: self._each("resid_post"))
    norms = property(lambda self: [(layer.ln1, layer.ln2) for layer in self.layers])


# ------------------------------------------------------------------ attention and MLP
def attention_scale(cfg: ModelConfig, l: int) -> float:
    """The factor on q·k: 1/sqrt(d_head), or the config's own (``attn_scale``: Gemma 2's
    query_pre_attn_scalar^-1/2, Granite's attention_multiplier), 1 where scaling is off (GPT-2's option,
    GPT-Neo), and 1/(l + 1) where asked."""
    s = (cfg.attn_scale or 1.0 / math.sqrt(cfg.d_head)) if cfg.scale_attn else 1.0
    return s / (l + 1) if cfg.scale_attn_by_layer else s


def layer_window(cfg: ModelConfig, l: int) -> int | None:
    """Layer l's sliding attention window (keys at most window − 1 positions back), or None."""
    windows = cfg.extras.get("layer_windows")
    return windows[l] if windows is not None else cfg.extras.get("sliding_window")


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """cap · tanh(x / cap) (Gemma 2's attention and final-logit soft-capping); cap 0: x."""
    return np.tanh(x / cap) * cap if cap else x


def qk_norm(cfg: ModelConfig, w, p: str, q: np.ndarray, k: np.ndarray):
    """QK-norm of q, k [H, T, e]: RMSNorm per head over e (``head``: Qwen 3, Gemma 3; weights [e]) or over
    the whole projection H·e (``full``: OLMo 2; weights [H, e]), or LayerNorm without bias per head over e
    (``head_layernorm``: Cohere; weights [H, e]). Returns (q, k, q Norm, k Norm)."""
    if cfg.qk_norm == "none":
        return q, k, None, None
    out = []
    for x, name in ((q, "q_norm_w"), (k, "k_norm_w")):
        wn = w[p + name]
        if cfg.qk_norm == "head":
            y, n = norm(cfg, x, wn, np.zeros_like(wn), "rmsnorm")
        elif cfg.qk_norm == "head_layernorm":  # Cohere: LayerNorm (no bias) per head, weights per head [H, e]
            y, n = norm(cfg, x, wn[:, None, :], np.zeros_like(wn[:, None, :]), "layernorm")
        else:  # over the whole projection [T, H·e]; K heads are repeated copies, so their mean square is the same
            H, T, e = x.shape
            flat = x.transpose(1, 0, 2).reshape(T, H * e)
            y, n = norm(cfg, flat, wn.reshape(-1), np.zeros(H * e, x.dtype), "rmsnorm")
            y = y.reshape(T, H, e).transpose(1, 0, 2)
        out += [y, n]
    return out[0], out[2], out[1], out[3]


def attention(cfg: ModelConfig, w, l: int, x: np.ndarray, positions: np.ndarray) -> dict:
    """Multi-head attention on x [T, d]: {head_out [H, T, d], pattern [H, T, T], q_norm, k_norm}."""
    p = f"blocks.{l}.attn."
    H, e, T = cfg.n_heads, cfg.d_head, x.shape[0]
    W = np.concatenate([w[p + "W_Q"], w[p + "W_K"], w[p + "W_V"]])  # [3H, d, e]
    qkv = x @ W.transpose(1, 0, 2).reshape(x.shape[1], 3 * H * e)  # one GEMM: [T, 3H·e]
    qkv = qkv.reshape(T, 3 * H, e).transpose(1, 0, 2)  # [3H, T, e]
    b = np.concatenate([w[p + "b_Q"], w[p + "b_K"], w[p + "b_V"]])[:, None]  # [3H, 1, e]
    qkv = qkv + b
    if cfg.clip_qkv:  # OLMo: q, k, v clamped to [-c, c] after the projection (before QK-norm and rotary)
        np.clip(qkv, -cfg.clip_qkv, cfg.clip_qkv, out=qkv)
    q, k, v = np.split(qkv, 3)  # each [H, T, e]
    q, k, q_n, k_n = qk_norm(cfg, w, p, q, k)
    if cfg.positional == "rotary":
        cos, sin = rotary_tables(cfg, positions, l)
        q, k = apply_rotary(q, cos, sin, cfg.rotary_dim), apply_rotary(k, cos, sin, cfg.rotary_dim)
    scores = q @ k.transpose(0, 2, 1) * attention_scale(cfg, l)
    if cfg.positional == "alibi":
        scores = scores + alibi_bias(cfg, T, scores.dtype) * (attention_scale(cfg, l) if cfg.extras["alibi_scaled"]
                                                              else 1.0)
    scores = softcap(scores, cfg.attn_softcap)  # [H, T_dst, T_src]
    masked = scores
    if cfg.causal:
        masked = np.where(np.tril(np.ones((T, T), bool)), masked, -np.inf)
    window = layer_window(cfg, l)
    if window and cfg.causal:
        i = np.arange(T)
        masked = np.where(i[:, None] - i[None, :] < window, masked, -np.inf)
    pattern = softmax(masked)
    z = pattern @ v  # [H, T, e]
    return {"head_out": z @ w[p + "W_O"], "pattern": pattern, "q_norm": q_n, "k_norm": k_n}


def mlp(cfg: ModelConfig, w, l: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """x [T, d] → (out [T, d], hidden [T, m]): hidden = act(x W_in + b_in), out = hidden W_out + b_out;
    gated (SwiGLU): hidden = act(x W_gate + b_gate) * (x W_in + b_in). Attention-only: (0, None)."""
    if cfg.attn_only:
        return np.zeros_like(x), None
    if moe_layer(cfg, l):
        return moe_mlp(cfg, w, l, x)
    p = f"blocks.{l}.mlp."
    pre = x @ w[p + "W_in"] + w[p + "b_in"]
    if cfg.gated_mlp:
        hidden = act(cfg.act_fn, x @ w[p + "W_gate"] + w[p + "b_gate"]) * pre
    else:
        hidden = act(cfg.act_fn, pre)
    return hidden @ w[p + "W_out"] + w[p + "b_out"], hidden


def moe_mlp(cfg: ModelConfig, w, l: int, x: np.ndarray) -> tuple[np.ndarray, Routing]:
    """A mixture-of-experts MLP on x [T, d] (Mixtral, Qwen2/3-MoE, as transformers): router probabilities
    softmax(x W_router) [T, E]; the k most probable experts per token (exact ties: lower index first), their
    probabilities renormalised to sum 1 if norm_topk_prob; out = Σ_j p_j SwiGLU_ej(x) (+ sigmoid(x W_sg) ·
    SwiGLU_shared(x), Qwen2-MoE's shared expert). Returns (out [T, d], Routing)."""
    p, k = f"blocks.{l}.mlp.", cfg.experts_per_token
    logits = x @ w[p + "W_router"]
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")
    experts = order[:, :k]
    weights = np.take_along_axis(probs, experts, -1)
    tied = np.take_along_axis(probs, order[:, k - 1:k + 1], -1) if k < cfg.n_experts else None
    if cfg.norm_topk_prob:
        weights = weights / weights.sum(-1, keepdims=True)
    W_in, W_gate, W_out = w[p + "W_in"], w[p + "W_gate"], w[p + "W_out"]
    expert_out = np.zeros((x.shape[0], k, x.shape[1]), x.dtype)
    for e in np.unique(experts):
        rows, slot = np.nonzero(experts == e)
        xe = x[rows]
        hidden = act(cfg.act_fn, xe @ W_gate[e]) * (xe @ W_in[e])
        expert_out[rows, slot] = (hidden @ W_out[e]) * weights[rows, slot][:, None]
    out = expert_out.sum(1)
    shared = None
    if cfg.d_shared_expert:
        hidden = act(cfg.act_fn, x @ w[p + "W_shared_gate"]) * (x @ w[p + "W_shared_in"])
        gate = 1.0 / (1.0 + np.exp(-(x @ w[p + "W_shared_expert_gate"])))
        shared = (hidden @ w[p + "W_shared_out"]) * gate
        out = out + shared
    return out, Routing(logits, experts, weights, expert_out, shared,
                        None if tied is None else tied[:, 0] == tied[:, 1])


def _record(x_in, att, b_O, out, hidden, x_out, **norms) -> Layer:
    moe = hidden if isinstance(hidden, Routing) else None  # mixture-of-experts MLPs: no one hidden layer
    return Layer(x_in, att["pattern"], att["head_out"], b_O, out, None if moe else hidden, x_out,
                 q_norm=att["q_norm"], k_norm=att["k_norm"], moe=moe, **norms)


# ------------------------------------------------------------------ blocks: (cfg, w, l, x, positions) -> (x, Layer)
def pre_norm_block(cfg, w, l, x, positions):
    """x = x + attn(ln1(x));  x = x + mlp(ln2(x))."""
    p = f"blocks.{l}."
    a_in, ln1 = layer_norm(cfg, w, p + "ln1", x)
    att = attention(cfg, w, l, a_in, positions)
    mid = x + att["head_out"].sum(0) + w[p + "attn.b_O"]
    m_in, ln2 = layer_norm(cfg, w, p + "ln2", mid) if not cfg.attn_only else (mid, None)
    out, hidden = mlp(cfg, w, l, m_in)
    return mid + out, _record(x, att, w[p + "attn.b_O"], out, hidden, mid + out, ln1=ln1, ln2=ln2)


def parallel_block(cfg, w, l, x, positions):
    """x = x + attn(ln1(x)) + mlp(ln2(x)) (one shared norm where ln2 reads ln1's tensors: GPT-J)."""
    p = f"blocks.{l}."
    a_in, ln1 = layer_norm(cfg, w, p + "ln1", x)
    att = attention(cfg, w, l, a_in, positions)
    m_in, ln2 = layer_norm(cfg, w, p + "ln2", x) if not cfg.attn_only else (x, None)
    out, hidden = mlp(cfg, w, l, m_in)
    new = x + att["head_out"].sum(0) + w[p + "attn.b_O"] + out
    return new, _record(x, att, w[p + "attn.b_O"], out, hidden, new, ln1=ln1, ln2=ln2)


def post_norm_block(cfg, w, l, x, positions):
    """x = ln1(x + attn(x));  x = ln2(x + mlp(x))."""
    p = f"blocks.{l}."
    att = attention(cfg, w, l, x, positions)
    mid, ln1 = layer_norm(cfg, w, p + "ln1", x + att["head_out"].sum(0) + w[p + "attn.b_O"])
    out, hidden = mlp(cfg, w, l, mid)
    new, ln2 = layer_norm(cfg, w, p + "ln2", mid + out) if not cfg.attn_only else (mid, None)
    return new, _record(x, att, w[p + "attn.b_O"], out, hidden, new, ln1=ln1, ln2=ln2)


def sandwich_block(cfg, w, l, x, positions):
    """x = x + ln1_post(attn(ln1(x)));  x = x + ln2_post(mlp(ln2(x))) (``sublayer``: no ln1, ln2)."""
    p = f"blocks.{l}."
    pre = cfg.norm_placement == "sandwich"
    a_in, ln1 = layer_norm(cfg, w, p + "ln1", x) if pre else (x, None)
    att = attention(cfg, w, l, a_in, positions)
    a_out, attn_post = layer_norm(cfg, w, p + "ln1_post", att["head_out"].sum(0) + w[p + "attn.b_O"])
    mid = x + a_out
    ln2 = mlp_post = None
    if cfg.attn_only:
        out, hidden, new = np.zeros_like(x), None, mid
    else:
        m_in, ln2 = layer_norm(cfg, w, p + "ln2", mid) if pre else (mid, None)
        out, hidden = mlp(cfg, w, l, m_in)
        m_out, mlp_post = layer_norm(cfg, w, p + "ln2_post", out)
        new = mid + m_out
    return new, _record(x, att, w[p + "attn.b_O"], out, hidden, new, ln1=ln1, ln2=ln2, attn_post=attn_post,
                        mlp_post=mlp_post)


BLOCKS = {"pre": pre_norm_block, "parallel": parallel_block, "post": post_norm_block,
          "sandwich": sandwich_block, "sublayer": sandwich_block}


def block_kind(cfg: ModelConfig) -> str:
    """Which ``BLOCKS`` function runs the model's blocks."""
    if cfg.norm_placement == "pre" and cfg.parallel_attn_mlp:
        return "parallel"
    return cfg.norm_placement


# ------------------------------------------------------------------ the model
def padded_positions(w, tokens: np.ndarray, pad: int) -> np.ndarray:
    """RoBERTa's position embeddings [T, d] (transformers' create_position_ids_from_input_ids): token i reads
    row pad + (the number of non-pad tokens up to and including i) of the stored table, a pad token row pad.
    ``embed.W_pos`` holds the rows from pad + 1 on (row p: position p of a prompt without pad tokens),
    ``embed.W_pos_pad`` row pad."""
    real = np.asarray(tokens) != pad
    rows = np.maximum(np.cumsum(real) - 1, 0)
    return np.where(real[:, None], w["embed.W_pos"][rows], w["embed.W_pos_pad"][None])


def run(w, tokens, token_types=None) -> Cache:
    """Run the model on token ids [T]; return the Cache with every residual-stream piece and the logits.
    ``w``: weights, or processed weights (whose ``forward_view`` leaves out folds that are exact for
    circuits only)."""
    w = getattr(w, "forward_view", w)
    cfg: ModelConfig = w.cfg
    tokens = np.asarray(tokens)
    T = len(tokens)
    positions = np.arange(T)
    d, dt = cfg.d_model, w.dtype
    embed = w["embed.W_E"][tokens]
    if cfg.positional == "learned" and cfg.extras.get("position_rule") == "padding_offset":
        pos = padded_positions(w, tokens, cfg.extras["padding_idx"])
    else:
        pos = w["embed.W_pos"][positions] if cfg.positional == "learned" else np.zeros((T, d), dt)
    types = np.zeros((T, d), dt)
    if cfg.n_token_types:
        types = w["embed.W_tt"][np.zeros(T, int) if token_types is None else np.asarray(token_types)]
    cache = Cache(tokens, embed, pos, types)
    x = embed + pos + types
    if cfg.embed_norm:
        x, cache.embed_norm = layer_norm(cfg, w, "embed.ln", x)
    cache.resid_embed = x
    block = BLOCKS[block_kind(cfg)]
    for l in range(cfg.n_layers):
        x, layer = block(cfg, w, l, x, positions)
        cache.layers.append(layer)
    if cfg.final_norm and cfg.norm != "none":
        x, cache.final_norm = layer_norm(cfg, w, "ln_final", x)
    cache.logits_precap = x @ w["unembed.W_U"] + w["unembed.b_U"]
    cache.logits = softcap(cache.logits_precap, cfg.final_softcap)
    return cache
