"""More families (issue 14): each loads exactly or is refused. Tiny seeded transformers models built from
configs, norms perturbed away from their init, compared with transformers' own forward in float32 and
float64: logits, hidden states, attention patterns, MLP activations; decompose sums to the HF logit, the
lens equals HF's hidden states through the final norm, and the ov/qk circuits equal dense numpy products
of the HF parameters (with the linear part of input-dependent mechanisms folded, as docs/families.md says).
"""

from __future__ import annotations

import operator
import types
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

V, CTX = 61, 32
TOKENS = np.random.default_rng(3).integers(0, V, 12)
DIMS = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=40, vocab_size=V, max_position_embeddings=CTX, bos_token_id=0, eos_token_id=0,
            pad_token_id=0)
LLAMA_NAMES = dict(down="model.layers.{l}.mlp.down_proj", final_norm="model.norm", attn="model.layers.{l}.self_attn",
                   pre="model.layers.{l}.input_layernorm", embed_scale=1.0, post_attn=None)


NO_HEAD_DIM = {k: v for k, v in DIMS.items() if k != "head_dim"}


def _gemma2_like(**over):
    return dict(DIMS, sliding_window=4, query_pre_attn_scalar=12, **over)


def _gpt(down: str, final: str) -> dict:
    return dict(down=down, final_norm=final, attn=None)


FALCON = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=40, vocab_size=V,
              max_position_embeddings=CTX, bos_token_id=0, eos_token_id=0)
FALCON_NAMES = _gpt("transformer.h.{l}.mlp.dense_4h_to_h", "transformer.ln_f")


def _alibi_once(model):
    """transformers 5's eager Falcon adds the ALiBi bias twice (in the mask it builds and in the attention):
    zero the attention's copy, leaving HF's own bias once, as its SDPA path (tests/test_families_alibi.py)."""
    for block in model.transformer.h:
        fwd = block.self_attention.forward
        block.self_attention.forward = lambda *a, alibi=None, _f=fwd, **kw: _f(*a, alibi=torch.zeros_like(alibi), **kw)


