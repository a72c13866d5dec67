"""Time ``skiptrigram -k K`` on one random head at GPT-2-small shapes, in process.

    python bench/skiptrigram_bench.py [-k 200] [--old-k 20] [--vocab 50257]

The circuit: W_E [V, 768], W_Q, W_K, W_V [768, 64], W_O [64, 768], W_U [768, V] float32 normal (seed 0);
QK = (W_E W_Q)(W_E W_K)ᵀ and OV = (W_E W_V)(W_O W_U) kept factored, as ``tcli.analyses.circuits``.
Each line: wall seconds and the peak RSS of the process during that run (the high-water mark is reset
before each run through /proc/self/clear_refs, Linux; elsewhere it is the process's peak so far).
The old algorithm (an [block, k, k] candidate cube per block of sources) is timed at --old-k and
checked against the new --all-triples result at that k.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tcli.analyses.skiptrigram import top_triples  # noqa: E402
from tcli.core.factored import Factored  # noqa: E402
from tcli.core.stream import block_rows, select_topk  # noqa: E402


def circuit(V: int, d: int = 768, e: int = 64, seed: int = 0) -> tuple[Factored, Factored]:
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.standard_normal(s, dtype=np.float32)  # noqa: E731
    W_E, W_Q, W_K, W_V, W_O = f(V, d), f(d, e), f(d, e), f(d, e), f(e, d)
    QK = Factored(W_E @ W_Q, (W_E @ W_K).T)
    E_V = W_E @ W_V
    del W_E
    return QK, Factored(E_V, W_O @ f(d, V))


def old_top_triples(QK, OV, n: int):
    """The previous algorithm (tcli before issue 13): an [b, n, n] cube of candidates per block of sources."""
    qk_mean, qk_std = QK.mean_and_std()
    ov_mean, ov_std = OV.mean_and_std()
    QKt = QK.T
    src = np.arange(QKt.shape[0])
    step = max(1, block_rows(max(QKt.shape[1], OV.shape[1]), 4) // 2)
    best = [np.empty(0, np.int64)] * 3 + [np.empty(0, QK.A.dtype)] * 2 + [np.empty(0)] * 2
    for start in range(0, len(src), step):
        a = src[start:start + step]
        qv, qb = select_topk(QKt.rows(a), n)
        ov_v, oc = select_topk(OV.rows(a), n)
        zq = (qv.astype(np.float64) - qk_mean) / (qk_std or 1.0)
        zo = (ov_v.astype(np.float64) - ov_mean) / (ov_std or 1.0)
        score = np.minimum(zq[:, :, None], zo[:, None, :])
        second = np.maximum(zq[:, :, None], zo[:, None, :])
        A = np.broadcast_to(a[:, None, None], score.shape).ravel()
        B = np.broadcast_to(qb[:, :, None], score.shape).ravel()
        C = np.broadcast_to(oc[:, None, :], score.shape).ravel()
        Q = np.broadcast_to(qv[:, :, None], score.shape).ravel()
        O = np.broadcast_to(ov_v[:, None, :], score.shape).ravel()
        cand = [np.concatenate([x, y]) for x, y in zip(best, (A, B, C, Q, O, score.ravel(), second.ravel()))]
        order = np.lexsort((cand[2], cand[1], cand[0], -cand[6], -cand[5]))[:n]
        best = [x[order] for x in cand]
    return best


def reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_gib() -> float:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**30


def timed(label: str, fn):
    reset_peak()
    t = time.perf_counter()
    out = fn()
    print(f"{label:<44} {time.perf_counter() - t:8.2f} s   peak RSS {peak_gib():6.3f} GiB", flush=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-k", type=int, default=200)
    p.add_argument("--old-k", type=int, default=20, help="k for the old algorithm (0: skip it)")
    p.add_argument("--vocab", type=int, default=50257)
    args = p.parse_args(argv)
    QK, OV = timed(f"build circuit V={args.vocab}, d=768, e=64", lambda: circuit(args.vocab))
    reset_peak()
    print(f"{'resident after build':<44} {'':>10}   RSS now  {peak_gib():6.3f} GiB")
    timed(f"new, distinct pairs, -k {args.k}", lambda: top_triples(QK, OV, args.k))
    timed(f"new, --all-triples, -k {args.k}", lambda: top_triples(QK, OV, args.k, all_triples=True))
    if args.old_k:
        new = timed(f"new, --all-triples, -k {args.old_k}", lambda: top_triples(QK, OV, args.old_k, all_triples=True))
        old = timed(f"old (cube), -k {args.old_k}", lambda: old_top_triples(QK, OV, args.old_k))
        same = all(np.array_equal(new[f], old[i]) for i, f in enumerate("ABC"))
        print(f"old and new --all-triples at -k {args.old_k}: {'identical' if same else 'DIFFERENT'} triples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
