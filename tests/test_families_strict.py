"""FAMILIES: MLP activations, strict family files, config validation and the two silent defects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import FAMILIES, V, hf_model
from tcli.checkpoint import open_checkpoint
from tcli.forward import run
from tcli.processing import process

TOKENS = np.random.default_rng(1).integers(0, V, 12)

DOWN = {"gpt2": lambda m, l: m.transformer.h[l].mlp.c_proj,
        "neox": lambda m, l: m.gpt_neox.layers[l].mlp.dense_4h_to_h,
        "llama": lambda m, l: m.model.layers[l].mlp.down_proj,
        "qwen2": lambda m, l: m.model.layers[l].mlp.down_proj,
        "mistral": lambda m, l: m.model.layers[l].mlp.down_proj,
        "bert": lambda m, l: m.encoder.layer[l].output.dense}


def hf_down_inputs(model, fam, n_layers):
    """The input of each layer's MLP output projection (the post-activation hidden), via forward hooks."""
    got = {}
    hooks = [DOWN[fam](model, l).register_forward_pre_hook(lambda mod, args, l=l: got.__setitem__(l, args[0]))
             for l in range(n_layers)]
    with torch.no_grad():
        model(torch.tensor(TOKENS)[None])
    for h in hooks:
        h.remove()
    return [got[l][0].double().numpy() for l in range(n_layers)]


@pytest.mark.parametrize("fam", FAMILIES)
def test_mlp_act_matches_transformers(fam, hf_dirs):
    _, path = hf_dirs[fam]
    ck = open_checkpoint(path)
    model = hf_model(fam).to(torch.float64)
    ref = hf_down_inputs(model, fam, ck.config.n_layers)
    cache = run(process(ck.weights(np.float64), enabled=False), TOKENS)
    for l in range(ck.config.n_layers):
        assert cache.mlp_act[l].shape == (len(TOKENS), ck.config.d_mlp)
        np.testing.assert_allclose(cache.mlp_act[l], ref[l], rtol=1e-6, atol=1e-6 * np.abs(ref[l]).max())
        # the hidden really is what multiplies W_out
        w = ck.weights(np.float64)
        np.testing.assert_allclose(cache.mlp_act[l] @ w[f"blocks.{l}.mlp.W_out"] + w[f"blocks.{l}.mlp.b_out"],
                                   cache.mlp_out[l], rtol=1e-10, atol=1e-10)


def test_mlp_act_is_none_for_attention_only(attn_only_dir):
    cache = run(open_checkpoint(attn_only_dir).weights(), [1, 2, 3])
    assert cache.mlp_act == [None, None]
