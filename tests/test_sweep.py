"""Sweeps (several checkpoints, one table) and census differences (--minus), on a real training run of a tiny
model laid out as a Hugging Face cache with stepN revisions (tests/sweep_data.py); no network."""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest

from helpers import invoke, parse
from sweep_data import trained_run
from test_errors import assert_one_line_error
from test_every_command import COMMANDS

SAMPLES = Path(__file__).resolve().parents[1] / "sample_weights"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def cache(run):
    return ["--cache-dir", run.cache]


def csv_rows(*args):
    return parse(invoke(*args, "--csv").stdout, "csv")


def read(path) -> str:
    with open(path, encoding="utf-8", newline="") as fh:  # a token may be a lone \r
        return fh.read()


def split(rows, prefix=("checkpoint", "step")):
    return [{k: v for k, v in r.items() if k not in prefix} for r in rows]


def test_training_run_learned(run):
    assert run.losses[200] < run.losses[50] - 0.5  # a real (if short) training run: the loss fell
    assert len({p.name for p in run.dirs.values()}) == len(run.steps)  # distinct snapshots


@pytest.mark.parametrize("cmd", [("heads",), ("compose",), ("bigram", "--global", "5"), ("ov", "1.2", "-t", "#25", "-k", "3"),
                                 ("qk", "--all-heads", "--global", "4"), ("spectrum", "-k", "3", "--all-heads"),
                                 ("skiptrigram", "0.1", "-k", "3"), ("info",), ("lens", "--ids", "1,2,3", "-k", "2"),
                                 ("attention", "--ids", "5,6,7", "-k", "1"), ("decompose", "--ids", "5,6,7")])
def test_sweep_rows_equal_per_checkpoint_runs(run, cmd):
    cols, rows = csv_rows(cmd[0], run.repo, *cmd[1:], "--revision", ",".join(f"step{s}" for s in run.steps), *cache(run))
    assert cols[:2] == ["checkpoint", "step"]
    expected, labels, steps = [], [], []
    for s in run.steps:
        single_cols, single = csv_rows(cmd[0], f"{run.repo}@step{s}", *cmd[1:], *cache(run))
        assert cols[2:] == single_cols
        expected += single
        labels += [f"{run.repo}@step{s}"] * len(single)
        steps += [str(s)] * len(single)
    assert split(rows) == expected
    assert [r["checkpoint"] for r in rows] == labels and [r["step"] for r in rows] == steps


def test_every_command_accepts_several_checkpoints(run, tmp_path):
    """Each command of test_every_command on two checkpoints given as paths (an attention-only model and a
    GPT-2 with MLPs): the sweep's rows are the two single runs' rows, or, where one of them refuses, the
    sweep refuses in one line and writes nothing."""
    a, b = str(run.dirs[200]), str(SAMPLES / "gpt2-2l")
    for i, cmd in enumerate(COMMANDS):
        out = tmp_path / f"sweep{i}.csv"
        sweep = invoke(cmd[0], a, b, *cmd[1:], "-o", out, ok=False)
        singles = [invoke(cmd[0], p, *cmd[1:], "--csv", ok=False) for p in (a, b)]
        if all(s.exit_code == 0 for s in singles):
            assert sweep.exit_code == 0, (cmd, sweep.stderr)
            cols, rows = parse(read(out), "csv")
            assert cols[0] == "checkpoint" and "step" not in cols
            expected = [r for s in singles for r in parse(s.stdout, "csv")[1]]
            assert split(rows) == expected, cmd
            assert [r["checkpoint"] for r in rows] == [p for p, s in zip((a, b), singles)
                                                       for _ in parse(s.stdout, "csv")[1]]
        else:
            assert_one_line_error(sweep)
            assert not out.exists() and not list(tmp_path.glob(f".sweep{i}*")), cmd
            first_error = next(s for s in singles if s.exit_code).stderr.strip()
            assert sweep.stderr.strip() == first_error, cmd


def test_argument_order_step_column_and_paths(run):
    revs = ["step200", "step0", "step100"]
    _, rows = csv_rows("heads", run.repo, "--revision", ",".join(revs), "--no-behaviour", *cache(run))
    assert [r["step"] for r in rows] == [s[4:] for s in revs for _ in range(8)]
    # ids pinned one by one, mixed with a plain path: step where the revision says it, empty elsewhere
    cols, rows = csv_rows("heads", f"{run.repo}@step100", str(run.dirs[0]), f"{run.repo}@main", "--no-behaviour",
                          *cache(run))
    assert cols[:2] == ["checkpoint", "step"]
    assert [(r["checkpoint"], r["step"]) for r in rows[::8]] == [(f"{run.repo}@step100", "100"), (str(run.dirs[0]), ""),
                                                                 (f"{run.repo}@main", "")]
    # --revision (one) for several ids: each gets it
    _, rows = csv_rows("info", run.repo, run.repo, "--revision", "step50", *cache(run))
    assert [r["step"] for r in rows] == ["50", "50"] and [r["checkpoint"] for r in rows] == [run.repo] * 2


