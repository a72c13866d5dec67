"""tcli benchmarks: wall time and peak memory against the matmul bound and the naive peer.

    python bench/run.py [--quick] [--markdown bench/README.md]

Run on demand, never in CI. Generates synthetic checkpoints once (bench/synthetic.py, into
bench/cache/), then in one run measures:
  - the limit: numpy float32 matmul throughput on [4096, d] @ [d, V] and, for each vocab × vocab
    analysis, the lower bound 2·V²·r / peak (r = d_model for the direct path, d_head for OV);
  - the naive peer (where torch is installed): materialise the product, torch.topk;
  - tcli as a user runs it, each command a separate process timed whole, with its peak RSS;
  - scaling of ``bigram --all`` with V.
Every process runs with OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE unset unless --keep-openblas-env.
Each streamed command's output is checked on a sample of rows against a dense computation.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from synthetic import CACHE, gpt2_small, llama_8b_sparse, llama_shaped  # noqa: E402

TCLI = [sys.executable, "-m", "tcli"]


def environment(keep: bool) -> dict:
    env = dict(os.environ)
    if not keep:
        env.pop("OPENBLAS_CORETYPE", None)
        env.pop("OPENBLAS_L2_SIZE", None)
    return env


def measure(cmd: list[str], env: dict, stdout=subprocess.DEVNULL) -> tuple[float, float, int]:
    """(wall seconds, peak RSS GiB, exit code) of one process, timed whole by /usr/bin/time.

    (os.wait4's ru_maxrss is not used: Linux carries the forking parent's high-water mark into the child.)"""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        t0 = time.perf_counter()
        proc = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", tf.name, *cmd], env=env, stdout=stdout,
                              stderr=subprocess.PIPE)
        wall = time.perf_counter() - t0
        if proc.returncode:
            sys.stderr.write(proc.stderr.decode()[-2000:])
        kb = int(tf.read().strip().splitlines()[-1])
    return wall, kb / 2**20, proc.returncode


MATMUL = """
import numpy as np, time, json, sys
V, d, rows = int(sys.argv[1]), int(sys.argv[2]), 4096
rng = np.random.default_rng(0)
A = rng.standard_normal((rows, d), dtype=np.float32); B = rng.standard_normal((d, V), dtype=np.float32)
out = np.empty((rows, V), np.float32)
np.matmul(A, B, out=out)
best = 1e9
for _ in range(3):
    t = time.perf_counter(); np.matmul(A, B, out=out); best = min(best, time.perf_counter() - t)
print(json.dumps({"gflops": 2 * rows * d * V / best / 1e9}))
"""

NAIVE = """
import json, sys, time, resource
import numpy as np, torch
from safetensors.numpy import load_file
torch.set_num_threads(2)
t = load_file(sys.argv[1]); kind = sys.argv[2]
t0 = time.perf_counter()
if kind == "bigram":
    E = torch.from_numpy(t["transformer.wte.weight"]); M = E @ E.T
else:
    E = torch.from_numpy(t["transformer.wte.weight"]); d = E.shape[1]
    W = torch.from_numpy(t["transformer.h.0.attn.c_attn.weight"][:, 2 * d:2 * d + 64])
    O = torch.from_numpy(t["transformer.h.0.attn.c_proj.weight"][:64])
    M = (E @ W) @ (O @ E.T)
vals, idx = torch.topk(M, int(sys.argv[3]), dim=1)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


def python_json(code: str, args: list[str], env: dict) -> tuple[dict, float, float]:
    """Run a python snippet that prints one JSON line; (its data, wall seconds, peak RSS GiB)."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    out = tempfile.NamedTemporaryFile("w+", suffix=".out")
    wall, rss, code_ = measure([sys.executable, f.name, *args], env, stdout=out)
    out.seek(0)
    text = out.read()
    os.unlink(f.name)
    if code_:
        return {"error": f"exit {code_}"}, wall, rss
    return json.loads(text.strip().splitlines()[-1]), wall, rss


def float64_circuit(ckpt: Path, circuit: str):
    """The direct path or head 0.0's full OV circuit of ``ckpt``, processed, in float64 (factored)."""
    from tcli.analyses import circuits
    from tcli.checkpoint import open_checkpoint
    from tcli.processing import process

    w = process(open_checkpoint(ckpt).weights(np.float64))
    return circuits.direct(w) if circuit == "direct" else circuits.ov(w, 0, 0)


