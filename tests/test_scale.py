"""The store as a partitioned dataset, and the analysis on a real Dask cluster.

Every run here is compared with the embedded analysis of the same records, row for row:
a generated mix whose buckets depend on each other (pools learned from another bucket's
dark hosts, path baselines over every bucket), the real third-party files, the CLI, and
a dataset on a local S3 server (moto, on loopback).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import SHARED, assert_dask_matches, assert_same
from wallwatch import store
from wallwatch.analysis import scale
from wallwatch.analysis.run import analyze
from wallwatch.cli import main
from wallwatch.dataset import BUCKET_SQL, Dataset, bucket_of, parquet_sql, write
from wallwatch.journal import Journal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import mix  # noqa: E402

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is not beside the project")


def _mix_store(tmp_path: Path, names: int) -> Path:
    db = tmp_path / "mix.duckdb"
    con = store.connect(db)
    try:
        mix.generate(con, names)
    finally:
        con.close()
    return db


def _mix_dataset(tmp_path: Path, names: int, buckets: int) -> tuple[Path, Dataset]:
    """The mix, analysed in its embedded store, and written as a dataset."""
    db = _mix_store(tmp_path, names)
    analyze(db)
    dataset = Dataset(str(tmp_path / "ds"))
    con = store.connect(db, read_only=True)
    try:
        write(con, dataset, buckets=buckets)
    finally:
        con.close()
    return db, dataset


def test_bucket_in_sql_is_bucket_in_python() -> None:
    con = store.connect()
    names = ["www.Example.com", "", "例子.测试", "a" * 200, "xn--fsq.com"]
    for name in names:
        sql = BUCKET_SQL.format(buckets=64).replace("hostname", "?")
        assert con.execute(f"SELECT {sql}", [name]).fetchone()[0] == bucket_of(name, 64)
    assert bucket_of("WWW.EXAMPLE.COM", 64) == bucket_of("www.example.com", 64)


def test_a_generated_mix_on_two_workers_is_the_embedded_result(tmp_path: Path,
                                                               dask_client: object) -> None:  # fmt: skip
    db = _mix_store(tmp_path, 6000)
    embedded = analyze(db)
    dataset, out = Dataset(str(tmp_path / "ds")), Dataset(str(tmp_path / "out"))
    con = store.connect(db, read_only=True)
    try:
        written = write(con, dataset, buckets=16)
    finally:
        con.close()
    assert written["measurements"] == 6000 + 6000 + 6000 * 3 // 10
    # Partitioned by day and bucket; every reply of a name in its name's bucket.
    files = dataset.files("measurements")
    assert {Path(f).parent.parent.name for f in files} == {"day=2014-01-21", "day=2014-01-22"}
    assert len(dataset.present()) == 16
    one = dataset.files("responses", bucket_of("n7.example.com", 16))
    con = store.connect()
    assert con.execute(f"SELECT count(*) FROM {parquet_sql(one)} "
                       "WHERE hostname = 'n7.example.com'").fetchone()[0] == 2  # fmt: skip
    con.close()

    result = scale.analyze_dataset(dataset, out, dask_client)
    assert result.analysis.replies == embedded.replies
    assert result.analysis.attributions == embedded.attributions
    assert result.analysis.pools_version == embedded.pools_version
    assert result.buckets == 16 and result.workers == 2
    assert_same(db, out)
    # The cross-bucket cases did happen: a name judged by a pool learned in another
    # bucket, and baselines over every bucket's samples.
    con = store.connect(db, read_only=True)
    learned_elsewhere = con.execute(
        "SELECT count(*) FROM reply_verdicts WHERE rule_id = 'forged_pool' "
        "AND hostname LIKE 'n%55.example.com'").fetchone()[0]  # fmt: skip
    con.close()
    assert learned_elsewhere == 60
    assert bucket_of("n55.example.com", 16) != bucket_of("n2.example.com", 16)


@needs_data
def test_the_real_third_party_files_on_the_cluster(tmp_path: Path, dask_client: object) -> None:
    """Every OONI and Censored Planet file of the shared data, imported, as a dataset."""
    jsonl = _real_jsonl(tmp_path)
    db = tmp_path / "real.duckdb"
    store.ingest([jsonl], db)
    analyze(db)
    con = store.connect(db, read_only=True)
    measured, with_asns = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE annotations['answer_asns'] IS NOT NULL) "
        "FROM measurements").fetchone()  # fmt: skip
    con.close()
    assert measured > 100 and with_asns > 0  # the sources' own ASNs are exercised too
    assert_dask_matches([jsonl], db, tmp_path, dask_client, buckets=8)


def _real_jsonl(tmp_path: Path) -> Path:
    """Every OONI and Censored Planet file of the shared data, imported, as one JSONL file."""
    from wallwatch.interop import ooni, satellite
    from wallwatch.interop.summary import ImportSummary

    with open(DATA / "INDEX.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    jsonl = tmp_path / "real.jsonl"
    journal = Journal.open(jsonl)
    summary = ImportSummary()
    for r in rows:
        path = DATA / r["path"]
        if r["path"].startswith("ooni/") and r["path"].endswith(".json"):
            for record in ooni.read_records(path, summary):
                journal.write(record)
    for directory in sorted((DATA / "censoredplanet").glob("*/Satellite*")):
        if directory.is_dir():
            for record in satellite.read(directory):
                journal.write(record)
    journal.close()
    return jsonl


def _jsonl_of_mix(tmp_path: Path, names: int) -> Path:
    """The mix as records in a JSONL file (what ``wallwatch ingest`` takes)."""
    (tmp_path / "gen").mkdir()
    db = _mix_store(tmp_path / "gen", names)
    con = store.connect(db, read_only=True)

    def rows(sql: str) -> list[dict[str, object]]:
        result = con.execute(sql)
        columns = [d[0] for d in result.description]
        return [dict(zip(columns, row, strict=True)) for row in result.fetchall()]

    answers: dict[tuple[object, object], list[dict[str, object]]] = {}
    for a in rows("SELECT * FROM answers ORDER BY measurement_uid, response_index, answer_index"):
        answers.setdefault((a["measurement_uid"], a["response_index"]), []).append(
            {"answer_type": a["answer_type"], "ttl": a["ttl"], "name": a["name"], "ipv4": a["ipv4"],
             "ipv6": a["ipv6"], "hostname": a["target"], "rdata": a["rdata"]})  # fmt: skip
    responses: dict[object, list[dict[str, object]]] = {}
    key = {
        "measurement_uid",
        "hostname",
        "query_type",
        "resolver_address",
        "target_kind",
        "vantage",
    }
    for r in rows("SELECT * FROM responses ORDER BY measurement_uid, response_index"):
        body = {k: v for k, v in r.items() if k not in key and k != "response_index"}
        body["answers"] = answers.get((r["measurement_uid"], r["response_index"]), [])
        responses.setdefault(r["measurement_uid"], []).append(body)
    out = tmp_path / "mix.jsonl"
    with open(out, "w") as handle:
        for m in rows("SELECT * EXCLUDE (response_count, icmp_count) FROM measurements"):
            m = {"record_type": "measurement", **m,
                 "responses": responses.get(m["measurement_uid"], [])}  # fmt: skip
            handle.write(json.dumps(m) + "\n")
    con.close()
    return out


def test_cli_ingest_dataset_then_analyze_dask(tmp_path: Path) -> None:
    jsonl = _jsonl_of_mix(tmp_path, 1500)
    runner = CliRunner()
    root = tmp_path / "ds"
    db = tmp_path / "cli.duckdb"
    got = runner.invoke(main, ["ingest", str(jsonl), "--db", str(db), "--dataset", str(root),
                               "--buckets", "8"])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "+3450 measurements" in got.output
    # Again: nothing doubled, in the store or the dataset.
    again = runner.invoke(main, ["ingest", str(jsonl), "--dataset", str(root)])
    assert again.exit_code == 0, again.output
    assert f"{root}: +0 measurements, +0 replies" in again.output
    assert not Path("wallwatch.duckdb").exists() or Path("wallwatch.duckdb").stat().st_size > 0
    # A dataset keeps its bucket count.
    other = runner.invoke(main, ["ingest", str(jsonl), "--dataset", str(root), "--buckets", "4"])
    assert other.exit_code != 0 and "keeps its bucket count" in other.output

    embedded = runner.invoke(main, ["analyze", "--db", str(db), "--json"])
    assert embedded.exit_code == 0, embedded.output
    cluster = runner.invoke(
        main, ["analyze", "--dask", "local:2", "--dataset", str(root), "--json"]
    )
    assert cluster.exit_code == 0, cluster.output
    lines = [line for line in cluster.output.splitlines() if line.startswith("{")]
    assert lines == [line for line in embedded.output.splitlines() if line.startswith("{")]
    assert len(lines) == 1500
    assert "analyze: judge 8/8 buckets" in cluster.output
    assert "8 buckets on 2 workers" in cluster.output
    assert_same(db, Dataset(str(root / "analysis")))
    # The counts the API serves, from the embedded store and from the cluster: the same.
    counts = [
        "aggregate",
        "--axis",
        "tld",
        "--axis",
        "verdict",
        "--grain",
        "day",
        "--format",
        "csv",
    ]
    here = runner.invoke(main, [*counts, "--db", str(db)])
    there = runner.invoke(main, [*counts, "--dask", "local:2", "--dataset", str(root)])
    assert here.exit_code == 0 and there.exit_code == 0, (here.output, there.output)
    table = [line for line in here.output.splitlines() if line.count(",") == 4]
    assert table[0] == "t,tld,verdict,measurements,replies" and len(table) > 4
    assert table == [line for line in there.output.splitlines() if line.count(",") == 4]
    bad = runner.invoke(main, ["aggregate", "--db", str(db), "--since", "yesterday"])
    assert bad.exit_code != 0 and "a time such as" in bad.output


@pytest.mark.parametrize(("args", "message"), [
    (["--dask", "local:0", "--dataset", "DS"], "local:N with N a number of workers"),
    (["--dask", "nonsense", "--dataset", "DS"], "a scheduler's address"),
    (["--dask", "local:2"], "--dask and --dataset go together"),
    (["--dask", "local:1", "--dataset", "EMPTY"], "not a wallwatch dataset"),
])  # fmt: skip
def test_analyze_dask_refuses_bad_options(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "BASE").write_text("")
    args = [str(tmp_path / a) if a in ("DS", "EMPTY", "BASE") else a for a in args]
    got = CliRunner().invoke(main, ["analyze", *args])
    assert got.exit_code != 0
    assert message in got.output, got.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def s3() -> Iterator[dict[str, str]]:
    """A local S3 server (moto, from PyPI) on loopback; its storage options."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)
        options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "wallwatch",
                   "secret": "wallwatch"}  # fmt: skip
        import s3fs

        s3fs.S3FileSystem(**options).call_s3("create_bucket", Bucket="wallwatch")
        yield options
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