# family -> (config class, model class, config kwargs, module names). ``attn`` names a Llama-style attention
# module whose HF parameters give the dense circuits directly (else they come from the canonical raw tensors,
# which the forward test checks against transformers). ``tol64``: float64 tolerance where transformers itself
# computes part of the model in float32 (GPT-J and GPT-Neo: the attention scores and the rotary table).
FAMILIES = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(DIMS), LLAMA_NAMES),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", dict(DIMS, hidden_act="gelu_pytorch_tanh"),
              dict(LLAMA_NAMES, embed_scale=32 ** 0.5)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM",
               _gemma2_like(attn_logit_softcapping=4.0, final_logit_softcapping=3.0),
               dict(LLAMA_NAMES, embed_scale=32 ** 0.5, post_attn="model.layers.{l}.post_attention_layernorm")),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM",
                    _gemma2_like(final_logit_softcapping=5.0, layer_types=["sliding_attention", "full_attention"],
                                 rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10.0},
                                                  "full_attention": {"rope_type": "linear", "rope_theta": 1000.0,
                                                                     "factor": 4.0}}),
                    dict(LLAMA_NAMES, embed_scale=32 ** 0.5, post_attn="model.layers.{l}.post_attention_layernorm")),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(DIMS), dict(LLAMA_NAMES, pre=None,
                                                                  post_attn="model.layers.{l}.post_attention_layernorm")),
    "phi3": ("Phi3Config", "Phi3ForCausalLM",
             dict(NO_HEAD_DIM, sliding_window=5, rope_parameters={"rope_type": "default", "rope_theta": 300.0,
                                                                   "partial_rotary_factor": 0.5}),
             dict(LLAMA_NAMES, attn=None)),
    "granite": ("GraniteConfig", "GraniteForCausalLM",
                dict(DIMS, embedding_multiplier=2.0, residual_multiplier=0.5, attention_multiplier=0.2,
                     logits_scaling=3.0), dict(LLAMA_NAMES, attn=None)),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", dict(NO_HEAD_DIM, sliding_window=5, use_bias=True),
                   dict(LLAMA_NAMES, down="model.layers.{l}.mlp.c_proj", attn=None)),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM",
                 dict(NO_HEAD_DIM, partial_rotary_factor=0.5, use_qkv_bias=True), dict(LLAMA_NAMES, attn=None)),
    "stablelm_parallel": ("StableLmConfig", "StableLmForCausalLM",
                          dict(NO_HEAD_DIM, use_parallel_residual=True), dict(LLAMA_NAMES, attn=None)),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(n_layer=2, n_embd=32, n_head=4, rotary_dim=4, n_inner=40, vocab_size=V, n_positions=CTX,
                  bos_token_id=0, eos_token_id=0), dict(_gpt("transformer.h.{l}.mlp.fc_out", "transformer.ln_f"),
                                                        tol64=1e-6)),
    "gpt_neo": ("GPTNeoConfig", "GPTNeoForCausalLM",
                dict(num_layers=2, hidden_size=32, num_heads=4, attention_types=[[["local", "global"], 1]],
                     window_size=4, intermediate_size=40, vocab_size=V, max_position_embeddings=CTX, bos_token_id=0,
                     eos_token_id=0), dict(_gpt("transformer.h.{l}.mlp.c_proj", "transformer.ln_f"), tol64=1e-6)),
    "opt": ("OPTConfig", "OPTForCausalLM",
            dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=4, ffn_dim=40, word_embed_proj_dim=32,
                 vocab_size=V, max_position_embeddings=CTX, bos_token_id=0, eos_token_id=0, pad_token_id=1),
            _gpt("model.decoder.layers.{l}.fc2", "model.decoder.final_layer_norm")),
    "falcon": ("FalconConfig", "FalconForCausalLM",  # falcon-7b: multi-query, parallel, one norm, rotary, no bias
               dict(FALCON, rope_parameters={"rope_type": "default", "rope_theta": 300.0}), FALCON_NAMES),
    "falcon_new": ("FalconConfig", "FalconForCausalLM",  # falcon-40b: grouped KV, ln_attn + ln_mlp
                   dict(FALCON, new_decoder_architecture=True, num_kv_heads=2), FALCON_NAMES),
    "falcon_alibi": ("FalconConfig", "FalconForCausalLM",  # falcon-rw: ALiBi, biases, sequential, per-head qkv
                     dict(FALCON, alibi=True, bias=True, parallel_attn=False, multi_query=False),
                     dict(FALCON_NAMES, hf_fix=_alibi_once)),
    "bloom": ("BloomConfig", "BloomForCausalLM",
              dict(n_layer=2, hidden_size=32, n_head=4, vocab_size=V, bos_token_id=0, eos_token_id=0), FALCON_NAMES),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", dict(DIMS, clip_qkv=2.0), dict(LLAMA_NAMES, attn=None)),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(NO_HEAD_DIM),
            dict(LLAMA_NAMES, down="model.layers.{l}.mlp.fc2", final_norm="model.final_layernorm", attn=None)),
    "cohere": ("CohereConfig", "CohereForCausalLM", dict(NO_HEAD_DIM, logit_scale=0.5, attention_bias=True,
                                                         rope_parameters={"rope_type": "default", "rope_theta": 300.0}),
               dict(LLAMA_NAMES, attn=None)),
    "cohere_qk_norm": ("CohereConfig", "CohereForCausalLM", dict(NO_HEAD_DIM, use_qk_norm=True, tie_word_embeddings=False),
                       dict(LLAMA_NAMES, attn=None)),
}
NAMES = sorted(FAMILIES)


