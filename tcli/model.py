"""Architecture facts of a model (``ModelConfig``) and the canonical tensor names.

Dimension legend used across tcli:
  V = d_vocab, d = d_model, H = n_heads, H_kv = n_kv_heads, e = d_head, m = d_mlp,
  L = n_layers, n_ctx = context length, T = prompt length.

Canonical layout (row vectors, x @ W), as TransformerLens:
  embed.W_E [V, d]            embed.W_pos [n_ctx, d]       embed.W_tt [n_types, d]
  embed.ln.w/b [d]            (BERT's LayerNorm after the embeddings)
  embed.W_pos_pad [d]         (RoBERTa: the position row of pad tokens; forward.padded_positions)
  blocks.{l}.ln1.w/b [d]      blocks.{l}.ln2.w/b [d]       (pre-norm: before attn/MLP;
                                                            post-norm: after attn/MLP)
  blocks.{l}.attn.W_Q/W_K/W_V [H, d, e]    blocks.{l}.attn.W_O [H, e, d]
  blocks.{l}.attn.b_Q/b_K/b_V [H, e]       blocks.{l}.attn.b_O [d]
  blocks.{l}.attn.q_norm_w/k_norm_w [e]    (QK-norm per head; [H, e] over the whole projection)
  blocks.{l}.ln1_post.w/b, ln2_post.w/b [d] (sandwich norms on the attention / MLP outputs)
  blocks.{l}.mlp.W_in/W_gate [d, m]  b_in [m]  blocks.{l}.mlp.W_out [m, d]  b_out [d]
  ln_final.w/b [d]            unembed.W_U [d, V]           unembed.b_U [V]
Mixture-of-experts layers (``moe_layer``; E = n_experts, f = d_expert, s = d_shared_expert):
  blocks.{l}.mlp.W_router [d, E]           blocks.{l}.mlp.W_in/W_gate [E, d, f]   W_out [E, f, d]
  blocks.{l}.mlp.W_shared_in/W_shared_gate [d, s]  W_shared_out [s, d]  W_shared_expert_gate [d, 1]
  (the shared expert and its sigmoid gate: Qwen2-MoE). No biases in MoE layers.
K/V heads of grouped-query models are expanded to one per query head (query head h uses
KV head h // (H / H_kv)).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

NORMS = ("layernorm", "rmsnorm", "none")
NORM_PLACEMENTS = ("pre", "post", "sandwich", "sublayer")
QK_NORMS = ("none", "head", "full", "head_layernorm")
POSITIONALS = ("learned", "rotary", "alibi", "none")  # alibi: a per-head linear bias on the scores (BLOOM, Falcon)
ACT_FNS = ("gelu_new", "gelu", "relu", "silu")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture facts only; run options (dtype, processing) live elsewhere."""

    family: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_vocab: int
    n_ctx: int
    n_kv_heads: int = 0  # 0 means n_heads
    d_mlp: int = 0  # 0 for attention-only models
    norm: str = "layernorm"  # layernorm | rmsnorm | none
    norm_placement: str = "pre"  # pre | post | sandwich (pre and post-sublayer norms) | sublayer (post-sublayer only)
    eps: float = 1e-5
    positional: str = "learned"  # learned | rotary | alibi | none
    rotary_dim: int = 0
    rotary_base: float = 10000.0
    rotary_scale: float = 1.0  # linear RoPE scaling: positions are divided by this
    act_fn: str = "gelu_new"
    gated_mlp: bool = False
    attn_only: bool = False
    parallel_attn_mlp: bool = False
    tied_embeddings: bool = False
    causal: bool = True
    scale_attn: bool = True  # scores divided by sqrt(d_head) (GPT-2's scale_attn_weights)
    scale_attn_by_layer: bool = False  # and by (layer + 1) (GPT-2's scale_attn_by_inverse_layer_idx)
    final_norm: bool = True
    qk_norm: str = "none"  # none | head (RMSNorm of q, k per head over d_head) | full (over the whole projection)
    # | head_layernorm (LayerNorm without bias per head over d_head, weights [H, e]: Cohere)
    clip_qkv: float = 0.0  # q, k, v clamped to [-c, c] after their projection (OLMo; 0: none)
    attn_scale: float = 0.0  # the factor on q·k when the config sets one; 0: 1/sqrt(d_head)
    attn_softcap: float = 0.0  # scores -> c tanh(scores / c) (0: none)
    final_softcap: float = 0.0  # logits -> c tanh(logits / c) (0: none)
    embed_norm: bool = False
    n_token_types: int = 0
    unembed_note: str = ""
    n_experts: int = 0  # mixture-of-experts layers (``moe_layer``): routed experts per layer; 0: dense MLPs
    experts_per_token: int = 0  # top-k experts per token
    norm_topk_prob: bool = False  # the top-k router probabilities renormalised to sum to 1
    d_expert: int = 0  # each routed expert's hidden width f
    d_shared_expert: int = 0  # the always-on shared expert's width (0: none)
    extras: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.n_kv_heads == 0:
            object.__setattr__(self, "n_kv_heads", self.n_heads)

    def as_dict(self) -> dict:
        d = asdict(self)
        d.pop("extras")
        return d


