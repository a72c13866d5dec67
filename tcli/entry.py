"""The console entry point: signal handling and an early Ctrl-C, before anything heavy is imported.

SIGTERM, SIGHUP and SIGQUIT raise ``Terminated`` (cleanup runs, exit 128 + n); Ctrl-C at any moment,
even while typer and numpy are still importing, exits 130 with one line and no traceback.
"""

import os
import signal
import sys

from .errors import Terminated

SIGNALS = ("SIGTERM", "SIGHUP", "SIGQUIT")


def _raise(signum, frame):
    raise Terminated(signum)


def main():
    for name in SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _raise)
    try:
        from .cli import main as run

        run()
    except KeyboardInterrupt:
        print("tcli: interrupted", file=sys.stderr)
        sys.exit(130)
    except Terminated as exc:
        print(f"tcli: terminated ({signal.Signals(exc.signum).name})", file=sys.stderr)
        sys.exit(128 + exc.signum)
    except BrokenPipeError:  # the reader went away while the output was being flushed at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
