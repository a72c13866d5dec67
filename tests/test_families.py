"""Every family loads into the canonical layout, and runs forward like transformers does.

The expected canonical tensors are derived here independently, from the torch modules' own
parameters (nn.Linear is [out, in]; GPT-2's Conv1D is [in, out]; NeoX fuses QKV per head).
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from builders import FAMILIES, V, hf_model, save_hf
from tcli.checkpoint import open_checkpoint
from tcli.forward import run
from tcli.processing import process

TOKENS = np.random.default_rng(0).integers(0, V, 20)


def t(x) -> np.ndarray:
    return x.detach().float().numpy()


def expected_layer(fam: str, model, l: int, H: int, e: int, d: int) -> dict:
    """Canonical tensors of layer l, from the reference module's parameters."""
    def heads_in(weight_out_in, n):  # nn.Linear weight [n*e, d] -> [n, d, e]
        return t(weight_out_in).reshape(n, e, d).transpose(0, 2, 1)

    def heads_out(weight_out_in):  # o_proj [d, H*e] -> [H, e, d]
        return t(weight_out_in).T.reshape(H, e, d)

    if fam == "gpt2":
        blk = model.transformer.h[l]
        W = t(blk.attn.c_attn.weight)  # [d, 3d] = [in, out], q|k|v
        b = t(blk.attn.c_attn.bias)
        out = {n: W[:, i * d:(i + 1) * d].reshape(d, H, e).transpose(1, 0, 2) for i, n in enumerate("QKV")}
        out.update({"b" + n: b[i * d:(i + 1) * d].reshape(H, e) for i, n in enumerate("QKV")})
        out["O"] = t(blk.attn.c_proj.weight).reshape(H, e, d)
        out["W_in"], out["W_out"] = t(blk.mlp.c_fc.weight), t(blk.mlp.c_proj.weight)
        return out
    if fam == "neox":
        att = model.gpt_neox.layers[l].attention
        W = t(att.query_key_value.weight).reshape(H, 3, e, d)  # output axis grouped (head, q/k/v, e)
        b = t(att.query_key_value.bias).reshape(H, 3, e)
        out = {n: W[:, i].transpose(0, 2, 1) for i, n in enumerate("QKV")}
        out.update({"b" + n: b[:, i] for i, n in enumerate("QKV")})
        out["O"] = heads_out(att.dense.weight)
        out["W_in"] = t(model.gpt_neox.layers[l].mlp.dense_h_to_4h.weight).T
        return out
    if fam in ("llama", "qwen2", "mistral"):
        att = model.model.layers[l].self_attn
        n_kv = att.k_proj.weight.shape[0] // e
        rep = H // n_kv
        out = {"Q": heads_in(att.q_proj.weight, H),
               "K": np.repeat(heads_in(att.k_proj.weight, n_kv), rep, axis=0),  # query head h uses KV h // rep
               "V": np.repeat(heads_in(att.v_proj.weight, n_kv), rep, axis=0),
               "O": heads_out(att.o_proj.weight)}
        if att.q_proj.bias is not None:
            out["bK"] = np.repeat(t(att.k_proj.bias).reshape(n_kv, e), rep, axis=0)
        mlp = model.model.layers[l].mlp
        out["W_gate"], out["W_in"], out["W_out"] = t(mlp.gate_proj.weight).T, t(mlp.up_proj.weight).T, t(mlp.down_proj.weight).T
        return out
    if fam == "bert":
        att = model.encoder.layer[l].attention
        return {"Q": heads_in(att.self.query.weight, H), "K": heads_in(att.self.key.weight, H),
                "V": heads_in(att.self.value.weight, H), "O": heads_out(att.output.dense.weight),
                "bQ": t(att.self.query.bias).reshape(H, e),
                "W_in": t(model.encoder.layer[l].intermediate.dense.weight).T}
    raise ValueError(fam)


