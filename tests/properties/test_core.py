"""Property tests for tcli.core against dense numpy oracles on small random shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given
from hypothesis import strategies as st

from tcli.analyses.compose import composition_scores
from tcli.core.factored import Factored, copying_score, svdvals_from_grams
from tcli.core.stream import global_topk, select_topk, topk_rows

DTYPES = st.sampled_from([np.float32, np.float64])


@st.composite
def factors(draw, max_dim=40, max_inner=8, square=False):
    m = draw(st.integers(1, max_dim))
    n = m if square else draw(st.integers(1, max_dim))
    r = draw(st.integers(1, max_inner))
    dtype = draw(DTYPES)
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, r)).astype(dtype), rng.standard_normal((r, n)).astype(dtype)


def tol(dtype):
    return 1e-4 if dtype == np.float32 else 1e-10


@given(factors(), st.integers(1, 50), st.booleans(), st.integers(1, 7))
@example((np.ones((3, 1)), np.ones((1, 4))), 10, True, 2)  # all ties, k > n
def test_streamed_topk_equals_dense_topk(AB, k, largest, block):
    A, B = AB
    M = A @ B
    got_vals, got_ids = [], []
    for _, vals, cols in topk_rows(A, B, k, largest=largest, block=block):
        got_vals.append(vals)
        got_ids.append(cols)
    vals, cols = np.concatenate(got_vals), np.concatenate(got_ids)
    kk = min(k, M.shape[1])
    dense = -np.sort(-M, axis=1)[:, :kk] if largest else np.sort(M, axis=1)[:, :kk]
    # a block's matmul may differ from the dense one in the last bits: compare within float error
    atol = tol(A.dtype) * max(1.0, np.abs(M).max())
    np.testing.assert_allclose(vals, dense, rtol=0, atol=atol)  # same values, in order
    np.testing.assert_allclose(np.take_along_axis(M, cols, 1), vals, rtol=0, atol=atol)  # ids point at them
    assert all(len(set(r)) == len(r) for r in cols.tolist())  # no column twice
    assert (np.diff(vals, axis=1) <= 0).all() if largest else (np.diff(vals, axis=1) >= 0).all()


@given(factors(), st.integers(1, 60), st.booleans(), st.integers(1, 7))
def test_global_topk_equals_dense(AB, n, largest, block):
    A, B = AB
    M = A @ B
    r, c, v = global_topk(A, B, n, largest=largest, block=block)
    flat = np.sort(M.ravel())[::-1] if largest else np.sort(M.ravel())
    atol = tol(A.dtype) * max(1.0, np.abs(M).max())
    np.testing.assert_allclose(v, flat[:min(n, M.size)], rtol=0, atol=atol)
    np.testing.assert_allclose(M[r, c], v, rtol=0, atol=atol)
    assert len(set(zip(r.tolist(), c.tolist()))) == len(r)


@given(st.integers(1, 30), st.integers(1, 30), st.integers(1, 40))
def test_select_topk_breaks_ties_towards_lower_index(b, n, k):
    block = np.zeros((b, n), np.float32)
    vals, idx = select_topk(block, k)
    np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(min(k, n)), idx.shape))


@given(factors())
def test_factored_singular_values_equal_dense(AB):
    A, B = AB
    F = Factored(A, B)
    dense = np.linalg.svd((A.astype(np.float64) @ B), compute_uv=False)
    got = F.svdvals()
    r = min(len(got), len(dense))
    np.testing.assert_allclose(got[:r], dense[:r], rtol=tol(A.dtype) * 10, atol=tol(A.dtype) * dense.max() * 10)


@given(factors())
def test_singular_values_from_grams_equal_dense(AB):
    A, B = (x.astype(np.float64) for x in AB)
    dense = np.linalg.svd(A @ B, compute_uv=False)
    got = svdvals_from_grams(A.T @ A, B @ B.T)
    r = min(len(got), len(dense))
    # Gram-based values lose relative precision on tiny singular values: compare against σ_max
    np.testing.assert_allclose(got[:r], dense[:r], atol=1e-6 * max(dense.max(), 1e-300))


@given(factors())
def test_factored_svd_reconstructs(AB):
    A, B = (x.astype(np.float64) for x in AB)
    U, S, Vh = Factored(A, B).svd()
    np.testing.assert_allclose(U @ np.diag(S) @ Vh, A @ B, atol=1e-9 * max(1, np.abs(A @ B).max()))


@given(factors(square=True))
def test_factored_eigenvalues_equal_dense_nonzero_eigenvalues(AB):
    A, B = (x.astype(np.float64) for x in AB)
    got = Factored(A, B).eigvals()
    dense = np.linalg.eigvals(A @ B)
    dense = dense[np.argsort(-np.abs(dense), kind="stable")][:len(got)]
    # compare as multisets: sort by (real, imag) after rounding
    key = lambda z: np.lexsort((np.round(z.imag, 6), np.round(z.real, 6)))  # noqa: E731
    scale = max(1.0, np.abs(dense).max())
    big = np.abs(got) > 1e-6 * scale
    np.testing.assert_allclose(np.sort_complex(got[big]), np.sort_complex(dense[np.abs(dense) > 1e-6 * scale]),
                               atol=1e-6 * scale)
    assert key is not None


@given(factors())
def test_frobenius_and_moments_equal_dense(AB):
    A, B = AB
    M = (A.astype(np.float64) @ B.astype(np.float64))
    F = Factored(A, B)
    np.testing.assert_allclose(F.frobenius(), np.linalg.norm(M), rtol=1e-5)
    mean, std = F.mean_and_std()
    np.testing.assert_allclose(mean, M.mean(), atol=1e-5 * max(1, np.abs(M).max()))
    np.testing.assert_allclose(std, M.std(), rtol=1e-3, atol=1e-5 * max(1, np.abs(M).max()))


def test_copying_score_of_identity_and_negation():
    assert copying_score(np.ones(5)) == 1.0
    assert copying_score(-np.ones(5)) == -1.0
    assert abs(copying_score(np.array([1j, -1j]))) < 1e-12


class _W(dict):
    """A dict of canonical tensors standing in for loaded weights."""


@given(st.integers(1, 4), st.integers(2, 12), st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_composition_scores_equal_dense_formula(H, d, e, seed):
    rng = np.random.default_rng(seed)
    w = _W()
    for l in (0, 1):
        for n in ("W_Q", "W_K", "W_V"):
            w[f"blocks.{l}.attn.{n}"] = rng.standard_normal((H, d, e))
        w[f"blocks.{l}.attn.W_O"] = rng.standard_normal((H, e, d))
    for kind in "qkv":
        S = composition_scores(w, kind, 0, 1)
        for h1 in range(H):
            for h2 in range(H):
                A = w["blocks.0.attn.W_V"][h1] @ w["blocks.0.attn.W_O"][h1]
                Q, K = w["blocks.1.attn.W_Q"][h2], w["blocks.1.attn.W_K"][h2]
                B = {"q": Q @ K.T, "k": K @ Q.T, "v": w["blocks.1.attn.W_V"][h2] @ w["blocks.1.attn.W_O"][h2]}[kind]
                dense = np.linalg.norm(A @ B) / (np.linalg.norm(A) * np.linalg.norm(B))
                np.testing.assert_allclose(S[h1, h2], dense, rtol=1e-8)


@given(st.integers(1, 12), st.integers(1, 40), st.sampled_from([1, 2, 4, 8]), st.integers(1, 20), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_group_maximum_prefilter_equals_dense(b, groups, g, k, ties, seed):
    from tcli.core.stream import select_topk_grouped

    rng = np.random.default_rng(seed)
    block = (rng.integers(-3, 3, (b, groups * g)) if ties else rng.standard_normal((b, groups * g))).astype(np.float32)
    vals, cols = select_topk_grouped(block, k, g)
    kk = vals.shape[1]
    assert kk == min(k, groups * g)
    dense = -np.sort(-block, axis=1)[:, :kk]
    np.testing.assert_array_equal(vals, dense)
    np.testing.assert_array_equal(np.take_along_axis(block, cols, 1), vals)
    assert all(len(set(r)) == len(r) for r in cols.tolist())


@given(st.integers(1, 30), st.integers(260, 900), st.integers(1, 3), st.booleans(), st.integers(0, 2**31 - 1))
def test_streamed_topk_grouped_path_equals_dense(m, n, k, largest, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((m, 5)), rng.standard_normal((5, n))
    M = A @ B
    got = np.concatenate([v for _, v, _ in topk_rows(A, B, k, largest=largest, block=7)])
    dense = -np.sort(-M, axis=1)[:, :k] if largest else np.sort(M, axis=1)[:, :k]
    np.testing.assert_allclose(got, dense, rtol=0, atol=1e-12)


@given(st.integers(1, 30), st.integers(64, 700), st.integers(1, 12), st.booleans(), st.integers(1, 9),
       st.integers(0, 2**31 - 1))
def test_global_topk_grouped_path_equals_dense(m, n, top, largest, block, seed):
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((m, 4)), rng.standard_normal((4, n))
    M = A @ B
    r, c, v = global_topk(A, B, top, largest=largest, block=block)
    flat = np.sort(M.ravel())[::-1] if largest else np.sort(M.ravel())
    np.testing.assert_allclose(v, flat[:top], rtol=0, atol=1e-12)
    np.testing.assert_allclose(M[r, c], v, rtol=0, atol=1e-12)
