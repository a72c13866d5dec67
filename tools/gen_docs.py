"""Regenerate the generated parts of docs/commands.md from tcli/columns.py (CI checks they are current).

Each ``## command`` section holds a block between ``<!-- columns: NAME -->`` and ``<!-- /columns -->``;
this script rewrites the block's body. ``python tools/gen_docs.py`` writes the file, ``--check`` exits 1
if it is stale (tests/test_docs.py runs the check).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tcli.columns import TABLES  # noqa: E402

DOC = ROOT / "docs" / "commands.md"
BLOCK = re.compile(r"(<!-- columns: (\w+) -->\n).*?(<!-- /columns -->)", re.S)


def columns_markdown(command: str) -> str:
    lines = []
    for when, cols in TABLES[command]:
        label = f"Columns ({when})" if when else "Columns"
        lines.append(f"{label}: `{', '.join(cols)}`.")
    return "\n".join(lines) + "\n"


def render(text: str) -> str:
    return BLOCK.sub(lambda m: m.group(1) + columns_markdown(m.group(2)) + m.group(3), text)


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    missing = [c for c in TABLES if f"<!-- columns: {c} -->" not in text]
    if missing:
        print(f"docs/commands.md: no columns block for {', '.join(missing)}", file=sys.stderr)
        return 1
    new = render(text)
    if "--check" in argv:
        if new != text:
            print("docs/commands.md is stale: run python tools/gen_docs.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
