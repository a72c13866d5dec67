"""Benchmark of sweeps and of --workers (issue 17), whole processes timed by /usr/bin/time:

  a sweep of N GPT-2-small-shaped checkpoints (``heads --no-diagonal``: the census with its forward passes)
  against N single runs (wall time, peak RSS), the same 4-checkpoint sweep with ``--workers 2`` (a local Dask
  cluster of 2 worker processes) against the sequential one (and their outputs compared byte for byte), and
  the Dask scheduler's overhead per task (a trivial task: all submitted at once, and one at a time).

    python bench/sweep_bench.py [--n 4]    # prints a markdown section; append it to bench/RESULTS.md

The checkpoints are 4 differently seeded synthetic GPT-2-small checkpoints (bench/synthetic.py, ~500 MB each)
generated once into bench/cache/.
"""

from __future__ import annotations

import argparse
import datetime
import filecmp
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import CACHE, TCLI, environment, measure  # noqa: E402
from synthetic import gpt2_small  # noqa: E402


def _noop(x):
    return x


def scheduler_overhead(n_tasks: int = 200) -> dict:
    """Seconds per trivial task through tcli.distributed.map_units on a 2-process LocalCluster: all submitted
    at once (throughput), and one map_units call per task (latency of a round trip), plus the cluster's start."""
    import logging

    from dask.distributed import LocalCluster

    from tcli.distributed import map_units

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR)
    start = time.perf_counter() - t0
    try:
        addr = cluster.scheduler_address
        list(map_units(_noop, range(10), scheduler=addr))  # warm
        t0 = time.perf_counter()
        assert list(map_units(_noop, range(n_tasks), scheduler=addr)) == list(range(n_tasks))
        batch = (time.perf_counter() - t0) / n_tasks
        t0 = time.perf_counter()
        for i in range(20):
            assert list(map_units(_noop, [i], scheduler=addr)) == [i]
        single = (time.perf_counter() - t0) / 20  # includes connecting a client each time, as each tcli run does
    finally:
        cluster.close()
    return {"start": start, "batch": batch, "single": single, "n": n_tasks}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    args = ap.parse_args()
    env = environment(False)
    ckpts = [gpt2_small(CACHE / f"sweep-seed{s}", seed=s) for s in range(args.n)]
    cmd = ["heads", "--no-diagonal"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for c in ckpts:  # warm the page cache: every run below reads the checkpoints from memory
            measure(TCLI + ["info", str(c), "--tensors", "-o", f"{tmp}/warm.csv"], env)
            for f in Path(c).glob("*.safetensors"):
                with open(f, "rb") as fh:
                    while fh.read(1 << 24):
                        pass
        walls, rsses = [], []
        for i, c in enumerate(ckpts):
            wall, rss, code = measure(TCLI + [cmd[0], str(c), *cmd[1:], "-o", f"{tmp}/single{i}.csv"], env)
            assert code == 0
            walls.append(wall)
            rsses.append(rss)
        rows.append(f"| {args.n} single runs `heads --no-diagonal` (sum; each) | {sum(walls):.2f} "
                    f"({', '.join(f'{w:.2f}' for w in walls)}) | {max(rsses):.2f} (max) | |")
        wall, rss, code = measure(TCLI + [cmd[0], *map(str, ckpts), *cmd[1:], "-o", f"{tmp}/sweep.csv"], env)
        assert code == 0
        rows.append(f"| sweep of the {args.n} checkpoints, sequential | {wall:.2f} | {rss:.2f} | "
                    f"{wall / sum(walls):.2f} × the single runs' time, {rss / max(rsses):.2f} × one run's memory |")
        seq = wall
        wall, rss, code = measure(TCLI + [cmd[0], *map(str, ckpts), *cmd[1:], "--workers", "2", "-o",
                                          f"{tmp}/dask.csv"], env)
        assert code == 0
        same = filecmp.cmp(f"{tmp}/sweep.csv", f"{tmp}/dask.csv", shallow=False)
        rows.append(f"| the same sweep, `--workers 2` (local cluster) | {wall:.2f} | {rss:.2f} (largest process) | "
                    f"{seq / wall:.2f}× the sequential speed; output {'identical' if same else 'DIFFERENT'} |")
        one = {**env, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        wall1, rss, code = measure(TCLI + [cmd[0], *map(str, ckpts), *cmd[1:], "-o", f"{tmp}/seq1.csv"], one)
        assert code == 0
        rows.append(f"| sweep, sequential, `OPENBLAS_NUM_THREADS=1` | {wall1:.2f} | {rss:.2f} | |")
        wall, rss, code = measure(TCLI + [cmd[0], *map(str, ckpts), *cmd[1:], "--workers", "2", "-o",
                                          f"{tmp}/dask1.csv"], one)
        assert code == 0
        same = filecmp.cmp(f"{tmp}/seq1.csv", f"{tmp}/dask1.csv", shallow=False)
        rows.append(f"| sweep, `--workers 2`, `OPENBLAS_NUM_THREADS=1` | {wall:.2f} | {rss:.2f} (largest process) | "
                    f"{wall1 / wall:.2f}× the sequential 1-thread speed, {seq / wall:.2f}× the default sequential "
                    f"speed; output {'identical' if same else 'DIFFERENT'} to the 1-thread sequential run |")
    ov = scheduler_overhead()
    rows.append(f"| Dask LocalCluster(2 processes) start | {ov['start']:.2f} | | |")
    rows.append(f"| scheduler overhead per task, {ov['n']} submitted at once | {ov['batch'] * 1e3:.1f} ms | | "
                "map_units of a no-op, gathered in order |")
    rows.append(f"| scheduler overhead per task, one at a time | {ov['single'] * 1e3:.1f} ms | | "
                "a client connected per call, as each tcli run does |")
    load = os.getloadavg()[0]
    print(f"Run {datetime.datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} cores (load average {load:.1f} at the "
          f"end): `python bench/sweep_bench.py --n {args.n}`\n")
    print("| what | wall s | peak RSS GiB | note |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
