"""The Parquet twin of a prober's output: ingest reads it where it holds the file's bytes
and nothing else; whatever happens to the twin, the store is the one the JSONL gives."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ingest_both, udp_query
from wallwatch import columns, store
from wallwatch.journal import Journal, recover
from wallwatch.lab.loopback import Forgery, authoritative, racing_injector
from wallwatch.probe.engine import ProbeConfig, Prober


def _sweep(serve, tmp_path: Path, *, part_bytes: int, count: int = 300) -> Path:  # noqa: ANN001
    """A real sweep on loopback (answers, strays from a racing injector, silent hosts)."""
    names = {f"n{i}.example.com": ["192.0.2.1"] for i in range(count)}
    forged = [Forgery("65.49.2.178", ip_ttl=99), Forgery("59.24.3.173", delay=0.002, ip_ttl=37)]
    server = serve(racing_injector(authoritative(names), lambda n: n.startswith("n1"), forged,
                                   genuine_delay=0.01))  # fmt: skip
    silent = serve(lambda request: [])  # a dark host: no answer
    out = tmp_path / "out.jsonl"
    journal = Journal.open(out, twin=True)
    assert journal.columns is not None
    journal.columns.part_bytes = part_bytes
    journal.columns.wait = True  # every part converted, whatever the machine's speed
    journal.flush_bytes = 4096  # appends of a few KB, as a long sweep's are, in either loop
    queries = [udp_query(server, n) for n in names] + [
        udp_query(silent, n) for n in list(names)[:20]
    ]
    config = ProbeConfig(rate=None, timeout=0.2, window=0.05, retries=0, vantage="t")
    Prober(config, journal).run(queries)
    journal.close()
    return out


def test_a_sweep_by_two_workers_leaves_a_twin_that_ingests_as_its_json(
    serve, tmp_path: Path
) -> None:  # noqa: ANN001
    names = tmp_path / "names.txt"
    names.write_text("".join(f"h{i}.example.com\n" for i in range(600)) + "not a name!\n")
    server = serve(authoritative({f"h{i}.example.com": ["192.0.2.7"] for i in range(600)}))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "wallwatch", "probe", "-f", str(names), "-t", server.spec, "-o", str(out),
         "--procs", "2", "--rate", "1500", "--window", "0.05", "--timeout", "0.5", "--retries", "0", "--quiet"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = columns.plan(out)
    # Two writers appended to one file: each one's parts hold only its own ranges, and
    # together they hold every byte (the parent's input error included).
    assert found.parts and found.gaps == (), found
    assert ingest_both(out, tmp_path) == 600
    loaded = subprocess.run([sys.executable, "-m", "wallwatch", "ingest", str(out), "--db", str(tmp_path / "cli.duckdb")],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert loaded.returncode == 0 and "(100% read from their Parquet twin)" in loaded.stderr, (
        loaded.stderr
    )


def test_no_columns_writes_no_twin(serve, tmp_path: Path) -> None:  # noqa: ANN001
    server = serve(authoritative({"a.example.com": ["192.0.2.7"]}))
    out = tmp_path / "out.jsonl"
    done = subprocess.run(
        [sys.executable, "-m", "wallwatch", "probe", "-n", "a.example.com", "-t", server.spec,
         "-o", str(out), "--no-columns", "--quiet", "--timeout", "0.3", "--window", "0.05"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size and not columns.directory(out).exists()


def test_a_missing_part_is_read_as_json(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=16 << 10)
    parts = columns.plan(out).parts
    assert len(parts) >= 4
    parts[2].unlink()  # a conversion a kill -9 interrupted
    found = columns.plan(out)
    assert len(found.parts) == len(parts) - 1 and len(found.gaps) == 1
    assert ingest_both(out, tmp_path) > 300


def test_bytes_changed_under_a_part_are_read_from_the_file(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=16 << 10)
    parts = columns.plan(out).parts
    data = bytearray(out.read_bytes())
    # One address in the middle of the file, changed in place (same length, same inode).
    at = len(data) // 2
    while True:  # the first answer of a measurement line after the middle
        at = data.index(b"\n", at) + 1
        line = data[at : data.index(b"\n", at)]
        if line.startswith(b'{"record_type":"measurement"') and b'"ipv4":"192.0.2.1"' in line:
            at += line.index(b'"ipv4":"192.0.2.1"')
            break
    data[at : at + 18] = b'"ipv4":"192.0.2.9"'
    with open(out, "r+b") as handle:
        handle.write(data)
    found = columns.plan(out)
    assert len(found.parts) == len(parts) - 1 and len(found.gaps) == 1, (found, parts)
    ingest_both(out, tmp_path)
    assert store.query(
        tmp_path / "twin.duckdb", "SELECT count(*) FROM answers WHERE ipv4 = '192.0.2.9'"
    ) == [(1,)]


def test_an_unreadable_part_falls_back_to_the_json(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=1 << 30)
    (part,) = columns.plan(out).parts
    part.write_bytes(b"PAR1 not really parquet PAR1")  # its name (and so its checksum) kept
    assert columns.plan(out).parts == (part,)
    assert ingest_both(out, tmp_path) > 300


def test_a_copied_file_is_read_as_json(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=1 << 30)
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(out.read_bytes())
    os.rename(columns.directory(out), columns.directory(copy))  # the parts name out's inode
    assert columns.plan(copy).parts == ()


def test_resume_rewriting_a_torn_file_discards_its_twin(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=1 << 30)
    with open(out, "ab") as handle:
        handle.write(b'{"record_type":"measurement","schema_ver')  # torn by a kill
    assert columns.plan(out).parts
    assert recover(out).dropped
    assert not columns.directory(out).exists()


def test_scratch_of_a_dead_writer_is_removed_and_a_live_ones_kept(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    folder = columns.directory(out)
    folder.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = folder / f".{dead.pid}-0.jsonl.tmp"
    live = folder / f".{os.getpid()}-0.jsonl.tmp"
    for f in (stale, live):
        f.write_bytes(b"x")
    Journal.open(out, twin=True).close()
    assert not stale.exists() and live.exists()


def test_a_failing_conversion_stops_the_twin_and_keeps_the_jsonl(
    serve, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:  # noqa: ANN001
    def full(self: columns.Writer, con: object, start: int, end: int, pieces: list[bytes]) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(columns.Writer, "_convert", full)
    out = _sweep(serve, tmp_path, part_bytes=16 << 10)
    err = capfd.readouterr().err
    assert err.count("columns stopped") == 1 and "No space left on device" in err
    assert columns.plan(out).parts == ()
    assert store.ingest([out], tmp_path / "s.duckdb").responses > 300


def test_a_slow_conversion_never_holds_the_writer_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part that would bring what waits for conversion past its bound is left to the
    JSONL, and the writer goes on at once."""
    original = columns.Writer._convert

    def slow(self: columns.Writer, con: object, start: int, end: int, pieces: list[bytes]) -> None:
        time.sleep(0.3)
        original(self, con, start, end, pieces)

    monkeypatch.setattr(columns.Writer, "_convert", slow)
    out = tmp_path / "out.jsonl"
    journal = Journal.open(out, twin=True)
    writer = journal.columns
    assert writer is not None
    writer.part_bytes = writer.queue_bytes = 1
    line = b'{"record_type":"input_error","schema_version":1,"report_id":"r","source":"s","line":%d,"text":"x","error":"e"}\n'
    begin = time.monotonic()
    for i in range(6):
        journal.write_lines(line % i, 1)
        journal.flush()
    handed = time.monotonic() - begin
    journal.close()
    assert handed < 0.25  # no hand-off waited for a 0.3 s conversion
    found = columns.plan(out)
    assert writer.skipped >= 2 and len(found.parts) == writer.parts == 6 - writer.skipped
    assert found.gaps
    assert ingest_both(out, tmp_path) == 0
    assert store.query(tmp_path / "twin.duckdb", "SELECT count(*) FROM input_errors") == [(6,)]


def test_a_file_replaced_at_the_same_path_does_not_take_the_old_twin(serve, tmp_path: Path) -> None:  # noqa: ANN001
    out = _sweep(serve, tmp_path, part_bytes=16 << 10)
    old = set(columns.directory(out).iterdir())
    out.unlink()  # the twin stays; a new file at the path may get the old inode number
    out = _sweep(serve, tmp_path, part_bytes=1 << 30)
    found = columns.plan(out)
    assert len(found.parts) == 1 and found.gaps == ()
    assert not old & set(columns.directory(out).iterdir())  # the old parts were removed
    assert ingest_both(out, tmp_path) > 300
