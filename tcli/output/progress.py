"""Progress bars on stderr (rich), shown only when stderr is a terminal."""

from __future__ import annotations

import sys
from contextlib import contextmanager


@contextmanager
def progress(total: int, description: str):
    """Yield ``advance(n)``; draws a transient bar on stderr for long work."""
    if not sys.stderr.isatty() or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
