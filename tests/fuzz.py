"""A seeded fuzzer for hostile checkpoints: mutate a good checkpoint's safetensors header, config.json,
shard index, tokenizer.json and an --arch YAML, run a command on it in-process, and classify the outcome.

    python tests/fuzz.py --cases 2000 --seed 1      # the long profile, on demand
    tests/test_fuzz.py                               # the short one, in CI, under a memory cap

Every case must end with exit 0, or exit 2 and exactly one ``tcli: error:`` line on stderr; never a
traceback, an internal error (exit 1) or anything written outside the case's folder.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

VALUES = [None, True, False, "false", "x", "", -1, 0, 1, 3, 2**31, 2**62, 1e308, -1e-9, 0.5, [], {}, [1, 2],
          {"a": 1}, "nan", "1e-5"]
RAW_VALUES = ["NaN", "Infinity", "-Infinity", "9" * 5000, "[" * 3000 + "]" * 3000, "1e400"]
COMMANDS = [["info"], ["bigram", "--global", "3"], ["ov", "0.0", "--all", "-k", "2"], ["qk", "1.1", "-t", "#3"],
            ["spectrum", "0.1", "-k", "2"], ["heads", "--no-behaviour"], ["lens", "--ids", "1,2,3"],
            ["decompose", "--ids", "1,2"], ["skiptrigram", "0.0", "-k", "2"], ["compose", "-k", "2"]]


def good_checkpoint(root: Path) -> Path:
    from builders import random_attn_only

    path = random_attn_only(root / "good", d_vocab=23, n_ctx=8)
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(23)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    return path


def mutate_config(rng, d: Path):
    cfg = json.loads((d / "config.json").read_text())
    key = rng.choice(list(cfg) + ["eps", "rotary_base", "tied_embeddings", "n_kv_heads", "sliding_window"])
    if rng.random() < 0.25:
        text = json.dumps(cfg)
        raw = rng.choice(RAW_VALUES)
        cfg[key] = "@@RAW@@"
        (d / "config.json").write_text(json.dumps(cfg).replace('"@@RAW@@"', raw) if key in text or True else text)
        return f"config {key}={raw[:12]}"
    cfg[key] = rng.choice(VALUES)
    (d / "config.json").write_text(json.dumps(cfg))
    return f"config {key}={cfg[key]!r}"[:60]


def mutate_header(rng, d: Path):
    f = d / "model.safetensors"
    data = bytearray(f.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    kind = rng.choice(["flip", "truncate", "length", "json"])
    if kind == "flip":
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(8, 8 + n)] = rng.randrange(256)
    elif kind == "truncate":
        data = data[:rng.randrange(0, len(data))]
    elif kind == "length":
        data[:8] = struct.pack("<Q", rng.choice([0, 1, n - 1, n + 1, len(data), 2**40, 2**64 - 1]))
    else:
        header = json.loads(data[8:8 + n])
        name = rng.choice([k for k in header if k != "__metadata__"])
        field = rng.choice(["dtype", "shape", "data_offsets"])
        header[name][field] = rng.choice(VALUES + ["I32", "F16", "BF16", "BOOL", [2**40], [-1, 3], [0, 2**40]])
        blob = json.dumps(header).encode()
        data = bytearray(struct.pack("<Q", len(blob)) + blob + data[8 + n:])
    f.write_bytes(bytes(data))
    return f"header {kind}"


def mutate_index(rng, d: Path):
    from safetensors import safe_open

    with safe_open(str(d / "model.safetensors"), "np") as fh:
        names = list(fh.keys())
    target = rng.choice(["model.safetensors", "../outside.safetensors", "/etc/passwd", "a/../../x", "",
                         "model.safetensors\x00", "missing.safetensors", 3, None, ["x"]])
    wm = {n: ("model.safetensors" if rng.random() < 0.7 else target) for n in names}
    index = rng.choice([{"weight_map": wm}, {"weight_map": list(wm)}, {"weight_map": {}}, [], {"x": 1}])
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    return f"index {str(target)[:20]}"


def mutate_tokenizer(rng, d: Path):
    f = d / "tokenizer.json"
    spec = json.loads(f.read_text())
    kind = rng.choice(["truncate", "field", "truncation", "padding"])
    if kind == "truncate":
        text = f.read_text()
        f.write_text(text[:rng.randrange(len(text))])
    elif kind == "field":
        spec[rng.choice(list(spec))] = rng.choice(VALUES)
        f.write_text(json.dumps(spec))
    elif kind == "truncation":
        spec["truncation"] = {"direction": "Right", "max_length": rng.choice([0, 1, 2]), "strategy": "LongestFirst",
                              "stride": rng.choice([0, 5])}
        f.write_text(json.dumps(spec))
    else:
        spec["padding"] = {"strategy": {"Fixed": rng.choice([0, 1, 64])}, "direction": "Right", "pad_to_multiple_of":
                           None, "pad_id": rng.choice([0, 10**6]), "pad_type_id": 0, "pad_token": "t0"}
        f.write_text(json.dumps(spec))
    return f"tokenizer {kind}"


def mutate_arch(rng, d: Path):
    import yaml

    base = yaml.safe_load((HERE.parent / "tcli" / "checkpoint" / "families" / "tcli.yaml").read_text())
    key = rng.choice(list(base))
    kind = rng.choice(["value", "config", "tensors", "text"])
    if kind == "value":
        base[key] = rng.choice(VALUES)
    elif kind == "config" and isinstance(base.get("config"), dict) and base["config"]:
        k = rng.choice(list(base["config"]))
        base["config"][k] = rng.choice(VALUES + [{"default": "n_heads ** 99"}, {"default": "__import__('os')"},
                                                 {"default": "d_model * 10**12"}, {"keys": 3}])
    elif kind == "tensors":
        base["tensors"] = rng.choice(VALUES + [{"embed.W_E": {"from": "../x"}}, {"embed.W_E": {"rearrange": "a b ->"}}])
    text = yaml.safe_dump(base) if kind != "text" else "tensors: {a: [unclosed"
    (d / "arch.yaml").write_text(text)
    return f"arch {kind}"


MUTATORS = [mutate_config, mutate_header, mutate_index, mutate_tokenizer, mutate_arch]


def run(cases: int, seed: int, root: Path) -> dict:
    from helpers import invoke

    rng = random.Random(seed)
    good = good_checkpoint(root)
    (root / "outside.safetensors").write_bytes(b"SECRET-BYTES-0123456789")
    before = sorted(p.name for p in root.iterdir())
    counts, bad = collections.Counter(), []
    for i in range(cases):
        case = root / f"c{i}"
        shutil.copytree(good, case)
        mutator = MUTATORS[i % len(MUTATORS)]
        what = mutator(rng, case)
        cmd = rng.choice(COMMANDS)
        extra = ["--arch", str(case / "arch.yaml")] if mutator is mutate_arch else []
        result = invoke(cmd[0], case, *cmd[1:], *extra, "--csv", ok=False)
        err = result.stderr
        lines = err.strip().splitlines()
        counts[(mutator.__name__, result.exit_code)] += 1
        ok = (result.exit_code == 0 or (result.exit_code == 2 and len(lines) == 1
                                        and lines[0].startswith("tcli: error:")))
        if not ok or "Traceback" in err or "SECRET" in err or "SECRET" in result.stdout:
            bad.append({"case": i, "mutation": what, "command": " ".join(cmd), "exit": result.exit_code,
                        "stderr": err[-400:]})
        shutil.rmtree(case)
    after = sorted(p.name for p in root.iterdir())
    return {"cases": cases, "seed": seed, "outcomes": {f"{m} exit {c}": n for (m, c), n in sorted(counts.items())},
            "bad": bad, "outside_touched": before != after + [] and sorted(set(after) - set(before) - {"good"})}


def main() -> int:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.cases, args.seed, Path(tmp))
    print(json.dumps(report, indent=1))
    return 1 if report["bad"] or report["outside_touched"] else 0


if __name__ == "__main__":
    sys.exit(main())