@pytest.mark.parametrize("fam", FAMILIES)
def test_canonical_tensors_match_reference_parameters(fam, hf_dirs):
    model, path = hf_dirs[fam]
    ck = open_checkpoint(path)
    cfg = ck.config
    w = ck.weights()
    for l in range(cfg.n_layers):
        exp = expected_layer(fam, model, l, cfg.n_heads, cfg.d_head, cfg.d_model)
        names = {"Q": "attn.W_Q", "K": "attn.W_K", "V": "attn.W_V", "O": "attn.W_O", "bQ": "attn.b_Q",
                 "bK": "attn.b_K", "bV": "attn.b_V", "W_in": "mlp.W_in", "W_out": "mlp.W_out", "W_gate": "mlp.W_gate"}
        for key, value in exp.items():
            got = w[f"blocks.{l}.{names[key]}"]
            assert got.shape == value.shape, (key, got.shape, value.shape)
            np.testing.assert_array_equal(got, value, err_msg=f"{fam} layer {l} {key}")
    emb = model.get_input_embeddings().weight
    np.testing.assert_array_equal(w["embed.W_E"], t(emb))
    out_emb = model.get_output_embeddings() if fam != "bert" else None
    W_U = t(out_emb.weight).T if out_emb is not None else t(emb).T
    np.testing.assert_array_equal(w["unembed.W_U"], W_U)


def test_gqa_expansion_maps_query_head_to_kv_head(hf_dirs):
    model, path = hf_dirs["mistral"]  # 4 query heads, 1 KV head
    w = open_checkpoint(path).weights()
    WK = w["blocks.0.attn.W_K"]
    assert WK.shape[0] == 4
    for h in range(4):
        np.testing.assert_array_equal(WK[h], WK[0])
    model, path = hf_dirs["llama"]  # 4 query heads, 2 KV heads: 0,1 -> kv 0; 2,3 -> kv 1
    WK = open_checkpoint(path).weights()["blocks.0.attn.W_K"]
    np.testing.assert_array_equal(WK[1], WK[0])
    np.testing.assert_array_equal(WK[3], WK[2])
    assert not np.array_equal(WK[1], WK[2])


def _use_float64_rotary(model, cfg):
    """transformers computes RoPE angles and RMSNorm statistics in float32 even in a float64 model;
    make both float64 so that the reference is as precise as the float64 forward it checks."""
    def forward(self, x, position_ids):
        rd = cfg.rotary_dim
        inv = 1.0 / (cfg.rotary_base ** (torch.arange(0, rd, 2, dtype=torch.float64) / rd))
        freqs = position_ids[..., None].double() * inv
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    def rms_forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding"):
            module.forward = types.MethodType(forward, module)
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(rms_forward, module)


def reference_output(model, fam, dtype):
    model = model.to(dtype)
    with torch.no_grad():
        out = model(torch.tensor(TOKENS)[None])
    return (out.last_hidden_state if fam == "bert" else out.logits)[0].double().numpy()


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-4), (np.float64, 1e-8)])
def test_forward_matches_transformers(fam, dtype, tol, hf_dirs):
    model, path = hf_dirs[fam]
    ck = open_checkpoint(path)
    model = hf_model(fam)  # a fresh copy: the fixture's model is shared
    if dtype == np.float64:
        _use_float64_rotary(model, ck.config)
    ref = reference_output(model, fam, torch.float32 if dtype == np.float32 else torch.float64)
    cache = run(process(ck.weights(dtype), enabled=False), TOKENS)
    ours = cache.resid_post[-1] if fam == "bert" else cache.logits
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < tol, f"{fam} {dtype.__name__}: relative error {rel:.2e}"


@pytest.mark.parametrize("fam", FAMILIES)
def test_processing_preserves_log_probs(fam, hf_dirs):
    """Folded and centred weights give the same logits up to one constant per position (float64)."""
    _, path = hf_dirs[fam]
    ck = open_checkpoint(path)
    raw = run(process(ck.weights(np.float64), enabled=False), TOKENS).logits
    proc_w = process(ck.weights(np.float64), enabled=True)
    assert "fold_value_biases" in proc_w.steps
    proc = run(proc_w, TOKENS).logits
    diff = raw - proc
    np.testing.assert_allclose(diff, diff.mean(-1, keepdims=True) + 0 * diff, atol=1e-9)
    if ck.config.norm_placement == "pre":
        assert "fold_ln" in proc_w.steps
        # the norms are gone: weights read as 1, biases as 0
        np.testing.assert_array_equal(proc_w["blocks.0.ln1.w"], 1.0)


