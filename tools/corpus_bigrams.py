"""Bigram counts of the training corpus under the samples' tokenizer, shipped as small test data.

    python tools/corpus_bigrams.py [--corpus ../shared/data/tinyshakespeare.txt]

Writes tests/data/bigrams.npz: ``prev``, ``next``, ``count`` for every bigram seen at least
MIN_COUNT times, and ``prefix_count[t]`` = how often token t is followed by any token, so that
log P(next | prev) = log count − log prefix_count[prev]. The tests need no corpus and no network.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MIN_COUNT = 10


def main():
    from tokenizers import Tokenizer

    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=str(ROOT.parent / "shared/data/tinyshakespeare.txt"))
    ap.add_argument("--out", default=str(ROOT / "tests/data/bigrams.npz"))
    args = ap.parse_args()
    tok = Tokenizer.from_file(str(ROOT / "sample_weights/attn-only-0l/tokenizer.json"))
    ids = np.array(tok.encode(Path(args.corpus).read_text()).ids, dtype=np.int64)
    V = tok.get_vocab_size()
    pairs = ids[:-1] * V + ids[1:]
    uniq, count = np.unique(pairs, return_counts=True)
    keep = count >= MIN_COUNT
    prefix = np.bincount(ids[:-1], minlength=V)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, prev=(uniq[keep] // V).astype(np.int32), next=(uniq[keep] % V).astype(np.int32),
                        count=count[keep].astype(np.int32), prefix_count=prefix.astype(np.int64),
                        n_tokens=np.int64(len(ids)), min_count=np.int64(MIN_COUNT))
    print(f"{keep.sum()} bigrams with count >= {MIN_COUNT} of {len(uniq)}; {len(ids)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
