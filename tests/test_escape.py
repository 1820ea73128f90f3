"""Text from outside never acts where it is shown: terminal, rich console, report script."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from wallwatch.cli import main
from wallwatch.escape import console, json_for_html, terminal

HOSTILE = "<!--<script>alert(1)</script>\u2028\u2029 & [/red] \x1b]0;owned\x07\x1b[31m\x9b2J"


def test_json_in_a_script_block_cannot_end_or_hide_it() -> None:
    text = json_for_html({"vantage": HOSTILE})
    assert not any(c in text for c in "<>&\u2028\u2029")
    assert json.loads(text) == {"vantage": HOSTILE}


def test_terminal_text_shows_control_characters_instead_of_obeying_them() -> None:
    shown = terminal(HOSTILE + "\ttab\nline")
    assert "\x1b" not in shown and "\x9b" not in shown and "\x07" not in shown
    assert "\\x1b]0;owned" in shown and shown.endswith("\ttab\nline")
    assert "\\[/red]" in console(HOSTILE)  # rich markup is escaped, never interpreted


def test_a_name_line_that_looks_like_markup_does_not_crash_probe(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("[/red]\nexample.com\n\x1b[31mred.example\n")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["probe", "-f", str(names), "-t", "127.0.0.1:9", "-o", str(out),
                                       "--timeout", "0.2", "--retries", "0", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "[/red]" in result.output and "\x1b" not in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sum(1 for r in lines if r["record_type"] == "input_error") == 2
    assert sum(1 for r in lines if r["record_type"] == "measurement") == 1