def check_rows(csv_path: Path, ckpt: Path, circuit: str, k: int, n_rows: int = 16) -> str:
    """Compare a sample of rows of tcli's csv with a dense float64 computation from the library."""
    F = float64_circuit(ckpt, circuit)
    rows: dict[int, list] = {}
    with open(csv_path) as fh:
        for r in csv.DictReader(fh):
            if circuit != "direct" and (r["layer"], r["head"]) != ("0", "0"):
                continue
            rows.setdefault(int(r["src_id"]), []).append((int(r.get("dst_id") or r.get("out_id")), float(r["value"])))
    rng = np.random.default_rng(0)
    sample = rng.choice(sorted(rows), size=min(n_rows, len(rows)), replace=False)
    worst = 0.0
    for src in sample:
        dense = F.rows([src])[0]
        top = np.sort(dense)[::-1][:k]
        got = np.array([v for _, v in rows[src]])
        ids = np.array([i for i, _ in rows[src]])
        worst = max(worst, np.abs(got - top).max() / np.abs(top).max(), np.abs(dense[ids] - got).max() / np.abs(top).max())
    return f"ok ({len(sample)} rows, max rel err {worst:.1e})" if worst < 1e-4 else f"MISMATCH ({worst:.1e})"


def check_global(csv_path: Path, ckpt: Path, n: int, n_rows: int = 16) -> str:
    """Check ``bigram --global N`` against dense float64 rows: every listed value is the entry it names,
    values descend, there are ``n`` of them, and no entry of the listed rows or of a random sample of rows beats the N-th value
    without being listed."""
    F = float64_circuit(ckpt, "direct")
    with open(csv_path) as fh:
        got = [(int(r["src_id"]), int(r["dst_id"]), float(r["value"])) for r in csv.DictReader(fh)]
    vals = np.array([v for _, _, v in got])
    scale, last = np.abs(vals).max(), vals[-1]
    listed = {(s, d) for s, d, _ in got}
    rows = sorted({s for s, _, _ in got} | set(np.random.default_rng(0).choice(F.shape[0], n_rows, replace=False).tolist()))
    worst = 0.0
    if (np.diff(vals) > 1e-6 * scale).any() or len(got) != n:
        return f"MISMATCH ({len(got)} entries, descending: {not (np.diff(vals) > 1e-6 * scale).any()})"
    missed = 0
    for src in rows:
        dense = F.rows([src])[0]
        for s, d, v in got:
            if s == src:
                worst = max(worst, abs(dense[d] - v) / scale)
        above = np.nonzero(dense > last + 1e-5 * scale)[0]
        missed += sum((src, int(c)) not in listed for c in above)
    ok = worst < 1e-4 and missed == 0
    return f"ok ({len(rows)} rows, max rel err {worst:.1e})" if ok else f"MISMATCH (err {worst:.1e}, {missed} missed)"


