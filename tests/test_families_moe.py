"""Mixture-of-experts families (mixtral, qwen2_moe, qwen3_moe): tiny seeded transformers models saved with
save_pretrained, compared with transformers' own forward in float32 and float64: logits, hidden states,
attention patterns, the experts each token's router picks (and their weights, from HF's router logits),
and each MoE layer's output; decompose's expert rows sum to the layer's MLP output through the final norm and
the total to the HF logit; processed and raw weights run the same; bad configs and neuron commands refused.
"""

from __future__ import annotations

import json
import shutil
import types
import unittest.mock

import numpy as np
import pytest
import torch
import transformers

from helpers import decompose_rows, invoke, saved_models
from test_errors import assert_one_line_error
from test_families_more import _float64_reference, rel
from tcli.analyses.residual import decompose, pieces
from tcli.checkpoint import open_checkpoint
from tcli.checkpoint.tokens import Vocab
from tcli.forward import run
from tcli.processing import process

V, CTX, E, K = 61, 32, 4, 2
TOKENS = np.random.default_rng(5).integers(0, V, 12)
DIMS = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=40, vocab_size=V, max_position_embeddings=CTX, bos_token_id=0, eos_token_id=0,
            pad_token_id=0, num_experts_per_tok=K)
QWEN = dict(DIMS, num_experts=E, moe_intermediate_size=24)
FAMILIES = {  # name -> (config class, model class, config kwargs, the MoE block's module path)
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(DIMS, num_local_experts=E), "mlp"),
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM", dict(QWEN, shared_expert_intermediate_size=20), "mlp"),
    "qwen2_moe_norm": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                       dict(QWEN, shared_expert_intermediate_size=20, norm_topk_prob=True, num_hidden_layers=3,
                            mlp_only_layers=[1]), "mlp"),
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(QWEN, norm_topk_prob=True), "mlp"),
    "qwen3_moe_sparse": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(QWEN, num_hidden_layers=3,
                                                                      decoder_sparse_step=2), "mlp"),
}
NAMES = sorted(FAMILIES)


def build(fam: str, seed: int = 0):
    """A seeded tiny model (eager attention): every parameter 0.3·N(0, 1), norms 1 + 0.3·N(0, 1), routers
    0.5·N(0, 1) (logits of a few units) so that different tokens pick different experts."""
    cfg_cls, model_cls, kw, _ = FAMILIES[fam]
    cfg = getattr(transformers, cfg_cls)(**kw)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.config._attn_implementation = "eager"
    model.config._experts_implementation = "eager"  # the reference loop over experts (grouped_mm: no float64)
    with torch.no_grad():
        for name, p in model.named_parameters():
            router = name.endswith("mlp.gate.weight")
            p.copy_((1.0 if "norm" in name else 0.0) + (0.5 if router else 0.3) * torch.randn_like(p))
    return model


def moe_layers(fam) -> list[int]:
    kw = FAMILIES[fam][2]
    step, dense = kw.get("decoder_sparse_step", 1), kw.get("mlp_only_layers", [])
    return [l for l in range(kw["num_hidden_layers"]) if l not in dense and (l + 1) % step == 0]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """fam -> (model, checkpoint dir), built once per module on first use."""
    return saved_models(tmp_path_factory.mktemp("moe"), build)


def _router64(module, hidden):
    """HF's router (softmax → top-k → optional renormalisation) without its float32 softmax."""
    logits = torch.nn.functional.linear(hidden.reshape(-1, module.hidden_dim), module.weight)
    top, idx = torch.topk(torch.softmax(logits, dim=-1), module.top_k, dim=-1)
    if getattr(module, "norm_topk_prob", True):
        top = top / top.sum(-1, keepdim=True)
    return logits, top, idx