def build(fam: str, seed: int = 0, **over):
    """A seeded tiny model of ``fam`` (eager attention), every parameter 0.3·N(0, 1) and norms 1 + 0.3·N(0, 1)."""
    cfg_cls, model_cls, kw, _ = FAMILIES[fam]
    cfg = getattr(transformers, cfg_cls)(**{**kw, **over})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(cfg).eval()
    model.config._attn_implementation = "eager"
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = "norm" in name.lower() or ".ln_" in name or "ln_f." in name
            p.copy_((1.0 if is_norm and "gemma" not in fam else 0.0) + 0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """fam -> (model, checkpoint dir), built once per module on first use."""
    return saved_models(tmp_path_factory.mktemp("more"), build)


def _attr(model, path: str, l: int | None = None):
    return operator.attrgetter(path.format(l=l))(model)


def _float64_reference(model):
    """transformers computes RMSNorm statistics, RoPE angles and Gemma's embedding scale in float32 even in a
    float64 model: make them float64 (the same formulas), so that the reference is as precise as the forward it checks."""
    cfg = model.config

    def rms(self, x):
        eps = getattr(self, "variance_epsilon", getattr(self, "eps", None))
        w = (1.0 + self.weight) if "Gemma" in type(self).__name__ else self.weight
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    def layer_norm(self, x):  # OlmoLayerNorm (no parameters, eps 1e-5), CohereLayerNorm (weight, no bias)
        centred = x - x.mean(-1, keepdim=True)
        y = centred * torch.rsqrt(centred.pow(2).mean(-1, keepdim=True) + getattr(self, "variance_epsilon", 1e-5))
        return y * self.weight if hasattr(self, "weight") else y

    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def rope(self, x, position_ids, layer_type=None):
        params = cfg.rope_parameters[layer_type] if layer_type else cfg.rope_parameters
        dim = int(head_dim * params.get("partial_rotary_factor", getattr(cfg, "partial_rotary_factor", 1.0)))
        inv = 1.0 / (params["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
        pos = position_ids[..., None].double() / (params.get("factor", 1.0) if params.get("rope_type") == "linear"
                                                   else 1.0)
        interleaved = "Cohere" in type(self).__name__  # Cohere's pairs (2i, 2i + 1)
        emb = torch.repeat_interleave(pos * inv, 2, dim=-1) if interleaved else torch.cat((pos * inv, pos * inv), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)

    for module in model.modules():
        if hasattr(module, "scalar_embed_scale"):  # Gemma's sqrt(d_model), a float32 buffer: exact in float64
            module.embed_scale = torch.tensor(module.scalar_embed_scale, dtype=torch.float64)
        if type(module).__name__.endswith("RMSNorm"):
            module.forward = types.MethodType(rms, module)
        if type(module).__name__.endswith("LayerNorm") and not isinstance(module, torch.nn.LayerNorm):
            module.forward = types.MethodType(layer_norm, module)  # OLMo's, Cohere's: float32 statistics
        if type(module).__name__.endswith("RotaryEmbedding") and getattr(cfg, "rope_parameters", None):
            module.forward = types.MethodType(rope, module)
    return model


def hf_run(fam, dtype, **over):
    """(logits, hidden states, attentions, MLP down-proj inputs) of a fresh copy of ``fam`` in ``dtype``
    (``over``: config values in place of the entry's)."""
    model = build(fam, **over).to(dtype)
    if dtype == torch.float64:
        _float64_reference(model)
    names, acts = FAMILIES[fam][3], {}
    if names.get("hf_fix"):  # a transformers defect undone (falcon_alibi)
        names["hf_fix"](model)
    hooks = [_attr(model, names["down"], l).register_forward_pre_hook(
        lambda mod, args, l=l: acts.__setitem__(l, args[0].reshape(-1, args[0].shape[-1]).double().numpy()))
        for l in range(2)]  # batch 1 (OPT flattens batch and positions)
    softmax = torch.nn.functional.softmax

    def softmax64(x, dim=None, dtype=None, **kw):  # eager attention's softmax is float32 even in float64
        return softmax(x, dim=dim, dtype=None if x.dtype == torch.float64 else dtype, **kw)

    def cohere_rotary64(q, k, cos, sin, unsqueeze_dim=1):  # Cohere's rotary without its cast to float32
        rot = transformers.models.cohere.modeling_cohere.rotate_half
        cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)
        return q * cos + rot(q) * sin, k * cos + rot(k) * sin

    cohere = transformers.models.cohere.modeling_cohere
    rotary = unittest.mock.patch.object(cohere, "apply_rotary_pos_emb", cohere_rotary64 if dtype == torch.float64
                                        else cohere.apply_rotary_pos_emb)
    with torch.no_grad(), unittest.mock.patch.object(torch.nn.functional, "softmax", softmax64), rotary:
        out = model(torch.tensor(TOKENS)[None], output_hidden_states=True, output_attentions=True)
    for h in hooks:
        h.remove()
    return (out.logits[0].double().numpy(), [h[0].double().numpy() for h in out.hidden_states],
            [a[0].double().numpy() for a in out.attentions], acts, model)


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / max(np.abs(b).max(), 1e-30))


@pytest.mark.parametrize("fam", NAMES)
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-9)])
def test_forward_matches_transformers(fam, dtype, tol, zoo):
    """Logits, each hidden state, each attention pattern and each MLP activation equal transformers'."""
    _, path = zoo(fam)
    tol = FAMILIES[fam][3].get("tol64", tol) if dtype == np.float64 else tol
    logits, hidden, attentions, acts, _ = hf_run(fam, torch.float32 if dtype == np.float32 else torch.float64)
    w = process(open_checkpoint(path).weights(dtype), enabled=False)
    cache = run(w, TOKENS)
    assert rel(cache.logits, logits) < tol
    assert rel(cache.resid_embed, hidden[0]) < tol
    assert rel(cache.layers[0].resid_post, hidden[1]) < tol
    final = dict(lens_logits(w, cache))  # the last hidden state is after the final norm
    assert rel(final[1], logits) < tol
    for l, layer in enumerate(cache.layers):
        assert np.abs(layer.pattern - attentions[l]).max() < tol * 10
        assert rel(layer.mlp_act, acts[l]) < tol


