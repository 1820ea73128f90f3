"""The embedded store: JSONL segments loaded into DuckDB tables and Parquet files.

Why DuckDB: one file, no server, SQL over millions of replies on a laptop, and it
reads JSON and writes Parquet with its built-in extensions, offline. DuckDB allows
one writing process, so the prober never writes to it: it appends JSONL (the
truth), and ``wallwatch ingest`` loads those files here afterwards.

Tables (one row per ...), documented in docs/schema.md:

* ``measurements``: measurement (query); the lists are in the other tables;
* ``responses``: reply packet, with ``measurement_uid`` and ``response_index``;
* ``answers``: answer record of a reply;
* ``strays``: reply that matched no open query;
* ``input_errors``: input line that was not a name.

Every file is validated line by line first (a bad line is named by file and line
number and nothing of that file is loaded), a measurement already in the
store (same ``measurement_uid``) is not loaded twice, and the tables are written in one
transaction (a measurement is loaded with all its replies or not at all).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from wallwatch import columns
from wallwatch.journal import iter_lines
from wallwatch.records import SCHEMA_VERSION
from wallwatch.vocab import RecordType

#: DuckDB's memory ceiling for ingest and analysis (``WALLWATCH_MEMORY_LIMIT`` overrides):
#: past it DuckDB spills to disk, and the analysis of a store too large for it runs in
#: slices of names (:func:`wallwatch.analysis.run.slices_for`), instead of growing with
#: the data.
MEMORY_LIMIT = os.environ.get("WALLWATCH_MEMORY_LIMIT", "3GB")

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}  # fmt: skip


def limit_bytes(limit: str = MEMORY_LIMIT) -> int:
    """A memory limit as DuckDB takes it (``3GB``, ``800 MiB``), in bytes; ``ValueError``
    naming it when it is not one."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", limit)
    unit = found.group(2).lower() if found else ""
    if found is None or unit not in _UNITS or float(found.group(1)) <= 0:
        raise ValueError(f"WALLWATCH_MEMORY_LIMIT {limit!r}: a size such as 3GB or 800MiB")
    return int(float(found.group(1)) * _UNITS[unit])


_ANSWER = (
    "STRUCT(answer_type VARCHAR, ttl BIGINT, name VARCHAR, ipv4 VARCHAR, ipv6 VARCHAR, "
    "hostname VARCHAR, rdata VARCHAR)"
)
_RESPONSE = (
    "STRUCT(t DOUBLE, rtt DOUBLE, src VARCHAR, sport INTEGER, ip_ttl INTEGER, "
    "raw_response VARCHAR, engine VARCHAR, attempt INTEGER, failure VARCHAR, "
    "transaction_id INTEGER, flags INTEGER, rcode INTEGER, qname VARCHAR, qtype INTEGER, "
    f"edns BOOLEAN, ancount INTEGER, nscount INTEGER, arcount INTEGER, answers {_ANSWER}[], "
    "question_mismatch BOOLEAN, ip_id INTEGER, df BOOLEAN)"
)
_ICMP = "STRUCT(t DOUBLE, src VARCHAR, icmp_type INTEGER, icmp_code INTEGER, attempt INTEGER)"

#: Every field of every record type, with its DuckDB type (read_json's ``columns``).
COLUMNS: dict[str, str] = {
    "record_type": "VARCHAR",
    "schema_version": "INTEGER",
    "measurement_uid": "VARCHAR",
    "report_id": "VARCHAR",
    "measurement_start_time": "VARCHAR",
    "vantage": "VARCHAR",
    "hostname": "VARCHAR",
    "query_type": "VARCHAR",
    "engine": "VARCHAR",
    "resolver_address": "VARCHAR",
    "target_kind": "VARCHAR",
    "transaction_id": "INTEGER",
    "source_port": "INTEGER",
    "t0": "DOUBLE",
    "t": "DOUBLE",
    "failure": "VARCHAR",
    "ip_ttl": "INTEGER",
    "attempts": "INTEGER",
    "rd": "BOOLEAN",
    "edns_payload": "INTEGER",
    "input": "VARCHAR",
    "responses": f"{_RESPONSE}[]",
    "icmp": f"{_ICMP}[]",
    "annotations": "MAP(VARCHAR, VARCHAR)",
    "local_port": "INTEGER",
    "response": _RESPONSE,
    "source": "VARCHAR",
    "line": "INTEGER",
    "text": "VARCHAR",
    "error": "VARCHAR",
}


def read_json_sql(files: Sequence[str | Path]) -> str:
    """DuckDB's reader of wallwatch JSONL ``files``, typed by :data:`COLUMNS` (what ingest
    stages and what the Parquet twin holds, so both parse a line the same way)."""
    names = "[" + ", ".join(sql_literal(str(p)) for p in files) + "]"
    spec = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS.items()) + "}"
    return f"read_json({names}, format='newline_delimited', columns={spec})"