def test_single_checkpoint_has_no_checkpoint_column(run):
    cols, _ = csv_rows("heads", run.dirs[100], "--no-behaviour")
    assert cols[0] == "layer"
    cols, _ = csv_rows("heads", run.repo, "--revision", "step100", "--no-behaviour", *cache(run))
    assert cols[0] == "layer"
    cols, rows = csv_rows("heads", run.repo, "--revision", "step100,", "--no-behaviour", *cache(run))  # a list of one
    assert cols[:2] == ["checkpoint", "step"] and {r["step"] for r in rows} == {"100"}


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "jsonl"])
def test_machine_formats(run, fmt, tmp_path):
    args = ("compose", run.repo, "--revision", "step0,step200", "-k", "5", *cache(run))
    text = invoke(*args, "--format", fmt).stdout
    if fmt == "json":
        data = json.loads(text)
        assert isinstance(data, list) and len(data) == 10 and data[0]["step"] == 0 and data[5]["step"] == 200
        assert list(data[0])[:2] == ["checkpoint", "step"]
    cols, rows = parse(text, fmt)
    ref_cols, ref = parse(invoke(*args, "--csv").stdout, "csv")
    assert cols == ref_cols and [{k: str(v) for k, v in r.items()} for r in rows] == ref
    out = tmp_path / f"sweep.{fmt}"
    invoke(*args, "-o", out)
    assert read(out) == text


def test_json_of_an_empty_sweep_is_an_empty_array(run):
    text = invoke("heads", run.repo, "--revision", "step0,step50", "--limit", "0", "--json", "--no-behaviour",
                  *cache(run)).stdout
    assert json.loads(text) == [] and text == "[]\n"
    assert invoke("heads", run.repo, "--revision", "step0,step50", "--limit", "0", "--csv", "--no-behaviour",
                  *cache(run)).stdout.startswith("checkpoint,step,layer")


def test_columns_sort_limit_within_each_checkpoint(run):
    cols, rows = csv_rows("heads", run.repo, "--revision", "step0,step200", "--columns", "step,head,layer,copying_score",
                          "--sort", "-copying_score", "--limit", "3", "--no-behaviour", *cache(run))
    assert cols == ["step", "head", "layer", "copying_score"]
    assert [r["step"] for r in rows] == ["0"] * 3 + ["200"] * 3
    for block in (rows[:3], rows[3:]):
        scores = [float(r["copying_score"]) for r in block]
        assert scores == sorted(scores, reverse=True)
    _, single = csv_rows("heads", f"{run.repo}@step200", "--sort", "-copying_score", "--limit", "3", "--no-behaviour",
                         *cache(run))
    assert [(r["layer"], r["head"]) for r in rows[3:]] == [(r["layer"], r["head"]) for r in single]
    assert_one_line_error(invoke("heads", run.dirs[0], run.dirs[50], "--columns", "step,layer", ok=False), "step")


def test_one_checkpoint_in_memory_at_a_time_and_streamed(run, monkeypatch):
    """When a checkpoint's weights are processed, no earlier checkpoint's weights are alive, and the earlier
    checkpoints' rows are already on stdout."""
    import sys

    import tcli.processing as processing

    real, alive, seen = processing.process, [], []

    def spy(weights, *a, **kw):
        gc.collect()
        seen.append((sum(r() is not None for r in alive), sys.stdout.buffer.getvalue().count(b"\n")))
        out = real(weights, *a, **kw)
        alive.append(weakref.ref(out))
        return out

    monkeypatch.setattr(processing, "process", spy)
    text = invoke("compose", run.repo, "--revision", "step0,step50,step100", "-k", "2", "--nl", *cache(run)).stdout
    assert text.count("\n") == 6
    assert [n for n, _ in seen] == [0, 0, 0]
    assert [lines for _, lines in seen] == [0, 2, 4]


def test_table_mode_trends_and_concatenation(run):
    text = invoke("heads", run.repo, "--revision", "step0,step50,step100,step200", "-f", "table", "--columns",
                  "layer,head,copying_score,induction_score", *cache(run)).stdout
    flat = " ".join(text.split())
    assert "trends over 4 checkpoints" in flat and "1 = tiny/shakespeare-2l@step0" in flat
    body = [line for line in text.splitlines() if "│" in line]
    assert len(body) == 8  # one row per head, not per (checkpoint, head)
    spark = body[0].split("│")[2].strip().split(" ")[0]
    assert len(spark) == 4 and set(spark) <= set("▁▂▃▄▅▆▇█")
    _, rows = csv_rows("heads", run.repo, "--revision", "step0,step50,step100,step200", "--columns",
                       "layer,head,copying_score", *cache(run))
    last = float(rows[-8]["copying_score"])  # the last checkpoint's value of head 0.0
    assert f"{last:.4g}" in body[0]
    text = invoke("bigram", SAMPLES / "attn-only-0l", SAMPLES / "attn-only-1l", "-f", "table", "--global", "2").stdout
    body = [line for line in text.splitlines() if "│" in line]
    assert [line.split("│")[0].strip() for line in body] == ["attn-only-0l"] * 2 + ["attn-only-1l"] * 2
    assert "2 checkpoints" in " ".join(text.split()) and f"attn-only-0l={SAMPLES / 'attn-only-0l'}" in "".join(text.split())
    info = invoke("info", run.dirs[0], SAMPLES / "gpt2-2l", "-f", "table").stdout
    assert "n_layers" in info and "gpt2" in info  # side by side