@pytest.mark.parametrize("fam", NAMES)
@pytest.mark.parametrize("raw", [False, True])
def test_decompose_sums_to_the_hf_logit_and_lens_is_hf(fam, raw, zoo):
    """Components sum to the HF logit (soft-capped models: to the logit before the cap, which the note
    gives after it); the lens of block 0 is HF's hidden state 1 through the final norm and unembedding."""
    model, path = zoo(fam)
    logits, hidden, _, _, fresh = hf_run(fam, torch.float64)
    ck = open_checkpoint(path)
    w = process(ck.weights(np.float64), enabled=not raw, center_unembed=False)
    cap = ck.config.final_softcap
    tol = FAMILIES[fam][3].get("tol64", 1e-9)
    for position, target, minus in ((-1, 5, None), (3, 7, 11)):
        table, rows = decompose_rows(w, V, TOKENS, position, target, minus)
        total = rows[-1]["value"]
        capped = (lambda x: cap * np.tanh(x / cap)) if cap else (lambda x: x)
        pre = np.arctanh(logits / cap) * cap if cap else logits  # HF's logits before its cap
        want = pre[position, target] - (pre[position, minus] if minus is not None else 0)
        assert total == pytest.approx(want, abs=100 * tol * max(1.0, np.abs(pre).max()))
        if cap:
            assert any("soft-capped" in n for n in table.notes)
            assert capped(pre[position, target]) == pytest.approx(logits[position, target], rel=1e-9)
    lens = dict(lens_logits(w, run(w, TOKENS)))
    final_norm = _attr(fresh, FAMILIES[fam][3]["final_norm"])
    with torch.no_grad():
        expect = fresh.lm_head(final_norm(torch.tensor(hidden[1])[None]))[0].double().numpy()
    expect = expect / getattr(fresh.config, "logits_scaling", 1.0) * getattr(fresh.config, "logit_scale", 1.0)
    expect = cap * np.tanh(expect / cap) if cap else expect
    assert rel(lens[0], expect) < tol
    assert rel(lens[1], logits) < tol


