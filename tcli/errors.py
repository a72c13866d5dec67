"""Error types: each carries an exit code (2 = bad input, 1 = internal) and one line for stderr."""

from __future__ import annotations


class TcliError(Exception):
    """Base class: ``str(err)`` is the one stderr line; ``exit_code`` is the process exit code."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message} ({hint})")


class InputError(TcliError):
    """Bad user input: a flag, a head, a token, a prompt."""


class CheckpointError(InputError):
    """A checkpoint that cannot be read: missing, corrupt, truncated, inconsistent, unknown family."""


class InternalError(TcliError):
    """A bug in tcli: exit code 1."""

    exit_code = 1


class Terminated(BaseException):
    """A termination signal (SIGTERM, SIGHUP, SIGQUIT) raised as an exception, so that ``finally`` blocks
    run (a half-written output file is removed); the process exits 128 + the signal number."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)
