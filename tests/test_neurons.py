"""``neurons``: streamed neuron rows and the census against dense numpy; a planted neuron; the CLI and its errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from builders import hf_model, random_attn_only, save_hf
from helpers import invoke, parse
from tcli.analyses.neurons import census, check_sides, neurons, row_moments, side_matrix
from tcli.checkpoint.tokens import Vocab
from tcli.core.factored import Factored
from tcli.model import ModelConfig


class Weights(dict):
    """Plain arrays under canonical names, with the ``cfg`` an analysis reads."""

    def __init__(self, cfg, tensors):
        super().__init__(tensors)
        self.cfg = cfg


def random_weights(seed, n_layers, d, m, V, gated, dtype=np.float32) -> Weights:
    rng = np.random.default_rng(seed)
    cfg = ModelConfig("test", n_layers=n_layers, n_heads=1, d_model=d, d_head=d, d_vocab=V, n_ctx=4, d_mlp=m,
                      gated_mlp=gated, act_fn="silu" if gated else "gelu_new")
    t = {"embed.W_E": rng.standard_normal((V, d)), "unembed.W_U": rng.standard_normal((d, V))}
    for l in range(n_layers):
        t[f"blocks.{l}.mlp.W_in"] = rng.standard_normal((d, m))
        t[f"blocks.{l}.mlp.W_out"] = rng.standard_normal((m, d))
        if gated:
            t[f"blocks.{l}.mlp.W_gate"] = rng.standard_normal((d, m))
    return Weights(cfg, {k: v.astype(dtype) for k, v in t.items()})


def dense(w, l, side) -> np.ndarray:
    """The [m, V] neuron-by-token matrix, written out directly from its definition (float64)."""
    f64 = {k: v.astype(np.float64) for k, v in w.items()}
    p = f"blocks.{l}.mlp."
    if side == "out":
        return np.stack([f64[p + "W_out"][n] @ f64["unembed.W_U"] for n in range(w.cfg.d_mlp)])
    W = f64[p + ("W_in" if side == "in" else "W_gate")]
    return np.stack([f64["embed.W_E"] @ W[:, n] for n in range(w.cfg.d_mlp)])


def rows_of(table):
    return [dict(zip(table.columns, r)) for r in table.rows()]


SHAPES = st.tuples(st.integers(0, 2**31 - 1), st.integers(1, 3), st.integers(1, 9), st.integers(1, 23),
                   st.integers(1, 70), st.booleans())


@given(SHAPES, st.integers(1, 12), st.booleans(), st.integers(1, 9), st.data())
def test_streamed_neuron_rows_equal_dense(shape, k, bottom, block, data):
    seed, L, d, m, V, gated = shape
    w = random_weights(seed, L, d, m, V, gated)
    sides = data.draw(st.lists(st.sampled_from(["out", "in", "gate"] if gated else ["out", "in"]), min_size=1,
                               max_size=3, unique=True))
    layers = data.draw(st.lists(st.integers(0, L - 1), min_size=1, max_size=L, unique=True))
    named = data.draw(st.booleans())
    selected = [(l, np.array(data.draw(st.lists(st.integers(0, m - 1), min_size=1, max_size=m, unique=True))))
                if named else (l, None) for l in layers]
    rows = rows_of(neurons(w, Vocab(V), selected, sides, k, bottom, block=block))
    kk = min(k, V)
    expected_order = [(s, l, n) for s in sides for l, ns in selected for n in (range(m) if ns is None else ns)]
    assert len(rows) == len(expected_order) * kk
    for i, (side, l, n) in enumerate(expected_order):
        got = rows[i * kk:(i + 1) * kk]
        assert {(r["side"], r["layer"], r["neuron"]) for r in got} == {(side, l, n)}
        assert [r["rank"] for r in got] == list(range(1, kk + 1))
        M = dense(w, l, side)[n]
        want = np.sort(M)[:kk] if bottom else -np.sort(-M)[:kk]
        vals = np.array([r["value"] for r in got])
        ids = np.array([r["token_id"] for r in got])
        atol = 1e-4 * max(1.0, np.abs(M).max())
        np.testing.assert_allclose(vals, want, rtol=0, atol=atol)  # the k best values, best first
        np.testing.assert_allclose(M[ids], vals, rtol=0, atol=atol)  # and the ids point at them
        assert len(set(ids.tolist())) == kk


@given(SHAPES, st.integers(1, 30), st.booleans(), st.integers(1, 9), st.sampled_from(["out", "in", "gate"]))
def test_census_equals_dense_z_scores(shape, k, bottom, block, side):
    seed, L, d, m, V, gated = shape
    if side == "gate" and not gated:
        side = "in"
    w = random_weights(seed, L, d, m, V, gated, np.float64)
    rows = rows_of(census(w, Vocab(V), list(range(L)), [side], k, bottom, block=block, n_tokens=3))
    assert len(rows) == L * min(k, m)
    for l in range(L):
        M = dense(w, l, side)
        mu, sd = M.mean(1), M.std(1)
        z = ((M.max(1) - mu) if not bottom else (mu - M.min(1))) / sd
        got = [r for r in rows if r["layer"] == l]
        best = -np.sort(-np.where(np.isnan(z), -np.inf, z))[:min(k, m)]  # the k best z, NaN (constant rows) last
        np.testing.assert_allclose(np.nan_to_num([r["z_score"] for r in got], nan=-np.inf), best, rtol=1e-6)
        assert len({r["neuron"] for r in got}) == len(got)
        for r in got:  # each listed neuron's own figures (equal z-scores may come in either order)
            n = r["neuron"]
            np.testing.assert_allclose(r["z_score"], z[n], rtol=1e-6)
            assert r["mean"] == pytest.approx(mu[n], rel=1e-7, abs=1e-9 * np.abs(M).max())
            assert r["std"] == pytest.approx(sd[n], rel=1e-6, abs=1e-9 * np.abs(M).max())
            assert r["top_value"] == pytest.approx(M[n].min() if bottom else M[n].max(), rel=1e-9)
            assert M[n, r["top_id"]] == pytest.approx(r["top_value"], rel=1e-9)
            assert r["in_norm"] == pytest.approx(np.linalg.norm(w[f"blocks.{l}.mlp.W_in"][:, n]))
            assert r["out_norm"] == pytest.approx(np.linalg.norm(w[f"blocks.{l}.mlp.W_out"][n]))
            assert ("gate_norm" in r) == gated
            assert len(json.loads(r["top_tokens"])) == min(3, V)


def test_row_moments_with_a_large_mean_are_exact():
    rng = np.random.default_rng(3)
    A, B = rng.standard_normal((5, 4)), 100 + rng.standard_normal((4, 9000))
    mean, std = row_moments(Factored(A, B))
    M = A @ B
    np.testing.assert_allclose(mean, M.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, M.std(1), rtol=1e-6)


def test_side_matrices_are_the_definitions():
    w = random_weights(1, 2, 5, 7, 11, True)
    for side in ("out", "in", "gate"):
        np.testing.assert_allclose(side_matrix(w, 1, side).dense(), dense(w, 1, side), rtol=1e-5, atol=1e-5)
    with pytest.raises(Exception, match="not gated"):
        check_sides(random_weights(1, 1, 3, 3, 5, False).cfg, ["gate"])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """GPT-2 from a config (d_model 64, 400 tokens) with neuron 1.17's output weights set along token 23's
    unembedding direction (tied to W_E, with the final norm's weight folded in as processing does)."""
    model = hf_model("gpt2", n_embd=64, vocab_size=400)
    with torch.no_grad():
        u = model.transformer.wte.weight[23] * model.transformer.ln_f.weight  # the final norm's scale folded in
        model.transformer.h[1].mlp.c_proj.weight[17] = 8.0 * u / u.norm()
    return save_hf(model, tmp_path_factory.mktemp("planted") / "gpt2")


def test_planted_neuron_comes_first_in_the_census(planted):
    cols, rows = parse(invoke("neurons", planted, "--layer", "1", "-k", "3", "--csv").stdout, "csv")
    assert cols == ["layer", "neuron", "side", "rank", "z_score", "top_id", "top_value", "mean", "std", "in_norm",
                    "out_norm", "top_tokens"]
    assert (rows[0]["neuron"], rows[0]["top_id"], rows[0]["rank"]) == ("17", "23", "1")
    # a planted direction reaches z ≈ sqrt(d_model) = 8; the best of the 255 random neurons stays near 4
    assert float(rows[0]["z_score"]) > float(rows[1]["z_score"]) + 1.5
    _, top = parse(invoke("neurons", planted, "1.17", "-k", "1", "--csv").stdout, "csv")
    assert top[0]["token_id"] == "23"
    _, every = parse(invoke("neurons", planted, "--all", "-k", "1", "--csv").stdout, "csv")
    assert len(every) == 2 * 4 * 64 and [r["token_id"] for r in every if r["neuron"] == "17" and r["layer"] == "1"] \
        == ["23"]


def test_cli_named_neurons_match_the_analysis(hf_dirs):
    _, path = hf_dirs["llama"]
    cols, rows = parse(invoke("neurons", path, "1.3", "0.39", "--side", "gate", "--side", "in", "-k", "4",
                              "--bottom", "--json").stdout, "json")
    assert cols == ["layer", "neuron", "side", "rank", "token_id", "token", "value"]
    assert [(r["side"], r["layer"], r["neuron"]) for r in rows[::4]] == [("gate", 1, 3), ("gate", 0, 39),
                                                                          ("in", 1, 3), ("in", 0, 39)]
    assert all(a["value"] <= b["value"] for a, b in zip(rows, rows[1:]) if a["neuron"] == b["neuron"]
               and a["side"] == b["side"])
    cols, rows = parse(invoke("neurons", path, "-k", "2", "--side", "gate", "--csv").stdout, "csv")
    assert "gate_norm" in cols and len(rows) == 4


def test_cli_bad_input(hf_dirs, tmp_path):
    from test_errors import assert_one_line_error

    _, path = hf_dirs["gpt2"]
    assert_one_line_error(invoke("neurons", path, "2.0", ok=False), "layer 2 out of range", "0–1")
    assert_one_line_error(invoke("neurons", path, "--layer", "5", ok=False), "layer 5 out of range")
    assert_one_line_error(invoke("neurons", path, "1.128", ok=False), "neuron 1.128 out of range", "0–127")
    assert_one_line_error(invoke("neurons", path, "0.1", "--side", "gate", ok=False), "not gated", "out or in")
    assert_one_line_error(invoke("neurons", path, "0.1", "--side", "up", ok=False), "--side", "up")
    assert_one_line_error(invoke("neurons", path, "0.1", "--layer", "0", ok=False), "not both")
    assert_one_line_error(invoke("neurons", path, "-k", "0", ok=False), "--top")
    ao = random_attn_only(tmp_path / "ao")
    assert_one_line_error(invoke("neurons", ao, ok=False), "attention-only")


@pytest.mark.parametrize("family", ["gpt2", "neox", "llama", "bert"])
@pytest.mark.parametrize("raw", [False, True])
def test_decompose_neurons_split_each_mlp_exactly(hf_dirs, family, raw):
    """--neurons N: per layer the N neuron rows plus mlp_rest equal that layer's mlp row; the total is
    unchanged and equals transformers' own logit (target and --diff; processed and --raw)."""
    import torch

    model, path = hf_dirs[family]
    ids = "3,17,5,9,30,2"
    for extra in ([], ["--diff", "#7", "#11"]):
        args = ["--ids", ids, "--target", "#7", *(["--raw"] if raw else [])] if not extra else \
            ["--ids", ids, *extra, *(["--raw"] if raw else [])]
        _, plain = parse(invoke("decompose", path, *args, "--json").stdout, "json")
        cols, split = parse(invoke("decompose", path, *args, "--neurons", "3", "--json").stdout, "json")
        assert cols == ["component", "layer", "head", "value", "label", "neuron"]
        mlp = {r["layer"]: r["value"] for r in plain if r["component"] == "mlp"}
        got: dict = {}
        for r in split:
            if r["component"] in ("neuron", "mlp_rest"):
                got[r["layer"]] = got.get(r["layer"], 0.0) + r["value"]
        assert mlp.keys() == got.keys() and all(abs(mlp[l] - got[l]) < 1e-4 * (1 + abs(mlp[l])) for l in mlp)
        neurons = [r for r in split if r["component"] == "neuron"]
        assert len(neurons) == 3 * len(mlp) and all(r["neuron"] is not None for r in neurons)
        assert split[-1]["component"] == "total" and abs(split[-1]["value"] - plain[-1]["value"]) < 1e-4
        with torch.no_grad():
            out = model(torch.tensor([[int(i) for i in ids.split(",")]]))
        logits = (out.logits if family != "bert" else out.last_hidden_state @ model.get_input_embeddings().weight.T)[0, -1]
        want = float(logits[7] - (logits[11] if extra else 0))
        assert abs(split[-1]["value"] - want) < 1e-3 * (1 + abs(want)), (family, extra, split[-1]["value"], want)


def test_decompose_neurons_bad_input(attn_only_dir):
    from test_errors import assert_one_line_error

    assert_one_line_error(invoke("decompose", attn_only_dir, "--ids", "1,2", "--neurons", "3", ok=False),
                          "attention-only")
    assert_one_line_error(invoke("decompose", attn_only_dir, "--ids", "1,2", "--neurons", "0", ok=False),
                          "positive")
