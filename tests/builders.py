"""Tiny random checkpoints of every family, built with transformers from configs (no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

V, D, CTX = 61, 32, 32

FAMILIES = ("gpt2", "neox", "llama", "qwen2", "bert", "mistral")


def hf_config(family: str, **over):
    import transformers

    common = dict(vocab_size=V, max_position_embeddings=CTX)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=D, n_head=4, vocab_size=V, n_positions=CTX,
                                      bos_token_id=0, eos_token_id=0)
    elif family == "neox":
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                         intermediate_size=40, rotary_pct=0.5, use_parallel_residual=True,
                                         bos_token_id=0, eos_token_id=0, **common)
    elif family == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=40, rope_theta=500.0,
                                       bos_token_id=0, eos_token_id=0, **common)
    elif family == "mistral":
        cfg = transformers.MistralConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                         num_key_value_heads=1, intermediate_size=40, sliding_window=None,
                                         bos_token_id=0, eos_token_id=0, **common)
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=40, bos_token_id=0,
                                       eos_token_id=0, **common)
    elif family == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=D, num_attention_heads=4,
                                      intermediate_size=40, **common)
    else:
        raise ValueError(family)
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def hf_model(family: str, seed: int = 0, **over):
    import torch
    import transformers

    torch.manual_seed(seed)
    cls = {"gpt2": transformers.GPT2LMHeadModel, "neox": transformers.GPTNeoXForCausalLM,
           "llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
           "qwen2": transformers.Qwen2ForCausalLM, "bert": transformers.BertModel}[family]
    model = cls(hf_config(family, **over)).eval()
    with torch.no_grad():  # larger than the default init, so that every path matters
        for name, p in model.named_parameters():
            if "norm" in name.lower() or "ln" in name.split(".")[-2]:
                p.copy_(1.0 + 0.3 * torch.randn_like(p) if name.endswith("weight") else 0.3 * torch.randn_like(p))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    return model


def save_hf(model, path: Path, dtype=None, shard: str | None = None) -> Path:

    if dtype is not None:
        model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, safe_serialization=True, **kw)
    return path


def save_canonical(path: Path, tensors: dict, config: dict, model_type: str = "tcli") -> Path:
    """A checkpoint in tcli's own format (canonical names + config.json)."""
    from safetensors.numpy import save_file

    path.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": model_type, **config}))
    return path


def random_attn_only(path: Path, n_layers=2, n_heads=3, d_model=16, d_head=5, d_vocab=37, n_ctx=20, seed=0,
                     with_ln=True) -> Path:
    """An attention-only model in the tcli format with random weights."""
    rng = np.random.default_rng(seed)
    t = {"embed.W_E": rng.normal(size=(d_vocab, d_model)), "pos_embed.W_pos": rng.normal(size=(n_ctx, d_model)),
         "unembed.W_U": rng.normal(size=(d_model, d_vocab)), "unembed.b_U": rng.normal(size=d_vocab)}
    if with_ln:
        t["ln_final.w"], t["ln_final.b"] = 1 + 0.2 * rng.normal(size=d_model), 0.2 * rng.normal(size=d_model)
    for l in range(n_layers):
        p = f"blocks.{l}."
        for n in ("W_Q", "W_K", "W_V"):
            t[p + "attn." + n] = rng.normal(size=(n_heads, d_model, d_head)) / np.sqrt(d_model)
        for n in ("b_Q", "b_K", "b_V"):
            t[p + "attn." + n] = 0.1 * rng.normal(size=(n_heads, d_head))
        t[p + "attn.W_O"] = rng.normal(size=(n_heads, d_head, d_model)) / np.sqrt(d_head)
        t[p + "attn.b_O"] = 0.1 * rng.normal(size=d_model)
        if with_ln:
            t[p + "ln1.w"], t[p + "ln1.b"] = 1 + 0.2 * rng.normal(size=d_model), 0.2 * rng.normal(size=d_model)
    cfg = dict(n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx,
               d_mlp=0, attn_only=True, norm="layernorm" if with_ln else "none", positional="learned")
    return save_canonical(path, t, cfg)
