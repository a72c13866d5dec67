"""OLMo 1, Phi-1/1.5/2 and Command-R (Cohere): option variants against transformers and the options tcli
refuses. The generic checks (forward, decompose, lens, circuits) run on them in tests/test_families_more.py
(entries olmo, phi, cohere, cohere_qk_norm); here: OLMo's clip_qkv set and unset, Phi's partial rotary from
either place a config keeps it, Cohere's logit_scale and use_qk_norm notes, and refusals (exit 2, one line)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from helpers import invoke
from test_errors import assert_one_line_error
from test_families_more import TOKENS, build, hf_run, rel
from tcli.checkpoint import build_config, open_checkpoint
from tcli.checkpoint.spec import COMMON_INERT, builtin_spec, detect
from tcli.forward import run
from tcli.processing import process


def _saved(tmp_path, fam, **over):
    model = build(fam, **over)
    path = tmp_path / fam
    model.save_pretrained(path, safe_serialization=True)
    return model, path


def _logits(model, dtype=torch.float64):
    with torch.no_grad():
        return model.to(dtype)(torch.tensor(TOKENS)[None]).logits[0].double().numpy()


def _ours(path, dtype=np.float64, **over):
    return run(process(open_checkpoint(path).weights(dtype), enabled=False), TOKENS).logits


@pytest.mark.parametrize("model_type", ["olmo", "phi", "cohere"])
def test_every_config_key_is_read_or_declared_inert(model_type):
    """As tests/test_family_options.py's check: each key of transformers' config is read by the family YAML,
    declared inert there, or a key no forward pass reads."""
    keys = set(transformers.AutoConfig.for_model(model_type).to_dict())
    spec = detect({"model_type": model_type}, [])
    assert spec.family == model_type
    assert keys - (spec.config_keys() | set(spec.inert) | COMMON_INERT) == set()


@pytest.mark.parametrize("clip", [None, 2.0, 0.5])
def test_olmo_clip_qkv_set_and_unset_match_transformers(tmp_path, clip):
    """clip_qkv unset, loose and tight: tcli's logits equal transformers' (float64); where the clamp bites,
    leaving it out gives a different answer (so the test can tell), and ``info`` notes it for circuits."""
    _, path = _saved(tmp_path, "olmo", clip_qkv=clip)
    ours = _ours(path)
    assert rel(ours, hf_run("olmo", torch.float64, clip_qkv=clip)[0]) < 1e-9
    cfg = open_checkpoint(path).config
    assert cfg.clip_qkv == (clip or 0.0)
    notes = [line for line in invoke("info", path).stderr.splitlines() if line.startswith("circuits:")]
    assert any("clip_qkv" in n for n in notes) == bool(clip)
    if clip:
        config = json.loads((path / "config.json").read_text())
        config["clip_qkv"] = None
        (path / "config.json").write_text(json.dumps(config))
        assert rel(_ours(path), ours) > 1e-3


def test_olmo_float32_with_clip(tmp_path):
    model, path = _saved(tmp_path, "olmo", clip_qkv=0.5)
    assert rel(_ours(path, np.float32), _logits(model, torch.float32)) < 1e-4


def test_olmo_norms_have_no_parameters(tmp_path):
    """OLMo's LayerNorm has no weight and no bias: they read as ones and zeros (the file holds no norm tensor)."""
    _, path = _saved(tmp_path, "olmo")
    w = open_checkpoint(path).weights(np.float64)
    for name in ("blocks.0.ln1.w", "blocks.1.ln2.w", "ln_final.w"):
        assert (w[name] == 1).all()
    for name in ("blocks.0.ln1.b", "ln_final.b"):
        assert (w[name] == 0).all()


