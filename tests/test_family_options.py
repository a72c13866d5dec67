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
                                        "stablelm", "gptj", "gpt_neo", "opt", "olmo", "phi", "cohere", "falcon",
                                        "bloom", "roberta", "distilbert", "mixtral", "qwen2_moe", "qwen3_moe"])
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
    assert ck.config.extras["rope"]["llama3"]["factor"] == 8.0
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


ROPE_TYPES = [  # (family config class, rope_parameters): every type transformers 5 computes for decoders
    ("LlamaConfig", {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0, "original_max_position_embeddings": 16}),
    ("LlamaConfig", {"rope_type": "yarn", "rope_theta": 500.0, "factor": 8.0, "original_max_position_embeddings": 8,
                     "beta_fast": 8.0, "beta_slow": 2.0, "mscale": 1.0, "mscale_all_dim": 0.5, "truncate": False}),
    ("Qwen3Config", {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0, "original_max_position_embeddings": 16}),
    ("StableLmConfig", {"rope_type": "yarn", "rope_theta": 500.0, "factor": 4.0, "original_max_position_embeddings": 16,
                        "partial_rotary_factor": 0.5}),
    ("LlamaConfig", {"rope_type": "dynamic", "rope_theta": 500.0, "factor": 4.0}),
    ("Phi3Config", {"rope_type": "longrope", "rope_theta": 300.0, "original_max_position_embeddings": 8,
                    "short_factor": [1.0, 1.5, 2.0, 1.2], "long_factor": [2.0, 3.0, 4.0, 5.0]}),
]


def _rope_model(cls: str, rope: dict, dtype):
    import transformers

    kw = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=40, vocab_size=61, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
              pad_token_id=0, rope_parameters=rope)
    if cls != "StableLmConfig":
        kw["head_dim"] = 8
    cfg = getattr(transformers, cls)(**kw)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn_like(p))
    return model.to(dtype)


# float64: transformers computes the RoPE frequencies, cos and sin in float32 even in a float64 model (1e-6 apart
# at these positions); a wrong formula is 1e-2 off
@pytest.mark.parametrize("cls, rope", ROPE_TYPES, ids=lambda x: x if isinstance(x, str) else x["rope_type"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-5)])
def test_rope_types_match_transformers(tmp_path, cls, rope, dtype, tol):
    """YaRN (its ramp and attention factor, folded into the rotary coordinates of W_Q/W_K or of the QK-norm
    weights), dynamic NTK (default RoPE within the context) and LongRoPE (short factors for prompts within the
    original context, long ones beyond, and its attention factor) against transformers' forward; prompts of 6
    and 12 tokens either side of LongRoPE's original context of 8."""
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    model = _rope_model(cls, rope, torch_dtype)
    path = save_hf(model.float(), tmp_path / "m")
    model = model.to(torch_dtype)
    w = process(open_checkpoint(path).weights(dtype), enabled=False)
    for tokens in (TOKENS[:6], TOKENS + [7, 4]):
        with torch.no_grad():
            ref = model(torch.tensor(tokens)[None]).logits[0].double().numpy()
        ours = run(w, tokens).logits
        assert np.abs(ours - ref).max() / np.abs(ref).max() < tol


def test_qk_circuit_with_yarn_equals_transformers_rotary(tmp_path):
    """``qk --offset N`` on a YaRN model is the score transformers computes for a query N positions after its
    key: HF's own rotary tables (with the attention factor 0.1 ln 4 + 1 on cos and sin) applied to E W_Q, E W_K."""
    from tcli.analyses import circuits

    model = _rope_model(*ROPE_TYPES[0], torch.float64)
    path = save_hf(model.float(), tmp_path / "m")
    model = model.double()
    w = process(open_checkpoint(path).weights(np.float64))  # ln1.w folded into W_Q, W_K
    att, rot = model.model.layers[1].self_attn, model.model.rotary_emb
    t = lambda x: x.detach().double()  # noqa: E731
    E = t(model.model.embed_tokens.weight) * t(model.model.layers[1].input_layernorm.weight)  # raw: ln1.w
    for N in (3, 11):
        pos = torch.tensor([[5, 5 + N]])
        cos, sin = rot(E[None], pos)
        q = (E @ t(att.q_proj.weight).T).reshape(61, 4, 8)[:, 0]
        k = (E @ t(att.k_proj.weight).T).reshape(61, 2, 8)[:, 0]

        def rope_at(x, i):
            half = torch.cat([-x[..., 4:], x[..., :4]], -1)
            return x * cos[0, i].double() + half * sin[0, i].double()
        dense = (rope_at(q, 1) @ rope_at(k, 0).T).numpy()
        np.testing.assert_allclose(circuits.qk(w, 1, 0, N).dense(), dense, rtol=1e-5, atol=1e-5 * np.abs(dense).max())