def test_layernorm_folding_and_centering_are_applied(hf_dirs):
    _, path = hf_dirs["gpt2"]
    w = process(open_checkpoint(path).weights(np.float64))
    assert w.steps == ("fold_ln", "center_writing_weights", "center_unembed", "fold_value_biases")
    np.testing.assert_allclose(w["embed.W_E"].mean(-1), 0, atol=1e-12)  # writing weights centred
    np.testing.assert_allclose(w["blocks.0.attn.W_O"].mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(w["unembed.W_U"].mean(-1), 0, atol=1e-12)  # unembedding centred over vocab
    np.testing.assert_allclose(w["blocks.0.attn.W_Q"].mean(1), 0, atol=1e-12)  # reading weights centred
    np.testing.assert_array_equal(w["blocks.0.attn.b_V"], 0)  # value biases folded into b_O


@pytest.mark.parametrize("fam", ["gpt2", "llama"])
def test_bf16_and_sharded_checkpoints_load(fam, tmp_path):
    model = hf_model(fam)
    full = save_hf(model, tmp_path / "f32")
    sharded = save_hf(hf_model(fam), tmp_path / "sharded", shard="20KB")
    bf16 = save_hf(hf_model(fam), tmp_path / "bf16", dtype=torch.bfloat16)
    assert (sharded / "model.safetensors.index.json").exists()
    a = open_checkpoint(full).weights()
    b = open_checkpoint(sharded).weights()
    c = open_checkpoint(bf16)
    assert c.stored_dtype == "BF16"
    for name in ("embed.W_E", "blocks.1.attn.W_Q", "blocks.1.mlp.W_out", "unembed.W_U"):
        np.testing.assert_array_equal(a[name], b[name])
        # bf16 keeps the top 16 bits of the float32: relative error below 2^-8
        np.testing.assert_allclose(c.weights()[name], a[name], rtol=2**-8, atol=1e-30)
        ref_bf16 = torch.from_numpy(np.array(a[name])).to(torch.bfloat16).float().numpy()
        np.testing.assert_array_equal(c.weights()[name], ref_bf16)


def test_rope_parameters_flat_and_nested_config_forms():
    from tcli.checkpoint import build_config
    from tcli.checkpoint.spec import builtin_spec

    base = dict(num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=8, vocab_size=10,
                max_position_embeddings=16)
    spec = builtin_spec("gpt_neox")
    old = build_config(spec, {**base, "model_type": "gpt_neox", "rotary_pct": 0.25, "rotary_emb_base": 500})
    new = build_config(spec, {**base, "model_type": "gpt_neox",
                              "rope_parameters": {"rope_theta": 500.0, "partial_rotary_factor": 0.25}})
    assert (old.rotary_dim, old.rotary_base) == (new.rotary_dim, new.rotary_base) == (2, 500)
    llama = builtin_spec("llama")
    cfg = build_config(llama, {**base, "rope_scaling": {"rope_type": "linear", "factor": 4.0}, "rope_theta": 7.0})
    assert (cfg.rotary_scale, cfg.rotary_base) == (4.0, 7.0)
    from tcli.errors import CheckpointError

    with pytest.raises(CheckpointError, match="unsupported RoPE scaling 'proportional'"):
        build_config(llama, {**base, "rope_parameters": {"rope_type": "proportional", "factor": 4.0}})
    with pytest.raises(CheckpointError, match="mrope_section"):  # a key no tcli RoPE type reads
        build_config(llama, {**base, "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1]}})
    with pytest.raises(CheckpointError, match="original_max_position_embeddings"):  # YaRN needs the original context
        build_config(llama, {**base, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(CheckpointError, match="unsupported activation"):
        build_config(llama, {**base, "hidden_act": "quick_gelu"})
