"""Hostile checkpoints, case by case (the fuzz suite covers the space around them): paths that leave the
checkpoint folder, FIFOs and directories where files belong, config values of the wrong type or range or
contradicting the tensors, integer tensors used as weights, float overflow, limits on --global."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from builders import random_attn_only
from helpers import invoke
from test_errors import assert_one_line_error


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    return random_attn_only(tmp_path_factory.mktemp("good") / "m")


def copy(good, tmp_path, name="c"):
    d = tmp_path / name
    shutil.copytree(good, d)
    return d


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/etc/passwd", "a/../../outside.safetensors",
                                   "sub\\..\\x.safetensors", "", 3, None])
def test_shard_names_stay_inside_the_folder(good, tmp_path, shard):
    (tmp_path / "outside.safetensors").write_bytes(b"SECRET-HEADER-BYTES")
    d = copy(good, tmp_path)
    names = list(load_file(str(d / "model.safetensors")))
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard for n in names}}))
    result = invoke("info", d, ok=False)
    assert_one_line_error(result, "shard name")
    assert "SECRET" not in result.stderr and "header length" not in result.stderr


@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json",
                                  "model.safetensors.index.json"])
@pytest.mark.parametrize("kind", ["fifo", "dir"])
def test_fifos_and_directories_are_refused_at_once(good, tmp_path, name, kind):
    d = copy(good, tmp_path)
    if name == "model.safetensors.index.json":
        target = d / name
    else:
        target = d / name
        target.unlink(missing_ok=True)
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    # in a child process with a timeout: reading a FIFO would block for ever
    proc = subprocess.run([sys.executable, "-m", "tcli", "info", str(d)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and ("FIFO" if kind == "fifo" else "directory") in lines[0], proc.stderr


@pytest.mark.parametrize("key, value, needle", [
    ("n_layers", 10**9, "n_layers=1000000000"), ("n_layers", "2", "n_layers"), ("n_layers", 5, "2 layers"),
    ("d_vocab", 50, "contradicts the config"), ("eps", -1, "eps"), ("eps", 0, "eps"), ("eps", "1e-5", "eps"),
    ("tied_embeddings", "false", "true or false"), ("final_norm", "false", "true or false"), ("norm", "bogus", "norm"),
    ("n_kv_heads", "x", "n_kv_heads"), ("n_kv_heads", 7, "n_kv_heads"), ("d_head", 2**40, "d_head"),
    ("n_heads", 1.5, "n_heads"), ("act_fn", ["gelu"], "activation"),
])
def test_config_values_are_checked(good, tmp_path, key, value, needle):
    d = copy(good, tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg[key] = value
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(invoke("ov", d, "0.0", ok=False), needle)


@pytest.mark.parametrize("text, needle", [("[" * 100000 + "]" * 100000, "nested too deeply"),
                                          ('{"n_layers": ' + "9" * 5000 + "}", "not valid JSON"),
                                          ("[1, 2]", "JSON object"), ("\xff\xfe", "not valid JSON")])
def test_json_that_is_hostile(good, tmp_path, text, needle):
    d = copy(good, tmp_path)
    (d / "config.json").write_bytes(text.encode("latin-1"))
    assert_one_line_error(invoke("info", d, ok=False), needle)


def test_non_finite_numbers_in_the_config(good, tmp_path):
    d = copy(good, tmp_path)
    text = (d / "config.json").read_text()
    for raw in ("NaN", "Infinity", "-1e-9"):
        (d / "config.json").write_text(text[:-1] + f', "eps": {raw}}}')
        assert_one_line_error(invoke("info", d, ok=False), "eps", "positive finite")


def test_mlp_weights_with_a_config_without_mlps(hf_dirs, tmp_path):
    d = tmp_path / "llama"
    shutil.copytree(hf_dirs["llama"][1], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    assert_one_line_error(invoke("info", d, ok=False), "MLP")


def test_integer_tensors_are_not_weights(good, tmp_path):
    d = copy(good, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    t["embed.W_E"] = t["embed.W_E"].astype(np.int32)
    save_file(t, str(d / "model.safetensors"))
    assert_one_line_error(invoke("bigram", d, ok=False), "I32")


@pytest.mark.parametrize("args", [("bigram",), ("ov", "0.0"), ("spectrum", "0.0"), ("heads",), ("compose",),
                                  ("lens", "--ids", "1,2"), ("skiptrigram", "0.0", "-k", "2")])
def test_weights_too_large_for_float32_stop_with_one_line(good, tmp_path, args):
    d = copy(good, tmp_path)
    t = load_file(str(d / "model.safetensors"))
    save_file({k: v * (1e30 if "W_" in k else 1) for k, v in t.items()}, str(d / "model.safetensors"))
    assert_one_line_error(invoke(args[0], d, *args[1:], ok=False), "overflowed", "float64")


def test_global_is_bounded(good):
    assert_one_line_error(invoke("bigram", good, "--global", str(10**7), ok=False), "1,000,000", "--all")


@pytest.mark.parametrize("args, needle", [
    (("bigram", "-t", "#²"), "cannot encode token '#²'"), (("bigram", "-t", "#١٢"), "cannot encode"),
    (("lens", "--ids", "1,²"), "comma-separated"), (("lens", "--ids", "١"), "comma-separated"),
    (("qk", "0.0", "--positional", "-t", "#²"), "position"),
])
def test_odd_digits_are_not_ids(good, args, needle):
    assert_one_line_error(invoke(args[0], good, *args[1:], ok=False), needle)


def test_invalid_utf8_on_the_command_line(tmp_path):
    """Bytes that are not UTF-8 in argv reach Python as lone surrogates: one line, not a crash."""
    from pathlib import Path

    sample = Path(__file__).resolve().parents[1] / "sample_weights" / "attn-only-1l"
    for args in ([b"bigram", b"-t", b"\xff\xfe"], [b"lens", str(sample).encode(), b"-p", b"ab\xffcd"]):
        proc = subprocess.run([sys.executable.encode(), b"-m", b"tcli", *args], capture_output=True, timeout=60)
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        assert proc.returncode == 2 and len(lines) == 1 and "not valid UTF-8" in lines[0], proc.stderr


def test_rich_markup_in_tokens_is_text(tmp_path):
    from tokenizers import Tokenizer, models

    d = random_attn_only(tmp_path / "m", d_vocab=4)
    vocab = {"[/]": 0, "[bold red]x": 1, "[link=http://e.com]y[/link]": 2, "\x1b]52;c;SGVsbG8=\x07": 3}
    Tokenizer(models.WordLevel(vocab, unk_token="[/]")).save(str(d / "tokenizer.json"))
    out = invoke("bigram", d, "--all", "-k", "1", "--format", "table", "--columns", "src_id,src_token").stdout
    assert "[/]" in out and "[bold␣red]x" in out and "[link=http://e.com]y[/link]" in out
    assert "\x1b" not in out and "\\x1b]52;c;SGVsbG8=\\x07" in out