def main():
    ap = argparse.ArgumentParser(description="tcli benchmarks")
    ap.add_argument("--quick", action="store_true", help="small sizes only (under two minutes)")
    ap.add_argument("--keep-openblas-env", action="store_true", help="keep OPENBLAS_CORETYPE/L2_SIZE as set")
    ap.add_argument("--markdown", help="also write the results as markdown to this file")
    ap.add_argument("--llama", action="store_true", help="also bigram --all -k 10 on the Llama-shaped bf16 "
                    "checkpoint (V = 128256, d = 2048; about 7 more minutes)")
    args = ap.parse_args()
    env = environment(args.keep_openblas_env)
    results: list[dict] = []
    quick = args.quick

    V = 8192 if quick else 50257
    ckpt = gpt2_small(CACHE, vocab=V)
    d, e = 768, 64
    mm, _, _ = python_json(MATMUL, [str(V), str(d)], env)
    mm64, _, _ = python_json(MATMUL, [str(V), str(e)], env)
    peak, peak64 = mm["gflops"], mm64["gflops"]
    bound_direct = 2 * V * V * d / peak / 1e9
    bound_ov = 2 * V * V * e / peak64 / 1e9
    results.append({"what": f"numpy matmul [4096,{d}]@[{d},{V}]", "gflops": peak})
    results.append({"what": f"numpy matmul [4096,{e}]@[{e},{V}]", "gflops": peak64})

    naive = {}
    try:
        import torch  # noqa: F401

        for kind, k in (("bigram", 10), ("ov", 5)):
            if V > 50257 and kind == "bigram":
                continue
            data, wall, rss = python_json(NAIVE, [str(ckpt / "model.safetensors"), kind, str(k)], env)
            naive[kind] = (data.get("seconds", float("nan")), rss)
            results.append({"what": f"naive peer: torch.topk of dense {kind}", "wall": data.get("seconds"),
                            "rss": rss, "note": data.get("error", "")})
    except ImportError:
        results.append({"what": "naive peer", "note": "torch not installed"})

    tmp = Path(tempfile.mkdtemp())
    cmds = [
        ("bigram --all -k 10", ["bigram", str(ckpt), "--all", "-k", "10", "-o", str(tmp / "bigram.csv")], bound_direct,
         "bigram", ("direct", tmp / "bigram.csv", 10)),
        ("bigram --global 100", ["bigram", str(ckpt), "--global", "100", "-o", str(tmp / "g.csv")], bound_direct, None,
         ("global", tmp / "g.csv", 100)),
        ("ov --all-heads --all -k 5 (layer 0: 12 heads)",
         ["ov", str(ckpt), *[f"0.{h}" for h in range(12)], "--all", "-k", "5", "-o", str(tmp / "ov.csv")],
         12 * bound_ov, "ov", ("ov", tmp / "ov.csv", 5)),
        ("spectrum --circuit ov --all-heads (144 full OV circuits)", ["spectrum", str(ckpt), "--circuit", "ov", "--all-heads", "-o",
                                                 str(tmp / "s.csv")], None, None, None),
        ("heads (census + behaviour)", ["heads", str(ckpt), "-o", str(tmp / "h.csv")], None, None, None),
        ("compose (all q/k/v pairs)", ["compose", str(ckpt), "-o", str(tmp / "c.csv")], None, None, None),
        ("decompose, 256-token prompt", ["decompose", str(ckpt), "--ids", ",".join(str(i % V) for i in range(256)),
                                          "-o", str(tmp / "d.csv")], None, None, None),
        ("info, 8B-shaped sharded bf16", ["info", str(llama_8b_sparse(CACHE)), "--json"], None, None, None),
        ("--help", ["--help"], None, None, None),
    ]
    for name, argv, bound, peer, check in cmds:
        wall, rss, code = measure(TCLI + argv, env)
        row = {"what": f"tcli {name}", "wall": wall, "rss": rss, "note": "" if code == 0 else f"exit {code}"}
        if bound:
            row["bound_fraction"] = bound / wall
        if peer and peer in naive:
            per = 12 if peer == "ov" else 1
            row["speedup"] = naive[peer][0] * per / wall
            row["memory_ratio"] = naive[peer][1] / rss
        if check and code == 0:
            row["note"] = (check_global(check[1], ckpt, check[2]) if check[0] == "global"
                           else check_rows(check[1], ckpt, check[0], check[2]))
        results.append(row)
    help_base, _, _ = measure([sys.executable, "-c", "import typer, rich"], env)
    results.append({"what": "python -c 'import typer, rich' (baseline for --help)", "wall": help_base})

    if not quick:
        for v in (8192, 16384, 32768, 50257):
            c = gpt2_small(CACHE, vocab=v)
            wall, rss, _ = measure(TCLI + ["bigram", str(c), "--all", "-k", "10", "-o", str(tmp / "x.csv")], env)
            b = 2 * v * v * d / peak / 1e9
            results.append({"what": f"scaling: bigram --all -k 10, V={v}", "wall": wall, "rss": rss, "bound_fraction": b / wall})

    if args.llama:  # bound at the d = 768 peak: a [4096, 2048] @ [2048, 128256] probe alone would take ~10 s
        c, v, dl = llama_shaped(CACHE), 128256, 2048
        wall, rss, code = measure(TCLI + ["bigram", str(c), "--all", "-k", "10", "-o", str(tmp / "l.csv")], env)
        results.append({"what": f"Llama-shaped bf16: bigram --all -k 10, V={v}, d={dl}", "wall": wall, "rss": rss,
                        "bound_fraction": 2 * v * v * dl / peak / 1e9 / wall,
                        "note": "" if code == 0 else f"exit {code}"})

    print_table(results)
    if args.markdown:
        write_markdown(Path(args.markdown), results, args)


def fmt(row, key, spec):
    v = row.get(key)
    return format(v, spec) if isinstance(v, (int, float)) else ""


def print_table(results):
    from rich.console import Console
    from rich.table import Table

    t = Table(title="tcli benchmark", width=170)
    for c in ("what", "wall s", "peak RSS GiB", "GFLOP/s", "of bound", "× faster than peer", "× less memory", "note"):
        t.add_column(c, justify="left" if c in ("what", "note") else "right")
    for r in results:
        t.add_row(r["what"], fmt(r, "wall", ".2f"), fmt(r, "rss", ".2f"), fmt(r, "gflops", ".0f"),
                  fmt(r, "bound_fraction", ".2f"), fmt(r, "speedup", ".1f"), fmt(r, "memory_ratio", ".1f"), r.get("note", ""))
    Console(width=170).print(t)


def write_markdown(path: Path, results, args):
    lines = ["| what | wall s | peak RSS GiB | GFLOP/s | fraction of bound | × faster than peer | × less memory | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| " + " | ".join([r["what"], fmt(r, "wall", ".2f"), fmt(r, "rss", ".2f"), fmt(r, "gflops", ".0f"),
                                         fmt(r, "bound_fraction", ".2f"), fmt(r, "speedup", ".1f"),
                                         fmt(r, "memory_ratio", ".1f"), r.get("note", "")]) + " |")
    cmd = "python bench/run.py" + (" --quick" if args.quick else "") + (" --llama" if args.llama else "") + (
        " --keep-openblas-env" if args.keep_openblas_env else "")
    head = (f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {platform.machine()}, {os.cpu_count()} cores, "
            f"numpy {np.__version__}: `{cmd}`\n\n")
    path.write_text(head + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
