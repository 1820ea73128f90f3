"""Bad command lines: each gets one line naming the option and a non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from wallwatch.cli import main

PROBE = ["probe", "-n", "example.com", "-t", "127.0.0.1:9", "--quiet"]
BAD = [
    (PROBE + ["--max-inflight", "0"], "--max-inflight"),
    (PROBE + ["--window", "-1"], "--window"),
    (PROBE + ["--rate", "nan"], "--rate"),
    (PROBE + ["--rate", "inf"], "--rate"),
    (PROBE + ["--rate", "-5"], "--rate"),
    (PROBE + ["--timeout", "0"], "--timeout"),
    (PROBE + ["--retries", "-1"], "--retries"),
    (PROBE + ["--stream-workers", "0"], "--stream-workers"),
    (PROBE + ["--edns-payload", "70000"], "--edns-payload"),
    (PROBE + ["--ports", "0"], "--ports"),
    (PROBE + ["--procs", "0"], "--procs"),
    (PROBE + ["--ip-ttl", "0"], "--ip-ttl"),
    (PROBE + ["--source-port", "70000"], "--source-port"),
    (PROBE + ["-q", "NOPE"], "NOPE"),
    (PROBE + ["--control", "smtp:1.2.3.4"], "smtp"),
    (["probe", "-n", "example.com", "-t", "::1:5300"], "ambiguous"),
    (["probe", "-n", "example.com", "-t", "dark:"], "target"),
    (["probe", "-n", "example.com", "-t", "1.2.3.4:0"], "port"),
    (["watch", "-f", "{names}", "-o", "{tmp}/w", "-V", "a=127.0.0.1", "--every", "0"], "--every"),
    (
        ["watch", "-f", "{names}", "-o", "{tmp}/w", "-V", "a=127.0.0.1", "--post", "notaurl"],
        "--post",
    ),
    (["watch", "-f", "{names}", "-o", "{tmp}/w", "-V", "a=127.0.0.1", "--rounds", "0"], "--rounds"),
    (["watch", "-f", "{names}", "-o", "{tmp}/w", "-V", "a=127.0.0.1", "--delta", "nan"], "--delta"),
    (["netinfo", "not-an-address"], "not an IP address"),
    (["netinfo", "8.8.8.8", "--day", "yesterday"], "yesterday"),
    (["analyze", "--db", "{tmp}/none.duckdb"], "no such store"),
    (["explain", "abc", "--db", "{tmp}/none.duckdb"], "none.duckdb"),
    (["ingest", "{names}", "--db", "{tmp}/s.duckdb"], "not a wallwatch record"),
    (["show", "{names}"], "names.txt"),
    (["import", "ooni", "{names}", "-o", "{tmp}/o.jsonl"], "nothing was imported"),
    (["import", "satellite", "{tmp}", "-o", "{tmp}/o.jsonl"], "not a Satellite scan"),
    (["report", "{tmp}/nowhere"], "nowhere"),
]


@pytest.mark.parametrize(("argv", "says"), BAD, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD])
def test_a_bad_command_line_gets_one_line_and_a_non_zero_exit(
    argv: list[str], says: str, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("example.com\n")
    args = [a.format(names=names, tmp=tmp_path) for a in argv]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, AssertionError)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(
        result.exception
    )
    assert says in result.output, result.output


def test_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing records: the place and the cause, no traceback."""
    import errno

    from wallwatch import journal

    def full(self: journal.Journal) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out.jsonl"))

    monkeypatch.setattr(journal.Journal, "flush", full)
    result = CliRunner().invoke(main, ["probe", "-n", "example.com", "-t", "127.0.0.1:9", "--quiet",
                                       "--timeout", "0.1", "--retries", "0", "-o", str(tmp_path / "out.jsonl")])  # fmt: skip
    assert result.exit_code == 1
    assert (
        "out.jsonl: No space left on device" in result.output and "Traceback" not in result.output
    )


def test_resume_refuses_an_output_that_is_not_records(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("example.com\nexample.org\n")
    result = CliRunner().invoke(main, ["probe", "-f", str(names), "-t", "127.0.0.1:9", "--quiet",
                                       "-o", str(names), "--resume"])  # fmt: skip
    assert result.exit_code != 0 and "refusing to resume" in result.output
    assert names.read_text() == "example.com\nexample.org\n"


def test_an_imported_answer_that_is_not_an_address_is_an_input_error(tmp_path: Path) -> None:
    import json

    doc = {"test_name": "dnscheck", "test_version": "0.9.2", "measurement_start_time": "2024-01-01 00:00:00",
           "test_keys": {"queries": [{"hostname": "example.com", "query_type": "A", "engine": "udp",
                                      "resolver_address": "8.8.8.8:53", "t": 0.1,
                                      "answers": [{"answer_type": "A", "ipv4": "<script>", "ttl": 60}]}]}}  # fmt: skip
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc) + "\n")
    result = CliRunner().invoke(
        main, ["import", "ooni", str(path), "-o", str(tmp_path / "o.jsonl")]
    )
    assert result.exit_code == 1 and "is not an IPv4 address" in result.output


@pytest.mark.parametrize("verb", ["ingest", "analyze", "explain"])
def test_a_corrupt_store_is_one_line(verb: str, tmp_path: Path) -> None:
    db = tmp_path / "s.duckdb"
    db.write_bytes(b"this is not a DuckDB file" * 100)
    records = tmp_path / "r.jsonl"
    records.write_text('{"record_type":"input_error","schema_version":1,"report_id":"r","source":"-",'
                       '"line":1,"text":"x","error":"e"}\n')  # fmt: skip
    args = {"ingest": [str(records)], "analyze": [], "explain": ["abc"]}[verb]
    result = CliRunner().invoke(main, [verb, *args, "--db", str(db)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "s.duckdb" in result.output, (
        result.output
    )
