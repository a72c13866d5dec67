"""Each analysis against an independent dense numpy computation on small models."""

from __future__ import annotations

import numpy as np

from tcli.core.stream import Request
import pytest

from tcli.analyses import circuits
from tcli.analyses.heads import census
from tcli.analyses.ranked import bigram, ov, qk
from tcli.analyses.skiptrigram import skiptrigram
from tcli.analyses.spectrum import spectrum
from tcli.checkpoint import open_checkpoint
from tcli.checkpoint.tokens import Vocab
from tcli.forward import apply_rotary, rotary_tables, run
from tcli.processing import process


def load(path, dtype=np.float64, raw=False):
    ck = open_checkpoint(path)
    return process(ck.weights(dtype), enabled=not raw), Vocab(ck.config.d_vocab, ck.tokenizer_path)


def rows_of(table):
    return [dict(zip(table.columns, r)) for r in table.rows()]


def dense_ov(w, l, h):
    return w["embed.W_E"] @ w[f"blocks.{l}.attn.W_V"][h] @ w[f"blocks.{l}.attn.W_O"][h] @ w["unembed.W_U"]


def dense_qk(w, l, h):
    return (w["embed.W_E"] @ w[f"blocks.{l}.attn.W_Q"][h]) @ (w["embed.W_E"] @ w[f"blocks.{l}.attn.W_K"][h]).T


@pytest.mark.parametrize("bottom", [False, True])
def test_bigram_per_row_equals_dense(attn_only_dir, bottom):
    w, vocab = load(attn_only_dir)
    D = w["embed.W_E"] @ w["unembed.W_U"]
    rows = rows_of(bigram(w, vocab, Request(k=4, bottom=bottom)))
    assert len(rows) == D.shape[0] * 4
    for r in rows:
        order = np.argsort(D[r["src_id"]] if bottom else -D[r["src_id"]], kind="stable")
        assert r["dst_id"] == order[r["rank"] - 1]
        assert r["value"] == pytest.approx(D[r["src_id"], r["dst_id"]], rel=1e-12)


def test_bigram_global_equals_dense(attn_only_dir):
    w, vocab = load(attn_only_dir)
    D = w["embed.W_E"] @ w["unembed.W_U"]
    rows = rows_of(bigram(w, vocab, Request(global_n=15)))
    flat = np.argsort(-D.ravel(), kind="stable")[:15]
    assert [(r["src_id"], r["dst_id"]) for r in rows] == [tuple(divmod(int(i), D.shape[1])) for i in flat]
    assert [r["rank"] for r in rows] == list(range(1, 16))


@pytest.mark.parametrize("rows,bottom", [([0, 5], False), ([5, 0], True), (list(range(3, 23)), False),
                                         (list(range(3, 23)), True)])
def test_ov_and_qk_equal_dense(attn_only_dir, rows, bottom):
    """A few rows go through the d_model factoring (head factors folded into the rows), many through
    d_head (``circuits.few_rows``): both equal the dense circuit, top and bottom."""
    w, vocab = load(attn_only_dir)
    assert (len(rows) < circuits.few_rows(w.cfg)) == (len(rows) == 2)  # both paths are exercised
    heads = [(0, 1), (1, 2)]
    sign = 1 if bottom else -1
    for table, dense, col in ((ov(w, vocab, heads, Request(rows=tuple(rows), k=3, bottom=bottom)), dense_ov, "out_id"),
                              (qk(w, vocab, heads, Request(rows=tuple(rows), k=3, bottom=bottom)), dense_qk, "key_id")):
        got = rows_of(table)
        assert len(got) == 2 * len(rows) * 3
        assert [r["src_id"] if "src_id" in r else r["query_id"] for r in got[:3 * len(rows):3]] == rows
        for r in got:
            M = dense(w, r["layer"], r["head"])
            row_id = r["src_id"] if "src_id" in r else r["query_id"]
            assert r[col] == np.argsort(sign * M[row_id], kind="stable")[r["rank"] - 1]
            assert r["value"] == pytest.approx(M[row_id, r[col]], rel=1e-12)


