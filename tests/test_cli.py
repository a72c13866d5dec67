"""The command line: documented columns in every machine format, output files, tricky tokens, start-up."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from builders import random_attn_only
from helpers import invoke, parse

SPEC_COLUMNS = {
    "info": "family, n_layers, n_heads, n_kv_heads, d_model, d_head, d_mlp, d_vocab, n_ctx, norm, positional, act_fn, "
            "attn_only, parallel_attn_mlp, tied_embeddings, dtype, processing, tokenizer, n_params",
    "bigram": "src_id, src_token, rank, dst_id, dst_token, value",
    "ov": "layer, head, src_id, src_token, rank, out_id, out_token, value",
    "qk": "layer, head, query_id, query_token, rank, key_id, key_token, value",
    "skiptrigram": "layer, head, rank, src_id, src_token, dst_id, dst_token, out_id, out_token, qk, ov, score",
    "spectrum": "circuit, layer, head, index, singular_value",
    "heads": "layer, head, copying_score, wov_copying_score, ov_frobenius, qk_frobenius, ov_top_singular_value, "
             "ov_effective_rank, prev_token_score, induction_score",
    "compose": "kind, layer1, head1, layer2, head2, score, baseline",
}
ARGS = {"info": [], "bigram": ["-k", "2", "--token", "#3"], "ov": ["0.1", "-k", "2", "--token", "#1"],
        "qk": ["1.0", "--global", "4"], "skiptrigram": ["0.0", "-k", "3"], "spectrum": ["1.1", "-k", "3"],
        "heads": [], "compose": ["-k", "5"]}
FORMATS = ["csv", "tsv", "json", "jsonl"]


@pytest.fixture(scope="module")
def tricky(tmp_path_factory):
    """An attention-only model whose tokenizer has tokens with spaces, tabs, newlines, quotes, backslashes."""
    from tokenizers import Tokenizer, models

    path = random_attn_only(tmp_path_factory.mktemp("tricky") / "m", d_vocab=12)
    vocab = {"a": 0, " the": 1, "\n": 2, "\t": 3, '"q"': 4, "é": 5, "\\": 6, "x,y": 7, "\r\n": 8, "  ": 9,
             "'": 10, "z": 11}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="a"))
    tok.save(str(path / "tokenizer.json"))
    return path, {v: k for k, v in vocab.items()}


@pytest.mark.parametrize("command", list(SPEC_COLUMNS))
@pytest.mark.parametrize("fmt", FORMATS)
def test_machine_formats_have_the_documented_columns(command, fmt, attn_only_dir):
    result = invoke(command, attn_only_dir, *ARGS[command], "--format", fmt)
    columns, rows = parse(result.stdout, fmt)
    expected = SPEC_COLUMNS[command].split(", ")
    assert columns[:len(expected)] == expected
    assert rows, result.stdout
    for row in rows:
        assert list(row)[:len(expected)] == expected


def test_short_format_flags_and_no_headers(attn_only_dir):
    csv_out = invoke("bigram", attn_only_dir, "--csv", "--global", "3").stdout
    assert csv_out == invoke("bigram", attn_only_dir, "--format", "csv", "--global", "3").stdout
    assert invoke("bigram", attn_only_dir, "--tsv", "--global", "3", "--no-headers").stdout.count("\n") == 3
    assert json.loads(invoke("bigram", attn_only_dir, "--json", "--global", "3").stdout)[0]["rank"] == 1
    assert len(invoke("bigram", attn_only_dir, "--nl", "--global", "3").stdout.splitlines()) == 3


def test_default_output_is_tsv_when_piped(attn_only_dir):
    out = invoke("bigram", attn_only_dir, "--global", "2").stdout
    assert out.splitlines()[0] == "src_id\tsrc_token\trank\tdst_id\tdst_token\tvalue"


def test_table_format_shows_visible_whitespace(tricky):
    path, _ = tricky
    out = invoke("bigram", path, "--format", "table", "--all", "-k", "1").stdout
    assert "␣the" in out and "↵" in out and "⇥" in out


def test_info_json_is_one_object(attn_only_dir):
    data = json.loads(invoke("info", attn_only_dir, "--json").stdout)
    assert data["family"] == "tcli" and data["n_layers"] == 2 and data["d_vocab"] == 37
    assert data["processing"] == "fold_ln,center_writing_weights,center_unembed,fold_value_biases"
    assert json.loads(invoke("info", attn_only_dir, "--json", "--raw").stdout)["processing"] == "none"
    tensors = parse(invoke("info", attn_only_dir, "--tensors", "--csv").stdout, "csv")[1]
    assert {"name": "embed.W_E", "dtype": "F32", "shape": "37x16", "n_params": "592"} in tensors


@pytest.mark.parametrize("fmt", FORMATS)
def test_tricky_tokens_round_trip(tricky, fmt):
    path, strings = tricky
    out = invoke("bigram", path, "--all", "-k", "12", "--format", fmt).stdout_bytes.decode("utf-8")  # raw: no \r\n folding
    _, rows = parse(out, fmt)
    assert len(rows) == 12 * 12
    for row in rows:
        src, dst = int(row["src_id"]), int(row["dst_id"])
        src_tok, dst_tok = row["src_token"], row["dst_token"]
        assert (src_tok, dst_tok) == (strings[src], strings[dst])
    if fmt == "tsv":
        assert all(line.count("\t") == 5 for line in out.splitlines())


def test_output_file_format_from_extension_and_atomic(attn_only_dir, tmp_path):
    target = tmp_path / "t.json"
    result = invoke("bigram", attn_only_dir, "--global", "3", "-o", target)
    assert result.stdout == ""
    assert [r["rank"] for r in json.loads(target.read_text())] == [1, 2, 3]
    csv_target = tmp_path / "t.csv"
    invoke("ov", attn_only_dir, "0.0", "--global", "2", "-o", csv_target)
    assert csv_target.read_text().startswith("layer,head,src_id")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.csv", "t.json"]


def test_values_are_full_precision(attn_only_dir):
    from tcli.checkpoint import open_checkpoint
    from tcli.processing import process

    rows = parse(invoke("bigram", attn_only_dir, "--global", "1", "--csv").stdout, "csv")[1]
    w = process(open_checkpoint(attn_only_dir).weights())
    D = w["embed.W_E"] @ w["unembed.W_U"]
    assert np.float32(rows[0]["value"]) == D.max()


def test_help_imports_no_heavy_modules():
    code = ("import sys; from tcli.cli import app; from typer.testing import CliRunner; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "print(','.join(m for m in ('numpy', 'safetensors', 'tokenizers', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""


def test_version_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "tcli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("tcli ")


def test_shell_completion_of_commands_and_heads(attn_only_dir):
    import os

    env = {**os.environ, "_TCLI_COMPLETE": "complete_bash", "COMP_WORDS": f"tcli ov {attn_only_dir} 1.", "COMP_CWORD": "3"}
    out = subprocess.run([sys.executable, "-m", "tcli"], env=env, capture_output=True, text=True).stdout.split()
    assert out == ["1.0", "1.1", "1.2"]
    env.update(COMP_WORDS="tcli sk", COMP_CWORD="1")
    assert subprocess.run([sys.executable, "-m", "tcli"], env=env, capture_output=True, text=True).stdout.split() == [
        "skiptrigram"]


def test_mixed_value_types_render_faithfully():
    import io as _io

    from tcli.output.render import write_csv, write_tsv
    from tcli.output.table import Table

    t = Table.from_rows(["a", "b", "c"], [(True, 1, None), (1, True, 1.5), (0, False, "x\ty")])
    buf = _io.StringIO()
    write_tsv(t, buf)
    assert buf.getvalue() == "a\tb\tc\nTrue\t1\t\n1\tTrue\t1.5\n0\tFalse\tx\\ty\n"
    buf = _io.StringIO()
    write_csv(Table.from_rows(["a"], [('say "hi", ok',), ("plain",)]), buf)
    assert buf.getvalue() == 'a\n"say ""hi"", ok"\nplain\n'


@pytest.mark.parametrize("args", [("heads", "--no-behaviour"), ("bigram", "--all", "-k", "3"), ("ov", "0.1", "--global", "40")])
def test_columns_sort_limit_equal_the_same_done_by_hand(attn_only_dir, args):
    """--columns/--sort/--limit give exactly the full table's rows, re-ordered and cut in Python."""
    cols, full = parse(invoke(*args[:1], attn_only_dir, *args[1:], "--csv").stdout, "csv")
    key = cols[-1]
    for sort, reverse in ((key, False), ("-" + key, True)):
        picked = [cols[0], key]
        _, rows = parse(invoke(*args[:1], attn_only_dir, *args[1:], "--csv", "--columns", ",".join(picked),
                               "--sort", sort, "--limit", "7").stdout, "csv")
        expect = sorted(full, key=lambda r: float(r[key]), reverse=reverse)[:7]
        assert [float(r[key]) for r in rows] == [float(r[key]) for r in expect]
        assert all(list(r) == picked for r in rows)
    _, rows = parse(invoke(*args[:1], attn_only_dir, *args[1:], "--csv", "--limit", "5").stdout, "csv")
    assert rows == full[:5]  # no --sort: the table's own order, cut while streaming


