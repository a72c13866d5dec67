"""GPU benchmark of the streamed engine (``--device cuda``), as ratios to the device's float32 GEMM bound.

    python bench/gpu_bench.py [--device cuda] [--quick] [--markdown bench/RESULTS_gpu.md]

Measured in one run, on the device named: the float32 GEMM throughput of torch in full precision
(TF32 off, as tcli runs it) on the analyses' shapes, best of 5 after warm-up; the streamed engine in
process (bigram --all -k 10 and every head's OV circuit --all -k 5 on the GPT-2-small-shaped
checkpoint; bigram on the Llama-shaped one): GEMM + top-k + copying the selections back, without
writing text; whole processes through the CLI (`-o` a file: loading, the engine and writing the rows
included), each checked on a sample of rows against a float64 numpy computation.
"bound" = 2·m·n·r / peak: the time of the GEMMs alone at the measured peak; "× bound" = time / bound.
``--device torch:cpu --quick`` runs the same script on torch's CPU device on small shapes (a dry run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def gemm_peak(torch, device: str, m: int, r: int, n: int, repeats: int = 5) -> float:
    """Best float32 GFLOP/s of [m, r] @ [r, n] on the device (full precision)."""
    a = torch.randn(m, r, device=device)
    b = torch.randn(r, n, device=device)
    out = torch.empty(m, n, device=device)
    best = float("inf")
    for i in range(repeats + 2):
        sync(torch, device)
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        sync(torch, device)
        if i >= 2:
            best = min(best, time.perf_counter() - t)
    del a, b, out
    return 2 * m * r * n / best / 1e9


def sync(torch, device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def engine_time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def cli(args: list[str], out: Path) -> tuple[float, int]:
    """Wall seconds and exit code of one tcli process writing to ``out``."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "tcli", *args, "-o", str(out)], env=env, cwd=ROOT)
    return time.perf_counter() - t, code


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="V = 8192 GPT-2 shapes, no Llama row")
    ap.add_argument("--markdown", help="write the results as markdown to this file")
    args = ap.parse_args()

    import synthetic
    import torch
    from run import check_rows

    from tcli.analyses import circuits
    from tcli.checkpoint import open_checkpoint
    from tcli.core import device
    from tcli.processing import process

    tdev = device.use(args.device)
    cache = ROOT / "bench" / "cache"
    gpt2 = synthetic.gpt2_small(cache, **({"vocab": 8192} if args.quick else {}))
    rows = []

    def add(what, seconds=None, bound=None, note=""):
        seconds = None if note.startswith("exit") else seconds
        ratio = f"{seconds / bound:.2f}" if seconds and bound else ""
        rows.append((what, f"{seconds:.2f}" if seconds is not None else "", f"{bound:.3f}" if bound else "", ratio, note))
        print(" | ".join(rows[-1]), flush=True)

    w = process(open_checkpoint(gpt2).weights(np.float32))
    W_E, W_U = np.ascontiguousarray(w["embed.W_E"]), np.ascontiguousarray(w["unembed.W_U"])
    V, d = W_E.shape
    peak = gemm_peak(torch, tdev, 8192, d, V)
    peak_e = gemm_peak(torch, tdev, 8192, 64, V)
    add(f"torch float32 matmul [8192,{d}]@[{d},{V}] ({peak:.0f} GFLOP/s)")
    add(f"torch float32 matmul [8192,64]@[64,{V}] ({peak_e:.0f} GFLOP/s)")

    bound = 2 * V * V * d / (peak * 1e9)
    t = engine_time(lambda: sum(len(i) for i, _, _ in device.topk_rows(W_E, W_U, 10)))
    add("engine: bigram --all -k 10 (GEMM + top-k + copy back)", t, bound)
    heads = circuits.all_heads(w.cfg)
    factors = [circuits.ov(w, l, h) for l, h in heads]
    bound_ov = len(heads) * 2 * V * V * w.cfg.d_head / (peak_e * 1e9)
    t = engine_time(lambda: [sum(len(i) for i, _, _ in device.topk_rows(F.A, F.B, 5)) for F in factors])
    add(f"engine: ov --all-heads --all -k 5 ({len(heads)} heads)", t, bound_ov)
    factors = w = None  # free them before the CLI runs

    flag = ["--device", args.device]
    out = Path("/tmp/tcli_gpu_bigram.csv")
    t, code = cli(["bigram", str(gpt2), "--all", "-k", "10", *flag], out)
    add("tcli bigram --all -k 10 (whole process, csv)", t, bound,
        check_rows(out, gpt2, "direct", 10) if code == 0 else f"exit {code}")
    out = Path("/tmp/tcli_gpu_ov.csv")
    t, code = cli(["ov", str(gpt2), "--all-heads", "--all", "-k", "5", *flag], out)
    add(f"tcli ov --all-heads --all -k 5 (whole process, {len(heads)} heads, csv)", t, bound_ov,
        check_rows(out, gpt2, "ov", 5) if code == 0 else f"exit {code}")
    if not args.quick:
        llama = synthetic.llama_shaped(cache)
        cfg = json.loads((llama / "config.json").read_text())
        Vl, dl = cfg["vocab_size"], cfg["hidden_size"]
        peak_l = gemm_peak(torch, tdev, 8192, dl, Vl)
        add(f"torch float32 matmul [8192,{dl}]@[{dl},{Vl}] ({peak_l:.0f} GFLOP/s)")
        out = Path("/tmp/tcli_gpu_llama.csv")
        t, code = cli(["bigram", str(llama), "--all", "-k", "10", *flag], out)
        add("tcli bigram --all -k 10, Llama-shaped bf16 V=128256 d=2048 (whole process)", t,
            2 * Vl * Vl * dl / (peak_l * 1e9), check_rows(out, llama, "direct", 10) if code == 0 else f"exit {code}")

    name = torch.cuda.get_device_name(0) if tdev and tdev.startswith("cuda") else f"torch {tdev}"
    head = (f"Run {time.strftime('%Y-%m-%d %H:%M')} on {name}, torch {torch.__version__}: "
            f"`python bench/gpu_bench.py --device {args.device}{' --quick' if args.quick else ''}`\n\n"
            "| what | seconds | GEMM bound s | × bound | check |\n|---|---|---|---|---|\n")
    text = head + "".join("| " + " | ".join(r) + " |\n" for r in rows)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)


if __name__ == "__main__":
    main()
