"""The fuzz suite, short profile: 250 seeded mutations of headers, configs, indexes, tokenizers and --arch
files (tests/fuzz.py), run in a child process whose address space is capped (as ``ulimit -v``), so that a
case that tries to allocate gigabytes fails the suite instead of the machine. Every case ends with exit 0,
or exit 2 and one ``tcli: error:`` line; no traceback, no internal error, no file outside its folder.
The long profile: ``python tests/fuzz.py --cases 5000 --seed N``."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_AS")

CAP = 3 << 30  # bytes of address space for the whole fuzzing process (numpy, tokenizers and all)
CASES = 250


def capped():
    resource.setrlimit(resource.RLIMIT_AS, (CAP, CAP))


@pytest.mark.parametrize("seed", [0, 1])
def test_hostile_inputs_end_cleanly_under_a_memory_cap(seed):
    fuzz = Path(__file__).resolve().parent / "fuzz.py"
    env_threads = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # thread stacks count against the cap
    import os

    proc = subprocess.run([sys.executable, str(fuzz), "--cases", str(CASES), "--seed", str(seed)],
                          capture_output=True, text=True, timeout=600, preexec_fn=capped,
                          env={**os.environ, **env_threads})
    assert proc.stdout, proc.stderr[-2000:]
    report = json.loads(proc.stdout)
    print(f"fuzz seed {seed}: {report['cases']} cases, outcomes {report['outcomes']}")
    assert report["bad"] == [] and not report["outside_touched"], json.dumps(report["bad"][:5], indent=1)
    assert proc.returncode == 0
    assert sum(report["outcomes"].values()) == CASES
    # the mutations do bite: most cases are refused, and every mutator produced refusals
    refused = {k.split(" exit ")[0] for k, n in report["outcomes"].items() if k.endswith("exit 2") and n}
    assert refused == {"mutate_config", "mutate_header", "mutate_index", "mutate_tokenizer", "mutate_arch"}