def test_help_has_examples_short_summaries_and_h(attn_only_dir):

    top = invoke("-h").stdout
    for name in ("bigram", "ov", "qk", "skiptrigram", "heads", "compose", "decompose", "lens", "report"):
        line = next(l for l in top.splitlines() if l.strip().startswith(name + " "))
        assert "..." not in line and len(line) <= 80, line   # summaries are never cut
        assert "Examples:\n    tcli " + name in invoke(name, "-h").stdout
    assert "<table|csv|tsv|json|jsonl>" in invoke("bigram", "--help").stdout   # choices shown
    assert "[q|k|v]" in invoke("compose", "-h").stdout


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("args", [("heads", "--no-behaviour"), ("info",), ("compose",),
                                  ("decompose", "-p", "To be, or not")], ids=lambda a: a[0])
def test_tables_fit_the_terminal_and_numbers_stay_whole(args, width, monkeypatch):
    """At 80 and 120 columns no line is wider than the terminal, and each row of the table is one line whose
    cells are exactly the machine output's values (4 significant digits): nothing is split or wrapped."""
    from rich.cells import cell_len

    monkeypatch.setenv("COLUMNS", str(width))
    text = invoke(*args, "--format", "table").stdout
    assert max(cell_len(line) for line in text.splitlines()) <= width
    cols, rows = parse(invoke(*args, "--json").stdout, "json")
    body = [line for line in text.splitlines() if "│" in line]
    if args[0] == "info":  # a record: one key per line
        assert [line.split("│")[0].strip() for line in body] == cols[:len(body)]
        return
    assert len(body) == len(rows)
    for line, row in zip(body, rows):
        for c, cell in zip(cols, (c.strip() for c in line.split("│"))):
            v = row[c]
            assert cell == (f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)), (c, cell, v)
