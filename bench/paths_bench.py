"""Path expansion benchmark (issue 16): each command one process timed whole by /usr/bin/time, in pairs
measured alternately (A B A B …) on the GPT-2-small-shaped synthetic checkpoint (V = 50257, d = 768, e = 64).

    python bench/paths_bench.py [--runs 3]

Pairs: ``ov 1.0 --via 0.0 --all -k 5`` against ``ov 1.0 --all -k 5`` (the virtual circuit has the same inner
size, d_head, so it should cost the same), and ``ov 1.0 --diagonal --all`` against ``ov 1.0 --all -k 1``
(the diagonal needs the whole row for its rank: one comparison pass instead of a selection).
Prints the median wall time and peak RSS of each command and the median of the pairwise ratios.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import environment, measure  # noqa: E402
from synthetic import CACHE, gpt2_small  # noqa: E402

PAIRS = [("ov 1.0 --via 0.0 --all -k 5", "ov 1.0 --all -k 5"),
         ("ov 1.0 --diagonal --all", "ov 1.0 --all -k 1"),
         ("qk 1.0 --key-via 0.0 --diagonal --all", "qk 1.0 --all -k 1")]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ckpt = gpt2_small(CACHE)
    env = environment(False)
    tcli = str(Path(sys.executable).with_name("tcli"))
    print(f"| command | wall s (median of {args.runs}) | peak RSS GiB | ratio to baseline (median of pairs) |")
    print("|---|---|---|---|")
    for a, b in PAIRS:
        runs = {a: [], b: []}
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.runs):
                for cmd in (a, b):
                    out = Path(tmp) / "out.tsv"
                    wall, rss, rc = measure([tcli, *cmd.split(), str(ckpt), "-o", str(out)], env)
                    assert rc == 0, cmd
                    runs[cmd].append((wall, rss))
        ratios = [x[0] / y[0] for x, y in zip(runs[a], runs[b])]
        for cmd in (a, b):
            walls, rsss = [w for w, _ in runs[cmd]], [r for _, r in runs[cmd]]
            ratio = f"{statistics.median(ratios):.2f}" if cmd == a else "baseline"
            print(f"| tcli {cmd} | {statistics.median(walls):.2f} | {max(rsss):.2f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