def test_plot_trends(run, tmp_path):
    png = tmp_path / "trend.png"
    invoke("heads", run.repo, "--revision", "step0,step50,step200", "--plot", png, "--csv", "--no-behaviour",
           *cache(run))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = tmp_path / "compose.svg"
    invoke("compose", run.dirs[0], run.dirs[200], "--plot", svg, "--csv")
    assert "<svg" in svg.read_text()[:500]
    assert_one_line_error(invoke("heads", run.dirs[0], run.dirs[50], "--plot", tmp_path / "x.gif", ok=False), ".png")


# ---------------------------------------------------------------- --minus on census tables
def _num(v):
    return None if v in ("", None) else float(v)


@pytest.mark.parametrize("cmd,keys", [(("heads",), ("layer", "head")),
                                      (("compose", "-k", "7"), ("kind", "layer1", "head1", "layer2", "head2"))])
def test_census_minus_equals_the_difference_of_two_runs(run, cmd, keys):
    a, b = f"{run.repo}@step200", f"{run.repo}@step50"
    cols, rows = csv_rows(cmd[0], a, *cmd[1:], "--minus", b, *cache(run))
    _, ra = csv_rows(cmd[0], a, *cmd[1:], *cache(run))
    _, rb = csv_rows(cmd[0], b, *cache(run))  # compose: B's full table (A's top pairs may rank lower in B)
    deltas = [c for c in cols if c.startswith("delta_")]
    assert deltas and cols[:len(cols) - len(deltas)] == list(ra[0])
    assert [{k: v for k, v in r.items() if not k.startswith("delta_")} for r in rows] == ra
    by_key = {tuple(r[k] for k in keys): r for r in rb}
    for r in rows:
        other = by_key[tuple(r[k] for k in keys)]
        for d in deltas:
            c = d[len("delta_"):]
            x, y = _num(r[c]), _num(other[c])
            assert _num(r[d]) == (None if x is None or y is None else x - y), (d, r)


def test_minus_in_a_sweep_and_on_dask_free_units(run):
    cols, rows = csv_rows("heads", run.repo, "--revision", "step50,step100", "--minus", f"{run.repo}@step50",
                          "--no-behaviour", *cache(run))
    assert cols[:2] == ["checkpoint", "step"]
    first = [float(r["delta_copying_score"]) for r in rows[:8]]
    assert first == [0.0] * 8  # step50 minus itself


def test_minus_vocabulary_and_architecture_mismatch(run, tmp_path):
    a = run.dirs[200]
    assert_one_line_error(invoke("heads", a, "--minus", run.other_vocab, ok=False), "token id 300")
    assert_one_line_error(invoke("compose", a, "--minus", run.small_vocab, ok=False), "token id 61")
    assert_one_line_error(invoke("heads", a, "--minus", SAMPLES / "attn-only-2l", ok=False), "same heads")
    out = tmp_path / "x.csv"
    assert_one_line_error(invoke("heads", a, run.dirs[0], "--minus", run.other_vocab, "-o", out, ok=False),
                          "token id 300")
    assert not out.exists()
    # a command without --minus refuses it in one line
    assert_one_line_error(invoke("info", a, "--minus", a, ok=False), "--minus")
    assert_one_line_error(invoke("spectrum", a, "--minus", a, ok=False), "--minus")


# ---------------------------------------------------------------- bad input
def test_missing_revision_writes_nothing(run, tmp_path):
    out = tmp_path / "s.csv"
    r = invoke("heads", run.repo, "--revision", "step0,step999", *cache(run), "-o", out, ok=False)
    assert_one_line_error(r, "step999")
    assert not out.exists() and not list(tmp_path.iterdir())
    assert_one_line_error(invoke("heads", run.repo, "--revision", "step0,step999", *cache(run), "--csv", ok=False),
                          "step999")  # stdout: nothing either (every checkpoint is opened before any work)


def test_revision_list_needs_model_ids(run):
    assert_one_line_error(invoke("heads", run.dirs[0], "--revision", "step0,step50", ok=False), "not a model id")
    assert_one_line_error(invoke("heads", f"{run.repo}@step0", "--revision", "step0,step50", *cache(run), ok=False),
                          "pins a revision")
    assert_one_line_error(invoke("heads", "--revision", "step0,step50", ok=False), "name one")
    assert_one_line_error(invoke("heads", run.repo, "--revision", "step0,,step50", *cache(run), ok=False), "empty")


def test_report_refuses_a_sweep(run, tmp_path):
    assert_one_line_error(invoke("report", run.dirs[0], run.dirs[50], "-o", tmp_path / "r.html", ok=False),
                          "one checkpoint")
