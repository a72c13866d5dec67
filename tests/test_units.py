"""--workers / --scheduler on one checkpoint: the heads of ov/qk and the (side, layer) units of neurons --all
run as tasks on a Dask cluster (a LocalCluster of 2 worker processes) and give the bytes of the single-process
run, rows in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("distributed")

SAMPLES = Path(__file__).resolve().parents[1] / "sample_weights"


def tcli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tcli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args", [
    ("ov", SAMPLES / "attn-only-1l", "--all-heads", "--all", "-k", "2"),
    ("qk", SAMPLES / "attn-only-2l", "--all-heads", "--key-via", "0.5", "--diagonal"),
    ("ov", SAMPLES / "attn-only-2l", "1.0", "1.3", "--global", "7", "--minus", SAMPLES / "gpt2-2l"),
    ("neurons", SAMPLES / "gpt2-2l", "--all", "--side", "out", "--side", "in", "-k", "2"),
])
def test_units_on_the_cluster_equal_the_single_process_run(scheduler, tmp_path, args):
    single, spread = tmp_path / "single.tsv", tmp_path / "spread.tsv"
    one = tcli(*args, "-o", single)
    many = tcli(*args, "--scheduler", scheduler, "-o", spread)
    assert one.returncode == 0 and many.returncode == 0, many.stderr
    assert spread.read_bytes() == single.read_bytes() and len(single.read_bytes().splitlines()) > 10
    assert many.stderr == one.stderr  # the same notes, once each