_MEASUREMENT_COLS = [
    "measurement_uid", "report_id", "measurement_start_time", "vantage", "hostname",
    "query_type", "engine", "resolver_address", "target_kind", "transaction_id", "source_port",
    "t0", "t", "failure", "ip_ttl", "attempts", "rd", "edns_payload", "input", "annotations",
    "schema_version",
]  # fmt: skip

_KEY = ("measurement_uid", "hostname", "query_type", "resolver_address", "target_kind", "vantage")

TABLES: dict[str, str] = {
    "measurements": (
        f"SELECT {', '.join(_MEASUREMENT_COLS)}, len(responses) AS response_count, "
        "len(icmp) AS icmp_count, icmp FROM _ww_staged WHERE record_type = 'measurement'"
    ),
    "responses": (
        f"SELECT {', '.join(_KEY)}, i - 1 AS response_index, r.* EXCLUDE (answers) FROM ("
        f"SELECT {', '.join(_KEY)}, unnest(responses) AS r, generate_subscripts(responses, 1) AS i "
        "FROM _ww_staged WHERE record_type = 'measurement')"
    ),
    "answers": (
        f"SELECT {', '.join(_KEY)}, ri - 1 AS response_index, ai - 1 AS answer_index, "
        "a.answer_type, a.ttl, a.name, a.ipv4, a.ipv6, a.hostname AS target, a.rdata FROM ("
        f"SELECT {', '.join(_KEY)}, ri, unnest(r.answers) AS a, generate_subscripts(r.answers, 1) AS ai "
        f"FROM (SELECT {', '.join(_KEY)}, unnest(responses) AS r, "
        "generate_subscripts(responses, 1) AS ri FROM _ww_staged WHERE record_type = 'measurement'))"
    ),
    "strays": (
        "SELECT md5(concat_ws('|', report_id, local_port, response.t, response.src, "
        "response.sport, response.raw_response)) AS stray_id, "
        "report_id, measurement_uid, local_port, response.* EXCLUDE (answers), "
        "response.answers AS answers FROM _ww_staged WHERE record_type = 'stray'"
    ),
    "input_errors": (
        "SELECT md5(concat_ws('|', report_id, source, line, text, error)) AS input_error_id, "
        "report_id, source, line, text, error FROM _ww_staged WHERE record_type = 'input_error'"
    ),
}

#: Tables whose rows have no ID in the records: a content hash keeps each row once, so
#: ingesting the same file again (or a file and its copy) adds nothing.
CONTENT_KEYS = {"strays": "stray_id", "input_errors": "input_error_id"}


@dataclass(frozen=True, slots=True)
class IngestReport:
    """What one ingest added."""

    files: int
    records: int
    measurements: int
    responses: int
    #: Bytes of JSONL the files hold, and how many of them were read from their Parquet
    #: twins (:mod:`wallwatch.columns`) rather than parsed.
    file_bytes: int = 0
    twin_bytes: int = 0


def _duckdb() -> Any:
    try:
        import duckdb
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("the store needs DuckDB: pip install 'wallwatch[store]'") from exc
    return duckdb


class _Header(msgspec.Struct):
    """What validation checks of each line; the store's column types check the rest."""

    record_type: str
    schema_version: int


_header = msgspec.json.Decoder(_Header)
_RECORD_TYPES = frozenset(t.value for t in RecordType)


def validate(paths: Sequence[str | Path]) -> int:
    """Check every line of every file; raise ``ValueError`` naming the first bad one.

    Only the record type and schema version are decoded here (the rest of each line is
    parsed once, by DuckDB, against :data:`COLUMNS`), which keeps ingest fast.
    """
    count = 0
    for path in paths:
        for number, line in iter_lines(path):
            if not line.strip():
                continue
            try:
                head = _header.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise ValueError(f"{path}:{number}: not a wallwatch record: {exc}") from None
            if head.record_type not in _RECORD_TYPES or head.schema_version != SCHEMA_VERSION:
                raise ValueError(
                    f"{path}:{number}: not a wallwatch record: record_type {head.record_type!r}, "
                    f"schema_version {head.schema_version}"
                )
            count += 1
    return count


def sql_literal(text: str) -> str:
    """``text`` as a SQL string literal (file names, addresses, rule ids in generated SQL)."""
    return "'" + text.replace("'", "''") + "'"


