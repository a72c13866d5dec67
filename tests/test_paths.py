"""Path expansion (SPEC 3c): virtual OV circuits, K-/Q-composition terms, diagonals, singular directions,
each against a dense numpy computation; the paper's claims on the bundled two-layer sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from helpers import invoke, parse
from tcli.analyses import circuits
from tcli.analyses.heads import census
from tcli.analyses.ranked import bigram, ov, qk
from tcli.analyses.spectrum import singular_directions
from tcli.checkpoint import open_checkpoint
from tcli.checkpoint.tokens import Vocab
from tcli.core.stream import Request, diagonal_rows
from tcli.forward import apply_rotary, rotary_tables
from tcli.processing import process

SAMPLES = Path(__file__).resolve().parent.parent / "sample_weights"


def load(path, dtype=np.float64):
    ck = open_checkpoint(path)
    return process(ck.weights(dtype)), Vocab(ck.config.d_vocab, ck.tokenizer_path)


def rows_of(table):
    return [dict(zip(table.columns, r)) for r in table.rows()]


def head(w, l, h):
    p = f"blocks.{l}.attn."
    return w[p + "W_Q"][h], w[p + "W_K"][h], w[p + "W_V"][h], w[p + "W_O"][h]


def dense_virtual_ov(w, l1, h1, l2, h2):
    _, _, V1, O1 = head(w, l1, h1)
    _, _, V2, O2 = head(w, l2, h2)
    return w["embed.W_E"] @ (V1 @ O1) @ (V2 @ O2) @ w["unembed.W_U"]


def dense_k_comp(w, l1, h1, l2, h2):
    _, _, V1, O1 = head(w, l1, h1)
    Q2, K2, _, _ = head(w, l2, h2)
    E = w["embed.W_E"]
    return (E @ Q2) @ (E @ V1 @ O1 @ K2).T


def dense_q_comp(w, l1, h1, l2, h2):
    _, _, V1, O1 = head(w, l1, h1)
    Q2, K2, _, _ = head(w, l2, h2)
    E = w["embed.W_E"]
    return (E @ V1 @ O1 @ Q2) @ (E @ K2).T


def check_per_row(rows, M, col, k):
    """Per-row rows equal the dense row's top-k values (ties: any column with the same value)."""
    by_row = {}
    for r in rows:
        by_row.setdefault(r[next(c for c in r if c.endswith("_id"))], []).append(r)
    for rid, got in by_row.items():
        expect = np.sort(M[rid])[::-1][:k]
        np.testing.assert_allclose([g["value"] for g in sorted(got, key=lambda g: g["rank"])], expect, rtol=1e-9,
                                   atol=1e-12)
        for g in got:
            assert M[rid, g[col]] == pytest.approx(g["value"], rel=1e-9, abs=1e-12)


def dense_diagonal(M, rows=None):
    rows = np.arange(M.shape[0]) if rows is None else np.asarray(rows)
    d = M[rows, rows]
    return d, 1 + (M[rows] > d[:, None]).sum(1)


# ------------------------------------------------------------------ circuits against dense numpy
def test_virtual_ov_every_mode_equals_dense(attn_only_dir):
    w, vocab = load(attn_only_dir)
    M = dense_virtual_ov(w, 0, 1, 1, 2)
    np.testing.assert_allclose(circuits.ov(w, 1, 2, via=(0, 1)).dense(), M, atol=1e-10)
    np.testing.assert_allclose(circuits.ov_rows(w, 1, 2, [4, 0], via=(0, 1)).dense(), M[[4, 0]], atol=1e-10)
    rows = rows_of(ov(w, vocab, [(1, 2)], Request(k=4), via=(0, 1)))
    assert len(rows) == 4 * M.shape[0] and {(r["via_layer"], r["via_head"]) for r in rows} == {(0, 1)}
    check_per_row(rows, M, "out_id", 4)
    few = rows_of(ov(w, vocab, [(1, 2)], Request(rows=(5, 2), k=3), via=(0, 1)))  # the d_model factoring
    assert [r["src_id"] for r in few] == [5] * 3 + [2] * 3
    check_per_row(few, M, "out_id", 3)
    top = rows_of(ov(w, vocab, [(1, 2)], Request(global_n=7), via=(0, 1)))
    np.testing.assert_allclose([r["value"] for r in top], np.sort(M.ravel())[::-1][:7], rtol=1e-9)
    low = rows_of(ov(w, vocab, [(1, 2)], Request(global_n=7, bottom=True), via=(0, 1)))
    np.testing.assert_allclose([r["value"] for r in low], np.sort(M.ravel())[:7], rtol=1e-9)


