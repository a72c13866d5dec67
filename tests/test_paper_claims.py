"""The paper's claims, checked on the bundled sample models through tcli's own library.

Bounds are set below the figures measured when the samples were trained (printed at the end of
the test run); a retrained sample must still clear them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tcli.analyses import circuits
from tcli.analyses.behaviour import head_scores
from tcli.analyses.compose import composition_scores
from tcli.analyses.heads import census
from tcli.checkpoint import open_checkpoint, resolve_default
from tcli.processing import process

BIGRAMS = Path(__file__).parent / "data" / "bigrams.npz"


def weights(name, dtype=np.float64):
    return process(open_checkpoint(resolve_default(name)).weights(dtype))


def log_softmax(x):
    x = x - x.max(1, keepdims=True)
    return x - np.log(np.exp(x).sum(1, keepdims=True))


def test_zero_layer_direct_path_is_the_bigram_table(figure):
    """W_E W_U, row-normalised, approximates the corpus bigram log-probabilities."""
    d = np.load(BIGRAMS)
    D = log_softmax(circuits.direct(weights("attn-only-0l")).dense())
    model = D[d["prev"], d["next"]]
    empirical = np.log(d["count"]) - np.log(d["prefix_count"][d["prev"]])
    corr = np.corrcoef(model, empirical)[0, 1]
    figure(f"0l: correlation of log_softmax(W_E W_U) with corpus log P(next|prev), {len(model)} bigrams seen "
           f">= {int(d['min_count'])} times", f"{corr:.3f}", ">= 0.9")
    assert corr >= 0.9
    frequent = np.where(d["prefix_count"] >= 500)[0]
    agree = []
    for a in frequent:
        sel = d["prev"] == a
        if sel.any():
            agree.append(np.argmax(D[a]) == d["next"][sel][np.argmax(d["count"][sel])])
    share = float(np.mean(agree))
    figure(f"0l: top-1 agreement with the most frequent next token, {len(agree)} tokens seen >= 500 times",
           f"{share:.3f}", ">= 0.7")
    assert share >= 0.7
