"""Bad input: one clear line on stderr, exit code 2, nothing on stdout, no traceback, no partial file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from builders import random_attn_only
from helpers import invoke


def assert_one_line_error(result, *needles, code=2):
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tcli: error:"), lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture()
def good(tmp_path):
    return random_attn_only(tmp_path / "good")


def raw_file(path, header: dict, data: bytes = b"", header_len: int | None = None):
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)
    return path


def with_config(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "tcli", "n_layers": 0, "n_heads": 1, "d_model": 2,
                                                    "d_head": 2, "d_vocab": 2, "n_ctx": 4}))
    return folder


def test_missing_path(tmp_path):
    assert_one_line_error(invoke("info", tmp_path / "nope", ok=False), "no such file")


def test_not_a_safetensors_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_text("hello, this is not a checkpoint at all")
    assert_one_line_error(invoke("info", bad, ok=False), "not a safetensors file")


def test_tiny_file(tmp_path):
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"abc")
    assert_one_line_error(invoke("info", bad, ok=False), "not a safetensors file")


def test_oversized_header_length(tmp_path):
    bad = raw_file(tmp_path / "x.safetensors", {}, header_len=2**40)
    assert_one_line_error(invoke("info", bad, ok=False), "exceeds 100 MB")


def test_truncated_file(good, tmp_path):
    data = (good / "model.safetensors").read_bytes()
    (good / "model.safetensors").write_bytes(data[: len(data) - 100])
    assert_one_line_error(invoke("info", good, ok=False), "truncated")


def test_truncated_header(tmp_path):
    folder = with_config(tmp_path, "m")
    raw_file(folder / "model.safetensors", {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}},
             header_len=5000)
    assert_one_line_error(invoke("info", folder, ok=False), "truncated")


def test_header_lies_about_offsets(tmp_path):
    folder = with_config(tmp_path, "m")
    raw_file(folder / "model.safetensors", {"embed.W_E": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}},
             b"\0" * 12)
    assert_one_line_error(invoke("info", folder, ok=False), "header lies", "embed.W_E")


def test_gap_in_offsets(tmp_path):
    folder = with_config(tmp_path, "m")
    raw_file(folder / "model.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                            "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}, b"\0" * 12)
    assert_one_line_error(invoke("info", folder, ok=False), "gap before tensor 'b'")


def test_trailing_bytes(tmp_path):
    folder = with_config(tmp_path, "m")
    raw_file(folder / "model.safetensors", {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 9)
    assert_one_line_error(invoke("info", folder, ok=False), "trailing bytes")


def test_unknown_family_lists_tensors_and_points_to_arch(tmp_path):
    f = tmp_path / "m.safetensors"
    save_file({"foo.weight": np.zeros((2, 2), np.float32), "bar.bias": np.zeros(2, np.float32)}, str(f))
    assert_one_line_error(invoke("info", f, ok=False), "unknown model family", "bar.bias", "--arch")


def test_unknown_model_type(tmp_path, good):
    cfg = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    assert_one_line_error(invoke("info", good, ok=False), "unknown model family", "mamba")


def test_wrong_shape(good):
    cfg = json.loads((good / "config.json").read_text())
    (good / "config.json").write_text(json.dumps({**cfg, "d_head": 4}))
    assert_one_line_error(invoke("ov", good, "0.0", "--global", "3", ok=False), "blocks.0.attn.W", "shape")


def test_nan_weight_named(tmp_path):
    from safetensors.numpy import load_file

    folder = random_attn_only(tmp_path / "nan")
    t = load_file(str(folder / "model.safetensors"))
    t["embed.W_E"][3, 1] = np.nan
    save_file(t, str(folder / "model.safetensors"))
    assert_one_line_error(invoke("bigram", folder, ok=False), "embed.W_E", "NaN")


def test_head_and_layer_out_of_range(good):
    assert_one_line_error(invoke("ov", good, "0.3", ok=False), "head 0.3 out of range", "3 heads")
    assert_one_line_error(invoke("qk", good, "5.0", ok=False), "layer 5 out of range")


def test_no_head_given(good):
    assert_one_line_error(invoke("ov", good, ok=False), "no head given", "--all-heads")


def test_unknown_and_multi_token(tmp_path):
    from helpers import invoke as run

    from tcli.checkpoint.loader import resolve_default

    sample = resolve_default("attn-only-1l")
    if not sample.exists():
        pytest.skip("sample weights not built")
    assert_one_line_error(run("ov", sample, "0.0", "--token", " the cat sat", ok=False), "is not one token", "#")
    assert_one_line_error(run("ov", sample, "0.0", "--token", "#999999", ok=False), "out of range")


def test_token_text_without_tokenizer(good):
    assert_one_line_error(invoke("bigram", good, "--token", "x", ok=False), "no tokenizer.json", "#ID")


@pytest.mark.parametrize("args", [["-k", "0"], ["-k", "-3"], ["--global", "0"]])
def test_non_positive_k(good, args):
    assert_one_line_error(invoke("bigram", good, *args, ok=False), "must be a positive integer")


def test_bad_format_and_dtype(good):
    assert_one_line_error(invoke("bigram", good, "--format", "xml", ok=False), "--format", "xml")
    assert_one_line_error(invoke("bigram", good, "--dtype", "float16", ok=False), "--dtype")


def test_bad_arch_yaml(good, tmp_path):
    arch = tmp_path / "a.yaml"
    arch.write_text("tensors: {a: [unclosed")
    assert_one_line_error(invoke("info", good, "--arch", arch, ok=False), "not valid YAML")


def test_no_partial_output_file(tmp_path):
    from safetensors.numpy import load_file

    folder = random_attn_only(tmp_path / "nan2")
    t = load_file(str(folder / "model.safetensors"))
    t["unembed.W_U"][0, 0] = np.inf
    save_file(t, str(folder / "model.safetensors"))
    out = tmp_path / "out.csv"
    assert_one_line_error(invoke("bigram", folder, "-o", out, ok=False), "NaN/Inf")
    assert not out.exists()
    assert not list(tmp_path.glob(".out.csv*"))


def test_two_checkpoints_are_a_sweep_checked_before_any_output(good, tmp_path):
    """Two checkpoint words are a sweep (SPEC 3d): a bad second one is one line, and nothing is printed."""
    result = invoke("info", good, tmp_path, ok=False)
    assert_one_line_error(result, "no .safetensors file")
    assert str(tmp_path) in result.stderr


def test_option_errors_per_command(hf_dirs, good):
    llama, gpt2 = hf_dirs["llama"][1], hf_dirs["gpt2"][1]
    assert_one_line_error(invoke("qk", llama, "0.0", "--positional", ok=False), "learned position embeddings")
    assert_one_line_error(invoke("qk", gpt2, "0.0", "--offset", "2", ok=False), "rotary models only")
    assert_one_line_error(invoke("qk", llama, "0.0", "--offset", "-1", ok=False), "--offset")
    assert_one_line_error(invoke("spectrum", good, "0.0", "--circuit", "xy", ok=False), "--circuit", "xy")
    assert_one_line_error(invoke("compose", good, "--kind", "x", ok=False), "--kind", "x")
    assert_one_line_error(invoke("skiptrigram", good, "0.0", "-k", "0", ok=False), "positive integer")
    assert_one_line_error(invoke("attention", good, "--ids", "1", "--head", "x", ok=False), "LAYER.HEAD")
    assert_one_line_error(invoke("qk", good, "0.0", "--positional", "--token", "#99", ok=False), "position")
    assert_one_line_error(invoke("bigram", good, "--csv", "--json", ok=False), "one output format")


@pytest.mark.parametrize("args, needle", [
    (("bigram", "-k", "3"), "-k/--top"),                      # -k without a per-row mode
    (("bigram", "--global", "3", "-k", "3"), "-k/--top"),
    (("bigram", "--all", "-t", "a"), "--token or --all"),
    (("ov", "0.0", "--global", "3", "--all"), "--global"),
    (("qk", "0.0", "--global", "3", "-t", "a"), "--global"),
    (("bigram", "0.1"), "bigram takes no heads"),             # a head given where none applies
    (("info", "0.1"), "info takes no heads"),
    (("lens", "0.1", "--ids", "1"), "lens takes no heads"),
    (("spectrum", "0.0", "-c", "direct"), "no heads"),
    (("report", "--csv"), "does not apply"),                  # report writes HTML only
    (("report", "--sort", "x"), "--sort"),
    (("report", "-o", "r.csv"), ".html"),
    (("bigram", "-o", "r.html"), "extension"),                # an unknown -o extension
    (("bigram", "--frob"), "--frob"),                         # click's own usage errors, one line too
    (("bigram", "--dtype", "f16"), "--dtype"),
    (("bigram", "--sort", "nope"), "no column 'nope'"),
    (("bigram", "--columns", "value,nope"), "no column 'nope'"),
    (("bigram", "--limit", "-1"), "--limit"),
])
def test_options_that_conflict_or_do_not_apply(good, tmp_path, args, needle):
    args = tuple(str(tmp_path / a) if a in ("r.csv", "r.html") else a for a in args)
    assert_one_line_error(invoke(args[0], good, *args[1:], ok=False), needle)


def test_report_on_a_terminal_needs_o(good, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    from tcli.cli import _page_options

    with pytest.raises(Exception, match="-o report.html"):
        _page_options("report", None, None, None, None, None, False)
