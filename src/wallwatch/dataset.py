"""The store as a dataset: hive-partitioned Parquet, on local disk or an object store.

Why: one embedded DuckDB file is the right store for one machine, and stays the default.
A deployment that outgrows it keeps its measurements as a dataset that any number of
machines read at once (:mod:`wallwatch.analysis.scale` runs the analysis's rules over it
on a Dask cluster). The layout::

    ROOT/_wallwatch.json                          what the dataset is, its bucket count
    ROOT/<table>/day=YYYY-MM-DD/bucket=NN/part-<batch>-<uuid>.parquet
                                                  measurements, responses, answers
    ROOT/<table>/part-<batch>-<uuid>.parquet      strays, input_errors
    ROOT/_commits/<batch>.json                    one per finished write

The tables are the embedded store's (:data:`wallwatch.store.TABLES`, docs/schema.md),
column for column. ``day`` is the measurement's UTC day, ``bucket`` the first 32 bits of
the MD5 of its lower-cased name modulo the bucket count (:func:`bucket_of`): every reply
about one name, from every vantage and every day, lands in one bucket, so the per-name
steps of the analysis (the control's answers, the attribution) need nothing from another
bucket. Days let a reader skip what it does not need and a writer only ever add files.

``ROOT`` is a directory or an fsspec URL (``s3://bucket/prefix``, with ``storage_options``
as s3fs takes them: an S3-compatible endpoint, keys). Files are written whole, under
new names, and never rewritten; each write ends with its commit mark, and a reader reads
only committed files. A writer killed midway (or out of disk) leaves files that nothing
reads, so the same ingest run again adds its measurements once, with all their replies;
a file is seen whole or not at all (a partial upload to an object store is not visible;
on local disk a file is renamed into place).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wallwatch.records import SCHEMA_VERSION
from wallwatch.store import CONTENT_KEYS, TABLES, sql_literal

#: Buckets of a new dataset: enough for 64 workers to share the work, few enough that
#: a small dataset is not thousands of tiny files (docs/scale-out.md: how many for how much).
DEFAULT_BUCKETS = 64
#: Tables partitioned by day and bucket (every row names its measurement's name and time).
PARTITIONED = ("measurements", "responses", "answers")
_META = "_wallwatch.json"
#: One mark per finished write (``<batch>.json``); files of other batches are not read.
_COMMITS = "_commits"
_FORMAT = "wallwatch-dataset"


def bucket_of(hostname: str | None, buckets: int) -> int:
    """The bucket of a name (:data:`BUCKET_SQL` in Python: the same number)."""
    digest = hashlib.md5((hostname or "").lower().encode()).hexdigest()
    return int(digest[:8], 16) % buckets


#: The bucket of a row, in SQL (``{buckets}`` filled in): as :func:`bucket_of`.
BUCKET_SQL = "CAST(CAST(('0x' || substr(md5(lower(coalesce(hostname, ''))), 1, 8)) AS UBIGINT) % {buckets} AS INTEGER)"


@dataclass(frozen=True, slots=True)
class Dataset:
    """Where a dataset lives: ``root`` (a path or URL) and how to reach it."""

    root: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def remote(self) -> bool:
        return "://" in self.root and not self.root.startswith("file://")

    def fs(self) -> Any:
        """The fsspec filesystem of the root (local when the root is a path)."""
        import fsspec

        if self.remote:
            protocol = self.root.split("://", 1)[0]
            return fsspec.filesystem(protocol, **dict(self.storage_options))
        return fsspec.filesystem("file")

    def path(self, *parts: str) -> str:
        """A path under the root, as DuckDB and fsspec read it."""
        base = self.root.rstrip("/")
        return "/".join((base, *parts))

    def register(self, con: Any) -> None:
        """Let DuckDB read the root through fsspec (no DuckDB extension to download)."""
        if self.remote:
            con.register_filesystem(self.fs())

    def buckets(self) -> int:
        """The dataset's bucket count (from its description; ValueError when it has none)."""
        meta = self.meta()
        if meta is None:
            raise ValueError(f"{self.root}: not a wallwatch dataset (no {_META})")
        return int(meta["buckets"])

    def meta(self) -> dict[str, Any] | None:
        fs = self.fs()
        target = self._strip(self.path(_META))
        if not fs.exists(target):
            return None
        with fs.open(target, "rb") as handle:
            meta = json.loads(handle.read())
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"{self.root}: {_META} does not describe a wallwatch dataset")
        return meta

    def present(self) -> list[int]:
        """The buckets that hold measurements, in order."""
        return sorted({int(f.rsplit("bucket=", 1)[1].split("/", 1)[0])
                       for f in self.files("measurements")})  # fmt: skip

    def committed(self) -> set[str]:
        """The writes that finished (:func:`write`'s batches with their commit mark)."""
        return {Path(p).stem for p in self.glob(_COMMITS, "*.json")}

    def files(self, table: str, bucket: int | None = None) -> list[str]:
        """The committed Parquet files of ``table`` (of one bucket), as DuckDB reads them:
        the files of a write that did not finish (killed, disk full) are not read."""
        if table in PARTITIONED:
            found = self.glob(table, "*", f"bucket={bucket}" if bucket is not None else "*",
                              "*.parquet")  # fmt: skip
        else:
            found = self.glob(table, "*.parquet")
        done = self.committed()
        return [f for f in found if _batch_of(f) in done]

    def remove(self, *parts: str) -> None:
        """Delete a directory (or file) under the root, if it is there."""
        fs, target = self.fs(), self._strip(self.path(*parts))
        if fs.exists(target):
            fs.rm(target, recursive=True)

    def glob(self, *parts: str) -> list[str]:
        """The files matching a pattern under the root, in order, as DuckDB reads them."""
        found = sorted(self.fs().glob(self._strip(self.path(*parts))))
        if self.remote:
            protocol = self.root.split("://", 1)[0]
            return [f"{protocol}://{p}" for p in found]
        return [str(p) for p in found]

    @contextlib.contextmanager
    def writing(self, relative: str) -> Iterator[Path]:
        """A local path to write ``relative``'s content to; once the block ends it is in
        the dataset, whole (renamed into place on disk, uploaded to an object store)."""
        if self.remote:
            with tempfile.TemporaryDirectory(prefix="ww-dataset-") as tmp:
                local = Path(tmp) / "part.parquet"
                yield local
                self.put(local, relative)
            return
        final = Path(self.path(relative))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp_path = final.with_name(final.name + ".tmp")
        yield tmp_path
        tmp_path.replace(final)

    def put(self, local: Path, relative: str) -> None:
        """A finished local file into the dataset, whole: to an object store by upload
        (a partial upload is never visible), on disk renamed from a temporary name."""
        target = self.path(relative)
        if self.remote:
            self.fs().put_file(str(local), self._strip(target))
            return
        final = Path(target)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        shutil.copyfile(local, tmp)
        tmp.replace(final)

    def _strip(self, path: str) -> str:
        return path.split("://", 1)[1] if self.remote else path


