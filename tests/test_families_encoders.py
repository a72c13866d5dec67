"""Encoder families RoBERTa and DistilBERT: each loads exactly or is refused. Tiny seeded transformers models
built from configs (norm weights 1 + 0.3·N(0, 1), every other parameter 0.3·N(0, 1), biases included), saved
both bare (RobertaModel, DistilBertModel) and with the MLM head (…ForMaskedLM, prefixed tensors), compared
with transformers' own forward in float32 and float64: the last hidden state, each hidden state, attention
patterns, MLP activations; RoBERTa on prompts with and without its pad token (positions are computed from
the input ids); decompose sums to the tied-W_E^T logit of HF's last hidden state, the lens is HF's hidden
states through W_E^T, and the ov/qk circuits equal dense numpy products of the HF parameters.
"""

from __future__ import annotations

import json
import operator
import shutil
import unittest.mock

import numpy as np
import pytest
import torch
import transformers

from helpers import decompose_rows, invoke, parse, saved_models
from tcli.analyses.residual import lens_logits
from tcli.checkpoint import open_checkpoint
from tcli.forward import run
from tcli.processing import process

V, CTX, PAD = 61, 32, 1
rng = np.random.default_rng(5)
PLAIN = rng.integers(2, V, 12)  # no pad token (RoBERTa's pad id is 1)
PADDED = PLAIN.copy()
PADDED[[0, 4, 5, 9]] = PAD  # pad tokens first, in the middle and twice in a row

ROBERTA = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, intermediate_size=40, vocab_size=V,
               max_position_embeddings=CTX + PAD + 1, type_vocab_size=1, pad_token_id=PAD)
DISTIL = dict(n_layers=2, dim=32, n_heads=4, hidden_dim=40, vocab_size=V, max_position_embeddings=CTX,
              activation="gelu", pad_token_id=0)

# fam -> (config class, bare model class, MLM class, config kwargs, base attribute of the MLM model, names)
FAMILIES = {
    "roberta": ("RobertaConfig", "RobertaModel", "RobertaForMaskedLM", ROBERTA, "roberta",
                dict(layer="encoder.layer.{l}", down="encoder.layer.{l}.output.dense", q="attention.self.query",
                     k="attention.self.key", v="attention.self.value", o="attention.output.dense")),
    "distilbert": ("DistilBertConfig", "DistilBertModel", "DistilBertForMaskedLM", DISTIL, "distilbert",
                   dict(layer="transformer.layer.{l}", down="transformer.layer.{l}.ffn.lin2", q="attention.q_lin",
                        k="attention.k_lin", v="attention.v_lin", o="attention.out_lin")),
}
NAMES = sorted(FAMILIES)
KINDS = ("bare", "mlm")
CASES = [("roberta", PLAIN), ("roberta", PADDED), ("distilbert", PLAIN), ("distilbert", PADDED)]
CASE_IDS = ["roberta-plain", "roberta-pad", "distilbert-plain", "distilbert-pad"]


