"""Under a real terminal (a pseudo-terminal on stdin and stderr) with stdout redirected to a file, the file
holds exactly the machine output and the terminal gets none of it: no rich redirection of stdout, the
progress bar (forced on at once here) only on stderr and erased."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX pseudo-terminals")

COMMANDS = [
    ("info",), ("bigram", "--global", "5"), ("bigram", "--all", "-k", "2"), ("ov", "0.3", "--all", "-k", "2"),
    ("qk", "0.3", "-t", " the", "-k", "3"), ("skiptrigram", "0.3", "-k", "3"), ("spectrum", "0.3", "-k", "4"),
    ("heads", "--limit", "4"), ("compose", "-k", "5"), ("decompose", "-p", "To be, or not to"),
    ("lens", "-p", "To be", "-k", "2"), ("attention", "-p", "To be", "-k", "1"), ("neurons", "-k", "2"),
]


def run_under_pty(args, stdout_path):
    """Run ``tcli ARGS`` with a pty as stdin and stderr and stdout to ``stdout_path``; (rc, terminal bytes)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TCLI_PROGRESS_DELAY": "0", "TERM": "xterm-256color", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tcli", *args], stdin=slave, stdout=out, stderr=slave,
                                env=env, close_fds=True)
    os.close(slave)
    seen = b""
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    rc = proc.wait(timeout=120)
    os.close(master)
    return rc, seen


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: "-".join(a[:2]))
def test_stdout_redirected_from_a_terminal_holds_exactly_the_data(args, tmp_path):
    rc, terminal = run_under_pty(args, tmp_path / "out")
    assert rc == 0, terminal.decode(errors="replace")
    data = (tmp_path / "out").read_bytes()
    piped = subprocess.run([sys.executable, "-m", "tcli", *args], capture_output=True, check=True).stdout
    assert data == piped and data  # stdout not a terminal: TSV, the same bytes as in a plain pipe
    header = data.splitlines()[0]
    assert header not in terminal
    for line in data.splitlines()[1:4]:
        assert line not in terminal  # no row reached the screen
