"""The reader matrix: tcli's CSV, TSV and JSON lines, full of tricky tokens, load unchanged, with no row lost,
in the readers researchers pipe them into. Each reader is called with the options docs/recipes.md gives
(mostly none; pandas needs keep_default_na=False so that tokens such as "nan" stay text).

TSV dialect: one record per line (backslash, tab, LF and CR written \\\\ \\t \\n \\r) and a field holding a
double quote quoted as the csv module does. The token columns read back are undone with ``untsv``.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess

import pytest

from builders import random_attn_only
from helpers import invoke, untsv

TRICKY = ["a", '"', '"q"', 'a"b', '""', "\t", "\n", "\r", "\r\n", "\\", "\\t", "\\n", "x,y", ",", "nan", "NaN",
          "null", "NA", "None", "true", "000", "-0", "1e5", "  ", " the", "'", "\\xe2", "é", "#", "|", "a\tb\nc"]
N = len(TRICKY)
K = 2
COLUMNS = ["src_id", "src_token", "rank", "dst_id", "dst_token", "value"]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{format: path} of `tcli bigram --all -k 2` on a model whose vocabulary is TRICKY."""
    from tokenizers import Tokenizer, models

    root = tmp_path_factory.mktemp("readers")
    path = random_attn_only(root / "m", d_vocab=N)
    Tokenizer(models.WordLevel({t: i for i, t in enumerate(TRICKY)}, unk_token="a")).save(str(path / "tokenizer.json"))
    files = {}
    for fmt, ext in (("tsv", "tsv"), ("csv", "csv"), ("jsonl", "jsonl"), ("json", "json")):
        files[fmt] = root / f"out.{ext}"
        files[fmt].write_bytes(invoke("bigram", path, "--all", "-k", K, "--format", fmt).stdout_bytes)
    return files


def check(rows, tsv: bool):
    """Every record present, every token exactly its string (after undoing TSV's escapes)."""
    assert len(rows) == N * K, len(rows)
    fix = untsv if tsv else (lambda s: s)
    for r in rows:
        assert fix(str(r["src_token"])) == TRICKY[int(r["src_id"])], r
        assert fix(str(r["dst_token"])) == TRICKY[int(r["dst_id"])], r
        float(r["value"])


def test_python_csv(outputs):
    with open(outputs["tsv"], newline="", encoding="utf-8") as f:
        check(list(csv.DictReader(f, dialect="excel-tab")), tsv=True)
    with open(outputs["tsv"], newline="", encoding="utf-8") as f:
        check(list(csv.DictReader(f, delimiter="\t")), tsv=True)
    with open(outputs["csv"], newline="", encoding="utf-8") as f:
        check(list(csv.DictReader(f)), tsv=False)


def test_pandas(outputs):
    pd = pytest.importorskip("pandas")
    for fmt, kw in (("tsv", {"sep": "\t"}), ("csv", {})):
        df = pd.read_csv(outputs[fmt], keep_default_na=False, dtype=str, **kw)
        assert list(df.columns) == COLUMNS
        check(df.to_dict("records"), tsv=fmt == "tsv")
    check(pd.read_json(outputs["jsonl"], lines=True, dtype=False).to_dict("records"), tsv=False)
    # without keep_default_na the rows are all there, but "nan", "NaN", "null", "NA", "None" become missing
    df = pd.read_csv(outputs["tsv"], sep="\t")
    assert len(df) == N * K and df["src_token"].isna().sum() == 5 * K


def test_polars(outputs):
    pl = pytest.importorskip("polars")
    for fmt, kw in (("tsv", {"separator": "\t"}), ("csv", {})):
        df = pl.read_csv(outputs[fmt], infer_schema=False, **kw)
        assert df.columns == COLUMNS
        check(df.to_dicts(), tsv=fmt == "tsv")
    check(pl.read_ndjson(outputs["jsonl"]).to_dicts(), tsv=False)