def layer_names(l: int) -> dict[str, str]:
    """Canonical names of layer l's tensors, keyed by short name (``W_Q`` → ``blocks.l.attn.W_Q``)."""
    p = f"blocks.{l}."
    return {
        "ln1.w": p + "ln1.w", "ln1.b": p + "ln1.b", "ln2.w": p + "ln2.w", "ln2.b": p + "ln2.b",
        **{f"{n}_post.{x}": f"{p}{n}_post.{x}" for n in ("ln1", "ln2") for x in "wb"},
        "q_norm_w": p + "attn.q_norm_w", "k_norm_w": p + "attn.k_norm_w",
        **{k: p + "attn." + k for k in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")},
        **{k: p + "mlp." + k for k in ("W_in", "b_in", "W_gate", "b_gate", "W_out", "b_out")},
    }


def moe_layer(cfg: ModelConfig, l: int) -> bool:
    """Whether layer l's MLP is a mixture of experts (``extras["moe_layers"]``: the MoE layer indices)."""
    return bool(cfg.n_experts) and l in cfg.extras.get("moe_layers", ())


def has_moe(cfg: ModelConfig) -> bool:
    """Whether any layer's MLP is a mixture of experts."""
    return bool(cfg.n_experts) and bool(cfg.extras.get("moe_layers"))


def layer_rope(cfg: ModelConfig, layer: int | None) -> dict:
    """Layer ``layer``'s rotary settings {base, scale, llama3, yarn, longrope, dynamic} (per-layer bases:
    Gemma 3's local/global layers); ``None``: the model's global settings."""
    per_layer = cfg.extras.get("layer_rope")
    if layer is not None and per_layer is not None and per_layer[layer] is not None:
        return per_layer[layer]
    return cfg.extras.get("rope") or {"base": cfg.rotary_base, "scale": cfg.rotary_scale}


def canonical_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Expected shape of every canonical tensor name (templates with ``{l}`` expanded)."""
    d, H, e, V, m = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab, cfg.d_mlp
    shapes: dict[str, tuple[int, ...]] = {
        "embed.W_E": (V, d), "embed.W_pos": (cfg.n_ctx, d), "embed.W_tt": (cfg.n_token_types, d),
        "embed.W_pos_pad": (d,),
        "embed.ln.w": (d,), "embed.ln.b": (d,), "ln_final.w": (d,), "ln_final.b": (d,),
        "unembed.W_U": (d, V), "unembed.b_U": (V,),
    }
    for l in range(cfg.n_layers):
        n = layer_names(l)
        for k in ("ln1.w", "ln1.b", "ln2.w", "ln2.b", "ln1_post.w", "ln1_post.b", "ln2_post.w", "ln2_post.b",
                  "b_O", "b_out"):
            shapes[n[k]] = (d,)
        shapes[n["q_norm_w"]] = shapes[n["k_norm_w"]] = (H, e) if cfg.qk_norm in ("full", "head_layernorm") else (e,)
        for k in ("W_Q", "W_K", "W_V"):
            shapes[n[k]] = (H, d, e)
        for k in ("b_Q", "b_K", "b_V"):
            shapes[n[k]] = (H, e)
        shapes[n["W_O"]] = (H, e, d)
        shapes[n["W_in"]] = shapes[n["W_gate"]] = (d, m)
        shapes[n["b_in"]] = shapes[n["b_gate"]] = (m,)
        shapes[n["W_out"]] = (m, d)
        if moe_layer(cfg, l):
            E, f, sh, p = cfg.n_experts, cfg.d_expert, cfg.d_shared_expert, f"blocks.{l}.mlp."
            shapes[n["W_in"]] = shapes[n["W_gate"]] = (E, d, f)
            shapes[n["W_out"]] = (E, f, d)
            shapes[p + "W_router"] = (d, E)
            if sh:
                shapes[p + "W_shared_in"] = shapes[p + "W_shared_gate"] = (d, sh)
                shapes[p + "W_shared_out"] = (sh, d)
                shapes[p + "W_shared_expert_gate"] = (d, 1)
    return shapes
