"""Config options that change the maths of a supported family: each read and computed as transformers does
(or refused), compared with transformers' own forward on tiny seeded models built from configs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import hf_model, save_hf
from tcli.checkpoint import open_checkpoint
from tcli.forward import run
from tcli.processing import process

TOKENS = [3, 17, 5, 9, 30, 2, 44, 8, 1, 12]


def compare(model, path, tol=1e-4):
    with torch.no_grad():
        ref = model(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
    ours = run(process(open_checkpoint(path).weights(np.float32), enabled=False), TOKENS).logits
    rel = np.abs(ours - ref).max() / np.abs(ref).max()
    assert rel < tol, rel
    return ours


@pytest.mark.parametrize("over", [dict(scale_attn_weights=False), dict(scale_attn_by_inverse_layer_idx=True),
                                  dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)])
def test_gpt2_attention_scaling_options(tmp_path, over):
    model = hf_model("gpt2", **over)
    path = save_hf(model, tmp_path / "m")
    compare(model, path)
    default = hf_model("gpt2")
    with torch.no_grad():  # the option really changes the answer: same weights, default config
        differs = model(torch.tensor(TOKENS)[None]).logits - default(torch.tensor(TOKENS)[None]).logits
    assert differs.abs().max() > 1e-3


@pytest.mark.parametrize("family, over", [
    ("qwen2", dict(use_sliding_window=False, sliding_window=2)),            # the window is not used
    ("qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),  # layer 1 only
    ("qwen2", dict(use_sliding_window=True, sliding_window=3, max_window_layers=0)),  # every layer
    ("mistral", dict(sliding_window=3)),
])
def test_sliding_windows_per_layer(tmp_path, family, over):
    import transformers

    from builders import hf_config

    base = hf_config(family).to_dict()
    base.pop("layer_types", None)  # derived from the options at construction: let the config compute it
    cfg = type(hf_config(family))(**{**base, **over})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    path = save_hf(model, tmp_path / "m")
    compare(model, path)
    # as checkpoints saved before transformers wrote layer_types: the window from the other options
    import json

    config = json.loads((path / "config.json").read_text())
    config.pop("layer_types", None)
    (path / "config.json").write_text(json.dumps(config))
    ours = open_checkpoint(path).config
    compare(model, path)
    windows = ours.extras.get("layer_windows")
    if over.get("use_sliding_window") is False:
        assert windows in (None, [None] * ours.n_layers)
    else:
        assert windows == [(3 if l >= over.get("max_window_layers", 0) else None) for l in range(ours.n_layers)]
        full = hf_config(family)  # the same weights without any window give a different answer
        torch.manual_seed(0)
        plain = transformers.AutoModelForCausalLM.from_config(full, attn_implementation="eager")
        plain.load_state_dict(model.state_dict())
        with torch.no_grad():
            gap = (model(torch.tensor(TOKENS)[None]).logits - plain(torch.tensor(TOKENS)[None]).logits).abs().max()
        assert gap > 1e-4


def test_scaled_qk_uses_the_models_own_factor(tmp_path):
    from helpers import invoke, parse

    model = hf_model("gpt2", scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True)
    path = save_hf(model, tmp_path / "m")
    _, raw = parse(invoke("qk", path, "1.0", "-t", "#3", "-k", "3", "--json").stdout, "json")
    _, scaled = parse(invoke("qk", path, "1.0", "-t", "#3", "-k", "3", "--scaled", "--json").stdout, "json")
    assert np.allclose([r["value"] / 2 for r in raw], [r["value"] for r in scaled])  # layer 1: 1/(1 + 1)


@pytest.mark.parametrize("extra, ok", [("transformer.h.0.attn.q_norm.weight", False), ("h.1.mlp.extra", False),
                                       ("transformer.h.0.attn.bias", True), ("lm_head.weight", True)])
def test_every_tensor_is_read_or_ignored(hf_dirs, tmp_path, extra, ok):
    """A tensor the layout neither reads nor lists under ``ignore`` (e.g. Qwen3's q_norm in a layout that
    forgets it) is a mechanism silently left out: exit 2 naming it."""
    import shutil

    from safetensors.numpy import load_file, save_file

    from helpers import invoke
    from test_errors import assert_one_line_error

    path = tmp_path / "gpt2"
    shutil.copytree(hf_dirs["gpt2"][1], path)
    tensors = load_file(str(path / "model.safetensors"))
    tensors[extra] = np.ones(4, np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    result = invoke("info", path, ok=ok)
    if not ok:
        assert_one_line_error(result, "does not read 1 tensor", extra, "ignore")


@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "bert", "qwen3", "gemma",
                                        "gemma2", "gemma3_text", "olmo2", "phi3", "granite", "starcoder2",
                                        "stablelm", "gptj", "gpt_neo", "opt"])
def test_every_config_key_transformers_reads_is_handled(model_type):
    """Each key of the family's transformers config is read by the family YAML, declared inert there (with
    a reason), or one of the keys no forward pass reads; a new option that changes the maths fails here."""
    import transformers

    from tcli.checkpoint.spec import COMMON_INERT, builtin_spec, detect

    keys = set(transformers.AutoConfig.for_model(model_type).to_dict())
    spec = detect({"model_type": model_type}, [])
    handled = spec.config_keys() | set(spec.inert) | COMMON_INERT
    assert keys - handled == set(), f"{spec.family}: config keys neither read nor declared inert"
    assert builtin_spec(spec.family) is spec


@pytest.mark.parametrize("family, key", [("bert", "is_decoder"), ("bert", "add_cross_attention"),
                                         ("gpt2", "add_cross_attention")])
def test_options_tcli_does_not_compute_are_refused(hf_dirs, tmp_path, family, key):
    import json
    import shutil

    from helpers import invoke
    from test_errors import assert_one_line_error

    path = tmp_path / family
    shutil.copytree(hf_dirs[family][1], path)
    config = json.loads((path / "config.json").read_text())
    config[key] = True
    (path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("info", path, ok=False), key)


# float64: transformers computes the rotary frequencies in float32 even for a float64 model (1e-7 apart)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-6)])
def test_llama3_rope_scaling(tmp_path, dtype, tol):
    """Llama 3.x's rope_type llama3 (frequency-dependent stretching) against transformers, with an
    original context short enough that all three frequency bands occur at d_head 8."""
    import transformers

    from builders import hf_config

    rope = {"rope_type": "llama3", "rope_theta": 500.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    base = hf_config("llama").to_dict()
    base.pop("rope_parameters", None)
    base.pop("rope_scaling", None)
    cfg = transformers.LlamaConfig(**{**base, "rope_parameters": rope})
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).to(torch.float64 if dtype == np.float64 else torch.float32)
    path = save_hf(model.float(), tmp_path / "m")
    ck = open_checkpoint(path)
    assert ck.config.extras["rope_llama3"]["factor"] == 8.0
    model = model.to(torch.float64 if dtype == np.float64 else torch.float32)
    with torch.no_grad():
        ref = model(torch.tensor(TOKENS)[None]).logits[0].double().numpy()
    ours = run(process(ck.weights(dtype), enabled=False), TOKENS).logits
    assert np.abs(ours - ref).max() / np.abs(ref).max() < tol
    import json  # the same weights with default RoPE: a different answer (the scaling matters here)

    config = json.loads((path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500.0}
    (path / "config.json").write_text(json.dumps(config))
    plain = run(process(open_checkpoint(path).weights(dtype), enabled=False), TOKENS).logits
    assert np.abs(plain - ours).max() > 1e-4