def write(con: Any, dataset: Dataset, *, buckets: int | None = None) -> dict[str, int]:
    """Add the rows of the store tables open on ``con`` to ``dataset``; rows per table.

    Measurements already in the dataset (same ``measurement_uid``) are not added again,
    with their replies and answers: an ingest repeated after a crash adds nothing twice.
    """
    meta = dataset.meta()
    if meta is not None:
        if buckets is not None and buckets != int(meta["buckets"]):
            raise ValueError(f"{dataset.root}: the dataset has {meta['buckets']} buckets, "
                             f"not {buckets}; a dataset keeps its bucket count")  # fmt: skip
        buckets = int(meta["buckets"])
    buckets = buckets or DEFAULT_BUCKETS
    if not 1 <= buckets <= 4096:
        raise ValueError(f"--buckets {buckets}: between 1 and 4096")
    dataset.register(con)
    present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    fresh = "SELECT measurement_uid FROM measurements"
    # A measurement's day is fixed by its start time, so a repeat can only be in the
    # same day's partitions: only those are read (the check grows with a day, not the data).
    days = {f"day={r[0]}" for r in con.execute(
        "SELECT DISTINCT substr(measurement_start_time, 1, 10) FROM measurements").fetchall()}  # fmt: skip
    existing = [f for f in dataset.files("measurements") if f.split("/")[-3] in days]
    if existing:
        fresh += (
            f" WHERE measurement_uid NOT IN (SELECT measurement_uid FROM {parquet_sql(existing)})"
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ww_fresh AS {fresh}")
    batch = uuid.uuid4().hex
    stage = Path(tempfile.mkdtemp(prefix="ww-dataset-"))
    written: dict[str, int] = {}
    try:
        for table in TABLES:
            if table not in present:
                continue
            out = stage / table
            if table in PARTITIONED:  # each row with its measurement's day and name bucket
                query = (
                    "SELECT t.*, substr(m.measurement_start_time, 1, 10) AS day, "
                    f"{BUCKET_SQL.format(buckets=buckets).replace('hostname', 't.hostname')} AS bucket "
                    f"FROM {table} t JOIN (SELECT measurement_uid, measurement_start_time FROM "
                    "measurements) m USING (measurement_uid) "
                    "WHERE t.measurement_uid IN (SELECT measurement_uid FROM _ww_fresh)"
                )  # fmt: skip
                options = ("FORMAT parquet, PARTITION_BY (day, bucket), "
                           f"FILENAME_PATTERN 'part-{batch}-{{uuid}}'")  # fmt: skip
            else:
                out.mkdir(parents=True)
                out = out / f"part-{batch}-{uuid.uuid4().hex}.parquet"
                key = CONTENT_KEYS[table]
                query = f"SELECT * FROM {table}"
                before = dataset.files(table)
                if before:  # rows kept by content, as the embedded store keeps them
                    query += f" WHERE {key} NOT IN (SELECT {key} FROM {parquet_sql(before)})"
                options = "FORMAT parquet"
            n = int(con.execute(f"SELECT count(*) FROM ({query})").fetchone()[0])
            written[table] = n
            if n == 0:
                continue
            con.execute(f"COPY ({query}) TO {sql_literal(str(out))} ({options})")
        _publish(dataset, stage)
        if meta is None:
            _write_meta(dataset, buckets)
        # Last: the mark that makes this write's files part of the dataset.
        with dataset.writing(f"{_COMMITS}/{batch}.json") as mark:
            mark.write_text(json.dumps({"batch": batch, "rows": written}))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        con.execute("DROP TABLE IF EXISTS _ww_fresh")
    return written


def parquet_sql(files: Sequence[str]) -> str:
    """A DuckDB relation over the Parquet ``files`` (their columns only: the partition
    values in their paths are not added)."""
    listed = ", ".join(sql_literal(f) for f in files)
    return f"read_parquet([{listed}], hive_partitioning = false, union_by_name = true)"


def _batch_of(path: str) -> str:
    """The write a data file belongs to (``part-<batch>-<uuid>.parquet``)."""
    name = path.rsplit("/", 1)[-1]
    return name.split("-", 2)[1] if name.count("-") >= 2 else ""


def _publish(dataset: Dataset, stage: Path) -> None:
    """Every staged file into the dataset, each whole (:meth:`Dataset.put`)."""
    for file in sorted(stage.rglob("*.parquet")):
        dataset.put(file, file.relative_to(stage).as_posix())


def _write_meta(dataset: Dataset, buckets: int) -> None:
    body = json.dumps({"format": _FORMAT, "buckets": buckets,
                       "schema_version": SCHEMA_VERSION}, indent=1)  # fmt: skip
    with dataset.writing(_META) as target:
        target.write_text(body)
