"""Small test helpers: run the CLI, parse its machine output."""

from __future__ import annotations

import csv
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


def parse(text: str, fmt: str):
    """Machine output back into (columns, rows as dicts of strings/values)."""
    if fmt in ("csv", "tsv"):
        # TSV is unquoted (tabs, newlines and backslashes are escaped instead): read it with QUOTE_NONE
        reader = (csv.reader(io.StringIO(text, newline="")) if fmt == "csv"
                  else csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE))
        rows = list(reader)
        return rows[0], [dict(zip(rows[0], r)) for r in rows[1:]]
    if fmt == "json":
        data = json.loads(text)
        data = data if isinstance(data, list) else [data]
        return list(data[0]) if data else [], data
    data = [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(data[0]) if data else [], data
