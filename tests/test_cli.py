"""The command line end to end: junk input, crash and resume, sharding, store and show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED
from wallwatch import store
from wallwatch.cli import main
from wallwatch.journal import read_records, recover
from wallwatch.lab.loopback import Forgery, authoritative, racing_injector
from wallwatch.names import BadLine, QueryName, parse_lines
from wallwatch.records import InputError, Measurement

ZONE = {"www.example.com": ["93.184.216.34"]}


def lab(serve):  # noqa: ANN001, ANN201
    return serve(racing_injector(authoritative(ZONE), lambda n: n.endswith(".com"),
                                 [Forgery("65.49.2.178", ip_ttl=103)], genuine_delay=0.02))  # fmt: skip


def test_junk_lines_are_reported_with_line_numbers_and_kept(serve, tmp_path: Path) -> None:
    server = lab(serve)
    names = tmp_path / "names.txt"
    names.write_text(
        "www.example.com\n\n# a comment\nbad name here\nяндекс.рф\nhttps://Twitter.com/x\n"
        + "a" * 64
        + ".com\n"
    )
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["probe", "-f", str(names), "-t", server.spec, "-o", str(out),
                                       "--window", "0.1", "--timeout", "0.3", "--quiet"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"{names}:4: skipped 'bad name here'" in result.output
    assert f"{names}:7: skipped" in result.output
    records = list(read_records(out))
    errors = [r for r in records if isinstance(r, InputError)]
    assert [(e.line, e.text) for e in errors] == [(4, "bad name here"), (7, "a" * 64 + ".com")]
    ms = {m.hostname: m for m in records if isinstance(m, Measurement)}
    assert set(ms) == {"www.example.com", "xn--d1acpjx3f.xn--p1ai", "twitter.com"}
    assert ms["xn--d1acpjx3f.xn--p1ai"].input == "яндекс.рф"


def test_real_blocklist_reads_without_loss() -> None:
    path = SHARED / "data/lists/gfw-report_quic-sni_dns-blocklist_2025-01-05.txt"
    if not path.exists():
        pytest.skip(f"{path} is not beside the project")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    items = list(parse_lines(lines, str(path)))
    meaningful = [t for t in lines if t.strip() and not t.strip().startswith("#")]
    assert len(items) == len(meaningful)  # every line is a name or a reported bad line
    assert sum(isinstance(i, QueryName) for i in items) > 0.95 * len(items)
    assert all(isinstance(i, QueryName | BadLine) for i in items)


def _probe_cmd(server_spec: str, names: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "wallwatch", "probe", "-f", str(names), "-t", server_spec,
            "-o", str(out), "--window", "0.05", "--timeout", "0.5", "--quiet", *extra]  # fmt: skip


def test_sigkill_mid_sweep_then_resume_measures_every_name_exactly_once(
    serve, tmp_path: Path
) -> None:
    server = lab(serve)
    names = tmp_path / "names.txt"
    wanted = [f"host{i}.example.com" for i in range(3000)]
    names.write_text("\n".join(wanted) + "\n")
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen(_probe_cmd(server.spec, names, out, "--rate", "1500"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size < 200_000):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # Simulate the worst a kill can do to an append: a torn last line.
    with open(out, "ab") as handle:
        handle.write(b'{"record_type":"measurement","schema_version":1,"measurement_uid":"to')
    first = measured_hosts(out)
    assert 0 < len(first) < len(wanted), "the kill should land mid-sweep"
    done = subprocess.run(_probe_cmd(server.spec, names, out, "--rate", "0", "--resume"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "dropped a torn record" in done.stderr
    hosts = Counter(r.hostname for r in read_records(out) if isinstance(r, Measurement))
    assert set(hosts) == set(wanted)
    assert set(hosts.values()) == {1}


def measured_hosts(path: Path) -> list[str]:
    """Host names of the complete measurement lines of a file that may end torn."""
    out = []
    for line in path.read_bytes().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("record_type") == "measurement":
            out.append(record["hostname"])
    return out


def test_recover_drops_only_torn_lines(tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    good = '{"record_type":"input_error","schema_version":1,"report_id":"r","source":"-","line":3,"text":"x y","error":"e"}\n'
    # Line 2: a torn prefix, then another writer's whole record on the same line.
    out.write_text(
        good + '{"record_type":"input_err' + good.replace('"line":3', '"line":5')
        + good.replace('"line":3', '"line":4') + '{"record_type":"meas'
    )  # fmt: skip
    recovered = recover(out)
    assert [n for n, _ in recovered.dropped] == [2, 4]
    assert recovered.input_errors == {("-", 3), ("-", 4), ("-", 5)}
    assert out.read_text().count("\n") == 3 and recovered.records == 3


def test_procs_shard_the_names_and_lose_none(serve, tmp_path: Path) -> None:
    server = lab(serve)
    names = tmp_path / "names.txt"
    wanted = [f"h{i}.example.com" for i in range(400)]
    names.write_text("\n".join(wanted) + "\n")
    out = tmp_path / "out.jsonl"
    done = subprocess.run(_probe_cmd(server.spec, names, out, "--procs", "2", "--rate", "0"),
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    hosts = Counter(r.hostname for r in read_records(out) if isinstance(r, Measurement))
    assert hosts == Counter(wanted)
    assert len({r.report_id for r in read_records(out)}) == 1


def test_procs_refuse_stdout() -> None:
    result = CliRunner().invoke(
        main, ["probe", "-n", "a.com", "-t", "127.0.0.1", "--procs", "2", "--quiet"]
    )
    assert result.exit_code != 0 and "output file" in result.output


def test_bad_target_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["probe", "-n", "a.com", "-t", "dark:nowhere"])
    assert result.exit_code != 0 and "'nowhere' is not an IP address" in result.output


def test_ingest_show_and_parquet(serve, tmp_path: Path) -> None:
    server = lab(serve)
    out = tmp_path / "out.jsonl"
    runner = CliRunner()
    result = runner.invoke(main, ["probe", "-n", "www.example.com", "-n", "nx.example.org", "-t", server.spec,
                                  "-o", str(out), "--window", "0.1", "--quiet", "-A", "campaign=test"])  # fmt: skip
    assert result.exit_code == 0, result.output
    db = tmp_path / "ww.duckdb"
    result = runner.invoke(
        main, ["ingest", str(out), "--db", str(db), "--parquet", str(tmp_path / "pq")]
    )
    assert result.exit_code == 0, result.output
    rows = store.query(db, "SELECT hostname, response_index, ip_ttl FROM responses ORDER BY ALL")
    assert rows == [
        ("nx.example.org", 0, 64),
        ("www.example.com", 0, 103),
        ("www.example.com", 1, 64),
    ]
    assert store.query(db, "SELECT count(*) FROM measurements")[0][0] == 2
    assert (tmp_path / "pq" / "answers.parquet").exists()
    again = runner.invoke(main, ["ingest", str(out), "--db", str(db)])
    assert "+0 measurements" in again.output
    dig = runner.invoke(main, ["show", str(out), "--hostname", "www.example.com"])
    assert (
        "status: NOERROR" in dig.output
        and "65.49.2.178" in dig.output
        and "IP TTL 103" in dig.output
    )
    assert ";; reply 2 of 2" in dig.output
    compact = runner.invoke(main, ["show", str(out), "--format", "compact"])
    assert "[ttl=103" in compact.output and "65.49.2.178 | [ttl=64" in compact.output
    as_json = runner.invoke(main, ["show", str(out), "--format", "json", "--limit", "1"])
    assert json.loads(as_json.output)["annotations"] == {"campaign": "test"}


def test_show_and_ingest_name_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        '{"record_type":"input_error","schema_version":1,"report_id":"r","source":"-","line":1,"text":"x","error":"e"}\nnot json\n'
    )
    result = CliRunner().invoke(main, ["show", str(bad)])
    assert result.exit_code != 0 and f"{bad}:2: not a wallwatch record" in result.output
    result = CliRunner().invoke(main, ["ingest", str(bad), "--db", str(tmp_path / "x.duckdb")])
    assert result.exit_code != 0 and f"{bad}:2" in result.output
    other = tmp_path / "ooni.json"
    other.write_text(json.dumps({"test_keys": {}, "measurement_start_time": "x"}) + "\n")
    result = CliRunner().invoke(main, ["show", str(other)])
    assert result.exit_code != 0 and f"{other}:1" in result.output


def test_demo_replays_2014_on_loopback(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["demo", "--loopback", "--out", str(tmp_path / "demo")])
    assert result.exit_code == 0, result.output
    rows = store.query(
        tmp_path / "demo" / "wallwatch.duckdb",
        """
        SELECT m.target_kind, a.ipv4 = '65.49.2.178' AS forged, count(*)
        FROM measurements m JOIN answers a USING (measurement_uid)
        WHERE a.response_index = 0 AND m.hostname NOT LIKE '%.cn' GROUP BY ALL ORDER BY ALL""",
    )
    assert rows == [("control", False, 87), ("dark", True, 87), ("resolver", True, 87)]
