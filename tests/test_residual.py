"""decompose / lens / attention: sums to the real logit, agreement with transformers' internals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from builders import FAMILIES, V, hf_model
from helpers import invoke, parse
from tcli.analyses.residual import decompose, lens_logits, pieces
from tcli.checkpoint import open_checkpoint
from tcli.checkpoint.tokens import Vocab
from tcli.forward import run
from tcli.processing import process

TOKENS = np.random.default_rng(1).integers(0, V, 12)


def load(path, dtype=np.float32, raw=False):
    ck = open_checkpoint(path)
    return process(ck.weights(dtype), enabled=not raw, center_unembed=False), Vocab(ck.config.d_vocab, None)


def hf_logits(fam, model):
    with torch.no_grad():
        out = model(torch.tensor(TOKENS)[None], output_hidden_states=True)
        if fam == "bert":
            return (out.last_hidden_state[0] @ model.get_input_embeddings().weight.T).numpy(), out
    return out.logits[0].numpy(), out


@pytest.mark.parametrize("fam", FAMILIES)
@pytest.mark.parametrize("raw", [False, True])
def test_decomposition_sums_to_the_real_logit(fam, raw, hf_dirs):
    model, path = hf_dirs[fam]
    w, vocab = load(path, raw=raw)
    ref, _ = hf_logits(fam, model)
    for position, target, minus in ((-1, 5, None), (3, 7, 11), (0, 2, None)):
        table = decompose(w, vocab, TOKENS, position, target, minus)
        rows = [dict(zip(table.columns, r)) for r in table.rows()]
        assert rows[-1]["component"] == "total"
        parts = sum(r["value"] for r in rows[:-1])
        expected = ref[position, target] - (ref[position, minus] if minus is not None else 0)
        assert parts == pytest.approx(rows[-1]["value"], rel=1e-9)
        assert abs(parts - expected) <= 1e-4 * max(1.0, np.abs(ref).max()), (fam, raw, parts, expected)
        kinds = {r["component"] for r in rows}
        assert {"embed", "head", "attn_bias", "unembed_bias", "total"} <= kinds
        assert ("mlp" in kinds) == (not w.cfg.attn_only)
        if w.cfg.norm_placement == "post":
            assert sum(r["component"] == "norm_bias" for r in rows) == 1 + 2 * w.cfg.n_layers


@pytest.mark.parametrize("fam", ["gpt2", "bert", "llama"])
def test_decomposition_float64_is_tight(fam, hf_dirs):
    _, path = hf_dirs[fam]
    w, vocab = load(path, np.float64)
    cache = run(w, TOKENS)
    total = sum(v @ w["unembed.W_U"][:, 3] for *_, v in pieces(cache, w.cfg, 4)) + w["unembed.b_U"][3]
    assert total == pytest.approx(cache.logits[4, 3], abs=1e-10)


def test_head_outputs_sum_to_the_reference_attention_output(hf_dirs):
    """Per-head writes z_h W_O^h plus b_O equal what transformers' attention module returns."""
    for fam, attr in (("gpt2", lambda m, l: m.transformer.h[l].attn), ("llama", lambda m, l: m.model.layers[l].self_attn)):
        model, path = hf_dirs[fam]
        captured = {}
        hooks = [attr(model, l).register_forward_hook(lambda mod, inp, out, l=l: captured.__setitem__(l, out[0][0]))
                 for l in range(2)]
        with torch.no_grad():
            model(torch.tensor(TOKENS)[None])
        for h in hooks:
            h.remove()
        w, _ = load(path, np.float64, raw=True)
        cache = run(w, TOKENS)
        for l in range(2):
            ours = cache.head_out[l].sum(0) + cache.attn_bias[l]
            np.testing.assert_allclose(ours, captured[l].double().numpy(), atol=1e-5)


@pytest.mark.parametrize("fam", ["gpt2", "neox", "llama"])
def test_logit_lens_uses_each_layers_own_norm_scale(fam, hf_dirs):
    model, path = hf_dirs[fam]
    w, _ = load(path, np.float64, raw=True)
    cache = run(w, TOKENS)
    layers = dict(lens_logits(w, cache))
    ref, out = hf_logits(fam, model)
    np.testing.assert_allclose(layers[w.cfg.n_layers - 1], ref, atol=1e-4)
    fresh = hf_model(fam).double()
    final_norm = {"gpt2": lambda m: m.transformer.ln_f, "neox": lambda m: m.gpt_neox.final_layer_norm,
                  "llama": lambda m: m.model.norm}[fam](fresh)
    with torch.no_grad():
        h0 = out.hidden_states[1].double()  # after block 0, before any final norm
        expect = fresh.get_output_embeddings()(final_norm(h0))[0].numpy()
    np.testing.assert_allclose(layers[0], expect, atol=1e-5)


def test_attention_patterns_match_transformers(hf_dirs):
    model = hf_model("gpt2")
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        ref = model(torch.tensor(TOKENS)[None], output_attentions=True).attentions
    w, vocab = load(hf_dirs["gpt2"][1], np.float64)
    cache = run(w, TOKENS)
    for l in range(2):
        np.testing.assert_allclose(cache.pattern[l], ref[l][0].double().numpy(), atol=1e-6)


def test_cli_decompose_lens_attention(hf_dirs):
    _, path = hf_dirs["gpt2"]
    ids = ",".join(map(str, TOKENS))
    cols, rows = parse(invoke("decompose", path, "--ids", ids, "--target", "#5", "--csv").stdout, "csv")
    assert cols[:4] == ["component", "layer", "head", "value"] and rows[-1]["component"] == "total"
    cols, rows = parse(invoke("decompose", path, "--ids", ids, "--diff", "#5", "#6", "--position", "2", "--json").stdout,
                       "json")
    assert rows[-1]["component"] == "total"
    cols, rows = parse(invoke("lens", path, "--ids", ids, "-k", "2", "--position", "-1", "--csv").stdout, "csv")
    assert cols == ["layer", "position", "rank", "token_id", "token", "logit"]
    assert [r["layer"] for r in rows] == ["-1", "-1", "0", "0", "1", "1"]
    cols, rows = parse(invoke("attention", path, "--ids", ids, "--head", "1.2", "-k", "2", "--tsv").stdout, "tsv")
    assert cols == ["layer", "head", "dst_pos", "dst_token", "rank", "src_pos", "src_token", "weight"]
    assert rows[0]["dst_pos"] == "0" and rows[0]["src_pos"] == "0" and float(rows[0]["weight"]) == pytest.approx(1.0)
    assert all(int(r["src_pos"]) <= int(r["dst_pos"]) for r in rows)


def test_cli_prompt_errors(hf_dirs):
    from test_errors import assert_one_line_error

    _, path = hf_dirs["gpt2"]
    assert_one_line_error(invoke("decompose", path, ok=False), "--prompt")
    assert_one_line_error(invoke("decompose", path, "--ids", "1,2", "--position", "5", ok=False), "position 5 out of range")
    assert_one_line_error(invoke("decompose", path, "--ids", ",".join(["1"] * 40), ok=False), "context of 32")
    assert_one_line_error(invoke("decompose", path, "--ids", "1,x", ok=False), "comma-separated integers")
    assert_one_line_error(invoke("decompose", path, "--prompt", "hi", ok=False), "no tokenizer")
    assert_one_line_error(invoke("attention", path, "--ids", "1,2", "--head", "7.0", ok=False), "layer 7 out of range")