def build(fam: str, kind: str = "bare", seed: int = 0, **over):
    """A seeded tiny model (eager attention): norms 1 + 0.3·N(0, 1), every other parameter 0.3·N(0, 1)."""
    cfg_cls, bare, mlm, kw, _, _ = FAMILIES[fam]
    cfg = getattr(transformers, cfg_cls)(**{**kw, **over})
    torch.manual_seed(seed)
    model = getattr(transformers, bare if kind == "bare" else mlm)(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "layernorm" in name.lower() or "layer_norm" in name.lower()
            p.copy_((1.0 if is_norm and name.endswith("weight") else 0.0) + 0.3 * torch.randn_like(p))
    return model


def base(fam: str, model):
    """The encoder itself (the MLM model's ``roberta`` / ``distilbert``)."""
    return getattr(model, FAMILIES[fam][4], model)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(fam, kind) -> (model, checkpoint dir), built once per module on first use."""
    get = saved_models(tmp_path_factory.mktemp("encoders"), build)
    return lambda fam, kind="bare": get(fam, kind)


def _attr(model, path: str, l: int | None = None):
    return operator.attrgetter(path.format(l=l))(model)


def hf_run(fam, kind, tokens, dtype):
    """(last hidden state, hidden states, attentions, MLP output-dense inputs, model) of a fresh copy."""
    model = build(fam, kind).to(dtype)
    enc, acts = base(fam, model), {}
    hooks = [_attr(enc, FAMILIES[fam][5]["down"], l).register_forward_pre_hook(
        lambda mod, args, l=l: acts.__setitem__(l, args[0][0].double().numpy())) for l in range(2)]
    softmax = torch.nn.functional.softmax

    def softmax64(x, dim=None, dtype=None, **kw):  # keep a float64 reference float64 throughout
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype, **kw)

    with torch.no_grad(), unittest.mock.patch.object(torch.nn.functional, "softmax", softmax64):
        out = enc(torch.tensor(tokens)[None], output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    return (out.last_hidden_state[0].double().numpy(), [h[0].double().numpy() for h in out.hidden_states],
            [a[0].double().numpy() for a in out.attentions], acts, model)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fam, tokens", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_forward_matches_transformers(fam, tokens, kind, dtype, tol, zoo):
    """The last hidden state, each hidden state, each attention pattern and each MLP activation equal
    transformers' (bare and MLM checkpoints; RoBERTa with pad tokens in the prompt too)."""
    _, path = zoo(fam, kind)
    last, hidden, attentions, acts, _ = hf_run(fam, kind, tokens, torch.float32 if dtype == np.float32
                                               else torch.float64)
    ck = open_checkpoint(path)
    assert ck.config.family == fam and ck.config.norm_placement == "post" and not ck.config.causal
    cache = run(process(ck.weights(dtype), enabled=False), tokens)
    assert len(hidden) == 3
    assert rel(cache.resid_post[-1], last) < tol
    assert rel(cache.resid_embed, hidden[0]) < tol
    for l, layer in enumerate(cache.layers):
        assert rel(layer.resid_post, hidden[l + 1]) < tol
        assert np.abs(layer.pattern - attentions[l]).max() < tol * 10
        assert rel(layer.mlp_act, acts[l]) < tol


def test_roberta_positions_follow_the_pad_tokens(zoo):
    """Position ids come from the input ids: non-pad tokens count the non-pad tokens before them, pad tokens
    read row padding_idx; on PADDED this differs from the naive offset (row i + padding_idx + 1), which gives
    a different hidden state (so the forward test above can tell the two apart)."""
    model, path = zoo("roberta")
    emb = model.embeddings
    ids = emb.create_position_ids_from_input_ids(torch.tensor(PADDED)[None], PAD)[0].numpy()
    naive = np.arange(len(PADDED)) + PAD + 1
    assert (ids != naive).sum() >= 4 and (ids[PADDED == PAD] == PAD).all()
    np.testing.assert_array_equal(emb.create_position_ids_from_input_ids(torch.tensor(PLAIN)[None], PAD)[0], naive)
    w = open_checkpoint(path).weights(np.float64)
    cache = run(w, PADDED)
    table = emb.position_embeddings.weight.detach().double().numpy()
    np.testing.assert_array_equal(cache.pos_embed, table[ids])
    with torch.no_grad():
        ref = model.double()(torch.tensor(PADDED)[None]).last_hidden_state[0].numpy()
        wrong = model(torch.tensor(PADDED)[None], position_ids=torch.tensor(naive)[None]).last_hidden_state[0].numpy()
    model.float()
    assert rel(cache.resid_post[-1], ref) < 1e-9 and rel(wrong, ref) > 1e-3


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fam", NAMES)
def test_canonical_tensors_equal_the_hf_parameters(fam, kind, zoo):
    model, path = zoo(fam, kind)
    enc, names = base(fam, model), FAMILIES[fam][5]
    ck = open_checkpoint(path)
    w, cfg = ck.weights(), ck.config
    H, e, d = cfg.n_heads, cfg.d_head, cfg.d_model
    t = lambda x: x.detach().numpy()  # noqa: E731
    for l in range(cfg.n_layers):
        layer = _attr(enc, names["layer"], l)
        for short, mod in (("W_Q", "q"), ("W_K", "k"), ("W_V", "v")):
            np.testing.assert_array_equal(w[f"blocks.{l}.attn.{short}"],
                                          t(_attr(layer, names[mod]).weight).reshape(H, e, d).transpose(0, 2, 1))
            np.testing.assert_array_equal(w[f"blocks.{l}.attn.b_{short[-1]}"],
                                          t(_attr(layer, names[mod]).bias).reshape(H, e))
        np.testing.assert_array_equal(w[f"blocks.{l}.attn.W_O"], t(_attr(layer, names["o"]).weight).T.reshape(H, e, d))
        np.testing.assert_array_equal(w[f"blocks.{l}.mlp.W_out"], t(_attr(enc, names["down"], l).weight).T)
    E = t(enc.embeddings.word_embeddings.weight)
    np.testing.assert_array_equal(w["embed.W_E"], E)
    np.testing.assert_array_equal(w["unembed.W_U"], E.T)  # the MLM head is not read
    table = t(enc.embeddings.position_embeddings.weight)
    if fam == "roberta":
        assert cfg.n_ctx == CTX and cfg.n_token_types == 1
        np.testing.assert_array_equal(w["embed.W_pos"], table[PAD + 1:])
        np.testing.assert_array_equal(w["embed.W_pos_pad"], table[PAD])
        np.testing.assert_array_equal(w["embed.W_tt"], t(enc.embeddings.token_type_embeddings.weight))
    else:
        assert cfg.n_ctx == CTX and cfg.n_token_types == 0 and cfg.eps == 1e-12
        np.testing.assert_array_equal(w["embed.W_pos"], table)


def test_distilbert_sinusoidal_table_is_read_as_stored(tmp_path):
    """sinusoidal_pos_embds: the table is a saved parameter (and what transformers loads): the forward of a
    checkpoint whose stored table differs from the sinusoid still equals transformers' from_pretrained."""
    model = build("distilbert", sinusoidal_pos_embds=True)
    model.save_pretrained(tmp_path / "m")
    loaded = transformers.DistilBertModel.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        ref = loaded(torch.tensor(PLAIN)[None]).last_hidden_state[0].double().numpy()
    ours = run(open_checkpoint(tmp_path / "m").weights(np.float32), PLAIN).resid_post[-1]
    assert rel(ours, ref) < 1e-4


@pytest.mark.parametrize("fam, tokens", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("raw", [False, True])
def test_decompose_sums_to_the_tied_logit_and_lens_is_hf(fam, tokens, raw, zoo):
    """Components sum to HF's last hidden state times W_E^T (the tied unembedding, no MLM head); the lens of
    each layer is HF's hidden state through W_E^T."""
    _, path = zoo(fam, "mlm")
    last, hidden, _, _, fresh = hf_run(fam, "mlm", tokens, torch.float64)
    E = base(fam, fresh).embeddings.word_embeddings.weight.detach().double().numpy()
    logits = last @ E.T
    w = process(open_checkpoint(path).weights(np.float64), enabled=not raw, center_unembed=False)
    for position, target, minus in ((-1, 5, None), (4, 7, 11), (0, 3, None)):
        _, rows = decompose_rows(w, V, tokens, position, target, minus)
        total = rows[-1]["value"]
        want = logits[position, target] - (logits[position, minus] if minus is not None else 0)
        assert total == pytest.approx(want, abs=1e-9 * max(1.0, np.abs(logits).max()))
        assert {r["component"] for r in rows} >= {"embed", "pos_embed", "head", "mlp", "norm_bias"}
    lens = dict(lens_logits(w, run(w, tokens)))
    for layer in (-1, 0, 1):
        assert rel(lens[layer], hidden[layer + 1] @ E.T) < 1e-9


@pytest.mark.parametrize("fam", NAMES)
def test_circuits_equal_dense_products_of_the_hf_parameters(fam, zoo):
    """tcli qk/ov (float64) equal dense numpy, as for BERT (no norm folded: post-norm models):
    QK = (E W_Q)(E W_K)ᵀ and OV = E W_V W_O Eᵀ, E the HF word embedding, W_Q … the HF head slices."""
    model, path = zoo(fam, "mlm")
    enc, names = base(fam, model), FAMILIES[fam][5]
    l, h, tok = 1, 2, 3
    t = lambda x: x.detach().double().numpy()  # noqa: E731
    layer = _attr(enc, names["layer"], l)
    e = model.config.hidden_size // model.config.num_attention_heads
    E = t(enc.embeddings.word_embeddings.weight)
    Wq, Wk, Wv = (t(_attr(layer, names[m]).weight)[h * e:(h + 1) * e].T for m in "qkv")  # [d, e]
    Wo = t(_attr(layer, names["o"]).weight)[:, h * e:(h + 1) * e].T  # [e, d]
    qk, ov = (E @ Wq) @ (E @ Wk).T, E @ Wv @ Wo @ E.T
    for cmd, dense, col in (("qk", qk[tok], "key_id"), ("ov", ov[tok], "out_id")):
        _, rows = parse(invoke(cmd, path, f"{l}.{h}", "-t", f"#{tok}", "-k", "4", "--dtype", "float64",
                               "--json").stdout, "json")
        assert [r[col] for r in rows] == list(np.argsort(-dense, kind="stable")[:4])
        np.testing.assert_allclose([r["value"] for r in rows], np.sort(dense)[::-1][:4], rtol=1e-9)


@pytest.mark.parametrize("fam", NAMES)
def test_info_and_lens_cli_run(fam, zoo):
    """``tcli info`` names the family, no circuit notes (as BERT); ``tcli lens`` runs on a prompt of ids."""
    path = zoo(fam, "mlm")[1]
    result = invoke("info", path, "--json")
    record = parse(result.stdout, "json")[1][0]
    assert record["family"] == fam and record["approximations"] == "none"
    assert record["n_ctx"] == CTX
    out = invoke("lens", path, "--ids", ",".join(map(str, PADDED)), "--json")
    _, rows = parse(out.stdout, "json")
    assert {r["layer"] for r in rows} == {-1, 0, 1}


@pytest.mark.parametrize("fam, key, value", [
    ("roberta", "is_decoder", True), ("roberta", "add_cross_attention", True),
    ("roberta", "position_embedding_type", "relative_key"), ("roberta", "hidden_act", "quick_gelu"),
    ("roberta", "pad_token_id", 40), ("distilbert", "activation", "quick_gelu"),
])
def test_options_tcli_does_not_compute_are_refused(zoo, tmp_path, fam, key, value):
    """Config values tcli does not compute exit 2 with one line naming them."""
    from test_errors import assert_one_line_error

    path = tmp_path / fam
    shutil.copytree(zoo(fam)[1], path)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    says = {"hidden_act": "quick_gelu", "activation": "quick_gelu"}.get(key, key)
    assert_one_line_error(invoke("info", path, ok=False), says)


@pytest.mark.parametrize("fam, extra", [("roberta", "roberta.encoder.layer.0.attention.self.extra.weight"),
                                        ("distilbert", "distilbert.transformer.layer.1.ffn.gate.weight")])
def test_unread_tensors_are_refused(zoo, tmp_path, fam, extra):
    """A tensor neither read nor ignored (a mechanism left out) exits 2 naming it; the MLM heads are ignored."""
    from safetensors.numpy import load_file, save_file

    from test_errors import assert_one_line_error

    path = tmp_path / fam
    shutil.copytree(zoo(fam, "mlm")[1], path)
    tensors = load_file(str(path / "model.safetensors"))
    assert any(n.startswith(("lm_head.", "vocab_")) for n in tensors)
    tensors[extra] = np.ones(4, np.float32)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    assert_one_line_error(invoke("info", path, ok=False), "does not read 1 tensor", extra)


@pytest.mark.parametrize("model_type", NAMES)
def test_every_config_key_transformers_reads_is_handled(model_type):
    """As tests/test_family_options.py: each key of transformers' config is read, declared inert or common."""
    from tcli.checkpoint.spec import COMMON_INERT, builtin_spec, detect

    keys = set(transformers.AutoConfig.for_model(model_type).to_dict())
    spec = detect({"model_type": model_type}, [])
    assert spec.family == model_type
    assert keys - (spec.config_keys() | set(spec.inert) | COMMON_INERT) == set()
    assert builtin_spec(spec.family) is spec


@pytest.mark.parametrize("rule", ['drop_rows: "padding_idx + 100"', "index: padding_idx / 2", 'index: "-padding_idx"'])
def test_row_expressions_out_of_range_are_refused(zoo, tmp_path, rule):
    """``drop_rows`` / ``index`` as expressions over config values (RoBERTa's padding_idx): a value that is not
    a row of the stored tensor exits 2 with one line naming the rule."""
    from test_errors import assert_one_line_error

    arch = tmp_path / "arch.yaml"
    arch.write_text("extends: roberta\ntensors:\n  embed.W_pos: {from: embeddings.position_embeddings.weight, "
                    + rule + "}\n")
    result = invoke("decompose", zoo("roberta")[1], "--arch", arch, "--ids", "3,4,5", ok=False)
    assert_one_line_error(result, "embeddings.position_embeddings.weight", rule.split(":")[0])