def test_k_and_q_composition_terms_equal_dense(attn_only_dir):
    w, vocab = load(attn_only_dir)
    K, Q = dense_k_comp(w, 0, 2, 1, 1), dense_q_comp(w, 0, 2, 1, 1)
    np.testing.assert_allclose(circuits.qk(w, 1, 1, key_via=(0, 2)).dense(), K, atol=1e-10)
    np.testing.assert_allclose(circuits.qk(w, 1, 1, query_via=(0, 2)).dense(), Q, atol=1e-10)
    np.testing.assert_allclose(circuits.qk_rows(w, 1, 1, [3, 1], key_via=(0, 2)).dense(), K[[3, 1]], atol=1e-10)
    np.testing.assert_allclose(circuits.qk_rows(w, 1, 1, [3, 1], query_via=(0, 2)).dense(), Q[[3, 1]], atol=1e-10)
    check_per_row(rows_of(qk(w, vocab, [(1, 1)], Request(k=3), key_via=(0, 2))), K, "key_id", 3)
    check_per_row(rows_of(qk(w, vocab, [(1, 1)], Request(rows=(6,), k=5), query_via=(0, 2))), Q, "key_id", 5)


def test_composition_terms_of_a_grouped_query_rotary_model(hf_dirs):
    """GQA (4 query heads on 2 KV heads) with rotary positions, from the reference module's own
    projections: query head h reads KV head h // 2; --offset rotates the query side as the forward does."""
    model, path = hf_dirs["llama"]
    w = process(open_checkpoint(path).weights(np.float64), enabled=False)
    e, cfg = 8, w.cfg

    def proj(l):
        att = model.model.layers[l].self_attn
        f = lambda m, n: m.weight.detach().double().numpy().reshape(n, e, -1).transpose(0, 2, 1)  # noqa: E731
        return f(att.q_proj, 4), f(att.k_proj, 2), f(att.v_proj, 2), att.o_proj.weight.detach().double().numpy().T

    _, _, V0, O0 = proj(0)
    Q1, K1, _, _ = proj(1)
    E = w["embed.W_E"]
    h1, h2, N = 3, 2, 4
    OV1 = V0[h1 // 2] @ O0[h1 * e:(h1 + 1) * e]  # [d, d]
    q, k = E @ Q1[h2], E @ OV1 @ K1[h2 // 2]
    np.testing.assert_allclose(circuits.qk(w, 1, h2, key_via=(0, h1)).dense(), q @ k.T, atol=1e-9)
    cq, sq = rotary_tables(cfg, np.array([N + 7]))
    ck, sk = rotary_tables(cfg, np.array([7]))
    rotated = apply_rotary(q[None], cq, sq, cfg.rotary_dim)[0] @ apply_rotary(k[None], ck, sk, cfg.rotary_dim)[0].T
    np.testing.assert_allclose(circuits.qk(w, 1, h2, N, key_via=(0, h1)).dense(), rotated, atol=1e-9)
    np.testing.assert_allclose(circuits.qk_rows(w, 1, h2, [2, 9], N, key_via=(0, h1)).dense(), rotated[[2, 9]],
                               atol=1e-9)
    qq = E @ OV1 @ Q1[h2]
    np.testing.assert_allclose(circuits.qk(w, 1, h2, query_via=(0, h1)).dense(), qq @ (E @ K1[h2 // 2]).T, atol=1e-9)
    V1 = proj(1)[2]
    O1 = model.model.layers[1].self_attn.o_proj.weight.detach().double().numpy().T
    virtual = E @ OV1 @ (V1[h2 // 2] @ O1[h2 * e:(h2 + 1) * e]) @ w["unembed.W_U"]
    np.testing.assert_allclose(circuits.ov(w, 1, h2, via=(0, h1)).dense(), virtual, atol=1e-9)


# ------------------------------------------------------------------ diagonals
@settings(max_examples=40, deadline=None)
@given(st.integers(1, 30), st.integers(1, 6), st.integers(1, 9), st.integers(0, 2**31 - 1), st.booleans())
def test_streamed_diagonal_equals_dense(n, r, block, seed, ties):
    rng = np.random.default_rng(seed)
    A, B = rng.normal(size=(n, r)), rng.normal(size=(r, n))
    if ties:  # integer entries: many equal values, the rank counts strictly greater ones only
        A, B = np.round(A * 2), np.round(B * 2)
    M = A @ B
    rows = rng.permutation(n)[: max(1, n // 2)]
    for sel in (None, rows):
        got = list(diagonal_rows(A, B, sel, block=block))
        ids = np.concatenate([g[0] for g in got])
        d, rank = dense_diagonal(M, ids)
        np.testing.assert_array_equal(ids, np.arange(n) if sel is None else sel)
        np.testing.assert_allclose(np.concatenate([g[1] for g in got]), d, atol=1e-12)
        np.testing.assert_array_equal(np.concatenate([g[2] for g in got]), rank)


def test_diagonal_tables_equal_dense_and_the_note_counts_them(attn_only_dir):
    w, vocab = load(attn_only_dir)
    cases = [(bigram(w, vocab, Request(diagonal=True)), w["embed.W_E"] @ w["unembed.W_U"], None),
             (ov(w, vocab, [(1, 0)], Request(diagonal=True)),
              w["embed.W_E"] @ head(w, 1, 0)[2] @ head(w, 1, 0)[3] @ w["unembed.W_U"], None),
             (ov(w, vocab, [(1, 0)], Request(rows=(4, 1, 9), diagonal=True), via=(0, 2)),
              dense_virtual_ov(w, 0, 2, 1, 0), (4, 1, 9)),
             (qk(w, vocab, [(1, 1)], Request(diagonal=True), key_via=(0, 0)), dense_k_comp(w, 0, 0, 1, 1), None),
             (qk(w, vocab, [(1, 1)], Request(rows=(2, 3), diagonal=True)), circuits.qk(w, 1, 1).dense(), (2, 3))]
    for table, M, sel in cases:
        rows = rows_of(table)
        d, rank = dense_diagonal(M, sel)
        assert [r["token_id"] for r in rows] == (list(range(M.shape[0])) if sel is None else list(sel))
        np.testing.assert_allclose([r["value"] for r in rows], d, rtol=1e-9, atol=1e-12)
        assert [r["row_rank"] for r in rows] == rank.tolist()
        top1 = int((rank == 1).sum())
        assert len(table.notes) == 1 and f"rank 1 in {top1}/{len(rank)} rows" in table.notes[0]
        assert f"top 5 in {int((rank <= 5).sum())}/{len(rank)}" in table.notes[0]


def test_census_ov_diagonal_top1_is_the_share_of_self_copying_tokens(attn_only_dir):
    w, _ = load(attn_only_dir)
    rows = rows_of(census(w, behaviour=False))
    for r in rows:
        _, _, V, O = head(w, r["layer"], r["head"])
        M = w["embed.W_E"] @ V @ O @ w["unembed.W_U"]
        expect = np.mean(M[np.arange(len(M)), np.arange(len(M))] >= M.max(1))
        assert r["ov_diagonal_top1"] == pytest.approx(expect)
    assert all(r["ov_diagonal_top1"] is None for r in rows_of(census(w, behaviour=False, diagonal=False)))


# ------------------------------------------------------------------ singular directions
@pytest.mark.parametrize("name,where", [("ov", (1, 2)), ("qk", (0, 1)), ("direct", (None, None))])
def test_singular_directions_are_the_dense_svd(attn_only_dir, name, where):
    w, vocab = load(attn_only_dir)
    F = circuits.circuit(w, name, *where)
    U, S, Vh = F.svd()
    M = F.dense()
    np.testing.assert_allclose((U * S) @ Vh, M, atol=1e-9)  # U S Vᵀ reconstructs the circuit
    s_dense = np.linalg.svd(M, compute_uv=False)
    np.testing.assert_allclose(S, s_dense[:len(S)], rtol=1e-8, atol=1e-9)
    Ud, _, Vhd = np.linalg.svd(M)
    k, n = 4, 3
    rows = rows_of(singular_directions(w, vocab, name, [where] if name != "direct" else [], n, k))
    assert len(rows) == n * 2 * k
    for i in range(n):
        u, v = Ud[:, i], Vhd[i]
        if u[np.argmax(np.abs(u))] < 0:  # SPEC sign convention
            u, v = -u, -v
        for side, vec in (("left", u), ("right", v)):
            got = [r for r in rows if r["index"] == i + 1 and r["side"] == side]
            assert [r["rank"] for r in got] == list(range(1, k + 1))
            assert [r["token_id"] for r in got] == np.argsort(-vec, kind="stable")[:k].tolist()
            np.testing.assert_allclose([r["weight"] for r in got], np.sort(vec)[::-1][:k], atol=1e-9)
            assert all(r["singular_value"] == pytest.approx(s_dense[i]) for r in got)


# ------------------------------------------------------------------ the paper on the bundled sample
def test_induction_head_k_composition_diagonal_through_the_previous_token_head(figure):
    """The K-composition term of the two-layer sample's induction head (1.0) through its previous-token
    head (0.5) matches the query token with the token moved into the key: its diagonal is rank 1 in far
    more rows than through any other layer-0 head, and than chance (1/V)."""
    w, vocab = load(SAMPLES / "attn-only-2l", np.float32)
    share = {}
    for h in range(w.cfg.n_heads):
        rows = rows_of(qk(w, vocab, [(1, 0)], Request(diagonal=True), key_via=(0, h)))
        share[h] = np.mean([r["row_rank"] == 1 for r in rows])
    others = max(v for h, v in share.items() if h != 5)
    chance = 1 / w.cfg.d_vocab
    figure("2l: K-composition diagonal rank-1 share, 1.0 via each layer-0 head",
           ", ".join(f"0.{h}: {v:.3f}" for h, v in share.items()),
           f"via 0.5 >= 2 x the best other ({others:.3f}) and >= 100 x chance ({chance:.4f})")
    assert share[5] >= 2 * others and share[5] >= 100 * chance


def test_copying_heads_ov_diagonals_are_rank_1_far_above_chance(figure):
    """The one-layer sample's heads copy: the share of tokens whose largest OV output is the token
    itself (ov_diagonal_top1) is far above chance for most heads."""
    w, _ = load(SAMPLES / "attn-only-1l", np.float32)
    rows = rows_of(census(w, behaviour=False))
    shares = np.array([r["ov_diagonal_top1"] for r in rows])
    chance = 1 / w.cfg.d_vocab
    figure("1l: ov_diagonal_top1 per head", ", ".join(f"0.{r['head']}: {r['ov_diagonal_top1']:.3f}" for r in rows),
           f"median >= 50 x chance ({chance:.4f})")
    assert np.median(shares) >= 50 * chance


# ------------------------------------------------------------------ the command line
def test_cli_path_tables_and_diagonal_note(attn_only_dir):
    result = invoke("qk", attn_only_dir, "1.1", "--key-via", "0.0", "--diagonal", "--csv")
    cols, rows = parse(result.stdout, "csv")
    assert cols == ["layer", "head", "via_layer", "via_head", "token_id", "token", "value", "row_rank"]
    assert len(rows) == open_checkpoint(attn_only_dir).config.d_vocab
    assert "diagonal is rank 1 in" in result.stderr
    cols, rows = parse(invoke("ov", attn_only_dir, "--all-heads", "--via", "0.1", "--global", "3", "--csv").stdout,
                       "csv")
    assert cols[:4] == ["layer", "head", "via_layer", "via_head"] and {r["layer"] for r in rows} == {"1"}
    cols, rows = parse(invoke("spectrum", attn_only_dir, "1.0", "--tokens", "-k", "2", "--directions", "3",
                              "--csv").stdout, "csv")
    assert len(rows) == 3 * 2 * 2 and cols[-4:] == ["rank", "token_id", "token", "weight"]


@pytest.mark.parametrize("args,says", [
    (("ov", "1.0", "--via", "1.1"), "earlier layer"),
    (("ov", "0.0", "--via", "1.1"), "earlier layer"),
    (("qk", "1.0", "--key-via", "0.1", "--query-via", "0.2"), "not both"),
    (("ov", "1.0", "--via", "0-1"), "LAYER.HEAD"),
    (("ov", "1.0", "--via", "0.9"), "out of range"),
    (("bigram", "--key-via", "0.1"), "--key-via"),
    (("spectrum", "0.1", "--tokens", "--eigen"), "--eigen"),
    (("spectrum", "0.1", "--circuit", "wov", "--tokens"), "vocabulary circuit"),
    (("ov", "1.0", "--diagonal", "--global", "5"), "--diagonal"),
    (("bigram", "--diagonal", "--bottom"), "--diagonal"),
    (("qk", "1.0", "--positional", "--diagonal"), "--positional"),
])
def test_cli_path_bad_input_is_one_line(attn_only_dir, args, says):
    result = invoke(args[0], attn_only_dir, *args[1:], ok=False)
    assert result.exit_code == 2 and says in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""