def hf_run(fam, dtype):
    """(logits, hidden states, attentions, {layer: (router logits, top-k ids, top-k weights, MoE output)})."""
    model = build(fam).to(dtype)
    if dtype == torch.float64:
        _float64_reference(model)
    routers, outs = {}, {}
    hooks = []
    for l, layer in enumerate(model.model.layers):
        block = getattr(layer, FAMILIES[fam][3])
        if not hasattr(block, "gate") or not hasattr(block.gate, "top_k"):
            continue
        if dtype == torch.float64:
            block.gate.forward = types.MethodType(_router64, block.gate)
        hooks.append(block.gate.register_forward_hook(
            lambda mod, args, out, l=l: routers.__setitem__(l, [o.double().numpy() for o in out])))
        hooks.append(block.register_forward_hook(
            lambda mod, args, out, l=l: outs.__setitem__(l, out[0].double().numpy())))
    softmax = torch.nn.functional.softmax

    def softmax64(x, dim=None, dtype=None, **kw):  # eager attention's softmax is float32 even in float64
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype, **kw)

    with torch.no_grad(), unittest.mock.patch.object(torch.nn.functional, "softmax", softmax64):
        out = model(torch.tensor(TOKENS)[None], output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    moe = {l: (routers[l][0], routers[l][2].astype(int), routers[l][1], outs[l]) for l in routers}
    return (out.logits[0].double().numpy(), [h[0].double().numpy() for h in out.hidden_states],
            [a[0].double().numpy() for a in out.attentions], moe)


def test_save_pretrained_writes_per_expert_tensors(zoo):
    """transformers 5 keeps experts fused in memory but writes the per-expert names the Hub's checkpoints use."""
    from safetensors import safe_open

    for fam, name in (("mixtral", "model.layers.0.block_sparse_moe.experts.3.w2.weight"),
                      ("qwen2_moe", "model.layers.0.mlp.experts.3.down_proj.weight"),
                      ("qwen3_moe", "model.layers.1.mlp.experts.0.gate_proj.weight")):
        with safe_open(zoo(fam)[1] / "model.safetensors", "np") as f:
            assert name in f.keys()
            assert not [k for k in f.keys() if "gate_up_proj" in k]


@pytest.mark.parametrize("fam", NAMES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_forward_matches_transformers(fam, dtype, tol, zoo):
    """Logits, hidden states, attention patterns, the router's logits, the experts that fire (the same set
    and order as HF's top-k), their weights and each MoE layer's output equal transformers'."""
    _, path = zoo(fam)
    logits, hidden, attentions, moe = hf_run(fam, torch.float32 if dtype == np.float32 else torch.float64)
    ck = open_checkpoint(path)
    assert ck.config.family == fam.rsplit("_", 1)[0] if fam.endswith(("_norm", "_sparse")) else fam
    assert ck.config.extras["moe_layers"] == tuple(moe_layers(fam)) == tuple(sorted(moe))
    w = process(ck.weights(dtype), enabled=False)
    cache = run(w, TOKENS)
    assert cache.logits.dtype == dtype
    assert rel(cache.logits, logits) < tol
    assert rel(cache.resid_embed, hidden[0]) < tol
    for l, layer in enumerate(cache.layers[:-1]):
        assert rel(layer.resid_post, hidden[l + 1]) < tol
    fired = set()
    for l, layer in enumerate(cache.layers):
        assert np.abs(layer.pattern - attentions[l]).max() < tol * 10
        if l not in moe:
            assert layer.moe is None and layer.mlp_act is not None
            continue
        r_logits, ids, weights, out = moe[l]
        assert rel(layer.moe.router_logits, r_logits) < tol
        assert (layer.moe.experts == ids).all()
        assert rel(layer.moe.weights, weights) < tol
        assert rel(layer.mlp_out, out) < tol
        assert layer.mlp_act is None
        assert not layer.moe.tied.any()
        fired |= set(ids.ravel().tolist())
        if FAMILIES[fam][2].get("norm_topk_prob", fam == "mixtral"):
            assert np.allclose(layer.moe.weights.sum(-1), 1)
        else:
            assert (layer.moe.weights.sum(-1) < 1 - 1e-6).all() and layer.moe.weights.sum(-1).min() < 0.9
    assert len(fired) == E  # the routers are strong enough that every expert fires somewhere


@pytest.mark.parametrize("fam", NAMES)
@pytest.mark.parametrize("raw", [False, True])
def test_decompose_expert_rows_sum_to_the_layer_and_hf_logit(fam, raw, zoo):
    """One row per fired expert (and the shared expert) per MoE layer: they sum to the layer's MLP output
    through the final norm; all rows sum to transformers' logit."""
    _, path = zoo(fam)
    logits, _, _, moe = hf_run(fam, torch.float64)
    ck = open_checkpoint(path)
    w = process(ck.weights(np.float64), enabled=not raw, center_unembed=False)
    for position, target, minus in ((-1, 5, None), (3, 7, 11)):
        _, rows = decompose_rows(w, V, TOKENS, position, target, minus)
        total = rows[-1]["value"]
        want = logits[position, target] - (logits[position, minus] if minus is not None else 0)
        assert total == pytest.approx(want, abs=1e-9 * max(1.0, np.abs(logits).max()))
        p = position % len(TOKENS)
        cache = run(w, TOKENS)
        u = w["unembed.W_U"][:, target] - (w["unembed.W_U"][:, minus] if minus is not None else 0)
        for l in moe:
            mine = [r for r in rows if r["layer"] == l and r["component"] in ("expert", "shared_expert")]
            ids = moe[l][1][p]
            assert sorted(r["label"] for r in mine if r["component"] == "expert") == \
                sorted(f"mlp {l} expert {e}" for e in ids)
            assert sum(r["component"] == "shared_expert" for r in mine) == (fam.startswith("qwen2_moe"))
            layer_value = cache.final_norm.apply(moe[l][3][p], p) @ u  # HF's MoE output through the final norm
            assert sum(r["value"] for r in mine) == pytest.approx(layer_value, abs=1e-9 * max(1.0, abs(layer_value)))
            assert not [r for r in rows if r["layer"] == l and r["component"] == "mlp"]
        dense = [l for l in range(ck.config.n_layers) if l not in moe]
        assert {r["layer"] for r in rows if r["component"] == "mlp"} == set(dense)
    parts = pieces(run(w, TOKENS), ck.config, 0)
    assert {c for c, *_ in parts} >= {"expert"}


@pytest.mark.parametrize("fam", ["mixtral", "qwen2_moe_norm", "qwen3_moe"])
def test_processed_and_raw_weights_run_the_same(fam, zoo):
    """ln2 folded into the router, every expert, the shared expert and its gate: same experts, same logits."""
    ck = open_checkpoint(zoo(fam)[1])
    raw = run(process(ck.weights(np.float64), enabled=False), TOKENS)
    w = process(ck.weights(np.float64))
    assert "fold_ln" in w.steps
    assert np.allclose(w["blocks.0.ln2.w"], 1)
    proc = run(w, TOKENS)
    for a, b in zip(raw.layers, proc.layers):
        assert (a.moe is None) == (b.moe is None)
        if a.moe is not None:
            assert (a.moe.experts == b.moe.experts).all()
            assert rel(b.moe.weights, a.moe.weights) < 1e-12
        assert rel(b.mlp_out, a.mlp_out) < 1e-12
    centred = raw.logits - raw.logits.mean(-1, keepdims=True)  # processing centres the unembedding
    assert rel(proc.logits, centred) < 1e-12


def _edit_config(zoo, tmp_path, fam, **changes):
    path = tmp_path / fam
    shutil.copytree(zoo(fam)[1], path)
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("fam, changes, says", [
    ("mixtral", dict(num_experts_per_tok=5), "experts_per_token=5"),
    ("qwen3_moe", dict(num_experts_per_tok=0), "experts_per_token=0"),
    ("qwen2_moe", dict(num_experts=3), "does not read"),  # the file holds 4 experts: expert 3 is unread
    ("qwen2_moe", dict(decoder_sparse_step=0), "decoder_sparse_step"),
    ("qwen3_moe", dict(mlp_only_layers="all"), "mlp_only_layers"),
    ("qwen3_moe", dict(norm_topk_prob="yes"), "norm_topk_prob"),
    ("qwen3_moe", dict(mlp_only_layers=[0]), "mlp.gate.weight"),  # layer 0: MoE in the file, dense in config
    ("mixtral", dict(num_local_experts=5), "expected [32, 5] for blocks.0.mlp.W_router"),
])
def test_bad_configs_are_refused(zoo, tmp_path, fam, changes, says):
    path = _edit_config(zoo, tmp_path, fam, **changes)
    out = invoke("decompose", path, "--ids", "1,2,3", ok=False)
    assert_one_line_error(out, says)


@pytest.mark.parametrize("args", [["neurons"], ["neurons", "0.3"], ["neurons", "--layer", "1", "--all"],
                                  ["decompose", "--ids", "1,2,3", "--neurons", "3"]])
def test_neuron_commands_are_refused(zoo, args):
    out = invoke(*args[:1], zoo("qwen2_moe")[1], *args[1:], ok=False)
    assert_one_line_error(out, "mixtures of experts")


def test_info_and_circuits_work(zoo):
    """info names the experts; weight circuits (which read no MLP) run."""
    path = zoo("qwen2_moe")[1]
    out = invoke("info", path)
    assert "mixture of experts: 4 experts, top-2 per token and a shared expert, in 2 of 2 layers" in out.stdout + \
        out.stderr
    for args in (["ov", "1.2"], ["qk", "0.1"], ["bigram"], ["heads"], ["compose"], ["spectrum", "0.0"]):
        invoke(args[0], path, *args[1:])
    out = invoke("decompose", path, "--ids", "1,2,3,4")
    assert "expert" in out.stdout


def test_router_ties_take_the_lower_expert_and_are_noted(zoo, tmp_path):
    """A router of zeros makes every expert equally probable: tcli fires experts 0 … k−1 with weights 1/E
    (torch.topk's choice among exact ties is implementation-defined) and decompose says so."""
    from safetensors.numpy import load_file, save_file

    path = tmp_path / "tied"
    shutil.copytree(zoo("qwen3_moe")[1], path)
    tensors = load_file(path / "model.safetensors")
    tensors["model.layers.1.mlp.gate.weight"] = np.zeros_like(tensors["model.layers.1.mlp.gate.weight"])
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    w = process(open_checkpoint(path).weights(np.float64), enabled=False)
    r = run(w, TOKENS).layers[1].moe
    assert r.tied.all() and (r.experts == np.arange(K)).all()
    assert np.allclose(r.weights, 1 / K)  # norm_topk_prob: renormalised
    table = decompose(w, Vocab(V, None), TOKENS, -1, 5)
    assert any("router ties at layer(s) 1" in n for n in table.notes)
    assert not run(w, TOKENS).layers[0].moe.tied.any()
