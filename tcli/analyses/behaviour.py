"""Behavioural head scores from forward passes on random tokens (fixed seed, documented sizes).

prev_token_score[l, h]: mean attention from position i to i − 1 (i ≥ 1) on BATCH random
  sequences of LENGTH tokens drawn uniformly from the vocabulary.
induction_score[l, h]: on BATCH sequences made of HALF random tokens repeated twice, mean
  attention from position i in the second copy to i − HALF + 1, the token that followed the
  previous occurrence of the current token.
"""

from __future__ import annotations

import numpy as np

from ..forward import run

SEED, BATCH, LENGTH, HALF = 0, 4, 64, 32


def _lengths(cfg) -> tuple[int, int]:
    return min(LENGTH, cfg.n_ctx), min(HALF, cfg.n_ctx // 2)


def head_scores(w, progress=None) -> tuple[np.ndarray, np.ndarray]:
    """(prev_token_score, induction_score), each [n_layers, n_heads]."""
    cfg = w.cfg
    rng = np.random.default_rng(SEED)
    length, half = _lengths(cfg)
    prev = np.zeros((cfg.n_layers, cfg.n_heads))
    induction = np.zeros((cfg.n_layers, cfg.n_heads))
    for _ in range(BATCH):
        tokens = rng.integers(0, cfg.d_vocab, length)
        pattern = np.stack(run(w, tokens).pattern)  # [L, H, T, T]
        i = np.arange(1, length)
        prev += pattern[:, :, i, i - 1].mean(-1)
        if progress:
            progress(1)
    for _ in range(BATCH):
        first = rng.integers(0, cfg.d_vocab, half)
        pattern = np.stack(run(w, np.concatenate([first, first])).pattern)
        i = np.arange(half, 2 * half)
        induction += pattern[:, :, i, i - half + 1].mean(-1)
        if progress:
            progress(1)
    return prev / BATCH, induction / BATCH
