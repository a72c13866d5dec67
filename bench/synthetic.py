"""Synthetic checkpoints with real model shapes, for benchmarks and scale checks (random weights).

    python bench/synthetic.py gpt2-small [--out bench/cache]   # V=50257, d=768, 12x12 heads, float32, HF GPT-2 layout
    python bench/synthetic.py llama-8b-sparse                   # 8B-shaped sharded bf16 headers, sparse data
    python bench/synthetic.py llama-shaped                      # V=128256, d=2048, GQA, bf16, 2 shards, real data

Weights are seeded Gaussians scaled like a trained model's (std 0.02, LayerNorm weights near 1).
``llama-8b-sparse`` writes real safetensors headers and then truncates each shard to its full
size without writing the data (a sparse file): enough for ``tcli info``, which reads headers only.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np

CACHE = Path(__file__).resolve().parent / "cache"


def gpt2_small(out: Path, vocab: int = 50257, d: int = 768, layers: int = 12, heads: int = 12, n_ctx: int = 1024,
               seed: int = 0) -> Path:
    """A GPT-2-small-shaped checkpoint in Hugging Face layout (float32, ~500 MB)."""
    from safetensors.numpy import save_file

    folder = out / ("gpt2-small" if vocab == 50257 else f"gpt2-v{vocab}")
    if (folder / "model.safetensors").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)

    def g(*shape, std=0.02):
        return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float32)

    t = {"transformer.wte.weight": g(vocab, d, std=0.1), "transformer.wpe.weight": g(n_ctx, d, std=0.01),
         "transformer.ln_f.weight": 1 + g(d, std=0.1), "transformer.ln_f.bias": g(d)}
    for l in range(layers):
        p = f"transformer.h.{l}."
        t.update({p + "ln_1.weight": 1 + g(d, std=0.1), p + "ln_1.bias": g(d), p + "ln_2.weight": 1 + g(d, std=0.1),
                  p + "ln_2.bias": g(d), p + "attn.c_attn.weight": g(d, 3 * d), p + "attn.c_attn.bias": g(3 * d),
                  p + "attn.c_proj.weight": g(d, d), p + "attn.c_proj.bias": g(d),
                  p + "mlp.c_fc.weight": g(d, 4 * d), p + "mlp.c_fc.bias": g(4 * d),
                  p + "mlp.c_proj.weight": g(4 * d, d), p + "mlp.c_proj.bias": g(d)})
    save_file(t, str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps({
        "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": vocab, "n_positions": n_ctx,
        "n_embd": d, "n_layer": layers, "n_head": heads, "n_inner": None, "activation_function": "gelu_new",
        "layer_norm_epsilon": 1e-5, "tie_word_embeddings": True}, indent=1))
    return folder


def llama_shapes(vocab, d, layers, heads, kv_heads, d_mlp) -> dict:
    """Hugging Face Llama tensor names -> shapes ([out, in] for nn.Linear)."""
    e = d // heads
    shapes = {"model.embed_tokens.weight": [vocab, d], "model.norm.weight": [d], "lm_head.weight": [vocab, d]}
    for l in range(layers):
        p = f"model.layers.{l}."
        shapes.update({p + "input_layernorm.weight": [d], p + "post_attention_layernorm.weight": [d],
                       p + "self_attn.q_proj.weight": [heads * e, d], p + "self_attn.k_proj.weight": [kv_heads * e, d],
                       p + "self_attn.v_proj.weight": [kv_heads * e, d], p + "self_attn.o_proj.weight": [d, heads * e],
                       p + "mlp.gate_proj.weight": [d_mlp, d], p + "mlp.up_proj.weight": [d_mlp, d],
                       p + "mlp.down_proj.weight": [d, d_mlp]})
    return shapes


def bf16_header(names, shapes) -> tuple[bytes, int]:
    """A safetensors header (length + JSON, 8-byte aligned) for BF16 tensors in this order; and the data size."""
    header, offset = {}, 0
    for n in names:
        nbytes = int(np.prod(shapes[n])) * 2
        header[n] = {"dtype": "BF16", "shape": shapes[n], "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    return struct.pack("<Q", len(blob)) + blob, offset


def llama_config(vocab, d, layers, heads, kv_heads, d_mlp) -> dict:
    return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": vocab, "hidden_size": d,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "intermediate_size": d_mlp, "max_position_embeddings": 8192, "rms_norm_eps": 1e-5,
            "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}, "tie_word_embeddings": False,
            "hidden_act": "silu"}


def llama_8b_sparse(out: Path, vocab: int = 128256, d: int = 4096, layers: int = 32, heads: int = 32,
                    kv_heads: int = 8, d_mlp: int = 14336, shards: int = 4) -> Path:
    """An 8B-parameter-shaped Llama checkpoint: sharded bf16, real headers, sparse (unwritten) data."""
    folder = out / "llama-8b-sparse"
    if (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    shapes = llama_shapes(vocab, d, layers, heads, kv_heads, d_mlp)
    names = list(shapes)
    per = -(-len(names) // shards)
    weight_map = {}
    for s in range(shards):
        part = names[s * per:(s + 1) * per]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        weight_map.update(dict.fromkeys(part, fname))
        head, size = bf16_header(part, shapes)
        with open(folder / fname, "wb") as f:
            f.write(head)
            f.truncate(len(head) + size)  # sparse: the data is never written
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(llama_config(vocab, d, layers, heads, kv_heads, d_mlp), indent=1))
    return folder


def llama_shaped(out: Path, vocab: int = 128256, d: int = 2048, layers: int = 2, heads: int = 16, kv_heads: int = 4,
                 d_mlp: int = 5632, shards: int = 2, seed: int = 0) -> Path:
    """A Llama-shaped checkpoint with real data: V = 128256, d = 2048, GQA, bf16, sharded with an index
    (two layers: the vocab × vocab analyses read only the embeddings)."""
    folder = out / "llama-shaped"
    if (folder / "model.safetensors.index.json").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shapes = llama_shapes(vocab, d, layers, heads, kv_heads, d_mlp)
    groups = [["model.embed_tokens.weight"] + [n for n in shapes if ".layers." in n], ["model.norm.weight", "lm_head.weight"]]
    weight_map = {}
    for s, names in enumerate(groups):
        fname = f"model-{s + 1:05d}-of-{len(groups):05d}.safetensors"
        weight_map.update(dict.fromkeys(names, fname))
        head, _ = bf16_header(names, shapes)
        with open(folder / fname, "wb") as f:
            f.write(head)
            for n in names:
                std = 1.0 if n.endswith("norm.weight") else 0.02
                for start in range(0, shapes[n][0], 8192):  # bf16 = the top 16 bits of float32
                    rows = [min(8192, shapes[n][0] - start)] + shapes[n][1:]
                    x = (rng.standard_normal(rows, dtype=np.float32) * std + (1.0 if "norm" in n else 0.0))
                    f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes())
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(llama_config(vocab, d, layers, heads, kv_heads, d_mlp), indent=1))
    return folder


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("which", choices=["gpt2-small", "llama-8b-sparse", "llama-shaped"])
    ap.add_argument("--out", default=str(CACHE))
    ap.add_argument("--vocab", type=int, default=None)
    args = ap.parse_args()
    out = Path(args.out)
    if args.which == "gpt2-small":
        print(gpt2_small(out, **({"vocab": args.vocab} if args.vocab else {})))
    elif args.which == "llama-shaped":
        print(llama_shaped(out))
    else:
        print(llama_8b_sparse(out))


if __name__ == "__main__":
    main()