def test_qk_scaled_and_positional(attn_only_dir):
    w, vocab = load(attn_only_dir)
    plain = rows_of(qk(w, vocab, [(0, 0)], Request(global_n=5)))
    scaled = rows_of(qk(w, vocab, [(0, 0)], Request(global_n=5), scaled=True))
    for a, b in zip(plain, scaled):
        assert b["value"] == pytest.approx(a["value"] / np.sqrt(w.cfg.d_head))
    pos = rows_of(qk(w, vocab, [(0, 0)], Request(rows=(0, 4), k=3), positional=True))
    P = (w["embed.W_pos"] @ w["blocks.0.attn.W_Q"][0]) @ (w["embed.W_pos"] @ w["blocks.0.attn.W_K"][0]).T
    assert [r["key_id"] for r in pos if r["query_id"] == 0] == [0]  # causal: only key 0 for query 0
    for r in pos:
        assert r["key_id"] <= r["query_id"]
        assert r["value"] == pytest.approx(P[r["query_id"], r["key_id"]])


def test_rotary_qk_offset_is_the_score_at_that_relative_distance(hf_dirs):
    w, vocab = load(hf_dirs["llama"][1])
    cfg = w.cfg
    l, h, N = 1, 2, 3
    F = circuits.qk(w, l, h, offset=N)
    q = w["embed.W_E"] @ w[f"blocks.{l}.attn.W_Q"][h]
    k = w["embed.W_E"] @ w[f"blocks.{l}.attn.W_K"][h]
    for p in (N, N + 5, 20):  # rotary scores depend on the offset only
        cq, sq = rotary_tables(cfg, np.array([p]))
        ck, sk = rotary_tables(cfg, np.array([p - N]))
        dense = apply_rotary(q[None], cq, sq, cfg.rotary_dim)[0] @ apply_rotary(k[None], ck, sk, cfg.rotary_dim)[0].T
        np.testing.assert_allclose(F.dense(), dense, atol=1e-10)
    assert not np.allclose(circuits.qk(w, l, h, 0).dense(), F.dense())
    rows = [3, 0, 7]  # the few-rows factoring rotates the same queries
    np.testing.assert_allclose(circuits.qk_rows(w, l, h, rows, offset=N).dense(), F.dense()[rows], atol=1e-10)


@pytest.mark.parametrize("all_triples", [False, True])
def test_skiptrigrams_equal_brute_force(attn_only_dir, all_triples):
    w, vocab = load(attn_only_dir)
    QK, OV = dense_qk(w, 1, 0), dense_ov(w, 1, 0)
    zq = (QK - QK.mean()) / QK.std()
    zo = (OV - OV.mean()) / OV.std()
    score = np.minimum(zq.T[:, :, None], zo[:, None, :])  # [A, B, C]
    second = np.maximum(zq.T[:, :, None], zo[:, None, :])
    order = np.lexsort((-second.ravel(), -score.ravel()))  # stable: then A, B, C ascending
    expect, seen = [], set()
    for A, B, C in zip(*np.unravel_index(order, score.shape)):
        if all_triples or not ({(A, "B", B), (A, "C", C)} & seen):  # distinct: each (A, B), (A, C) pair once
            expect.append((int(A), int(B), int(C)))
            seen |= {(A, "B", B), (A, "C", C)}
        if len(expect) == 12:
            break
    rows = rows_of(skiptrigram(w, vocab, [(1, 0)], k=12, all_triples=all_triples))
    got = [(r["src_id"], r["dst_id"], r["out_id"]) for r in rows]
    assert got == expect
    for r in rows:
        assert r["qk"] == pytest.approx(QK[r["dst_id"], r["src_id"]])
        assert r["ov"] == pytest.approx(OV[r["src_id"], r["out_id"]])
        assert r["z_qk"] == pytest.approx(zq[r["dst_id"], r["src_id"]], rel=1e-9)
        assert r["z_ov"] == pytest.approx(zo[r["src_id"], r["out_id"]], rel=1e-9)
        assert r["score"] == pytest.approx(score[r["src_id"], r["dst_id"], r["out_id"]], rel=1e-9)


