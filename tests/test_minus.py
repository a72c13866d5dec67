"""Differences of circuits (SPEC 3d, ``--minus``): M_A − M_B ranked through one factored product, against
the dense difference of two models' circuits."""

from __future__ import annotations

import numpy as np
import pytest

from builders import random_attn_only
from tcli.analyses.ranked import bigram, ov, qk
from tcli.checkpoint import open_checkpoint
from tcli.checkpoint.tokens import Vocab
from tcli.core.factored import Factored
from tcli.core.stream import Request
from tcli.processing import process


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("minus")
    a, b = random_attn_only(root / "a", seed=1), random_attn_only(root / "b", seed=2)
    load = lambda p: process(open_checkpoint(p).weights(np.float64))  # noqa: E731
    return load(a), load(b), Vocab(37, None)


def rows_of(table):
    return [dict(zip(table.columns, r)) for r in table.rows()]


def dense(w, name, l=None, h=None, via=None):
    E, U = w["embed.W_E"], w["unembed.W_U"]
    if name == "direct":
        return E @ U
    p = f"blocks.{l}.attn."
    if name == "ov":
        M = E
        if via:
            M = M @ w[f"blocks.{via[0]}.attn.W_V"][via[1]] @ w[f"blocks.{via[0]}.attn.W_O"][via[1]]
        return M @ w[p + "W_V"][h] @ w[p + "W_O"][h] @ U
    k = E
    if via:
        k = k @ w[f"blocks.{via[0]}.attn.W_V"][via[1]] @ w[f"blocks.{via[0]}.attn.W_O"][via[1]]
    return (E @ w[p + "W_Q"][h]) @ (k @ w[p + "W_K"][h]).T


def check(rows, D, A, B, row, col):
    assert rows
    for r in rows:
        i, j = r[row], r[col]
        assert r["value"] == pytest.approx(D[i, j], abs=1e-9)
        assert r["value_a"] == pytest.approx(A[i, j], abs=1e-9) and r["value_b"] == pytest.approx(B[i, j], abs=1e-9)


def test_factored_difference_is_one_product_of_summed_inner_size():
    rng = np.random.default_rng(0)
    Fa = Factored(rng.normal(size=(9, 3)), rng.normal(size=(3, 11)))
    Fb = Factored(rng.normal(size=(9, 4)), rng.normal(size=(4, 11)))
    D = Fa - Fb
    assert D.inner == 7
    np.testing.assert_allclose(D.dense(), Fa.dense() - Fb.dense(), atol=1e-12)
    np.testing.assert_allclose(Fa.entries(np.array([0, 8, 3]), np.array([10, 0, 3])), Fa.dense()[[0, 8, 3], [10, 0, 3]])


def test_bigram_difference_every_mode(pair):
    wa, wb, vocab = pair
    A, B = dense(wa, "direct"), dense(wb, "direct")
    D = A - B
    top = rows_of(bigram(wa, vocab, Request(global_n=10), minus=wb))
    np.testing.assert_allclose([r["value"] for r in top], np.sort(D.ravel())[::-1][:10], atol=1e-9)
    check(top, D, A, B, "src_id", "dst_id")
    low = rows_of(bigram(wa, vocab, Request(global_n=5, bottom=True), minus=wb))
    np.testing.assert_allclose([r["value"] for r in low], np.sort(D.ravel())[:5], atol=1e-9)
    per_row = rows_of(bigram(wa, vocab, Request(k=3), minus=wb))
    assert len(per_row) == 3 * 37
    check(per_row, D, A, B, "src_id", "dst_id")
    for i in range(37):
        got = [r["value"] for r in per_row if r["src_id"] == i]
        np.testing.assert_allclose(got, np.sort(D[i])[::-1][:3], atol=1e-9)
    diag = rows_of(bigram(wa, vocab, Request(diagonal=True), minus=wb))
    d = np.diag(D)
    assert [r["row_rank"] for r in diag] == (1 + (D > d[:, None]).sum(1)).tolist()
    check(diag, D, A, B, "token_id", "token_id")


def test_ov_and_qk_differences_with_paths_and_few_rows(pair):
    wa, wb, vocab = pair
    A, B = dense(wa, "ov", 1, 2), dense(wb, "ov", 1, 2)
    rows = rows_of(ov(wa, vocab, [(1, 2)], Request(rows=(4, 0), k=5), minus=wb))  # the few-rows factoring
    assert [r["src_id"] for r in rows] == [4] * 5 + [0] * 5
    check(rows, A - B, A, B, "src_id", "out_id")
    A, B = dense(wa, "ov", 1, 0, via=(0, 1)), dense(wb, "ov", 1, 0, via=(0, 1))
    rows = rows_of(ov(wa, vocab, [(1, 0)], Request(global_n=6), via=(0, 1), minus=wb))
    np.testing.assert_allclose([r["value"] for r in rows], np.sort((A - B).ravel())[::-1][:6], atol=1e-9)
    check(rows, A - B, A, B, "src_id", "out_id")
    A, B = dense(wa, "qk", 1, 1, via=(0, 2)), dense(wb, "qk", 1, 1, via=(0, 2))
    rows = rows_of(qk(wa, vocab, [(1, 1)], Request(k=2), key_via=(0, 2), minus=wb))
    check(rows, A - B, A, B, "query_id", "key_id")
    assert rows_of(qk(wa, vocab, [(1, 1)], Request(k=2), key_via=(0, 2), minus=wb))[0].keys() >= {"value_a",
                                                                                                  "via_head"}


def test_neuron_census_difference_joins_every_neuron_of_b(tmp_path):
    """neurons --minus: A's most token-like neurons, with delta_* = A's value − B's value of the same
    (layer, neuron, side), B's computed over every neuron (so a neuron outside B's own top-k still joins)."""
    from builders import hf_model, save_hf
    from helpers import invoke, parse

    a, b = save_hf(hf_model("gpt2", seed=0), tmp_path / "a"), save_hf(hf_model("gpt2", seed=1), tmp_path / "b")
    _, diff = parse(invoke("neurons", a, "-k", "3", "--minus", b, "--csv").stdout, "csv")
    _, ra = parse(invoke("neurons", a, "-k", "3", "--csv").stdout, "csv")
    _, rb = parse(invoke("neurons", b, "-k", "1000", "--csv").stdout, "csv")
    by_key = {(r["layer"], r["neuron"], r["side"]): r for r in rb}
    assert len(diff) == len(ra) == 6 and [r["neuron"] for r in diff] == [r["neuron"] for r in ra]
    for r in diff:
        other = by_key[(r["layer"], r["neuron"], r["side"])]
        for c in ("z_score", "top_value", "mean", "std", "in_norm", "out_norm"):
            assert float(r[f"delta_{c}"]) == pytest.approx(float(r[c]) - float(other[c]), abs=1e-6)
    bad = invoke("neurons", a, "--all", "--minus", b, ok=False)
    assert bad.exit_code == 2 and "census" in bad.stderr