def test_a_dataset_on_a_local_s3_server(tmp_path: Path, s3: dict[str, str],
                                        dask_client: object) -> None:  # fmt: skip
    jsonl = _jsonl_of_mix(tmp_path, 800)
    db = tmp_path / "s3.duckdb"
    store.ingest([jsonl], db)
    analyze(db)
    flags = [a for k, v in s3.items() for a in ("--storage-option", f"{k}={v}")]
    runner = CliRunner()
    got = runner.invoke(main, ["ingest", str(jsonl), "--dataset", "s3://wallwatch/measured",
                               "--buckets", "4", *flags])  # fmt: skip
    assert got.exit_code == 0, got.output
    assert "s3://wallwatch/measured: +1840 measurements" in got.output
    dataset = Dataset("s3://wallwatch/measured", s3)
    assert dataset.buckets() == 4 and len(dataset.present()) == 4
    assert all(
        f.startswith("s3://wallwatch/measured/measurements/day=")
        for f in dataset.files("measurements")
    )
    out = Dataset("s3://wallwatch/analysis", s3)
    scale.analyze_dataset(dataset, out, dask_client)
    assert_same(db, out)
    # Nothing written beside the store on the way: no staging files left in the bucket.
    assert not [p for p in dataset.fs().find("wallwatch") if not p.endswith((".parquet", ".json"))]


