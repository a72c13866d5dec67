"""Checkpoint forms: single files with their config in metadata or beside them, TransformerLens
state dicts, custom layouts through --arch, safetensors details (BF16 bits, lazy reads)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from builders import V, hf_model, save_hf
from helpers import invoke
from tcli.checkpoint import open_checkpoint
from hypothesis import given, settings
from hypothesis import strategies as st

from tcli.checkpoint.safetensors import SafetensorsFile, bf16_to_float32, widen
from tcli.forward import run
from tcli.processing import process

TOKENS = np.arange(10) % V


def logits(path, arch=None, raw=True):
    return run(process(open_checkpoint(path, arch).weights(np.float64), enabled=not raw), TOKENS).logits


def test_single_file_with_sibling_config_and_with_metadata(hf_dirs, tmp_path):
    _, path = hf_dirs["gpt2"]
    ref = logits(path)
    single = tmp_path / "a" / "weights.safetensors"
    single.parent.mkdir()
    shutil.copy(path / "model.safetensors", single)
    shutil.copy(path / "config.json", single.parent / "config.json")
    np.testing.assert_allclose(logits(single), ref)
    meta = tmp_path / "b.safetensors"
    save_file(load_file(str(path / "model.safetensors")), str(meta),
              metadata={"config": (path / "config.json").read_text()})
    np.testing.assert_allclose(logits(meta), ref)


def test_transformer_lens_state_dict(hf_dirs, tmp_path):
    """A GPT-2 converted by hand to TransformerLens names and cfg keys loads and runs the same."""
    model, path = hf_dirs["gpt2"]
    cfg = model.config
    d, H = cfg.n_embd, cfg.n_head
    e = d // H
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tl = {"embed.W_E": sd["transformer.wte.weight"], "pos_embed.W_pos": sd["transformer.wpe.weight"],
          "ln_final.w": sd["transformer.ln_f.weight"], "ln_final.b": sd["transformer.ln_f.bias"],
          "unembed.W_U": sd["transformer.wte.weight"].T.copy(), "unembed.b_U": np.zeros(V, np.float32)}
    for l in range(cfg.n_layer):
        p, q = f"transformer.h.{l}.", f"blocks.{l}."
        W = sd[p + "attn.c_attn.weight"]
        b = sd[p + "attn.c_attn.bias"]
        for i, n in enumerate("QKV"):
            tl[q + f"attn.W_{n}"] = W[:, i * d:(i + 1) * d].reshape(d, H, e).transpose(1, 0, 2).copy()
            tl[q + f"attn.b_{n}"] = b[i * d:(i + 1) * d].reshape(H, e)
        tl[q + "attn.W_O"] = sd[p + "attn.c_proj.weight"].reshape(H, e, d)
        tl[q + "attn.b_O"] = sd[p + "attn.c_proj.bias"]
        for a, bname in (("ln1", "ln_1"), ("ln2", "ln_2")):
            tl[q + a + ".w"], tl[q + a + ".b"] = sd[p + bname + ".weight"], sd[p + bname + ".bias"]
        tl[q + "mlp.W_in"], tl[q + "mlp.b_in"] = sd[p + "mlp.c_fc.weight"], sd[p + "mlp.c_fc.bias"]
        tl[q + "mlp.W_out"], tl[q + "mlp.b_out"] = sd[p + "mlp.c_proj.weight"], sd[p + "mlp.c_proj.bias"]
    folder = tmp_path / "tl"
    folder.mkdir()
    save_file({k: np.ascontiguousarray(v) for k, v in tl.items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "transformer_lens", "n_layers": cfg.n_layer, "d_model": d, "n_heads": H, "d_head": e,
        "d_mlp": 4 * d, "d_vocab": V, "n_ctx": cfg.n_positions, "act_fn": "gelu_new", "normalization_type": "LN",
        "positional_embedding_type": "standard", "eps": 1e-5}))
    assert open_checkpoint(folder).config.family == "transformer_lens"
    np.testing.assert_allclose(logits(folder), logits(path), atol=1e-10)


def test_custom_layout_through_arch(hf_dirs, tmp_path):
    _, path = hf_dirs["gpt2"]
    tensors = load_file(str(path / "model.safetensors"))
    renamed = {k.replace("transformer.", "net."): v for k, v in tensors.items()}
    f = tmp_path / "custom.safetensors"
    save_file(renamed, str(f))
    from tcli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unknown model family"):
        open_checkpoint(f)  # no config, unknown names
    cfg = json.loads((path / "config.json").read_text())
    arch = tmp_path / "arch.yaml"
    arch.write_text("extends: gpt2\nfamily: mynet\nprefixes: ['net.']\nvalues:\n" +
                    "".join(f"  {k}: {json.dumps(cfg[k])}\n" for k in ("n_layer", "n_embd", "n_head", "n_positions",
                                                                        "vocab_size", "activation_function")))
    np.testing.assert_allclose(logits(f, arch), logits(path))
    assert json.loads(invoke("info", f, "--arch", arch, "--json").stdout)["family"] == "mynet"


def test_bf16_bits_widen_exactly():
    values = torch.tensor([1.0, -2.5, 3.140625, 1e-30, -0.0, float("inf")], dtype=torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint16)
    np.testing.assert_array_equal(bf16_to_float32(bits), values.float().numpy())


@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 40), cols=st.integers(1, 40), transposed=st.booleans(), chunk=st.integers(1, 600),
       kind=st.sampled_from(["BF16", "F16", "F32"]))
def test_widen_in_chunks_equals_a_plain_conversion(rows, cols, transposed, chunk, kind):
    """widen (tiles for transposed views, row chunks otherwise) = converting the whole array at once."""
    rng = np.random.default_rng(rows * 41 + cols)
    x = rng.standard_normal((rows, cols)).astype(np.float32)
    if kind == "BF16":
        storage = (x.view(np.uint32) >> 16).astype(np.uint16)  # the high half: a bfloat16
        dense = bf16_to_float32(storage)
    else:
        storage = x.astype(np.float16) if kind == "F16" else x
        dense = storage.astype(np.float64)
    if transposed:
        storage, dense = storage.T, dense.T
    out = widen(storage, kind, np.float64, chunk_bytes=chunk)
    assert out.flags.c_contiguous and out.dtype == np.float64
    np.testing.assert_array_equal(out, dense)


def test_bf16_lm_head_read_as_transposed_w_u(tmp_path):
    """A BF16 [V, d] lm_head read as W_U [d, V] (tiled transpose of the stored bits, then widened)."""
    model = hf_model("llama", tie_word_embeddings=False).to(torch.bfloat16)
    path = save_hf(model, tmp_path / "llama")
    w = open_checkpoint(path).weights()
    ref = model.lm_head.weight.detach().float().numpy().T
    W_U = w["unembed.W_U"]
    assert W_U.flags.c_contiguous and W_U.dtype == np.float32
    np.testing.assert_array_equal(W_U, ref)


def test_take_hands_over_a_copy_of_a_cached_tensor(hf_dirs):
    """Processing in place must never change an array someone else obtained from the raw weights."""
    _, path = hf_dirs["gpt2"]
    raw = open_checkpoint(path).weights(np.float64)
    held = raw["unembed.W_U"]
    before = held.copy()
    W_U = process(raw)["unembed.W_U"]
    np.testing.assert_array_equal(held, before)
    folded = before * raw["ln_final.w"][:, None]  # fold the final LayerNorm's scale, centre over d, then V
    folded -= folded.mean(0)
    np.testing.assert_allclose(W_U, folded - folded.mean(-1, keepdims=True), atol=1e-12)


def test_reads_are_lazy(hf_dirs):
    """Only the tensors an analysis asks for are read: the others stay unread in the memory map."""
    _, path = hf_dirs["gpt2"]
    w = open_checkpoint(path).weights()
    w["embed.W_E"]
    assert set(w._cache) == {"embed.W_E"}
    f = SafetensorsFile(path / "model.safetensors")
    assert f._mmap is None  # the header alone was read


def test_processing_keeps_one_copy_of_vocab_sized_tensors(hf_dirs):
    _, path = hf_dirs["gpt2"]
    raw = open_checkpoint(path).weights(np.float64)
    w = process(raw)
    W_U, b_U = w["unembed.W_U"], w["unembed.b_U"]  # b_U re-reads the raw W_U it needs
    assert "unembed.W_U" not in raw._cache and "embed.W_E" not in raw._cache
    np.testing.assert_allclose(W_U.mean(-1), 0, atol=1e-12)
    assert b_U.shape == (V,)
