"""Benchmark of ``tcli neurons`` on the GPT-2-small-shaped checkpoint (issue 15), whole processes:

  every neuron of all 12 layers, ``--all -k 10``, against the matmul lower bound
  2 · (12 · 3072) · 768 · 50257 / (numpy GEMM peak measured in the same run), with peak RSS;
  the census of all 12 layers (one row per neuron's z-score, -k 10 per layer).

    python bench/neurons_bench.py          # prints a markdown table; append it to bench/RESULTS.md
"""

from __future__ import annotations

import datetime
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CACHE, MATMUL, TCLI, environment, gpt2_small, measure, python_json  # noqa: E402


def main() -> int:
    env = environment(False)
    ckpt = gpt2_small(CACHE, vocab=50257)
    V, d, m, L = 50257, 768, 3072, 12
    mm, _, _ = python_json(MATMUL, [str(V), str(d)], env)
    peak = mm["gflops"]
    bound = 2 * (L * m) * d * V / peak / 1e9
    layers = [a for l in range(L) for a in ("--layer", str(l))]
    rows = [f"| numpy matmul [4096,{d}]@[{d},{V}] | | | {peak:.0f} GFLOP/s |"]
    with tempfile.TemporaryDirectory() as tmp:
        wall, rss, code = measure(TCLI + ["neurons", str(ckpt), *layers, "--all", "-k", "10", "-o",
                                          f"{tmp}/n.csv"], env)
        n_rows = sum(1 for _ in open(f"{tmp}/n.csv")) - 1 if code == 0 else 0
        rows.append(f"| neurons --layer 0…11 --all -k 10 ({n_rows:,} rows) | {wall:.2f} | {rss:.2f} | "
                    f"bound {bound:.2f} s, ratio {wall / bound:.2f} |")
        wall, rss, code = measure(TCLI + ["neurons", str(ckpt), "-k", "10", "-o", f"{tmp}/c.csv"], env)
        rows.append(f"| neurons census, 12 layers, -k 10 | {wall:.2f} | {rss:.2f} | exit {code} |")
    print(f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores: `python bench/neurons_bench.py`\n")
    print("| what | wall s | peak RSS GiB | note |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
