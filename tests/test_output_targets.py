"""-o targets that are not plain new files: a character device or FIFO is written in place, a symlink's
target is replaced atomically (the link stays), an existing file keeps its mode, a directory is an error."""

from __future__ import annotations

import os
import stat
import threading

from helpers import invoke
from test_errors import assert_one_line_error


def test_dev_null_stays_a_device(attn_only_dir):
    invoke("bigram", attn_only_dir, "--global", "3", "-o", "/dev/null", "--tsv")
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_fifo_is_written_into(attn_only_dir, tmp_path):
    fifo = tmp_path / "pipe.tsv"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    invoke("bigram", attn_only_dir, "--global", "3", "-o", fifo)
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert got and got[0].count(b"\n") == 4  # header + 3 rows, in the FIFO's reader
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pipe.tsv"]  # no temporary file left beside it


def test_symlink_target_replaced_link_kept(attn_only_dir, tmp_path):
    real = tmp_path / "data" / "real.csv"
    real.parent.mkdir()
    real.write_text("old\n")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    invoke("bigram", attn_only_dir, "--global", "3", "-o", link)
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text().startswith("src_id,src_token")


def test_existing_mode_is_kept(attn_only_dir, tmp_path):
    out = tmp_path / "secret.json"
    out.write_text("{}")
    out.chmod(0o600)
    invoke("bigram", attn_only_dir, "--global", "3", "-o", out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.read_text().startswith("[")


def test_directory_target_is_an_error(attn_only_dir, tmp_path):
    (tmp_path / "d.csv").mkdir()
    assert_one_line_error(invoke("bigram", attn_only_dir, "-o", tmp_path / "d.csv", ok=False), "directory")
    assert_one_line_error(invoke("bigram", attn_only_dir, "-o", tmp_path / "no" / "x.csv", ok=False), "does not exist")
