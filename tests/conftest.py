"""Shared fixtures: tiny random checkpoints of every family (built once per session), hypothesis profiles."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

sys.path.insert(0, str(Path(__file__).parent))

settings.register_profile("ci", deadline=None, print_blob=True, max_examples=60,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="module")
def scheduler():
    """The address of a Dask LocalCluster of 2 single-threaded worker processes, for the whole module
    (skips where the distributed extra is not installed)."""
    import logging

    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=logging.ERROR)
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory):
    """family -> (torch model, checkpoint dir) for every family of tests/builders.py."""
    from builders import FAMILIES, hf_model, save_hf

    root = tmp_path_factory.mktemp("hf")
    out = {}
    for fam in FAMILIES:
        model = hf_model(fam)
        out[fam] = (model, save_hf(model, root / fam))
    return out


@pytest.fixture(scope="session")
def attn_only_dir(tmp_path_factory):
    from builders import random_attn_only

    return random_attn_only(tmp_path_factory.mktemp("ao") / "m")


FIGURES = Path(__file__).resolve().parent.parent / ".pytest_cache" / "figures.txt"


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the controller (or a run without xdist) starts afresh
        FIGURES.parent.mkdir(exist_ok=True)
        FIGURES.write_text("")


@pytest.fixture()
def figure():
    """Record a measured figure; all of them are printed at the end of the run (also under xdist)."""
    def record(name: str, value, bound: str = ""):
        with open(FIGURES, "a") as fh:
            fh.write(f"{name}: {value}" + (f" (asserted {bound})" if bound else "") + "\n")
    return record


def pytest_terminal_summary(terminalreporter):
    lines = FIGURES.read_text().splitlines() if FIGURES.exists() else []
    if lines:
        terminalreporter.section("measured figures (paper claims on the bundled samples)")
        for line in lines:
            terminalreporter.write_line(line)