def test_duckdb(outputs):
    duckdb = pytest.importorskip("duckdb")
    for fmt in ("tsv", "csv"):  # read_csv_auto sniffs the delimiter, the quoting and the header itself
        rel = duckdb.sql(f"select * from read_csv_auto('{outputs[fmt]}', all_varchar = true)")
        assert rel.columns == COLUMNS
        check([dict(zip(rel.columns, r)) for r in rel.fetchall()], tsv=fmt == "tsv")
    rel = duckdb.sql(f"select * from read_json_auto('{outputs['jsonl']}')")
    check([dict(zip(rel.columns, r)) for r in rel.fetchall()], tsv=False)


@pytest.mark.parametrize("fmt, flag", [("tsv", "--tsv"), ("csv", "--csv"), ("jsonl", "--nl")])
def test_sqlite_utils(outputs, tmp_path, fmt, flag):
    exe = shutil.which("sqlite-utils") or pytest.skip("sqlite-utils not installed")
    db = tmp_path / "t.db"
    with open(outputs[fmt], "rb") as f:
        subprocess.run([exe, "insert", str(db), "t", "-", flag], stdin=f, check=True, capture_output=True)
    out = subprocess.run([exe, "query", str(db), "select * from t", "--nl"], check=True, capture_output=True,
                         text=True).stdout
    rows = [json.loads(line) for line in out.splitlines()]
    if fmt == "csv":  # sqlite-utils reads CSV in text mode: a CR LF inside a quoted field becomes LF
        assert len(rows) == N * K
        rows = [r for r in rows if "\r" not in TRICKY[r["src_id"]] + TRICKY[r["dst_id"]]]
        assert len(rows) < N * K
        for r in rows:
            assert (r["src_token"], r["dst_token"]) == (TRICKY[r["src_id"]], TRICKY[r["dst_id"]])
        return
    check(rows, tsv=fmt == "tsv")


def test_jq(outputs):
    exe = shutil.which("jq") or pytest.skip("jq not installed")
    out = subprocess.run([exe, "-c", "{src_id, src_token, dst_id, dst_token, value}", str(outputs["jsonl"])],
                         check=True, capture_output=True, text=True).stdout
    check([json.loads(line) for line in out.splitlines()], tsv=False)
    n = subprocess.run([exe, "length", str(outputs["json"])], check=True, capture_output=True, text=True).stdout
    assert int(n) == N * K


def test_awk_and_cut(outputs):
    """Line tools see one record per line and six fields in each; cut picks a column."""
    awk = shutil.which("awk") or pytest.skip("awk not installed")
    out = subprocess.run([awk, "-F", "\t", "{print NF}", str(outputs["tsv"])], check=True, capture_output=True,
                         text=True).stdout.split()
    assert out == ["6"] * (N * K + 1)
    ids = subprocess.run(["cut", "-f", "1", str(outputs["tsv"])], check=True, capture_output=True,
                         text=True).stdout.split("\n")[1:-1]
    assert sorted(map(int, ids)) == sorted(i for i in range(N) for _ in range(K))


def test_miller(outputs):
    exe = shutil.which("mlr") or pytest.skip("Miller (mlr) not installed on this machine")
    out = subprocess.run([exe, "--icsv", "--ojson", "cat", str(outputs["csv"])], check=True, capture_output=True,
                         text=True).stdout
    check(json.loads(out), tsv=False)


def test_sqlite3_shell(outputs, tmp_path):
    exe = shutil.which("sqlite3") or pytest.skip("sqlite3 not installed")
    db = tmp_path / "s.db"
    subprocess.run([exe, str(db), f".import --csv {outputs['csv']} t"], check=True, capture_output=True)
    out = subprocess.run([exe, "-json", str(db), "select * from t"], check=True, capture_output=True,
                         text=True).stdout
    check(json.loads(out), tsv=False)