def _dense_factors(fam, model, l, h):
    """(query side [V, e], key side [V, e], OV [V, d]) of head (l, h) from the HF parameters, with the pre-norm
    weight, the QK-norm weights and the attention output norm weight folded in (float64)."""
    names = FAMILIES[fam][3]
    t = lambda x: x.detach().double().numpy()  # noqa: E731
    gemma = "gemma" in fam
    w_of = lambda mod: t(mod.weight) + (1.0 if gemma else 0.0)  # noqa: E731
    E = t(model.get_input_embeddings().weight) * names["embed_scale"]
    pre = w_of(_attr(model, names["pre"], l)) if names["pre"] else np.ones(E.shape[1])
    att = _attr(model, names["attn"], l)
    e, H = model.config.head_dim, model.config.num_attention_heads
    rep = H // model.config.num_key_value_heads
    Wq = t(att.q_proj.weight).reshape(H, e, -1)[h].T  # [d, e]
    Wk = t(att.k_proj.weight).reshape(-1, e, E.shape[1])[h // rep].T
    Wv = t(att.v_proj.weight).reshape(-1, e, E.shape[1])[h // rep].T
    Wo = t(att.o_proj.weight).T.reshape(H, e, -1)[h]
    if hasattr(att, "q_norm"):
        qn, kn = w_of(att.q_norm), w_of(att.k_norm)
        if qn.shape[0] != e:  # OLMo 2: over the whole projection
            qn, kn = qn.reshape(H, e)[h], kn.reshape(-1, e)[h // rep]
        Wq, Wk = Wq * qn, Wk * kn
    if names["post_attn"]:
        Wo = Wo * w_of(_attr(model, names["post_attn"], l))
    X = E * pre
    return X @ Wq, X @ Wk, X @ Wv @ Wo


def _dense_from_canonical(path, l, h):
    """The same three factors and W_U' from the raw canonical tensors (checked against transformers by the
    forward test): pre-norm weight, QK-norm weights and the sublayer-output norm weight folded; LayerNorm
    models' embeddings and unembedding centred over d_model (what processing's centring leaves of them)."""
    w = open_checkpoint(path).weights(np.float64)
    cfg, p = w.cfg, f"blocks.{l}."
    E = w["embed.W_E"]
    if cfg.embed_norm:  # BLOOM: the embedding LayerNorm, a function of the token alone
        E = (E - E.mean(1, keepdims=True)) / np.sqrt(E.var(1, keepdims=True) + cfg.eps) * w["embed.ln.w"] \
            + w["embed.ln.b"]
    if cfg.norm == "layernorm":
        E = E - E.mean(1, keepdims=True)
    X = E * (w[p + "ln1.w"] if cfg.norm_placement != "sublayer" else 1.0)
    Wq, Wk = w[p + "attn.W_Q"][h], w[p + "attn.W_K"][h]
    if cfg.qk_norm != "none":
        qn, kn = w[p + "attn.q_norm_w"], w[p + "attn.k_norm_w"]
        if cfg.qk_norm == "head_layernorm":  # Cohere's LayerNorm per head: its centring over d_head is linear
            Wq, Wk = Wq - Wq.mean(-1, keepdims=True), Wk - Wk.mean(-1, keepdims=True)
        Wq, Wk = Wq * (qn[h] if qn.ndim == 2 else qn), Wk * (kn[h] if kn.ndim == 2 else kn)
    Wo = w[p + "attn.W_O"][h] * (w[p + "ln1_post.w"] if cfg.norm_placement in ("sandwich", "sublayer") else 1.0)
    W_U = w["unembed.W_U"] * (w["ln_final.w"][:, None] if cfg.final_norm else 1.0)
    if cfg.norm == "layernorm":
        W_U = W_U - W_U.mean(0, keepdims=True)
    return X @ Wq, X @ Wk, X @ w[p + "attn.W_V"][h] @ Wo, W_U - W_U.mean(1, keepdims=True)


@pytest.mark.parametrize("fam", NAMES)
def test_circuits_equal_dense_with_the_linear_part_folded(fam, zoo):
    """tcli qk/ov (processed, float64) equal dense numpy: QK = (E W_Q ⊙ w_q)(E W_K ⊙ w_k)ᵀ, OV = E W_V W_O ⊙ w_post
    W_U' (W_U' the final norm folded, centred over the vocabulary); the notes say what is left out."""
    model, path = zoo(fam)
    l, h, tok = 1, 2, 3
    q, k, ov, W_U = _dense_from_canonical(path, l, h)
    if FAMILIES[fam][3]["attn"]:  # straight from the HF parameters as well
        hq, hk, hov = _dense_factors(fam, model, l, h)
        np.testing.assert_allclose(hq @ hk.T, q @ k.T, rtol=1e-9, atol=1e-9 * np.abs(q @ k.T).max())
        np.testing.assert_allclose(hov, ov, rtol=1e-9, atol=1e-12)
    for cmd, dense, col in (("qk", (q @ k.T)[tok], "key_id"), ("ov", (ov @ W_U)[tok], "out_id")):
        _, rows = parse(invoke(cmd, path, f"{l}.{h}", "-t", f"#{tok}", "-k", "4", "--dtype", "float64",
                               "--json").stdout, "json")
        assert [r[col] for r in rows] == list(np.argsort(-dense, kind="stable")[:4])
        np.testing.assert_allclose([r["value"] for r in rows], np.sort(dense)[::-1][:4], rtol=1e-9)
    w = process(open_checkpoint(path).weights(np.float64))
    notes = " ".join(w.notes)
    ck = open_checkpoint(path).config
    assert ("QK-norm" in notes) == (ck.qk_norm != "none")
    assert ("outputs" in notes) == (ck.norm_placement in ("sandwich", "sublayer"))
    assert ("soft-cap" in notes) == bool(ck.final_softcap or ck.attn_softcap)


@pytest.mark.parametrize("fam, key, value, says", [
    ("gemma2", "use_bidirectional_attention", True, "use_bidirectional_attention"),
    ("stablelm", "qk_layernorm", True, "qk_layernorm"),
    ("opt", "do_layer_norm_before", False, "do_layer_norm_before"),
    ("phi3", "rope_parameters", {"rope_type": "longrope", "rope_theta": 1e4}, "short_factor"),  # factors missing
    ("phi3", "rope_parameters", {"rope_type": "proportional", "rope_theta": 1e4}, "proportional"),
])
def test_options_that_change_the_maths_are_refused(zoo, tmp_path, fam, key, value, says):
    """Config values tcli does not compute exit 2 with one line naming them."""
    import json
    import shutil

    from test_errors import assert_one_line_error

    path = tmp_path / fam
    shutil.copytree(zoo(fam)[1], path)
    config = json.loads((path / "config.json").read_text())
    config[key] = value
    (path / "config.json").write_text(json.dumps(config))
    assert_one_line_error(invoke("info", path, ok=False), says)


def test_gemma_layer_types_and_rope_from_older_configs():
    """Configs written before transformers 5: Gemma 3's rope_local_base_freq (sliding layers) beside rope_theta
    and rope_scaling (global layers only), layer types from the sliding-window pattern when none are listed."""
    from tcli.checkpoint import build_config
    from tcli.checkpoint.spec import builtin_spec

    base = dict(num_hidden_layers=7, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                intermediate_size=40, vocab_size=V, max_position_embeddings=CTX, sliding_window=4)
    cfg = build_config(builtin_spec("gemma3_text"), {**base, "model_type": "gemma3_text", "rope_theta": 1e6,
                                                     "rope_local_base_freq": 1e4, "sliding_window_pattern": 3,
                                                     "rope_scaling": {"rope_type": "linear", "factor": 8.0}})
    assert cfg.extras["layer_windows"] == [4, 4, None, 4, 4, None, 4]
    ropes = cfg.extras["layer_rope"]
    assert [(r["base"], r["scale"]) for r in ropes[:3]] == [(1e4, 1.0), (1e4, 1.0), (1e6, 8.0)]
    g2 = build_config(builtin_spec("gemma2"), {**base, "model_type": "gemma2", "query_pre_attn_scalar": 16})
    assert g2.extras["layer_windows"] == [4, None, 4, None, 4, None, 4] and g2.attn_scale == 0.25


@pytest.mark.parametrize("fam, says", [("gemma2", ["outputs", "soft-cap"]), ("qwen3", ["QK-norm"]),
                                       ("olmo2", ["QK-norm", "outputs"]), ("phi3", [])])
def test_info_lists_what_circuits_approximate(zoo, fam, says):
    """``tcli info``: one stderr note per mechanism circuits leave out (none for exact families); stdout stays
    the documented record."""
    result = invoke("info", zoo(fam)[1], "--json")
    record = parse(result.stdout, "json")[1][0]
    notes = [line for line in result.stderr.splitlines() if line.startswith("circuits:")]
    assert record["family"] == fam
    assert record["approximations"] == ("; ".join(n.removeprefix("circuits: ") for n in notes) or "none")
    for word in ("QK-norm", "outputs", "soft-cap"):
        assert any(word in n for n in notes) == (word in says)


@pytest.mark.parametrize("command", [("ov", "0.1"), ("qk", "1.0"), ("heads", "--no-behaviour")])
def test_circuit_commands_say_what_they_leave_out(zoo, command):
    """The circuit commands print the same ``circuits:`` notes as ``info`` on stderr (QK-norm, sandwich norms)."""
    path = zoo("olmo2")[1]
    info = {l for l in invoke("info", path).stderr.splitlines() if l.startswith("circuits:")}
    got = {l for l in invoke(command[0], path, *command[1:], "--csv").stderr.splitlines() if l.startswith("circuits:")}
    assert info and got == info


def test_rotary_offset_uses_the_layers_own_rope(zoo):
    """Gemma 3: layer 0 is sliding (RoPE base 10), layer 1 full (base 1000, linear factor 4): ``qk --offset N``
    rotates the query side with the layer's own tables, the score at relative distance N."""
    from tcli.analyses import circuits
    from tcli.checkpoint import open_checkpoint
    from tcli.forward import apply_rotary, rotary_tables
    from tcli.processing import process

    w = process(open_checkpoint(zoo("gemma3_text")[1]).weights(np.float64))
    cfg, N = w.cfg, 3
    for l in (0, 1):
        q = w["embed.W_E"] @ w[f"blocks.{l}.attn.W_Q"][0]
        k = w["embed.W_E"] @ w[f"blocks.{l}.attn.W_K"][0]
        cq, sq = rotary_tables(cfg, np.array([N + 5]), l)
        ck, sk = rotary_tables(cfg, np.array([5]), l)
        dense = apply_rotary(q[None], cq, sq, cfg.rotary_dim)[0] @ apply_rotary(k[None], ck, sk, cfg.rotary_dim)[0].T
        np.testing.assert_allclose(circuits.qk(w, l, 0, N).dense(), dense, atol=1e-9)
        np.testing.assert_allclose(circuits.qk_rows(w, l, 0, [2, 7], N).dense(), dense[[2, 7]], atol=1e-9)
    a0, _ = rotary_tables(cfg, np.array([N]), 0)
    a1, _ = rotary_tables(cfg, np.array([N]), 1)
    assert not np.allclose(a0, a1)  # the two layers' bases differ, so the test can tell them apart


@pytest.mark.parametrize("fam, says", [("cohere", "tied to W_E, times logit_scale"),
                                       ("granite", "separate W_U, times 1 / logits_scaling"), ("qwen3", "separate W_U")])
def test_info_names_the_factor_folded_into_the_unembedding(zoo, fam, says):
    record = parse(invoke("info", zoo(fam)[1], "--json").stdout, "json")[1][0]
    assert record["unembed"] == says
