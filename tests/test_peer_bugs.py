"""Regression tests for the bugs users of other circuit tools reported (see the developers' brief)."""

from __future__ import annotations

import socket
import tracemalloc

import numpy as np

from tcli.core.stream import Request
import torch

from builders import hf_model, random_attn_only, save_hf
from helpers import invoke, parse
from tcli.analyses import circuits
from tcli.checkpoint import open_checkpoint
from tcli.processing import process


def test_grouped_query_circuits_use_the_right_kv_head(hf_dirs):
    """Query head h of a GQA model reads KV head h // (H / H_kv): check QK and OV against the
    reference module's own projections, and that compose runs."""
    model, path = hf_dirs["llama"]  # 4 query heads, 2 KV heads
    w = process(open_checkpoint(path).weights(np.float64), enabled=False)
    att = model.model.layers[1].self_attn
    e = 8
    Wq = att.q_proj.weight.detach().double().numpy().reshape(4, e, -1)
    Wk = att.k_proj.weight.detach().double().numpy().reshape(2, e, -1)
    Wv = att.v_proj.weight.detach().double().numpy().reshape(2, e, -1)
    Wo = att.o_proj.weight.detach().double().numpy().T.reshape(4, e, -1)
    E = w["embed.W_E"]
    for h in range(4):
        kv = h // 2
        np.testing.assert_allclose(circuits.qk(w, 1, h).dense(), (E @ Wq[h].T) @ (E @ Wk[kv].T).T, atol=1e-10)
        np.testing.assert_allclose(circuits.wov(w, 1, h).dense(), Wv[kv].T @ Wo[h], atol=1e-12)
    cols, rows = parse(invoke("compose", path, "--csv").stdout, "csv")
    assert len(rows) == 3 * 4 * 4 and all(0 <= float(r["score"]) <= 1 for r in rows)


def test_bf16_checkpoint_spectra_and_eigenvalues(tmp_path):
    """bf16 weights are widened on load, so SVD and eigenvalues work and match the float32 values."""
    path = save_hf(hf_model("llama"), tmp_path / "bf16", dtype=torch.bfloat16)
    out = parse(invoke("spectrum", path, "0.1", "--circuit", "ov", "--eigen", "--csv").stdout, "csv")[1]
    assert len(out) == 8
    census = parse(invoke("heads", path, "--csv").stdout, "csv")[1]
    assert len(census) == 8 and all(-1 <= float(r["copying_score"]) <= 1 for r in census)


def test_local_loading_never_touches_the_network(hf_dirs, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("tcli tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    _, path = hf_dirs["gpt2"]
    invoke("info", path, "--json")
    invoke("decompose", path, "--ids", "1,2,3")


def test_streaming_never_materialises_the_vocab_matrix(tmp_path, monkeypatch):
    """With small blocks, the peak allocation of bigram --all stays far below one V × V matrix."""
    import tcli.core.stream as stream
    from tcli.analyses.ranked import bigram
    from tcli.checkpoint.tokens import Vocab

    V = 3000
    path = random_attn_only(tmp_path / "big", n_layers=0, d_vocab=V, d_model=32)
    w = process(open_checkpoint(path).weights())
    monkeypatch.setattr(stream, "BLOCK_BYTES", 2**20)
    table = bigram(w, Vocab(V), Request(k=5))
    w["embed.W_E"], w["unembed.W_U"]
    tracemalloc.start()
    n = sum(1 for _ in table.rows())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n == V * 5
    assert peak < V * V * 4 / 8, peak  # one V × V float32 matrix would be 36 MB