def ingest(
    paths: Sequence[str | Path],
    db: str | Path,
    *,
    parquet_dir: str | Path | None = None,
    twin: bool = True,
) -> IngestReport:
    """Load JSONL files into the DuckDB file ``db`` (created if missing), through their
    Parquet twins where they have one (``twin``; :func:`ingest_into`).

    DuckDB parses the files once, against :data:`COLUMNS`; only when it refuses them, or
    finds lines that are not wallwatch records, does :func:`validate` read them again to
    name the first bad file and line (the error is then a ``ValueError``).
    """
    con = connect(db)
    try:
        report = ingest_into(con, paths, twin=twin)
        if parquet_dir is not None:
            export_parquet(con, parquet_dir)
    finally:
        con.close()
    return report


def connect(db: str | Path = ":memory:", *, read_only: bool = False) -> Any:
    """A DuckDB connection set up as wallwatch uses it (quiet, memory-capped)."""
    con = _duckdb().connect(str(db), read_only=read_only)
    con.execute("SET enable_progress_bar = false")  # stderr belongs to wallwatch's own messages
    con.execute(f"SET memory_limit = '{limit_bytes()}B'")
    return con


def ingest_into(con: Any, paths: Sequence[str | Path], *, twin: bool = True) -> IngestReport:
    """:func:`ingest` on an open connection (an in-memory store of the Python API too).

    A file with a Parquet twin (:mod:`wallwatch.columns`, which the prober writes) is read
    from the twin's parts where they hold its bytes, and as JSON elsewhere (``twin=False``:
    as JSON only). The twin is a cache: when its parts cannot be read, the files are
    ingested again as JSON.
    """
    ordered = con.execute("SELECT current_setting('preserve_insertion_order')").fetchone()[0]
    # The tables' rows need no order (every reader orders by its keys: response_index,
    # answer_index); letting DuckDB write them as its threads finish makes ingest about a
    # quarter faster (docs/performance.md).
    con.execute("SET preserve_insertion_order = false")
    try:
        return _ingest(con, paths, twin)
    finally:
        con.execute(f"SET preserve_insertion_order = {bool(ordered)}")


def _ingest(con: Any, paths: Sequence[str | Path], twin: bool) -> IngestReport:
    duckdb = _duckdb()
    before = _counts(con)
    with tempfile.TemporaryDirectory(prefix="ww-ingest-") as scratch:
        json_files, parts, held = _sources(paths, Path(scratch)) if twin else (list(paths), [], 0)
        try:
            read = _stage(con, json_files, parts)
        except duckdb.Error as exc:
            if parts:
                return _ingest(con, paths, False)
            validate(paths)  # raises, naming the file and line, when it can
            raise ValueError(f"{', '.join(map(str, paths))}: {exc}") from None
    try:
        records = _load(con, paths, read)
    except duckdb.Error:
        if not parts:
            raise
        records = -1
    finally:
        con.execute(f"DROP {'TABLE' if read is None else 'VIEW'} IF EXISTS _ww_staged")
    if records < 0:
        return _ingest(con, paths, False)
    after = _counts(con)
    return IngestReport(
        files=len(paths),
        records=records,
        measurements=after["measurements"] - before.get("measurements", 0),
        responses=after["responses"] - before.get("responses", 0),
        file_bytes=sum(os.stat(p).st_size for p in paths),
        twin_bytes=held,
    )