@pytest.mark.parametrize("name", circuits.CIRCUITS)
def test_spectrum_equals_dense_svd_and_eig(attn_only_dir, name):
    w, _ = load(attn_only_dir)
    M = circuits.circuit(w, name, 1, 2).dense()
    rows = rows_of(spectrum(w, name, [(1, 2)]))
    dense = np.linalg.svd(M, compute_uv=False)
    got = np.array([r["singular_value"] for r in rows])
    np.testing.assert_allclose(got, dense[:len(got)], rtol=1e-9, atol=1e-9 * dense[0])
    assert rows[-1]["cumulative_variance"] == pytest.approx((dense[:len(got)] ** 2).sum() / (dense**2).sum())
    eig = rows_of(spectrum(w, name, [(1, 2)], eigen=True))
    lam = np.array([r["real"] + 1j * r["imag"] for r in eig])
    dense_lam = np.linalg.eigvals(M)
    dense_lam = dense_lam[np.abs(dense_lam) > 1e-8 * np.abs(dense_lam).max()]
    np.testing.assert_allclose(np.sort_complex(lam[np.abs(lam) > 1e-8 * np.abs(lam).max()]),
                               np.sort_complex(dense_lam), atol=1e-7 * np.abs(dense_lam).max())


def test_census_equals_dense(attn_only_dir):
    w, _ = load(attn_only_dir)
    rows = rows_of(census(w, behaviour=False))
    assert len(rows) == w.cfg.n_layers * w.cfg.n_heads
    for r in rows:
        M = dense_ov(w, r["layer"], r["head"])
        lam = np.linalg.eigvals(M)
        assert r["copying_score"] == pytest.approx(lam.real.sum() / np.abs(lam).sum(), abs=1e-9)
        s = np.linalg.svd(M, compute_uv=False)
        assert r["ov_top_singular_value"] == pytest.approx(s[0], rel=1e-9)
        assert r["ov_frobenius"] == pytest.approx(np.linalg.norm(M), rel=1e-9)
        assert r["qk_frobenius"] == pytest.approx(np.linalg.norm(dense_qk(w, r["layer"], r["head"])), rel=1e-9)
        Wov = w[f"blocks.{r['layer']}.attn.W_V"][r["head"]] @ w[f"blocks.{r['layer']}.attn.W_O"][r["head"]]
        lw = np.linalg.eigvals(Wov)
        assert r["wov_copying_score"] == pytest.approx(lw.real.sum() / np.abs(lw).sum(), abs=1e-9)
        assert r["prev_token_score"] is None and r["induction_score"] is None


def test_behaviour_scores_read_the_attention_patterns(attn_only_dir):
    """prev_token_score is the mean attention to position i-1 on the documented random sequences."""
    from tcli.analyses import behaviour

    w, _ = load(attn_only_dir)
    prev, ind = behaviour.head_scores(w)
    rng = np.random.default_rng(behaviour.SEED)
    length, half = behaviour._lengths(w.cfg)
    tokens = rng.integers(0, w.cfg.d_vocab, length)
    pattern = run(w, tokens).pattern[1][2]
    first = pattern[np.arange(1, length), np.arange(0, length - 1)].mean()
    assert 0 <= prev.min() and prev.max() <= 1 and 0 <= ind.min() and ind.max() <= 1
    # the first of the BATCH sequences contributes first / BATCH
    assert prev[1, 2] * behaviour.BATCH >= first - 1e-12
