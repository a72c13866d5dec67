"""Terminal tables: NO_COLOR / FORCE_COLOR / TERM=dumb honoured, the sign readable without colour, control
characters shown visibly, heatmaps that say how many heads they leave out."""

from __future__ import annotations

import io

import pytest

from helpers import invoke
from tcli.output.render import write_table
from tcli.output.table import Table, inert, visible


def draw(table, monkeypatch, **env) -> str:
    for k in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE", "TERM"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    buf = io.StringIO()
    write_table(table, buf, width=80)
    return buf.getvalue()


SIGNED = Table.from_rows(["name", "value"], [("up", 2.0), ("down", -1.0)], bar="value")


@pytest.mark.parametrize("env, coloured", [
    ({"FORCE_COLOR": "1", "TERM": "xterm-256color"}, True),
    ({"FORCE_COLOR": "1", "NO_COLOR": "1", "TERM": "xterm-256color"}, False),
    ({"CLICOLOR_FORCE": "1", "TERM": "dumb"}, False),
    ({"TERM": "xterm-256color"}, False),  # not a terminal (a StringIO) and nothing forces colour
])
def test_colour_follows_the_environment(monkeypatch, env, coloured):
    out = draw(SIGNED, monkeypatch, **env)
    assert ("\x1b[" in out) == coloured
    lines = [line for line in out.splitlines() if "█" in line]
    assert "+████" in lines[0] and "−██" in lines[1]  # the sign is a character, not only a colour


def test_control_characters_are_shown_not_sent():
    evil = "\x1b[31mred\x07\u202eevil\x9b"
    assert inert(evil) == "\\x1b[31mred\\x07\\u202eevil\\x9b"
    assert visible(" a\tb\n") == "␣a⇥b↵" and visible("") == "∅"
    buf = io.StringIO()
    write_table(Table.from_rows(["token"], [(evil,)], token_columns=("token",), title="t\x1b]0;x\x07"), buf, width=80)
    assert "\x1b" not in buf.getvalue() and "\x07" not in buf.getvalue() and "\\x1b[31mred" in buf.getvalue()


def test_attention_heatmaps_say_how_many_heads_are_left_out(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    result = invoke("attention", "--ids", "1,2,3,4", "--format", "table")  # attn-only-2l: 16 heads
    assert result.stdout.count("attention (rows: destination") == 8
    assert "the first 8 of 16 selected heads are drawn (8 left out)" in result.stdout
    few = invoke("attention", "0.1", "1.2", "--ids", "1,2,3,4", "--format", "table").stdout
    assert few.count("attention (rows: destination") == 2 and "left out" not in few


def test_abbreviated_headers_come_with_a_legend(monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    out = invoke("heads", "--no-behaviour", "--format", "table").stdout
    assert "copy = copying_score" in out.replace("\n", " ")
