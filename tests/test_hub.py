"""Model ids resolved from a fake Hugging Face cache (symlinked snapshots, refs, shards); no network."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from builders import hf_model, save_hf
from helpers import invoke
from test_errors import assert_one_line_error


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
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    src = tmp_path_factory.mktemp("src")
    one = save_hf(hf_model("gpt2", seed=1), src / "one")
    two = save_hf(hf_model("gpt2", seed=2), src / "two", shard="30KB")
    assert (two / "model.safetensors.index.json").exists()
    fake_cache(root / "hub", "acme/tiny", one, "a" * 40)
    fake_cache(root / "hub", "acme/tiny", two, "b" * 40, branch="v2")
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


@pytest.mark.parametrize("var,sub", [("HF_HUB_CACHE", "hub"), ("HF_HOME", ""), ("XDG_CACHE_HOME", "xdg")])
def test_cache_location_from_environment(cache, monkeypatch, var, sub, tmp_path):
    for v in ("HF_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
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
                          "not in the Hugging Face cache", "hf download acme/absent")
    assert_one_line_error(invoke("info", "acme/tiny@nope", "--cache-dir", cache / "hub", ok=False),
                          "revision 'nope'", "--revision nope")
