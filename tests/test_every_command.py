"""Every command on every bundled sample and every family of the tests either prints a table (exit 0, at
least one row) or says in one line why the analysis does not apply (exit 2): never an empty table with exit
0, never an internal error."""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import FAMILIES
from helpers import invoke

SAMPLES = Path(__file__).resolve().parents[1] / "sample_weights"
TARGETS = [f"sample:{p.name}" for p in sorted(SAMPLES.iterdir()) if p.is_dir()] + [f"family:{f}" for f in FAMILIES]
COMMANDS = [("info",), ("info", "--tensors"), ("bigram",), ("bigram", "--all", "-k", "1"), ("ov", "--all-heads"),
            ("qk", "--all-heads", "--global", "5"), ("skiptrigram", "--all-heads", "-k", "2"), ("spectrum", "-k", "3"),
            ("spectrum", "-c", "direct", "-k", "3"), ("heads", "--no-behaviour"), ("compose", "-k", "3"),
            ("decompose", "--ids", "1,2,3"), ("lens", "--ids", "1,2,3", "-k", "1"),
            ("attention", "--ids", "1,2,3", "-k", "1"), ("neurons", "-k", "2")]


@pytest.fixture(scope="module")
def paths(hf_dirs):
    out = {f"sample:{p.name}": p for p in SAMPLES.iterdir() if p.is_dir()}
    out.update({f"family:{f}": hf_dirs[f][1] for f in FAMILIES})
    return out


@pytest.mark.parametrize("target", TARGETS)
def test_every_command_prints_a_table_or_says_why_not(paths, target, tmp_path):
    outcomes = []
    for cmd in COMMANDS:
        result = invoke(cmd[0], paths[target], *cmd[1:], "--csv", ok=False)
        lines = result.stderr.strip().splitlines()
        if result.exit_code == 0:
            rows = result.stdout.strip().splitlines()
            assert len(rows) >= 2, (cmd, result.stdout, result.stderr)  # a header and at least one row
        else:
            assert result.exit_code == 2, (cmd, result.exit_code, result.stderr)
            errors = [line for line in lines if line.startswith("tcli: error:")]
            assert len(errors) == 1 and "internal" not in errors[0], (cmd, result.stderr)
            assert result.stdout == ""
        outcomes.append((" ".join(cmd), result.exit_code))
    report = tmp_path / "r.html"
    result = invoke("report", paths[target], "--no-behaviour", "-o", report, ok=False)
    assert result.exit_code in (0, 2) and "internal" not in result.stderr, result.stderr
    if result.exit_code == 0:
        assert report.read_text().startswith("<!DOCTYPE html>") or "<html" in report.read_text()[:200]
    refused = [c for c, code in outcomes if code]
    print(f"{target}: {len(outcomes) - len(refused)} tables, refused: {', '.join(refused) or 'none'}")
