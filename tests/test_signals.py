"""Signals: SIGTERM, SIGHUP, SIGQUIT and SIGINT while an output file is being written leave no file (neither
the target nor the temporary beside it), one line on stderr and exit 128 + n; Ctrl-C while tcli is still
importing exits 130 without a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[1] / "sample_weights" / "gpt2-2l"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_mid_write_leaves_no_file(tmp_path, sig):
    out = tmp_path / "big.tsv"
    proc = subprocess.Popen([sys.executable, "-m", "tcli", "bigram", str(SAMPLE), "--all", "-k", "1000", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not any(p.name.startswith(".big.tsv.") for p in tmp_path.iterdir()):  # writing has begun
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == (130 if sig == signal.SIGINT else 128 + sig), err
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0] in ("tcli: interrupted", f"tcli: terminated ({signal.Signals(sig).name})")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_while_importing_exits_130(monkeypatch, capsys):
    import types

    from tcli import entry

    fake = types.ModuleType("tcli.cli")

    def main():
        raise KeyboardInterrupt  # as if Ctrl-C arrived while typer/numpy were importing

    fake.main = main
    monkeypatch.setitem(sys.modules, "tcli.cli", fake)
    saved = {name: signal.getsignal(getattr(signal, name)) for name in entry.SIGNALS}
    try:
        with pytest.raises(SystemExit) as exc:
            entry.main()
    finally:
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)
    assert exc.value.code == 130
    assert capsys.readouterr().err == "tcli: interrupted\n"