@pytest.mark.parametrize("where", ["rope_parameters", "top_level"])
def test_phi_partial_rotary_from_either_place(tmp_path, where):
    """partial_rotary_factor 0.75 (rotary_dim 6 of d_head 8) against transformers, read from rope_parameters
    (transformers 5) or from the top level with rope_theta (configs written before it)."""
    rope = {"rope_type": "default", "rope_theta": 50.0, "partial_rotary_factor": 0.75}
    _, path = _saved(tmp_path, "phi", rope_parameters=rope)
    if where == "top_level":
        config = json.loads((path / "config.json").read_text())
        config.pop("rope_parameters")
        config.update(partial_rotary_factor=0.75, rope_theta=50.0, rope_scaling=None)
        (path / "config.json").write_text(json.dumps(config))
    cfg = open_checkpoint(path).config
    assert (cfg.rotary_dim, cfg.rotary_base) == (6, 50.0)
    assert rel(_ours(path), hf_run("phi", torch.float64, rope_parameters=rope)[0]) < 1e-9


def test_phi_default_partial_rotary_is_half():
    """A Phi config without partial_rotary_factor: transformers' default 0.5."""
    raw = dict(model_type="phi", num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=40,
               vocab_size=61, max_position_embeddings=32)
    cfg = build_config(builtin_spec("phi"), raw)
    assert cfg.rotary_dim == 4 and cfg.parallel_attn_mlp and cfg.act_fn == "gelu_new"


def test_cohere_defaults_and_logit_scale(tmp_path):
    """Cohere's defaults as transformers' (tied embeddings, base 500000, logit_scale 0.0625); logit_scale
    multiplies the logits (folded into W_U: the tied W_E is left as it is)."""
    raw = dict(model_type="cohere", num_hidden_layers=1, hidden_size=32, num_attention_heads=4, intermediate_size=40,
               vocab_size=61, max_position_embeddings=32)
    cfg = build_config(builtin_spec("cohere"), raw)
    assert cfg.tied_embeddings and cfg.rotary_base == 500000.0 and cfg.extras["logit_scale"] == 0.0625
    assert cfg.rotary_dim == cfg.d_head and cfg.qk_norm == "none"
    model, path = _saved(tmp_path, "cohere", logit_scale=0.25)
    w = open_checkpoint(path).weights(np.float64)
    E = model.get_input_embeddings().weight.detach().double().numpy()
    np.testing.assert_array_equal(w["embed.W_E"], E)
    np.testing.assert_allclose(w["unembed.W_U"], 0.25 * E.T, rtol=1e-15)
    assert rel(_ours(path), hf_run("cohere", torch.float64, logit_scale=0.25)[0]) < 1e-9


def test_cohere_qk_norm_note(tmp_path):
    """use_qk_norm: a LayerNorm per head; circuits fold its weights and centring and say what is left out."""
    _, path = _saved(tmp_path, "cohere_qk_norm")
    assert open_checkpoint(path).config.qk_norm == "head_layernorm"
    notes = [line for line in invoke("info", path).stderr.splitlines() if line.startswith("circuits:")]
    assert len(notes) == 1 and "QK-norm" in notes[0] and "1/std" in notes[0] and "centring" in notes[0]


@pytest.mark.parametrize("fam, key, value, says", [
    ("phi", "qk_layernorm", True, "qk_layernorm"),
    ("olmo", "clip_qkv", -1.0, "clip_qkv"),
    ("cohere", "use_qk_norm", "yes", "use_qk_norm"),
    ("phi", "hidden_act", "gelu_10", "gelu_10"),
])
def test_options_tcli_does_not_compute_are_refused(tmp_path, fam, key, value, says):
    """Config values tcli does not compute (or that are invalid) exit 2 with one line naming them."""
    _, path = _saved(tmp_path, fam)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("info", path, ok=False), says)


def test_generic_reference_matches(tmp_path):
    """The generic entries' float64 reference is the plain transformers model up to float32 rounding (the
    patches make its float32 LayerNorm and rotary float64, nothing else)."""
    for fam in ("olmo", "cohere_qk_norm"):
        model, _ = _saved(tmp_path, fam)
        patched = hf_run(fam, torch.float64)[0]
        assert 0 < rel(_logits(model, torch.float64), patched) < 1e-5
