"""Shared fixtures: the loopback lab and a one-call prober run.

No test sends a packet anywhere but 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from wallwatch.journal import Journal, read_records
from wallwatch.lab.loopback import Handler, LoopbackServer
from wallwatch.names import QueryName
from wallwatch.probe.engine import ProbeConfig, Prober, Query, Stats
from wallwatch.records import Measurement, Record
from wallwatch.targets import parse_target
from wallwatch.vocab import TargetKind

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True)
def _clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy settings may leak into DoH tests."""
    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    """Start loopback servers; all are stopped after the test."""
    started: list[LoopbackServer] = []

    def start(handler: Handler, host: str = "127.0.0.1", **kwargs: object) -> LoopbackServer:
        server = LoopbackServer(handler, host, **kwargs).start()  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def qn(name: str, line: int = 1) -> QueryName:
    return QueryName(name, None, "test", line)


def run_probe(
    tmp_path: Path,
    queries: Sequence[Query],
    **config: object,
) -> tuple[list[Record], Stats]:
    """Probe ``queries`` with a fast test configuration; return the records written."""
    defaults: dict[str, object] = dict(
        rate=None, timeout=0.5, window=0.3, retries=0, vantage="test"
    )
    defaults.update(config)
    out = tmp_path / "out.jsonl"
    journal = Journal.open(out)
    stats = Prober(ProbeConfig(**defaults), journal).run(queries)  # type: ignore[arg-type]
    journal.close()
    records = list(read_records(out))
    out.unlink()
    return records, stats


def udp_query(server: LoopbackServer | str, name: str, qtype: int = 1, **kw: object) -> Query:
    spec = server if isinstance(server, str) else server.spec
    kind = kw.pop("kind", TargetKind.RESOLVER)
    return Query(qn(name), qtype, parse_target(spec, kind), kind=kind, **kw)  # type: ignore[arg-type]


def measurements(records: Sequence[Record]) -> list[Measurement]:
    return [r for r in records if isinstance(r, Measurement)]


def probe_into_store(tmp_path: Path, queries: Sequence[Query], *, window: float = 0.2) -> Path:
    """Probe ``queries``, load the records into a fresh store; return the store's path."""
    from wallwatch import store

    out = tmp_path / "m.jsonl"
    journal = Journal.open(out)
    config = ProbeConfig(rate=None, timeout=0.3, window=window, retries=0, vantage="t")
    Prober(config, journal).run(queries)
    journal.close()
    db = tmp_path / "ww.duckdb"
    store.ingest([out], db)
    return db


