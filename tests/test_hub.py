"""Model ids resolved from a fake Hugging Face cache (symlinked snapshots, refs, shards); no network."""

from __future__ import annotations

import builtins
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from builders import hf_model, save_hf
from helpers import invoke
from test_errors import assert_one_line_error

from tcli.checkpoint import hub
from tcli.errors import CheckpointError, InputError

A, B, C = "a" * 40, "b" * 40, "c" * 40


def fake_cache(root, repo, src, commit, branch="main"):
    """Lay ``src``'s files out as huggingface_hub does: blobs, symlinked snapshot files, refs/<branch>."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    (folder / "refs").mkdir(exist_ok=True)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in src.iterdir():
        blob = folder / "blobs" / f"{commit[:8]}-{f.name}"
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (folder / "refs" / branch).write_text(commit)
    return snap


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    one = save_hf(hf_model("gpt2", seed=1), src / "one")
    two = save_hf(hf_model("gpt2", seed=2), src / "two", shard="30KB")
    assert (two / "model.safetensors.index.json").exists()
    return one, two


@pytest.fixture(scope="module")
def cache(tmp_path_factory, models):
    root = tmp_path_factory.mktemp("hub")
    one, two = models
    fake_cache(root / "hub", "acme/tiny", one, A)
    fake_cache(root / "hub", "acme/tiny", two, B, branch="v2")
    fake_cache(root / "hub", "acme/other", two, C)
    fake_cache(root / "hub", "gpt2", one, A)
    fake_cache(root / "hub", "bert-base-uncased", two, B)
    return root


def info(*args, env=None):
    return json.loads(invoke("info", *args, "--json").stdout)


def test_model_id_from_cache_dir(cache):
    data = info("acme/tiny", "--cache-dir", cache / "hub")
    assert data["family"] == "gpt2" and data["path"].endswith("a" * 40)


def test_revision_flag_and_at_syntax_load_the_sharded_snapshot(cache):
    assert info("acme/tiny", "--cache-dir", cache / "hub", "--revision", "v2")["path"].endswith("b" * 40)
    assert info("acme/tiny@v2", "--cache-dir", cache / "hub")["path"].endswith("b" * 40)
    assert info("acme/tiny@" + "b" * 40, "--cache-dir", cache / "hub")["path"].endswith("b" * 40)
    out = invoke("bigram", "acme/tiny@v2", "--cache-dir", cache / "hub", "--global", "2", "--csv").stdout
    assert out.startswith("src_id,")


ENV = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME")


@pytest.mark.parametrize("var,sub", [("HF_HUB_CACHE", "hub"), ("HUGGINGFACE_HUB_CACHE", "hub"), ("HF_HOME", ""),
                                     ("XDG_CACHE_HOME", "xdg")])
def test_cache_location_from_environment(cache, monkeypatch, var, sub, tmp_path):
    for v in ENV:
        monkeypatch.delenv(v, raising=False)
    if var == "XDG_CACHE_HOME":
        (tmp_path / "huggingface").mkdir()
        os.symlink(cache / "hub", tmp_path / "huggingface" / "hub")
        monkeypatch.setenv(var, str(tmp_path))
    else:
        monkeypatch.setenv(var, str(cache / sub) if sub else str(cache))
    assert info("acme/tiny")["family"] == "gpt2"


def test_uncached_id_says_how_to_download(cache):
    assert_one_line_error(invoke("info", "acme/absent", "--cache-dir", cache / "hub", ok=False),
                          "no model acme/absent in the Hugging Face cache", "hf download acme/absent")
    assert_one_line_error(invoke("info", "acme/tiny@nope", "--cache-dir", cache / "hub", ok=False),
                          "revision 'nope'", "--revision nope")


# -- the cache location: the library's formula, read at call time -------------------------------------------

LIBRARY = "import huggingface_hub.constants as c; print(c.HF_HUB_CACHE)"


def library_cache(env: dict) -> str:
    """HF_HUB_CACHE as a fresh huggingface_hub import computes it under ``env`` (an independent process)."""
    base = {k: v for k, v in os.environ.items() if k not in ENV}
    out = subprocess.run([sys.executable, "-c", LIBRARY], env={**base, **env}, capture_output=True, text=True,
                         check=True)
    return out.stdout.rstrip("\n")


@pytest.mark.parametrize("env,expected", [
    ({}, "~/.cache/huggingface/hub"),
    ({"XDG_CACHE_HOME": "/x"}, "/x/huggingface/hub"),
    ({"XDG_CACHE_HOME": "/x", "HF_HOME": "/h"}, "/h/hub"),
    ({"HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/legacy"}, "/legacy"),
    ({"HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HUB_CACHE": "/new"}, "/new"),
    ({"XDG_CACHE_HOME": "/x", "HF_HOME": "/h", "HUGGINGFACE_HUB_CACHE": "/legacy", "HF_HUB_CACHE": "/new"}, "/new"),
    ({"HF_HUB_CACHE": "$TCLI_T/hub", "TCLI_T": "/t"}, "/t/hub"),
    ({"HF_HUB_CACHE": "${TCLI_T}/hub", "TCLI_T": "/t"}, "/t/hub"),
    ({"HF_HUB_CACHE": "~/c"}, "~/c"),
    ({"HF_HOME": "$TCLI_T/h", "TCLI_T": "/t"}, "/t/h/hub"),
    ({"XDG_CACHE_HOME": "$TCLI_T", "TCLI_T": "/t"}, "/t/huggingface/hub"),
    ({"HUGGINGFACE_HUB_CACHE": "$TCLI_T/legacy", "TCLI_T": "/t"}, "/t/legacy"),
])
def test_cache_dir_is_the_librarys_for_the_environment_at_call_time(monkeypatch, env, expected):
    for v in ENV:
        monkeypatch.delenv(v, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    got = hub.cache_dir()
    assert got == Path(os.path.expanduser(expected))  # the documented precedence, written out by hand
    assert got == Path(library_cache(env))  # and what huggingface_hub itself computes in a fresh process


def test_cache_dir_explicit_wins(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "env"))
    assert hub.cache_dir(tmp_path / "flag") == tmp_path / "flag"
    assert hub.cache_dir("~/flag") == Path.home() / "flag"


def test_cache_dir_leaves_the_imported_constants_alone(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    before = constants.HF_HUB_CACHE
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub.cache_dir() == tmp_path and constants.HF_HUB_CACHE == before


def test_legacy_variable_and_expansion_load_the_model(cache, monkeypatch):
    for v in ENV:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(cache / "hub"))
    assert info("acme/tiny")["path"].endswith(A)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "empty"))  # the new name wins over the legacy one
    assert_one_line_error(invoke("info", "acme/tiny", ok=False), "no model acme/tiny in the Hugging Face cache", str(cache / "empty"))
    monkeypatch.setenv("TCLI_HUB_ROOT", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", "$TCLI_HUB_ROOT/hub")
    assert info("acme/tiny@v2")["path"].endswith(B)


# -- org-less ids --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("gpt2", True), ("bert-base-uncased", True), ("gpt2@main", True), ("acme/tiny", True), ("acme/tiny@v2", True),
    ("Qwen2.5-0.5B", True), ("acme/tiny@../../x", True),  # an id; its revision is refused when resolved
    ("model.safetensors", False), ("acme/model.safetensors", False), ("config.json", False), ("./gpt2", False),
    ("/abs/gpt2", False), ("a/b/c", False), ("foo--bar", False), ("foo..bar", False), ("x.git", False),
    ("-x", False), ("", False), ("a b", False),
])
def test_looks_like_model_id(text, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub.looks_like_model_id(text) is expected


def test_an_existing_path_is_not_a_model_id(tmp_path, monkeypatch, models):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(models[1], tmp_path / "gpt2")
    assert not hub.looks_like_model_id("gpt2")
    assert info("gpt2")["path"] == "gpt2"


def test_orgless_ids_load_from_the_cache(cache):
    assert info("gpt2", "--cache-dir", cache / "hub")["path"].endswith(os.path.join("models--gpt2", "snapshots", A))
    assert info("gpt2@main", "--cache-dir", cache / "hub")["path"].endswith(A)
    assert info("bert-base-uncased", "--cache-dir", cache / "hub")["path"].endswith(B)


def test_uncached_orgless_id_says_both_and_how_to_download(cache):
    assert_one_line_error(invoke("info", "distilgpt2", "--cache-dir", cache / "hub", ok=False),
                          "distilgpt2: no such file or folder here",
                          "hf download distilgpt2")
    assert_one_line_error(invoke("info", "missing.safetensors", ok=False), "missing.safetensors: no such file")


# -- @rev and --revision -------------------------------------------------------------------------------------

def test_at_revision_and_flag_must_agree(cache):
    assert_one_line_error(invoke("info", "acme/tiny@v2", "--cache-dir", cache / "hub", "--revision", "main", ok=False),
                          "'acme/tiny@v2' pins revision 'v2' but --revision is 'main'", "give the revision once")
    with pytest.raises(InputError, match="pins revision"):
        hub.resolve("acme/tiny@" + B, "v2", cache / "hub")  # the same commit, spelt two ways: still refused
    assert info("acme/tiny@v2", "--cache-dir", cache / "hub", "--revision", "v2")["path"].endswith(B)


def test_uncached_commit_hash_says_how_to_download(cache):
    assert_one_line_error(invoke("info", "acme/tiny", "--revision", C, "--cache-dir", cache / "hub", ok=False),
                          f"revision '{C}' of acme/tiny is not in the Hugging Face cache", f"--revision {C}")


# -- revisions, refs and snapshots stay inside the repository ------------------------------------------------

ESCAPES = ["../../models--acme--other/snapshots/" + C, "../v2", "/etc", "v2/..", "./main", "a//b", "main/",
           "a\\b", "..", ".", "", "a..b", "x\ny"]


@pytest.mark.parametrize("revision", ESCAPES)
def test_revision_that_is_not_a_hash_or_ref_name_is_refused(cache, revision):
    with pytest.raises(InputError, match="neither a commit hash"):
        hub.resolve("acme/tiny", revision, cache / "hub")
    with pytest.raises(InputError, match="neither a commit hash"):
        hub.resolve("acme/tiny@" + revision, None, cache / "hub")


def test_revision_escaping_into_another_repository_is_refused(cache):
    rev = "../../models--acme--other/snapshots/" + C
    assert (cache / "hub" / "models--acme--tiny" / "snapshots" / rev).is_dir()  # the lexical path does exist
    assert_one_line_error(invoke("info", "acme/tiny", "--revision", rev, "--cache-dir", cache / "hub", ok=False),
                          "neither a commit hash (40 hex) nor a branch or tag name", "'..'")


def test_ref_names_with_slashes_are_refs(cache, tmp_path, models):
    fake_cache(tmp_path, "acme/pr", models[0], A, branch="refs/pr/1".replace("/", "_"))
    (tmp_path / "models--acme--pr" / "refs" / "refs" / "pr").mkdir(parents=True)
    (tmp_path / "models--acme--pr" / "refs" / "refs" / "pr" / "1").write_text(A)
    assert hub.resolve("acme/pr", "refs/pr/1", tmp_path) == tmp_path / "models--acme--pr" / "snapshots" / A


def bad_repo(root, models, ref: str | None = None):
    """acme/bad with snapshot A; refs/main holds ``ref``; a loadable checkpoint waits outside, at root/elsewhere."""
    fake_cache(root / "hub", "acme/bad", models[0], A)
    shutil.copytree(models[1], root / "elsewhere")
    if ref is not None:
        (root / "hub" / "models--acme--bad" / "refs" / "main").write_text(ref)
    return root / "hub"


@pytest.mark.parametrize("content", ["../../../elsewhere", "ABSOLUTE", A[:39], A + "0", A.upper(), "main", "",
                                     A + "\n" + B])
def test_ref_file_must_hold_a_commit_hash(tmp_path, models, content):
    content = str(tmp_path / "elsewhere") if content == "ABSOLUTE" else content
    hubdir = bad_repo(tmp_path, models, content)
    if "elsewhere" in content:  # the bait: snapshots/<content> is a loadable checkpoint outside the cache
        assert (hubdir / "models--acme--bad" / "snapshots" / content / "config.json").exists()
    with pytest.raises(CheckpointError, match="not a 40-hex commit hash"):
        hub.resolve("acme/bad", None, hubdir)
    assert_one_line_error(invoke("info", "acme/bad", "--cache-dir", hubdir, ok=False), "refs/main holds",
                          "the cache is damaged", "hf download acme/bad")


def test_ref_file_with_a_trailing_newline_is_fine(tmp_path, models):
    hubdir = bad_repo(tmp_path, models, A + "\n")
    assert hub.resolve("acme/bad", None, hubdir) == hubdir / "models--acme--bad" / "snapshots" / A


def test_ref_file_linked_outside_is_not_read(tmp_path, models, monkeypatch):
    hubdir = bad_repo(tmp_path, models)
    outside = tmp_path / "outside-ref"
    outside.write_text(A)  # a valid hash: reading it would load the snapshot
    ref = hubdir / "models--acme--bad" / "refs" / "main"
    ref.unlink()
    os.symlink(outside, ref)
    opened = []
    real_open = builtins.open

    def spy(file, *a, **k):
        opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
        return real_open(file, *a, **k)

    monkeypatch.setattr(builtins, "open", spy)
    with pytest.raises(CheckpointError, match="points outside models--acme--bad/refs"):
        hub.resolve("acme/bad", None, hubdir)
    assert str(outside) not in opened


def test_refs_folder_linked_outside_is_refused(tmp_path, models):
    hubdir = bad_repo(tmp_path, models)
    refs = hubdir / "models--acme--bad" / "refs"
    shutil.move(refs, tmp_path / "refs-elsewhere")
    os.symlink(tmp_path / "refs-elsewhere", refs)
    with pytest.raises(CheckpointError, match="points outside"):
        hub.resolve("acme/bad", None, hubdir)


@pytest.mark.parametrize("target", ["elsewhere", "other-repo"])
def test_snapshot_linked_outside_its_repository_is_refused(tmp_path, models, target):
    hubdir = bad_repo(tmp_path, models)
    fake_cache(hubdir, "acme/other", models[1], C)
    snap = hubdir / "models--acme--bad" / "snapshots" / B
    os.symlink(tmp_path / "elsewhere" if target == "elsewhere" else hubdir / "models--acme--other" / "snapshots" / C,
               snap)
    (hubdir / "models--acme--bad" / "refs" / "v2").write_text(B)
    for rev in (B, "v2"):
        with pytest.raises(CheckpointError, match="points outside models--acme--bad/snapshots"):
            hub.resolve("acme/bad", rev, hubdir)
    assert_one_line_error(invoke("info", "acme/bad@v2", "--cache-dir", hubdir, ok=False), "points outside",
                          "hf download acme/bad --revision v2")


def test_a_repository_folder_linked_elsewhere_still_loads(tmp_path, models):
    fake_cache(tmp_path / "disk", "acme/moved", models[0], A)
    (tmp_path / "hub").mkdir()
    os.symlink(tmp_path / "disk" / "models--acme--moved", tmp_path / "hub" / "models--acme--moved")
    assert info("acme/moved", "--cache-dir", tmp_path / "hub")["path"].endswith(A)


# -- no network ----------------------------------------------------------------------------------------------

def refuse(*a, **k):
    raise AssertionError("tcli touched the network")


class NoSocket(socket.socket):
    __init__ = refuse


def test_resolution_touches_no_socket(cache, monkeypatch):
    monkeypatch.setattr(socket, "socket", NoSocket)
    for name in ("create_connection", "getaddrinfo", "gethostbyname"):
        monkeypatch.setattr(socket, name, refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert info("acme/tiny@v2", "--cache-dir", cache / "hub")["path"].endswith(B)
    assert_one_line_error(invoke("info", "acme/absent", "--cache-dir", cache / "hub", ok=False), "hf download")
    assert_one_line_error(invoke("info", "gpt2", "--revision", C, "--cache-dir", cache / "hub", ok=False),
                          "hf download gpt2 --revision")


NO_NET = """
import socket, sys
def refuse(*a, **k):
    raise SystemExit("tcli touched the network")
class NoSocket(socket.socket):  # a class still, so that modules subclassing it (ssl) import
    __init__ = refuse
socket.socket = NoSocket
for name in ("create_connection", "getaddrinfo", "gethostbyname"):
    setattr(socket, name, refuse)
sys.argv = ["tcli", *sys.argv[1:]]
from tcli.entry import main
main()
"""


def test_a_fresh_process_touches_no_socket_even_online(cache):
    """From the first import on (huggingface_hub included), with HF_HUB_OFFLINE unset."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", *ENV)}
    run = [sys.executable, "-c", NO_NET]
    ok = subprocess.run(run + ["info", "gpt2", "--json"], env={**env, "HF_HUB_CACHE": str(cache / "hub")},
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["path"].endswith(A)
    absent = subprocess.run(run + ["info", "acme/absent", "--cache-dir", str(cache / "hub")], env=env,
                            capture_output=True, text=True)
    assert absent.returncode == 2 and "hf download acme/absent" in absent.stderr, absent.stderr
