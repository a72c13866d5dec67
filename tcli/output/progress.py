"""Progress bars on stderr (rich), only when stderr is a terminal and the work lasts more than DELAY.

The bar never touches stdout (no redirection of stdout or stderr through rich) and is erased
(``stop``) before anything is printed to a terminal, so data on stdout is exactly the data.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

DELAY = float(os.environ.get("TCLI_PROGRESS_DELAY", "1"))  # seconds of work before a bar appears
_ACTIVE: list = []  # the live bar, if one is shown


def stop() -> None:
    """Erase the live bar now (before printing to the terminal); later advances draw nothing."""
    while _ACTIVE:
        bar = _ACTIVE.pop()
        bar.stop()
        _STOPPED.add(id(bar))


_STOPPED: set = set()


@contextmanager
def progress(total: int, description: str, delay: float = DELAY):
    """Yield ``advance(n)``; a transient bar on stderr appears once the work has lasted ``delay`` s."""
    if total <= 0 or not sys.stderr.isatty():
        yield lambda n=1: None
        return
    state = {"done": 0, "bar": None, "task": None, "stopped": False}
    start = time.monotonic()

    def advance(n: int = 1) -> None:
        state["done"] += n
        bar = state["bar"]
        if state["stopped"] or (bar is not None and id(bar) in _STOPPED):
            return
        if bar is None:
            if time.monotonic() - start < delay:
                return
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                           TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                           redirect_stdout=False, redirect_stderr=False)
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(description, total=total, completed=state["done"])
            _ACTIVE.append(bar)
        else:
            bar.update(state["task"], completed=state["done"])

    try:
        yield advance
    finally:
        state["stopped"] = True
        if state["bar"] is not None and state["bar"] in _ACTIVE:
            _ACTIVE.remove(state["bar"])
            state["bar"].stop()