def check_report_in_browser(html: Path, tmp_path: Path) -> None:
    """Open the page in headless Chromium; the charts must have drawn, offline."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    text = html.read_text()
    assert "cdn." not in text and "https://" not in text.split("<script", 1)[0]
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=15000", "--dump-dom",
         html.as_uri()],
        capture_output=True, text=True, timeout=120,
    ).stdout  # fmt: skip
    charts = text.count('class="chart"')
    assert charts >= 4
    assert f'data-charts="{charts}"' in dom, dom[-2000:]
    assert dom.count("<svg") >= charts
    assert dom.count('class="check holds"') >= 4
    assert 'data-check="dark_destination"' in dom


@pytest.fixture(scope="session")
def dask_client() -> Iterator[object]:
    """One real two-process Dask cluster on loopback for the session (started on first use)."""
    from wallwatch.analysis import scale

    with scale.client("local:2") as client:
        yield client


#: The tables a partitioned run writes that the embedded run has too.
ANALYSIS_TABLES = ("reply_verdicts", "attributions", "window_attributions", "injector_families")


def differences(db: Path, out: object) -> dict[str, tuple[int, int, int, int]]:
    """Per analysis table: (rows of ``db``, rows of ``out``, rows only in ``db``, rows only
    in ``out``); ``out`` is a partitioned run's output (a :class:`wallwatch.dataset.Dataset`)
    or another analysed store (a path)."""
    from wallwatch import store
    from wallwatch.dataset import Dataset, parquet_sql

    con = store.connect(db, read_only=True)
    found = {}
    try:
        if isinstance(out, Dataset):
            out.register(con)
        else:
            con.execute(f"ATTACH {store.sql_literal(str(out))} AS other (READ_ONLY)")
        for table in ANALYSIS_TABLES:
            if isinstance(out, Dataset):
                files = out.glob(table, "*", "*.parquet") or out.glob(table, "*.parquet")
                assert files, f"{table}: no files under {out.root}"
                other = parquet_sql(files)
            else:
                other = f"other.{table}"
            a, b, only_a, only_b = (int(con.execute(sql).fetchone()[0]) for sql in (
                f"SELECT count(*) FROM {table}", f"SELECT count(*) FROM {other}",
                f"SELECT count(*) FROM (SELECT * FROM {table} EXCEPT ALL SELECT * FROM {other})",
                f"SELECT count(*) FROM (SELECT * FROM {other} EXCEPT ALL SELECT * FROM {table})",
            ))  # fmt: skip
            found[table] = (a, b, only_a, only_b)
    finally:
        con.close()
    return found


def assert_dask_matches(files: Sequence[Path], db: Path, tmp_path: Path, client: object,
                        buckets: int = 8) -> None:  # fmt: skip
    """The same records as a dataset, analysed on the cluster: the embedded result of
    ``db`` (already analysed), row for row, in every analysis table."""
    from wallwatch import store
    from wallwatch.analysis import scale
    from wallwatch.dataset import Dataset, write

    dataset, out = Dataset(str(tmp_path / "dataset")), Dataset(str(tmp_path / "analysis"))
    con = store.connect()
    try:
        store.ingest_into(con, list(files))
        write(con, dataset, buckets=buckets)
    finally:
        con.close()
    scale.analyze_dataset(dataset, out, client)
    assert_same(db, out)


def assert_same(db: Path, out: object) -> None:
    """Every analysis table of the run at ``out`` is the embedded one of ``db``, row for row."""
    found = differences(db, out)
    for table, (a, b, only_a, only_b) in found.items():
        assert (a, only_a, only_b) == (b, 0, 0), (table, found)


def run_under_asan(tmp_path: Path, extension: str, script: str, *args: str) -> tuple[int, str, str]:
    """Build ``src/wallwatch/<extension>.c`` with AddressSanitizer (and CPython's assertions)
    and run ``tests/<script>`` against it with libasan preloaded: (exit code, stdout, stderr).
    Skips when gcc or libasan is missing."""
    import sys
    import sysconfig

    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is needed (scripts/setup installs it)")
    libasan = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
    if not Path(libasan).is_file():
        pytest.skip("libasan is not installed")
    root = Path(__file__).resolve().parent.parent
    build = tmp_path / (extension + str(sysconfig.get_config_var("EXT_SUFFIX")))
    subprocess.run([gcc, "-O1", "-g", "-fsanitize=address", "-fno-omit-frame-pointer", "-fPIC",
                    "-shared", f"-I{sysconfig.get_paths()['include']}",
                    str(root / "src" / "wallwatch" / f"{extension}.c"), "-o", str(build)],
                   check=True)  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(root / "tests" / script), str(build), *args],
        capture_output=True, text=True, timeout=600, cwd=root,
        env={"ASAN_OPTIONS": "detect_leaks=0", "LD_PRELOAD": libasan,
             "PYTHONPATH": str(root / "src"), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def assert_same_stores(a: Path, b: Path) -> None:
    """Every analysis table of the store ``b`` is ``a``'s, row for row (and not empty)."""
    assert_same(a, b)
    assert differences(a, b)["reply_verdicts"][0] > 0


INGEST_TABLES = ("measurements", "responses", "answers", "strays", "input_errors")


def _same_ingest(twin_db: Path, json_db: Path) -> int:
    """Every table of both stores, row for row (EXCEPT ALL both ways); the reply count."""
    from wallwatch import store

    con = store.connect(twin_db)
    con.execute(f"ATTACH '{json_db}' AS j (READ_ONLY)")
    for table in INGEST_TABLES:
        for a, b in ((f"main.{table}", f"j.{table}"), (f"j.{table}", f"main.{table}")):
            extra = con.execute(f"SELECT count(*) FROM (SELECT * FROM {a} EXCEPT ALL SELECT * FROM {b})").fetchone()[0]  # fmt: skip
            assert extra == 0, f"{a} has {extra} rows {b} lacks"
    replies = int(con.execute("SELECT count(*) FROM main.responses").fetchone()[0])
    con.close()
    return replies


def ingest_both(out: Path, tmp_path: Path) -> int:
    """Ingest ``out`` through its twin and as JSON only; the stores must be equal."""
    from wallwatch import store

    a, b = tmp_path / "twin.duckdb", tmp_path / "json.duckdb"
    for db in (a, b):
        db.unlink(missing_ok=True)
    con = store.connect(a)
    report = store.ingest_into(con, [out])
    con.close()
    con = store.connect(b)
    plain = store.ingest_into(con, [out], twin=False)
    con.close()
    assert plain.twin_bytes == 0 and report.twin_bytes <= report.file_bytes == out.stat().st_size
    assert dataclasses.replace(report, twin_bytes=0) == plain
    return _same_ingest(a, b)
