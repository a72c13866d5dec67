"""ALiBi (BLOOM, Falcon-RW): slopes and biases as transformers computes them, forward passes against
transformers at head counts whose slopes are not powers of two (where bfloat16 / float32 rounding shows),
Falcon's eager double-counting of the bias, refusals, and the circuit commands on ALiBi models."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import transformers
from transformers.models.bloom import modeling_bloom
from transformers.models.falcon import modeling_falcon

from helpers import invoke
from test_errors import assert_one_line_error
from test_families_more import FAMILIES, TOKENS, build, hf_run, rel
from tcli.checkpoint import build_config, open_checkpoint
from tcli.checkpoint.spec import COMMON_INERT, builtin_spec, check_spec, detect
from tcli.errors import InputError
from tcli.forward import alibi_bias, alibi_slopes, run
from tcli.processing import process

WIDE = dict(num_attention_heads=12, hidden_size=48)  # slopes 2^-1 … 2^-8 and 2^-0.5, 2^-1.5, … (not exact in bf16)


def _cfg(family: str, heads: int):
    raw = {"model_type": family, "vocab_size": 8, "hidden_size": 4 * heads, "num_hidden_layers": 1,
           "num_attention_heads": heads, "n_head": heads, "n_layer": 1, "alibi": True}
    return build_config(builtin_spec(family), raw)


@pytest.mark.parametrize("heads", [1, 3, 4, 6, 12, 16, 24, 71])
def test_alibi_slopes_and_bias_equal_transformers(heads):
    """tcli's slopes and bias equal build_alibi_tensor's: BLOOM's slope·j in float32, Falcon's in bfloat16."""
    T = 40
    mask = torch.ones(1, T, dtype=torch.long)
    hf_bloom = modeling_bloom.build_alibi_tensor(mask, heads, torch.float32)[:, 0].numpy()
    hf_falcon = modeling_falcon.build_alibi_tensor(mask, heads, torch.float32)[:, 0].numpy()
    np.testing.assert_array_equal(alibi_slopes(heads), modeling_bloom._get_alibi_slopes(heads, "cpu").numpy())
    np.testing.assert_array_equal(alibi_bias(_cfg("bloom", heads), T, np.float32)[:, 0], hf_bloom)
    np.testing.assert_array_equal(alibi_bias(_cfg("falcon", heads), T, np.float32)[:, 0], hf_falcon)
    if heads in (12, 24, 71):  # the rounding matters: the test tells the two apart
        assert not np.array_equal(hf_bloom, hf_falcon)


def test_slopes_within_one_float32_ulp_of_torch_pow():
    """32 heads: HF's slopes are b^k, b = 2^(-1/4) in float32; torch.pow is one ulp off the correctly rounded
    b^k for k = 15, which tcli computes."""
    ours, theirs = alibi_slopes(32), modeling_bloom._get_alibi_slopes(32, "cpu").numpy()
    assert np.abs(ours - theirs).max() <= np.spacing(theirs).max()
    exact = (float(np.float32(2 ** -0.25)) ** np.arange(1, 33, dtype=np.float64)).astype(np.float32)
    np.testing.assert_array_equal(ours, exact)


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    """fam -> checkpoint of a 12-head model (seeded as test_families_more's ``build``)."""
    root, made = tmp_path_factory.mktemp("alibi"), {}

    def get(fam):
        if fam not in made:
            over = dict(WIDE) if fam != "bloom" else dict(n_head=12, hidden_size=48)
            build(fam, **over).save_pretrained(root / fam, safe_serialization=True)
            made[fam] = (root / fam, over)
        return made[fam]
    return get


@pytest.mark.parametrize("fam", ["bloom", "falcon_alibi"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_twelve_heads_forward_matches_transformers(wide, fam, dtype, tol):
    path, over = wide(fam)
    logits, hidden, attentions, acts, _ = hf_run(fam, torch.float32 if dtype == np.float32 else torch.float64, **over)
    cache = run(process(open_checkpoint(path).weights(dtype), enabled=False), TOKENS)
    assert rel(cache.logits, logits) < tol
    for l, layer in enumerate(cache.layers):
        assert np.abs(layer.pattern - attentions[l]).max() < tol * 10
        assert rel(layer.mlp_act, acts[l]) < tol


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
def test_falcon_alibi_equals_transformers_sdpa_and_eager_adds_the_bias_twice(wide, dtype, tol):
    """transformers 5's Falcon with ALiBi: its SDPA path adds the bias once ((q·k + slope·j) / sqrt(e), the
    original maths), which tcli computes; its eager path adds it twice (in the mask and in the attention).
    If transformers fixes its eager path, the second assertion fails: drop ``_alibi_once`` then."""
    path, over = wide("falcon_alibi")
    model = build("falcon_alibi", **over).to(dtype)
    ids = torch.tensor(TOKENS)[None]
    out = {}
    for impl in ("sdpa", "eager"):
        model.config._attn_implementation = impl
        with torch.no_grad():
            out[impl] = model(ids).logits[0].double().numpy()
    ours = run(open_checkpoint(path).weights(np.float64 if dtype == torch.float64 else np.float32), TOKENS).logits
    assert rel(ours, out["sdpa"]) < tol
    assert rel(out["eager"], out["sdpa"]) > 1e-3


@pytest.mark.parametrize("fam, key, value, says", [
    ("bloom", "apply_residual_connection_post_layernorm", True, "apply_residual_connection_post_layernorm"),
    ("falcon", "rope_parameters", {"rope_type": "ntk_by_parts", "rope_theta": 1e4}, "ntk_by_parts"),
    ("falcon", "multi_query", "yes", "multi_query"),
])
def test_options_that_change_the_maths_are_refused(wide, tmp_path, fam, key, value, says):
    src = {"bloom": "bloom", "falcon": "falcon_alibi"}[fam]
    path = tmp_path / fam
    shutil.copytree(wide(src)[0], path)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    if fam == "falcon" and key == "rope_parameters":
        config["alibi"] = False
    (path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("info", path, ok=False), says)


@pytest.mark.parametrize("args, says", [(("--offset", "2"), "rotary"), (("--positional",), "learned")])
def test_qk_offset_and_positional_refuse_on_alibi(wide, args, says):
    """Both are about rotary / learned positions: on an ALiBi model each is one clear error line."""
    path = wide("bloom")[0]
    assert_one_line_error(invoke("qk", path, "0.1", *args, "--csv", ok=False), says, code=2)


def test_circuits_say_alibi_is_left_out_and_info_lists_it(wide):
    path = wide("bloom")[0]
    notes = [line for line in invoke("info", path).stderr.splitlines() if line.startswith("circuits:")]
    assert any("ALiBi" in n for n in notes)
    got = [line for line in invoke("qk", path, "0.1", "--csv").stderr.splitlines() if line.startswith("circuits:")]
    assert got == notes
    raw = [line for line in invoke("qk", path, "0.1", "--csv", "--raw").stderr.splitlines()
           if line.startswith("circuits:")]
    assert any("embedding norm" in n for n in raw)


def test_bloom_circuits_read_w_e_through_the_embedding_norm(wide):
    """fold_embed_norm: the circuits' W_E is the embedding LayerNorm of each row (exact: BLOOM adds nothing to
    the token embedding before it), and the forward pass of the processed view still equals the raw one."""
    path = wide("bloom")[0]
    raw = open_checkpoint(path).weights(np.float64)
    w = process(raw)
    E = raw["embed.W_E"]
    ln = (E - E.mean(1, keepdims=True)) / np.sqrt(E.var(1, keepdims=True) + raw.cfg.eps) * raw["embed.ln.w"] \
        + raw["embed.ln.b"]
    np.testing.assert_allclose(w["embed.W_E"], ln - ln.mean(1, keepdims=True), atol=1e-12)
    centred = [x - x.mean(-1, keepdims=True) for x in (run(w, TOKENS).logits, run(raw, TOKENS).logits)]
    np.testing.assert_allclose(*centred, atol=1e-9)


@pytest.mark.parametrize("model_type", ["falcon", "bloom"])
def test_every_config_key_transformers_reads_is_handled(model_type):
    """As tests/test_family_options.py: every key of transformers' config is read, declared inert or common."""
    keys = set(transformers.AutoConfig.for_model(model_type).to_dict())
    spec = detect({"model_type": model_type}, [])
    assert spec.family == model_type
    assert keys - (spec.config_keys() | set(spec.inert) | COMMON_INERT) == set()


def test_falcon_variants_layout():
    """The KV groups each variant's fused query_key_value is read with, and its block kind."""
    spec = builtin_spec("falcon")
    base = {"model_type": "falcon", "vocab_size": 8, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "num_kv_heads": 2}
    got = {k: build_config(spec, {**base, **v}) for k, v in {
        "7b": {}, "40b": {"new_decoder_architecture": True}, "rw": {"multi_query": False, "parallel_attn": False}}.items()}
    assert [got[k].n_kv_heads for k in ("7b", "40b", "rw")] == [1, 2, 4]
    assert [got[k].parallel_attn_mlp for k in ("7b", "40b", "rw")] == [True, True, False]
    assert set(FAMILIES) >= {"falcon", "falcon_new", "falcon_alibi", "bloom"}


def test_slice_every_is_schema_checked(tmp_path):
    bad = {"family": "x", "tensors": {"embed.W_E": {"from": "w", "slice": [0, 1, 2, 3]}}}
    with pytest.raises(InputError, match="slice"):
        check_spec(bad, tmp_path / "x.yaml")
