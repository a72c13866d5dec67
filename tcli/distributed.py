"""``--workers N`` / ``--scheduler ADDRESS``: the independent units of a command on a Dask distributed cluster.

``map_units(fn, units, workers, scheduler)`` yields ``fn(unit)`` for each unit in the units' order, whatever
order the cluster finishes them in. Without either flag it is a plain loop and Dask is never imported; with
``--workers N`` it starts a ``LocalCluster`` of N single-threaded worker processes (closed at the end); with
``--scheduler`` it connects to a running scheduler (e.g. dask-jobqueue's ``SLURMCluster().scheduler_address``).
The tasks are pure functions of their unit: nothing is written on a worker, so a worker that dies is simply
rerun elsewhere by the scheduler (``distributed.scheduler.allowed-failures`` times) and output files, written
by the calling process only once every unit is in, are never partial. See docs/sweeps.md.
"""

from __future__ import annotations

import os

from .errors import InputError, InternalError

# seconds to wait for a --scheduler to answer before saying it cannot be reached
CONNECT_TIMEOUT = float(os.environ.get("TCLI_SCHEDULER_TIMEOUT", "10"))


def check_flags(workers: int | None, scheduler: str | None) -> None:
    """The flags alone, before any work: exit 2 on a bad value or on both at once."""
    if workers is not None and scheduler is not None:
        raise InputError("give --workers N (a local cluster) or --scheduler ADDRESS (an existing one), not both")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be a positive integer, got {workers}")
    if scheduler is not None and not scheduler.strip():
        raise InputError("--scheduler needs an address, e.g. tcp://127.0.0.1:8786")


BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def blas_env() -> dict:
    """The local workers' BLAS threads: as many as this process uses (its environment's setting, else every
    core it may run on). Dask's default is 1, and a matrix product's last bits depend on how many threads
    split it: with the same count the workers' rows are those of the single-process run, bit for bit
    (measured: 1 thread against 2 moved copying scores by 1e-16 and float32 induction scores by 1e-8).
    ``OPENBLAS_NUM_THREADS=1 tcli … --workers N`` gives one thread to the client and to each worker alike."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    env = {"MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_", "65536")}  # Dask's default
    env.update({name: os.environ.get(name, str(cores)) for name in BLAS_THREADS})
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        env["OPENBLAS_THREAD_TIMEOUT"] = os.environ["OPENBLAS_THREAD_TIMEOUT"]
    return env


def _dask():
    try:
        from dask import distributed
    except ImportError:
        raise InputError("--workers/--scheduler need Dask", "pip install 'tcli[distributed]'") from None
    return distributed


class Cluster:
    """A Dask client for --workers N (its own LocalCluster) or --scheduler ADDRESS; a context manager."""

    def __init__(self, workers: int | None = None, scheduler: str | None = None):
        check_flags(workers, scheduler)
        self.workers, self.scheduler = workers, scheduler
        self.client = self.cluster = None

    def __enter__(self):
        import logging

        distributed = _dask()
        if self.scheduler is not None:
            try:
                self.client = distributed.Client(self.scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError, ValueError, TypeError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise InputError(f"cannot reach the Dask scheduler at {self.scheduler} ({reason})",
                                 "start one (dask scheduler, or a dask-jobqueue cluster) or check the address")
        else:
            import warnings

            import dask

            # before the worker processes start: BLAS reads its thread count when it loads
            with warnings.catch_warnings(), dask.config.set({"distributed.nanny.pre-spawn-environ": blas_env()}):
                warnings.simplefilter("ignore")  # "port 8787 is in use, using another": said on stderr otherwise
                self.cluster = distributed.LocalCluster(n_workers=self.workers, threads_per_worker=1,
                                                        processes=True, dashboard_address=None,
                                                        silence_logs=logging.ERROR)
            self.client = distributed.Client(self.cluster, set_as_default=False)
        return self.client

    def __exit__(self, *exc):
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        return False


def map_units(fn, units, workers: int | None = None, scheduler: str | None = None):
    """Yield ``fn(unit)`` for each unit, in order; on the cluster of --workers/--scheduler when one is given.

    All units are submitted at once (the scheduler spreads them over its workers); results are gathered
    one by one in order and released as they are yielded. An error raised by ``fn`` on a worker is raised
    here, as it would be in a loop; a unit whose workers kept dying is an internal error (exit 1)."""
    units = list(units)
    if workers is None and scheduler is None:
        for unit in units:
            yield fn(unit)
        return
    distributed = _dask()
    with Cluster(workers, scheduler) as client:
        futures = client.map(fn, units, pure=False)
        try:
            for i, future in enumerate(futures):
                try:
                    result = future.result()
                except distributed.KilledWorker as exc:
                    raise InternalError(f"unit {i + 1} of {len(units)}: Dask workers died running it ({exc})",
                                        "see the workers' logs (memory?)") from None
                future.release()
                futures[i] = None
                yield result
        finally:
            pending = [f for f in futures if f is not None]
            if pending:
                client.cancel(pending)
