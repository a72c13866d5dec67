"""skiptrigram's top-n (distinct pairs and all triples) against a brute force over the whole V_src·V_dst·V_out cube."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import invoke, parse
from tcli.analyses import skiptrigram as mod
from tcli.columns import SKIPTRIGRAM
from tcli.core.factored import Factored


def brute(QK: Factored, OV: Factored, n: int, sources, all_triples: bool):
    """Every triple, sorted by (−min(z_qk, z_ov), −max, A, B, C); distinct pairs: the greedy walk that drops a
    triple whose (A, B) or (A, C) pair was kept before. The stats are the factored ones (as the module)."""
    (qm, qs), (om, os_) = QK.mean_and_std(), OV.mean_and_std()
    zq = (QK.dense().T - qm) / (qs or 1.0)  # [A, B]
    zo = (OV.dense() - om) / (os_ or 1.0)  # [A, C]
    src = range(zq.shape[0]) if sources is None else sorted(set(sources))
    triples = sorted(((A, B, C) for A in src for B in range(zq.shape[1]) for C in range(zo.shape[1])),
                     key=lambda t: (-min(zq[t[0], t[1]], zo[t[0], t[2]]), -max(zq[t[0], t[1]], zo[t[0], t[2]]), t))
    if not all_triples:
        seen, kept = set(), []
        for A, B, C in triples:
            if (A, "B", B) not in seen and (A, "C", C) not in seen:
                kept.append((A, B, C))
                seen |= {(A, "B", B), (A, "C", C)}
        triples = kept
    return triples[:n], zq, zo


def check(QK, OV, n, sources, all_triples, block=None):
    got = mod.top_triples(QK, OV, n, sources, all_triples, block=block)
    expect, zq, zo = brute(QK, OV, n, sources, all_triples)
    assert list(zip(got["A"].tolist(), got["B"].tolist(), got["C"].tolist())) == expect
    Q, O = QK.dense(), OV.dense()
    A, B, C = got["A"], got["B"], got["C"]
    np.testing.assert_allclose(got["qk"], Q[B, A], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["ov"], O[A, C], rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(got["z_qk"], zq[A, B], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got["z_ov"], zo[A, C], rtol=1e-9, atol=1e-9)
    return got


@st.composite
def circuits(draw):
    """QK [V_dst, V_src], OV [V_src, V_out] of rank ≤ 3: small integers (many ties) or normal floats on a 1/64
    grid. Both multiply exactly, so the blocked and the dense products agree to the bit: tiny circuits have
    structural ties (two entries standardise to ±1) that rounding would otherwise break either way."""
    v_src, v_dst, v_out = (draw(st.integers(1, 6)) for _ in range(3))
    r1, r2 = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if draw(st.booleans()):
        lo = draw(st.integers(-2, 0))
        f = lambda *s: rng.integers(lo, 3, size=s).astype(np.float64)  # noqa: E731
    else:
        f = lambda *s: np.round(rng.normal(size=s) * 64) / 64  # noqa: E731
    return Factored(f(v_dst, r1), f(r1, v_src)), Factored(f(v_src, r2), f(r2, v_out))


@given(circuits(), st.one_of(st.integers(1, 40), st.integers(1, 230)), st.booleans(), st.one_of(st.none(), st.integers(1, 4)),
       st.integers(1, 40), st.integers(1, 2000), st.sampled_from([0, 16, 10**9]), st.data())
def test_top_triples_equal_brute_force(qkov, n, all_triples, block, pairs, lists, gather, data):
    QK, OV = qkov
    sources = data.draw(st.one_of(st.none(), st.lists(st.integers(0, QK.shape[1] - 1), min_size=1, max_size=8)))
    # candidates formed a few at a time, lists of a few sources at a time, entries above tau gathered or selected
    with mock.patch.multiple(mod, PAIRS=pairs, LISTS=lists, GATHER=gather):
        check(QK, OV, n, sources, all_triples, block)


@pytest.mark.parametrize("gather", [0, 10**9])
@pytest.mark.parametrize("all_triples", [False, True])
def test_tie_heavy_circuits_equal_brute_force(all_triples, gather):
    """Many seeded circuits of small integers (ties at every place: the order among tied B or C decides
    which pairs the distinct ranking keeps), one or a few sources at a time."""
    for seed in range(150):
        rng = np.random.default_rng(seed)
        v_src, v_dst, v_out = rng.integers(2, 7, size=3)
        f = lambda *s: rng.integers(-1, 3, size=s).astype(np.float64)  # noqa: E731
        QK, OV = Factored(f(v_dst, 2), f(2, v_src)), Factored(f(v_src, 2), f(2, v_out))
        with mock.patch.multiple(mod, LISTS=int(rng.integers(1, 2000)), GATHER=gather):
            check(QK, OV, int(rng.integers(1, 30)), None, all_triples, block=int(rng.integers(1, 4)))


@pytest.mark.parametrize("gather", [0, 10**9])
def test_per_source_lists_are_exact_at_ties(gather):
    """The best-k lists (value desc, column asc) against a stable full sort, on rows of many tied small
    integers (argpartition alone may keep a higher column at a tied k-th place), padded to whole groups."""
    rng = np.random.default_rng(3)
    for _ in range(40):
        r, n_cols = rng.integers(1, 9), rng.integers(65, 400)
        k = int(rng.integers(1, n_cols + 5))
        block = np.full((r, -(-n_cols // 64) * 64), -np.inf, np.float32)
        block[:, :n_cols] = rng.integers(-3, 4, size=(r, n_cols))
        tau = float(rng.choice([-np.inf, -1.0, 0.5]))
        with mock.patch.object(mod, "GATHER", gather):
            vals, ids, z = mod._lists(block, n_cols, k, tau, 0.5, 2.0)
        order = np.argsort(-block[:, :n_cols], axis=1, kind="stable")[:, :k]
        want = np.take_along_axis(block[:, :n_cols], order, axis=1)
        ok = z >= tau  # the entries that can matter: all those with z ≥ tau, in the exact order
        assert ((want - 0.5) / 2.0 >= tau).sum() == ok.sum()
        for row in range(r):
            m = ok[row].sum()
            assert (ids[row, :m] == order[row, :m]).all() and (vals[row, :m] == want[row, :m]).all()


@pytest.mark.parametrize("all_triples", [False, True])
def test_constant_circuits_tie_everywhere(all_triples):
    """std 0 (z = x − mean = 0 for every link): the order is A, B, C ascending."""
    QK, OV = Factored(np.ones((4, 1)), np.ones((1, 5))), Factored(np.zeros((5, 1)), np.zeros((1, 3)))
    got = check(QK, OV, 7, None, all_triples, block=2)
    if not all_triples:
        assert list(zip(got["A"], got["B"], got["C"])) == [(0, 0, 0), (0, 1, 1), (0, 2, 2), (1, 0, 0), (1, 1, 1),
                                                            (1, 2, 2), (2, 0, 0)]


@pytest.mark.parametrize("all_triples", [False, True])
def test_candidates_per_source_stay_near_n(all_triples):
    """Bounded work: no source forms more than 2n candidate triples (without ties), far below the n² of a
    cube or the n·(1 + ln n) of the i·j ≤ n hyperbola; the result stays exact."""
    rng = np.random.default_rng(1)
    V, r, n = 400, 4, 150
    QK = Factored(rng.normal(size=(V, r)), rng.normal(size=(r, V)))
    OV = Factored(rng.normal(size=(V, r)), rng.normal(size=(r, V)))
    sizes = []
    merge = mod._merge

    def spy(best, cand, k):
        sizes.append(np.bincount(cand["A"]).max() if len(cand["A"]) else 0)
        return merge(best, cand, k)

    with mock.patch.object(mod, "_merge", spy):
        got = mod.top_triples(QK, OV, n, None, all_triples, block=64)
    assert max(sizes) <= (n if not all_triples else 2 * n)
    (qm, qs), (om, os_) = QK.mean_and_std(), OV.mean_and_std()
    zq, zo = (QK.dense().T - qm) / qs, (OV.dense() - om) / os_  # [A, B], [A, C]
    A, B, C = got["A"], got["B"], got["C"]
    score = np.minimum(zq[A, B], zo[A, C])
    np.testing.assert_allclose(score, np.minimum(got["z_qk"], got["z_ov"]), rtol=1e-9)
    if all_triples:  # the n-th best score of the whole cube, from #{zq ≥ t}·#{zo ≥ t} summed over A
        t = score[-1]
        assert ((zq > t).sum(1) * (zo > t).sum(1)).sum() < n <= ((zq >= t).sum(1) * (zo >= t).sum(1)).sum()
        assert len(set(zip(A, B, C))) == n and np.all(np.diff(score) <= 0)
    else:  # the diagonals (A, i-th best B, i-th best C), densely, top n
        Bs, Cs = np.argsort(-zq, axis=1, kind="stable"), np.argsort(-zo, axis=1, kind="stable")
        d = np.minimum(np.take_along_axis(zq, Bs, 1), np.take_along_axis(zo, Cs, 1))  # [A, i]
        top = np.argsort(-d.ravel(), kind="stable")[:n]
        a, i = np.divmod(top, V)
        assert list(zip(A, B, C)) == list(zip(a, Bs[a, i], Cs[a, i]))


def test_default_ranking_is_diverse_and_all_triples_is_not():
    """A circuit where one (A, B) link dominates: the plain top-n repeats it with every C; distinct pairs never
    repeat an (A, B) or (A, C) pair."""
    rng = np.random.default_rng(2)
    V = 30
    Q = rng.normal(size=(V, V))
    Q[3, 7] = 40.0  # B = 3 attends to A = 7 very strongly
    O = rng.normal(size=(V, V))
    O[7] += 3.0  # and A = 7 raises many outputs
    QK, OV = Factored(Q, np.eye(V)), Factored(O, np.eye(V))
    plain = mod.top_triples(QK, OV, 20, all_triples=True)
    assert (plain["A"] == 7).all() and (plain["B"] == 3).all()
    got = mod.top_triples(QK, OV, 20)
    pairs_b = set(zip(got["A"].tolist(), got["B"].tolist()))
    pairs_c = set(zip(got["A"].tolist(), got["C"].tolist()))
    assert len(pairs_b) == len(pairs_c) == 20


@pytest.mark.parametrize("flag", [[], ["--all-triples"]])
def test_cli_rows_check_by_eye(attn_only_dir, flag):
    cols, rows = parse(invoke("skiptrigram", attn_only_dir, "1.0", "-k", "15", *flag, "--csv").stdout, "csv")
    assert cols == SKIPTRIGRAM
    assert len(rows) == 15
    for r in rows:
        assert float(r["score"]) == pytest.approx(min(float(r["z_qk"]), float(r["z_ov"])))
    pairs = {(r["src_id"], r["dst_id"]) for r in rows}
    assert len(pairs) == 15 or flag