def test_a_write_cut_short_is_not_read_and_the_next_one_adds_it_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dask_client: object) -> None:  # fmt: skip
    """A disk that fills (or a kill) after some of a write's files are in place: none of
    them is read, and the same ingest run again adds every measurement once, whole."""
    import wallwatch.dataset as dataset_module

    db = _mix_store(tmp_path, 3000)
    analyze(db)
    dataset = Dataset(str(tmp_path / "ds"))
    publish = dataset_module._publish

    def cut(target: Dataset, stage: Path) -> None:
        files = sorted(stage.rglob("*.parquet"))
        for file in files[: len(files) // 2]:  # half the files land, then the disk is full
            target.put(file, file.relative_to(stage).as_posix())
        raise OSError(28, "No space left on device")

    con = store.connect(db, read_only=True)
    try:
        monkeypatch.setattr(dataset_module, "_publish", cut)
        with pytest.raises(OSError, match="No space left"):
            write(con, dataset, buckets=8)
        assert dataset.glob("measurements", "*", "*", "*.parquet")  # files are there ...
        assert dataset.files("measurements") == []  # ... and none is read
        monkeypatch.setattr(dataset_module, "_publish", publish)
        written = write(con, dataset, buckets=8)
        assert written["measurements"] == 6900
        assert write(con, dataset)["measurements"] == 0  # and once more: nothing doubled
    finally:
        con.close()
    out = Dataset(str(tmp_path / "out"))
    scale.analyze_dataset(dataset, out, dask_client)
    assert_same(db, out)


def test_a_worker_killed_mid_run_changes_nothing(tmp_path: Path) -> None:
    """SIGKILL to a worker process as the first bucket is judged: Dask reruns its tasks
    elsewhere, buckets it held are opened again, and the result is the embedded one."""
    db, dataset = _mix_dataset(tmp_path, 4000, 12)
    out = Dataset(str(tmp_path / "out"))
    killed: list[int] = []
    with scale.client("local:2") as dask:
        pids = dask.run(os.getpid)

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "judge" and not killed:
                victim = sorted(pids.values())[0]
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        result = scale.analyze_dataset(dataset, out, dask, progress=progress)
        after = dask.run(os.getpid)
    assert killed and killed[0] not in after.values()  # the nanny started a new worker
    assert result.buckets == 12
    assert_same(db, out)


def test_aggregations_on_the_cluster_are_the_embedded_ones(tmp_path: Path,
                                                            dask_client: object) -> None:  # fmt: skip
    from wallwatch.analysis.aggregate import aggregate_sql
    from wallwatch.vocab import Axis

    db, dataset = _mix_dataset(tmp_path, 3000, 8)
    out = Dataset(str(tmp_path / "out"))
    scale.analyze_dataset(dataset, out, dask_client)
    cases = [([Axis.VANTAGE], "hour", {}), ([Axis.TLD, Axis.VERDICT], "day", {}),
             ([Axis.ATTRIBUTION], "minute", {"vantage": "v1"}),
             ([Axis.ANSWER, Axis.QTYPE], "hour", {"since": "2014-01-22"}),
             ([Axis.TARGET, Axis.HOSTNAME], "day", {"until": "2014-01-22 00:00"})]  # fmt: skip
    for axes, grain, filters in cases:
        sql = aggregate_sql(axes, grain, **filters)  # type: ignore[arg-type]
        embedded = store.query(db, sql)
        cluster = scale.aggregate(dataset, out, dask_client, sql, [a.value for a in axes])
        assert cluster == embedded, (axes, cluster[:3], embedded[:3])
        assert embedded
    verdicts = {r[2] for r in store.query(db, aggregate_sql([Axis.TLD, Axis.VERDICT], "day"))}
    assert {"ok.match_ip", "injected.dark_destination"} <= verdicts
    who = {r[1] for r in store.query(db, aggregate_sql([Axis.ATTRIBUTION], "day"))}
    assert "on_path_injector" in who and "none" in who
    # Each measurement counted once: the day totals are the store's.
    total = sum(r[2] for r in store.query(db, aggregate_sql([Axis.VANTAGE], "day")))
    assert total == 3000 + 3000 + 3000 * 3 // 10


def test_serve_refuses_a_dataset_that_is_not_one(tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "_wallwatch.json").write_text('{"format": "something else"}')
    got = CliRunner().invoke(main, ["serve", "--data", str(tmp_path / "c"), "--dataset",
                                    str(tmp_path / "other")])  # fmt: skip
    assert got.exit_code != 0 and "does not describe a wallwatch dataset" in got.output
    got = CliRunner().invoke(main, ["serve", "--data", str(tmp_path / "c"), "--storage-option",
                                    "key=x"])  # fmt: skip
    assert got.exit_code != 0 and "--storage-option goes with --dataset" in got.output
