"""Small test helpers: run the CLI, parse its machine output."""

from __future__ import annotations

import csv
import re
import io
import json

from typer.testing import CliRunner

from tcli.cli import app


def invoke(*args, ok: bool = True):
    """Run ``tcli ARGS``; with ok=True assert exit 0 and let exceptions propagate."""
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in args], catch_exceptions=not ok)
    if ok:
        assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr)
    return result


TSV_UNESCAPES = {"\\\\": "\\", "\\t": "\t", "\\n": "\n", "\\r": "\r"}


def untsv(field: str) -> str:
    """Undo tcli's TSV escapes (``\\\\ \\t \\n \\r``); other backslashes are literal."""
    return re.sub(r"\\[\\tnr]", lambda m: TSV_UNESCAPES[m.group(0)], field)


def parse(text: str, fmt: str):
    """Machine output back into (columns, rows as dicts of strings/values)."""
    if fmt in ("csv", "tsv"):
        # TSV: csv quoting (a field holding '"' is quoted, quotes doubled) plus \\ \t \n \r escapes
        reader = (csv.reader(io.StringIO(text, newline="")) if fmt == "csv"
                  else csv.reader(io.StringIO(text, newline=""), delimiter="\t"))
        rows = list(reader)
        if fmt == "tsv":
            rows = [[untsv(f) for f in r] for r in rows]
        return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    if fmt == "json":
        data = json.loads(text)
        data = data if isinstance(data, list) else [data]
        return list(data[0]) if data else [], data
    data = [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(data[0]) if data else [], data


def saved_models(root, build):
    """A lazy zoo: ``get(*key)`` -> (model, checkpoint dir), ``build(*key)`` saved under ``root`` on first use."""
    made = {}

    def get(*key):
        if key not in made:
            model = build(*key)
            model.save_pretrained(root / "-".join(map(str, key)), safe_serialization=True)
            made[key] = (model, root / "-".join(map(str, key)))
        return made[key]
    return get


def decompose_rows(w, V: int, tokens, position: int, target: int, minus=None):
    """(decompose's table, its rows as dicts), the rows checked to sum to the ``total`` row (the last)."""
    import pytest

    from tcli.analyses.residual import decompose
    from tcli.checkpoint.tokens import Vocab

    table = decompose(w, Vocab(V, None), tokens, position, target, minus)
    rows = [dict(zip(table.columns, r)) for r in table.rows()]
    assert sum(r["value"] for r in rows[:-1]) == pytest.approx(rows[-1]["value"], rel=1e-9)
    return table, rows
