"""--workers / --scheduler: a sweep's checkpoints on a Dask cluster (a LocalCluster of 2 worker processes) give
the rows of the single-process run, in order; bad input exits 2 with nothing written."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import invoke
from sweep_data import trained_run
from test_errors import assert_one_line_error

pytest.importorskip("distributed")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return trained_run(tmp_path_factory)


def sweep(run, *args):
    return ("--revision", ",".join(f"step{s}" for s in run.steps), "--cache-dir", run.cache, *args)


@pytest.mark.parametrize("cmd", [("heads",), ("compose", "-k", "6"), ("bigram", "--global", "4"),
                                 ("ov", "--all-heads", "-t", "#40", "-k", "2")])
def test_dask_rows_equal_the_single_process_run(run, scheduler, cmd):
    single = invoke(cmd[0], run.repo, *cmd[1:], *sweep(run), "--csv").stdout
    dask = invoke(cmd[0], run.repo, *cmd[1:], *sweep(run), "--csv", "--scheduler", scheduler).stdout
    assert dask == single and single.count("\n") > len(run.steps)


def test_dask_json_file_and_minus(run, scheduler, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    args = ("heads", run.repo, *sweep(run), "--minus", f"{run.repo}@step0", "--no-behaviour")
    invoke(*args, "-o", a)
    invoke(*args, "-o", b, "--scheduler", scheduler)
    assert a.read_bytes() == b.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.json"]  # no temporary file left


def test_workers_2_starts_its_own_local_cluster(run, tmp_path):
    out = tmp_path / "s.tsv"
    invoke("compose", run.repo, *sweep(run), "-k", "3", "--workers", "2", "-o", out)
    assert out.read_text() == invoke("compose", run.repo, *sweep(run), "-k", "3", "--tsv").stdout


def test_error_on_a_worker_is_one_line_and_writes_nothing(run, scheduler, tmp_path):
    out = tmp_path / "x.csv"
    # step0 … step200 (4 heads per layer) minus the 8-head sample: refused on the workers, inside the command
    r = invoke("heads", run.repo, *sweep(run), "--minus", ROOT / "sample_weights" / "attn-only-2l", "--scheduler",
               scheduler, "-o", out, ok=False)
    assert_one_line_error(r, "same heads")
    assert not out.exists() and not list(tmp_path.iterdir())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_exits_2_quickly(run, monkeypatch, tmp_path):
    import tcli.distributed

    monkeypatch.setattr(tcli.distributed, "CONNECT_TIMEOUT", 1.0)
    out = tmp_path / "x.csv"
    start = time.monotonic()
    r = invoke("heads", run.repo, *sweep(run), "--scheduler", f"tcp://127.0.0.1:{_free_port()}", "-o", out, ok=False)
    assert_one_line_error(r, "cannot reach the Dask scheduler")
    assert time.monotonic() - start < 15 and not out.exists()


def test_flags_checked(run):
    assert_one_line_error(invoke("heads", run.repo, *sweep(run), "--workers", "0", ok=False), "--workers")
    assert_one_line_error(invoke("heads", run.repo, *sweep(run), "--workers", "2", "--scheduler", "tcp://x:1",
                                 ok=False), "not both")


def test_without_dask_installed_the_flags_say_how(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "dask", None)  # import dask now raises ImportError
    assert_one_line_error(invoke("heads", run.repo, *sweep(run), "--workers", "2", ok=False), "tcli[distributed]")


def test_dask_is_never_imported_without_the_flags(run):
    code = ("import sys; from typer.testing import CliRunner; from tcli.cli import app; "
            f"r = CliRunner().invoke(app, ['compose', {run.repo!r}, '--revision', 'step0,step50', '--cache-dir', "
            f"{str(run.cache)!r}, '--csv']); assert r.exit_code == 0, r.output; "
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')], 'dask imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


# ---------------------------------------------------------------- map_units, the generic part
def _square(x):
    return x * x


def _die_once(arg):
    """Kill the worker process the first time unit 2 runs (a marker file says it did)."""
    x, marker = arg
    if x == 2 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * 10


@pytest.fixture(autouse=True)
def by_value():
    """This module's functions travel to the workers by value (the workers cannot import tests/)."""
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_map_units_in_order_locally_and_on_the_cluster(scheduler):
    from tcli.distributed import map_units

    assert list(map_units(_square, range(7))) == [x * x for x in range(7)]
    assert list(map_units(_square, range(7), scheduler=scheduler)) == [x * x for x in range(7)]


def test_a_worker_that_dies_is_retried(tmp_path, scheduler):
    from tcli.distributed import map_units

    marker = str(tmp_path / "died")
    assert list(map_units(_die_once, [(x, marker) for x in range(4)], scheduler=scheduler)) == [0, 10, 20, 30]
    assert os.path.exists(marker)  # a worker did die on unit 2, and the scheduler ran it again elsewhere


def test_local_workers_get_the_callers_blas_threads(monkeypatch):
    """Bit-identical rows need the same BLAS thread count in the workers as here (Dask's default is 1)."""
    from tcli.distributed import blas_env

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = blas_env()
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["OMP_NUM_THREADS"] == str(len(os.sched_getaffinity(0)))
