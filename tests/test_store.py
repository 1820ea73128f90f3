"""The store loads every record once: measurements by ID, strays and input errors by content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wallwatch import store
from wallwatch.journal import Journal
from wallwatch.records import SCHEMA_VERSION, InputError, Response, Stray


def _file(path: Path) -> Path:
    journal = Journal.open(path)
    for i in range(3):
        journal.write(Stray(schema_version=SCHEMA_VERSION, report_id="r", local_port=40000 + i,
                            response=Response(t=0.1 * i, rtt=0.0, src="192.0.2.1", sport=53,
                                              ip_ttl=60, raw_response="AAAA")))  # fmt: skip
        journal.write(InputError(schema_version=SCHEMA_VERSION, report_id="r", source="names.txt",
                                 line=i + 1, text="not ok", error="not a name"))  # fmt: skip
    journal.close()
    return path


def test_ingesting_the_same_strays_and_input_errors_again_adds_nothing(tmp_path: Path) -> None:
    first = _file(tmp_path / "a.jsonl")
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(first.read_bytes() * 2)  # the same records, twice, in another file
    db = tmp_path / "s.duckdb"
    for path in (first, first, copy):
        store.ingest([path], db)
    counts = store.query(
        db, "SELECT (SELECT count(*) FROM strays), (SELECT count(*) FROM input_errors)"
    )
    assert counts == [(3, 3)]


def test_a_store_from_before_content_keys_is_upgraded_and_deduplicated(tmp_path: Path) -> None:
    path = _file(tmp_path / "a.jsonl")
    db = tmp_path / "old.duckdb"
    store.ingest([path], db)
    con = store.connect(db)
    con.execute("ALTER TABLE strays DROP COLUMN stray_id")
    con.execute("ALTER TABLE input_errors DROP COLUMN input_error_id")
    con.execute("INSERT INTO strays SELECT * FROM strays")  # doubled, as older ingests did
    con.close()
    store.ingest([path], db)
    counts = store.query(
        db, "SELECT (SELECT count(*) FROM strays), (SELECT count(*) FROM input_errors)"
    )
    assert counts == [(3, 3)]


def test_a_refused_file_leaves_the_store_as_it_was(tmp_path: Path) -> None:
    """A file refused for a bad line leaves neither rows nor the table its parsed lines
    were staged in."""
    db = tmp_path / "s.duckdb"
    store.ingest([_file(tmp_path / "a.jsonl")], db)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(_file(tmp_path / "b.jsonl").read_bytes() + b'{"record_type": "stray"}\n')
    with pytest.raises(ValueError, match=f"{bad}:7: not a wallwatch record"):
        store.ingest([bad], db)
    tables = {row[0] for row in store.query(db, "SELECT table_name FROM duckdb_tables()")}
    assert tables == set(store.TABLES)
    assert store.query(
        db, "SELECT (SELECT count(*) FROM strays), (SELECT count(*) FROM input_errors)"
    ) == [(3, 3)]


def test_an_ingest_stopped_between_its_tables_loads_nothing_and_the_next_loads_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Measurements go in with their replies or not at all: a failure after the
    measurements' table was written (here: the last table's statement) rolls it back, so
    the next ingest of the file does not skip them as loaded and loses no reply."""
    import duckdb

    from test_scale import _jsonl_of_mix

    jsonl = _jsonl_of_mix(tmp_path, 300)
    db = tmp_path / "s.duckdb"
    broken = dict(store.TABLES, input_errors="SELECT error('the disk is full') AS input_error_id")
    monkeypatch.setattr(store, "TABLES", broken)
    with pytest.raises(duckdb.Error, match="the disk is full"):
        store.ingest([jsonl], db)
    assert {r[0] for r in store.query(db, "SELECT table_name FROM duckdb_tables()")} == set()
    monkeypatch.undo()
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    report = store.ingest([jsonl], db)
    assert report.measurements == len(lines) > 0
    assert report.responses == sum(len(m["responses"]) for m in lines) > 0