def _load(con: Any, paths: Sequence[str | Path], read: str | None) -> int:
    """Check the staged records and write them into the tables; return their count."""
    kinds = ", ".join(f"'{t.value}'" for t in RecordType)
    records, strange = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE record_type IS NULL OR record_type NOT IN "
        f"({kinds}) OR schema_version IS DISTINCT FROM {SCHEMA_VERSION}) FROM _ww_staged"
    ).fetchone()
    if strange:
        validate(paths)
        raise ValueError(f"{', '.join(map(str, paths))}: {strange} lines are not wallwatch records")
    # One transaction for every table: a process killed (or a statement failing)
    # between them would leave measurements without their replies, and the next
    # ingest would skip those measurements as loaded.
    con.execute("BEGIN TRANSACTION")
    try:
        present = _tables(con)
        if "measurements" in present and read is None:
            con.execute(
                "DELETE FROM _ww_staged WHERE record_type = 'measurement' AND "
                "measurement_uid IN (SELECT measurement_uid FROM measurements)"
            )
        elif "measurements" in present:
            # The same rows the DELETE leaves, on a view (NOT EXISTS keeps a NULL id as IN does).
            con.execute(
                f"CREATE OR REPLACE TEMP VIEW _ww_staged AS SELECT * FROM ({read}) AS s WHERE "
                "s.record_type <> 'measurement' OR NOT EXISTS (SELECT 1 FROM measurements m "
                "WHERE m.measurement_uid = s.measurement_uid)"
            )
        for table, query in TABLES.items():
            key = CONTENT_KEYS.get(table)
            if key is not None:
                query = (
                    f"SELECT * FROM ({query}) QUALIFY row_number() OVER (PARTITION BY {key}) = 1"
                )
                if table in present:
                    _add_key(con, table, key)
                    query = (
                        f"SELECT * FROM ({query}) WHERE {key} NOT IN (SELECT {key} FROM {table})"
                    )
            if table in present:
                con.execute(f"INSERT INTO {table} BY NAME {query}")
            else:
                con.execute(f"CREATE TABLE {table} AS {query}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return int(records)


def _sources(
    paths: Sequence[str | Path], scratch: Path
) -> tuple[list[str | Path], list[Path], int]:
    """The JSON files and Parquet parts that together hold ``paths`` (gaps copied out),
    and how many of the files' bytes the parts hold."""
    json_files: list[str | Path] = []
    parts: list[Path] = []
    held = 0
    for path in paths:
        found = columns.plan(path)
        if not found.parts:
            json_files.append(path)
            continue
        parts.extend(found.parts)
        held += found.size - sum(end - start for start, end in found.gaps)
        for start, end in found.gaps:
            gap = scratch / f"{len(json_files)}-{columns.gap_name(path, start, end)}"
            columns.copy_range(path, start, end, gap)
            json_files.append(gap)
    return json_files, parts, held


def _stage(con: Any, json_files: Sequence[str | Path], parts: Sequence[Path]) -> str | None:
    """Show the records of the files and parts as ``_ww_staged``; return the query of its
    view, or None when it is a table.

    JSON is parsed once into a temporary table, which DuckDB spills to disk under the
    memory cap rather than holding every parsed line (measured in docs/performance.md).
    Parts alone are a view: each table reads only its columns of the Parquet, and copying
    them into a table first was slower (12 s against 9 s for 2.08M replies).
    """
    reads = []
    if json_files or not parts:
        reads.append(f"SELECT * FROM {read_json_sql(json_files)}")
    if parts:
        names = "[" + ", ".join(sql_literal(str(p)) for p in parts) + "]"
        listed = ", ".join(f'"{k}"' for k in COLUMNS)
        reads.append(f"SELECT {listed} FROM read_parquet({names})")
    if len(reads) == 1 and not json_files:
        con.execute(f"CREATE OR REPLACE TEMP VIEW _ww_staged AS {reads[0]}")
        return reads[0]
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ww_staged AS {' UNION ALL BY NAME '.join(reads)}")
    return None


def create_empty(con: Any, table: str) -> None:
    """Create the store table ``table`` with no rows, typed as an ingest would make it
    (a reader of a dataset whose files lack that table still finds its columns)."""
    columns = ", ".join(f'"{k}" {v}' for k, v in COLUMNS.items())
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ww_staged ({columns})")
    con.execute(f"CREATE OR REPLACE TABLE {table} AS {TABLES[table]}")
    con.execute("DROP TABLE _ww_staged")


def _add_key(con: Any, table: str, key: str) -> None:
    """Give a store made before content keys its key column, computed as new rows' is."""
    columns = {r[0] for r in con.execute(f"DESCRIBE {table}").fetchall()}
    if key in columns:
        return
    expression = TABLES[table].split(f" AS {key}", 1)[0].removeprefix("SELECT ")
    con.execute(f"ALTER TABLE {table} ADD COLUMN {key} VARCHAR")
    if table == "strays":
        expression = (expression.replace("response.t", "t").replace("response.src", "src")
                      .replace("response.sport", "sport").replace("response.raw_response", "raw_response"))  # fmt: skip
    con.execute(f"UPDATE {table} SET {key} = {expression}")
    # Rows doubled by earlier ingests go now: one row per key.
    con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table} "
                f"QUALIFY row_number() OVER (PARTITION BY {key}) = 1")  # fmt: skip


def export_parquet(con: Any, directory: str | Path) -> None:
    """Write every table as ``<directory>/<table>.parquet``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        target = str(out / f"{table}.parquet").replace("'", "''")
        con.execute(f"COPY {table} TO '{target}' (FORMAT parquet)")


def _tables(con: Any) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}


def _counts(con: Any) -> dict[str, int]:
    present = _tables(con)
    return {
        t: int(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
        for t in TABLES
        if t in present
    }


def query(db: str | Path, sql: str) -> list[tuple[Any, ...]]:
    """Run a read-only query against the store."""
    con = _duckdb().connect(str(db), read_only=True)
    try:
        rows: list[tuple[Any, ...]] = con.execute(sql).fetchall()
        return rows
    finally:
        con.close()
