"""Regenerate the example outputs in README.md, the per-command pages in docs/commands/, and the
table in sample_weights/README.md.

    python tools/readme_examples.py

Runs each example command on the bundled samples (table format, 150 columns, no colour) and
replaces the block between ``<!-- examples:start -->`` and ``<!-- examples:end -->``; writes one
page per command into docs/commands/ (its section of docs/commands.md plus a real example); renders
sample_weights/training.json (written by tools/train_samples.py) into sample_weights/README.md.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

EXAMPLES = [
    ("The strongest bigrams of the zero-layer model's direct path", "tcli bigram --global 8"),
    ("What an attended 'ROMEO' makes a one-layer head predict", "tcli ov 0.{copy_head} --token 'ROMEO' -k 6"),
    ("Skip-trigrams of that head", "tcli skiptrigram 0.{copy_head} -k 8"),
    ("Its OV spectrum", "tcli spectrum 0.{copy_head} --circuit ov -k 6"),
    ("The two-layer census: layer 1's induction scores and layer 0's previous-token head", "tcli heads"),
    ("K-composition in the two-layer sample", "tcli compose --kind k -k 5"),
    ("The induction mechanism token by token: the K-composition term of the induction head 1.0 through the "
     "previous-token head 0.5, its diagonal (a note gives the share of rows where it is rank 1)",
     "tcli qk sample_weights/attn-only-2l 1.0 --key-via 0.5 --diagonal --sort row_rank --limit 6"),
    ("The most token-like FFN neurons of the GPT-2-style sample (census by z-score)", "tcli neurons -k 3"),
    ("Direct logit attribution on the GPT-2-style sample", "tcli decompose --prompt 'ROMEO: But soft, what light through yonder' "),
]


def run(cmd: str) -> str:
    env = {**os.environ, "COLUMNS": "150", "NO_COLOR": "1", "TERM": "dumb"}
    argv = shlex.split(cmd)
    out = subprocess.run([sys.executable, "-m", "tcli", *argv[1:], "--format", "table"], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True)
    lines = [l.rstrip() for l in out.stdout.splitlines()]
    if len(lines) > 24:
        lines = lines[:22] + ["…"]
    return "\n".join(lines)


def copy_head() -> int:
    """The one-layer head with the highest copying score (read through tcli's own census)."""
    out = subprocess.run([sys.executable, "-m", "tcli", "heads", "sample_weights/attn-only-1l", "--no-behaviour",
                          "--json"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    rows = json.loads(out)
    return max(rows, key=lambda r: r["copying_score"])["head"]


def examples() -> str:
    h = copy_head()
    parts = []
    for title, cmd in EXAMPLES:
        cmd = cmd.format(copy_head=h)
        parts.append(f"{title}:\n\n```text\n$ {cmd}\n{run(cmd)}\n```\n")
    return "\n".join(parts)


def sample_readme() -> str:
    rep = json.loads((ROOT / "sample_weights/training.json").read_text())
    lines = [
        "# Sample weights", "",
        "Small models trained on `tinyshakespeare.txt` by `tools/train_samples.py` (torch CPU, seed "
        f"{rep['seed']}), each a self-contained checkpoint folder with the shared byte-level BPE tokenizer "
        f"(vocabulary {rep['vocab']}, {rep['corpus_tokens']:,} corpus tokens; the last 10% held out for "
        "validation). Batches of "
        f"{rep['batch_tokens']} tokens ({rep['seq_len']}-token windows), lr {rep['lr']}, {rep['optimizer']}. "
        "d_model 128; attention-only models have 8 heads of d_head 16 and no unembedding bias; `attn-only-0l` and "
        "`attn-only-1l` have no LayerNorm, so their circuits are exactly the paths they compute; `attn-only-2l` "
        "has pre-LayerNorm (folded into the weights by tcli's default processing).", "",
        "| model | data | steps | train loss | validation loss | training time (s, 2 cores) |",
        "|---|---|---|---|---|---|",
    ]
    for name, m in rep["models"].items():
        lines.append(f"| `{name}` | {m['data']} | {m['steps']} | {m['train_loss']:.3f} | {m['val_loss']:.3f} | "
                     f"{m['seconds']:.0f} |")
    two = rep["models"].get("attn-only-2l")
    if two:
        best = max((s, l, h) for l, row in enumerate(two["induction_scores"]) for h, s in enumerate(row))
        formed = best[0] >= 0.3
        onset = next((e["step"] for e in rep["log"] if e["model"] == "attn-only-2l"
                      and max(map(max, e["induction_scores"])) >= 0.3), None)
        lines += ["", f"`attn-only-2l` on repeated random sequences (64 tokens twice): loss on the second copy "
                      f"{two['repeat_loss']:.3f} nats (chance: {__import__('math').log(rep['vocab']):.2f}); "
                      f"strongest induction head {best[1]}.{best[2]} with mean attention {best[0]:.3f} to the "
                      "token after the previous occurrence" + (
                          ". How it got there: from a plain random init, on 256-token windows, no induction "
                          "head formed in 2,000 steps with or without LayerNorm (lr 1e-3 to 1e-2); starting "
                          "W_pos as sinusoids and W_U as W_E^T (both then trained freely) and training on "
                          f"64-token windows first, an induction score of 0.3 is passed by step {onset} "
                          "(the phase change is visible in `training.json`)." if formed else
                          " — no induction head formed in this run, so the two-layer claim test fails.")]
    lines += ["", "Formats: `attn-only-*` use tcli's own format (canonical TransformerLens tensor names, "
              "`config.json` with `model_type: tcli`); `gpt2-2l` is a Hugging Face GPT-2 checkpoint.",
              "The full training log (loss every 250 steps) is in `training.json`.", ""]
    return "\n".join(lines)


COMMAND_EXAMPLES = {
    "info": "tcli info",
    "bigram": "tcli bigram --token ' the' -k 8",
    "ov": "tcli ov 0.{copy_head} --token 'ROMEO' -k 8",
    "qk": "tcli qk 0.{copy_head} --token ' love' -k 8",
    "skiptrigram": "tcli skiptrigram 0.{copy_head} -k 10",
    "spectrum": "tcli spectrum 0.{copy_head} --circuit ov -k 8",
    "heads": "tcli heads",
    "compose": "tcli compose -k 8",
    "decompose": "tcli decompose --prompt 'ROMEO: But soft, what light through yonder' --target ' wind'",
    "lens": "tcli lens --prompt 'First Citizen: Before we proceed' --position -1 -k 3",
    "attention": "tcli attention --prompt 'A B C D E F A B C D E F' --head 1.{induction_head} --position -1 -k 3",
    "neurons": "tcli neurons -k 3",
}


def induction_head() -> int:
    out = subprocess.run([sys.executable, "-m", "tcli", "heads", "sample_weights/attn-only-2l", "--json"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    rows = [r for r in json.loads(out) if r["layer"] == 1]
    return max(rows, key=lambda r: r["induction_score"])["head"]


def command_pages() -> None:
    """docs/commands/NAME.md: the command's section of docs/commands.md and a real example."""
    text = (ROOT / "docs/commands.md").read_text()
    sections = {}
    for block in text.split("\n## ")[1:]:
        name, _, body = block.partition("\n")
        sections[name.strip()] = body.strip()
    heads = {"copy_head": copy_head(), "induction_head": induction_head()}
    folder = ROOT / "docs/commands"
    folder.mkdir(exist_ok=True)
    for name, body in sections.items():
        cmd = COMMAND_EXAMPLES[name].format(**heads)
        (folder / f"{name}.md").write_text(f"# tcli {name}\n\n{body}\n\nExample on the bundled sample "
                                           f"(regenerated by tools/readme_examples.py):\n\n```text\n$ {cmd}\n"
                                           f"{run(cmd)}\n```\n")


def main():
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = "<!-- examples:start -->", "<!-- examples:end -->"
    head, rest = text.split(start)
    _, tail = rest.split(end)
    readme.write_text(head + start + "\n" + examples() + end + tail)
    (ROOT / "sample_weights/README.md").write_text(sample_readme())
    command_pages()


if __name__ == "__main__":
    main()
