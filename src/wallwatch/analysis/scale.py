"""The analysis on a Dask cluster: the same rules, per bucket of names, over a dataset.

Why Dask, and DuckDB inside it: a user who outgrows one machine runs the *same* rules on
an engine that already exists on clusters (``dask scheduler`` / ``dask worker``,
dask-jobqueue, dask-kubernetes), and the rules stay SQL in one place
(:mod:`.signals`, :mod:`.rules`, :mod:`.attribution`, :mod:`.families`): each task opens
an in-memory DuckDB over one bucket's Parquet files of a :mod:`wallwatch.dataset` and
runs them there ([dask-distributed]; [duckdb]).

A bucket holds every reply about its names, so the per-name steps (the control's answers,
the verdicts, the attributions, the windows) need nothing else. Four things the embedded
run computes over the whole store are computed once, from every bucket, and handed to
the next round (docs/scale-out.md):

1. *learn*: the forged addresses learned from dark hosts, and the sources' own
   per-answer ASNs (both change the control's answers and the ASN evidence of every
   bucket);
2. *race*: the addresses that a genuine reply or a referral raced from behind (they
   mark a forged pool everywhere), and the path baselines (median RTT and commonest IP
   TTL per vantage and resolver; the control-matching samples are summed as value
   counts, and the median taken over all of them, as the embedded query takes it);
3. *judge*: every rule, per bucket, with those tables preset; the verdicts,
   attributions and window attributions written under ``OUT/<table>/bucket=NN/``;
4. the injector families, summed from each bucket's counts (:data:`FAMILY_PARTS_SQL`).

The result is the embedded run's, row for row (tests/test_scale.py checks it on lab
scenarios and a generated mix). A task is a pure function of its bucket and the
round's tables, and writes its bucket's files whole under fixed names: a worker lost
midway costs a rerun of its tasks elsewhere (Dask's own retry), nothing doubled.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from wallwatch.analysis.families import FAMILIES_FROM_PARTS_SQL, FAMILY_PARTS_SQL
from wallwatch.analysis.netinfo import Netinfo
from wallwatch.analysis.rules import RULES_VERSION
from wallwatch.analysis.run import (
    AnalysisSummary,
    AsnRow,
    analyze_connection,
    load_reference,
    make_steps,
    open_netinfo,
    own_asns,
)
from wallwatch.dataset import PARTITIONED, Dataset, parquet_sql
from wallwatch.store import connect, create_empty, sql_literal

#: The tables a run writes under its output root (as the embedded run's, docs/schema.md).
OUTPUTS = ("reply_verdicts", "attributions", "window_attributions", "injector_families",
           "analysis_rules", "known_addresses")  # fmt: skip
#: Evidence steps a bucket takes from the whole dataset instead of computing them itself.
_GLOBAL_STEPS = frozenset({"learned_forged", "raced_forged", "path_samples", "path_baseline"})
#: The steps the race round runs (in :func:`signals.steps`' order), learned pool preset.
_RACE_STEPS = ("reply_ips", "forged_addresses", "control_answers", "reply_base",
               "raced_forged", "path_samples")  # fmt: skip


@dataclass(frozen=True, slots=True)
class ScaleSummary:
    """What a cluster run found and what it cost, per round."""

    analysis: AnalysisSummary
    buckets: int
    workers: int
    seconds: dict[str, float]


def parse_scheduler(spec: str) -> tuple[str | None, int]:
    """``local`` / ``local:N`` (a cluster of N worker processes on this machine, on
    loopback) or a scheduler's address (``tcp://host:8786``); (address, workers)."""
    if spec == "local" or spec.startswith("local:"):
        count = spec.partition(":")[2] or "2"
        if not count.isdigit() or not 1 <= int(count) <= 256:
            raise ValueError(f"--dask {spec}: local:N with N a number of workers, 1 to 256")
        return None, int(count)
    if "://" not in spec and ":" not in spec:
        raise ValueError(f"--dask {spec}: local, local:N, or a scheduler's address "
                         "(tcp://host:8786)")  # fmt: skip
    return spec, 0


@contextmanager
def client(spec: str) -> Iterator[Any]:
    """A Dask client for ``spec`` (:func:`parse_scheduler`); a local cluster is started and
    stopped with it, listening on loopback only (its status page on a free loopback port)."""
    from distributed import Client, LocalCluster

    address, workers = parse_scheduler(spec)
    if address is not None:
        with Client(address, timeout="30s") as connected:
            yield connected
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address="127.0.0.1:0",
                      memory_limit=0) as cluster, Client(cluster) as connected:  # fmt: skip
        yield connected


def analyze_dataset(
    dataset: Dataset,
    out: Dataset,
    dask: Any,
    *,
    mmdb: str | Path | None = None,
    window: int = 60,
    baseline: str | Path | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> ScaleSummary:
    """Run the analysis over ``dataset`` on the Dask client ``dask``; write the tables to
    ``out`` (a directory or URL; its analysis tables are replaced). ``mmdb`` and
    ``baseline`` (an earlier embedded store) are paths every worker reads."""
    import time

    from distributed import as_completed

    buckets = dataset.present()
    if not buckets:
        raise ValueError(f"{dataset.root}: the dataset holds no measurements")
    for table in OUTPUTS:
        out.remove(table)
    seconds: dict[str, float] = {}
    run_id = uuid.uuid4().hex
    placed: dict[int, str] = {}  # bucket -> the worker holding its tables

    def run(stage: str, function: Callable[..., Any], *args: Any) -> list[Any]:
        start = time.perf_counter()
        futures = [dask.submit(function, run_id, dataset, b, *args, pure=False,
                               key=f"ww-{stage}-{run_id}-{b}",
                               workers=[placed[b]] if placed.get(b) else None,
                               allow_other_workers=bool(placed.get(b)))
                   for b in buckets]  # fmt: skip
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for done, future in enumerate(as_completed(futures), 1):
            where, result = future.result()
            i = index[future.key]
            placed[buckets[i]] = where
            results[i] = result
            if progress is not None:
                progress(stage, done, len(futures))
        seconds[stage] = time.perf_counter() - start
        return results

    learned_parts = run("learn", learn)
    learned = sorted({a for part, _ in learned_parts for a in part})
    own: dict[tuple[date, str], AsnRow] = {}
    for _, rows in learned_parts:
        own.update({(r[0], r[1]): r for r in rows})
    # One future for the whole list (scatter sends a list's items one by one).
    learned_f = dask.scatter([learned], broadcast=True)[0]
    raced_parts = run("race", race, learned_f)
    raced = sorted({a for part, _ in raced_parts for a in part})
    baselines = path_baselines([s for _, samples in raced_parts for s in samples])
    shared = dask.scatter([(learned, raced, list(own.values()), baselines)], broadcast=True)[0]
    try:
        judged = run("judge", judge, out, shared, str(mmdb) if mmdb else None, window,
                     str(baseline) if baseline else None)  # fmt: skip
    finally:
        dask.run(release, run_id)
    start = time.perf_counter()
    _write_reduced(out, [row for _, rows in judged for row in rows])
    seconds["families"] = time.perf_counter() - start
    counts: Counter[str] = Counter()
    for summary, _ in judged:
        counts.update(summary.attributions)
    first = judged[0][0]  # every bucket's verdicts carry the same versions
    workers = len(dask.scheduler_info().get("workers", {}))
    return ScaleSummary(
        AnalysisSummary(sum(summary.replies for summary, _ in judged), dict(counts),
                        RULES_VERSION, first.pools_version, first.netinfo_versions),
        len(buckets), workers, seconds)  # fmt: skip


def aggregate(dataset: Dataset, analysis: Dataset, dask: Any, sql: str,
              axes: Sequence[str]) -> list[tuple[Any, ...]]:  # fmt: skip
    """:func:`wallwatch.analysis.aggregate.aggregate_sql`'s rows over ``dataset`` and the
    tables ``analyze_dataset`` wrote to ``analysis``: each bucket counted by a worker, the
    counts summed (a measurement is in one bucket, so the sums are exact)."""
    buckets = dataset.present()
    futures = dask.map(count_bucket, [dataset] * len(buckets), buckets,
                       [analysis] * len(buckets), [sql] * len(buckets), pure=False)  # fmt: skip
    rows = [row for part in dask.gather(futures) for row in part]
    names = ["t", *axes, "measurements", "replies"]
    con = connect()
    try:
        _load(con, "parts", [("t", "TIMESTAMP"), *((a, "VARCHAR") for a in axes),
                             ("measurements", "BIGINT"), ("replies", "BIGINT")], rows)  # fmt: skip
        keys = ", ".join(names[:-2])
        result: list[tuple[Any, ...]] = con.execute(
            f"SELECT {keys}, sum(measurements) AS measurements, sum(replies) AS replies "
            "FROM parts GROUP BY ALL ORDER BY ALL").fetchall()  # fmt: skip
        return result
    finally:
        con.close()


def count_bucket(dataset: Dataset, bucket: int, analysis: Dataset,
                 sql: str) -> list[tuple[Any, ...]]:  # fmt: skip
    """One bucket's counts (:func:`aggregate`), with its analysis tables beside it."""
    con = open_bucket(dataset, bucket)
    try:
        analysis.register(con)
        for table in ("reply_verdicts", "window_attributions"):
            files = analysis.glob(table, f"bucket={bucket}", "*.parquet")
            # A bucket the analysis has not seen: its tables, empty (any bucket's columns).
            empty = "" if files else " LIMIT 0"
            files = files or analysis.glob(table, "*", "*.parquet")[:1]
            if files:
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM {parquet_sql(files)}{empty}")
        return [tuple(r) for r in con.execute(sql).fetchall()]
    finally:
        con.close()


# --- the rounds (run in the workers) --------------------------------------------------


def open_bucket(dataset: Dataset, bucket: int) -> Any:
    """An in-memory DuckDB over one bucket's store tables (one thread: a worker runs as
    many tasks at once as it has threads). On local disk the tables are views of the
    Parquet files, each step reading only its columns (measured faster than loading
    them); from an object store they are loaded once, not fetched again at every step."""
    con = connect()  # (memory-capped as every wallwatch connection)
    con.execute("SET threads = 1")
    dataset.register(con)
    for table in PARTITIONED:
        files = dataset.files(table, bucket)
        if not files:
            create_empty(con, table)
            continue
        kind = "TABLE" if dataset.remote else "VIEW"
        con.execute(f"CREATE {kind} {table} AS SELECT * FROM {parquet_sql(files)}")
    return con


#: In a worker process: (run, bucket) -> [its connection, the steps made on it]. A bucket's
#: rounds are sent to the worker that ran its last one, so each step runs once; a round
#: that lands elsewhere (its worker was lost) opens the bucket again and redoes them.
_HELD: dict[tuple[str, int], tuple[Any, set[str]]] = {}
#: The mark of a connection that the race round ran on (its learned pool is the dataset's).
_RACED = "(raced)"


def _hold(run: str, dataset: Dataset, bucket: int) -> tuple[Any, set[str]]:
    held = _HELD.get((run, bucket))
    if held is None:
        held = _HELD[(run, bucket)] = (open_bucket(dataset, bucket), set())
    return held


def _race_steps(con: Any, made: set[str], learned: Sequence[str]) -> None:
    """The race round's steps, over the dataset's learned pool (the reference tables
    loaded once per connection)."""
    if "known_addresses" not in made:
        load_reference(con)
        made.add("known_addresses")
    _addresses(con, "learned_forged", learned)
    made.add("learned_forged")
    make_steps(con, _RACE_STEPS, made)
    made.add(_RACED)


#: In a worker process: the origin-AS source per ``--mmdb``, opened once (a bucket's
#: lookups are a few; loading the bundled table is not).
_NETINFO: dict[str | None, Netinfo | None] = {}


def _netinfo(mmdb: str | None) -> Netinfo | None:
    if mmdb not in _NETINFO:
        _NETINFO[mmdb] = open_netinfo(mmdb)
    return _NETINFO[mmdb]


def _here() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:  # called outside a worker (a test, a debugger)
        return ""


def release(run: str) -> None:
    """Close this worker's connections of ``run`` (run on every worker at the end)."""
    for key in [k for k in _HELD if k[0] == run]:
        con, _ = _HELD.pop(key)
        con.close()


def learn(run: str, dataset: Dataset, bucket: int) -> tuple[str, tuple[list[str], list[AsnRow]]]:
    """Round 1: the bucket's addresses from dark hosts, and its sources' own ASNs."""
    con, made = _hold(run, dataset, bucket)
    make_steps(con, ("reply_ips", "learned_forged"), made)
    learned = [str(r[0]) for r in con.execute("SELECT address FROM learned_forged").fetchall()]
    return _here(), (learned, own_asns(con))


def race(run: str, dataset: Dataset, bucket: int,
         learned: Sequence[str]) -> tuple[str, tuple[list[str], list[tuple[Any, ...]]]]:  # fmt: skip
    """Round 2: the bucket's raced addresses, and its path samples as value counts."""
    con, made = _hold(run, dataset, bucket)
    _race_steps(con, made, learned)
    raced = [str(r[0]) for r in con.execute("SELECT address FROM raced_forged").fetchall()]
    samples = con.execute("SELECT vantage, resolver_address, rtt, ip_ttl, count(*) "
                          "FROM path_samples GROUP BY ALL").fetchall()  # fmt: skip
    return _here(), (raced, [tuple(s) for s in samples])


def judge(run: str, dataset: Dataset, bucket: int, out: Dataset,
          shared: tuple[Sequence[str], Sequence[str], Sequence[AsnRow], Sequence[tuple[Any, ...]]],
          mmdb: str | None, window: int, baseline: str | None = None,
          ) -> tuple[str, tuple[AnalysisSummary, list[tuple[Any, ...]]]]:  # fmt: skip
    """Round 3: every rule over the bucket, the whole dataset's tables preset; the
    bucket's tables written; (its summary, its family parts). ``baseline``:
    an earlier embedded store (a path every worker reads), as the embedded run takes it."""
    learned, raced, own, baselines = shared
    con, made = _hold(run, dataset, bucket)
    try:
        if _RACED not in made:  # not where the race round ran: its steps again
            _race_steps(con, made, learned)
        _addresses(con, "raced_forged", raced)
        _baselines(con, baselines)
        summary = analyze_connection(con, mmdb=mmdb, window=window, netinfo=_netinfo(mmdb),
                                     baseline=baseline, preset=_GLOBAL_STEPS | made,
                                     own_asns=own, families=False)  # fmt: skip
        parts = [tuple(r) for r in con.execute(FAMILY_PARTS_SQL).fetchall()]
        _write(con, out, {t: f"{t}/bucket={bucket}/part-0.parquet"
                          for t in ("reply_verdicts", "attributions", "window_attributions")})  # fmt: skip
        return _here(), (summary, parts)
    finally:
        _HELD.pop((run, bucket), None)
        con.close()


# --- the reduces (run by the caller) ----------------------------------------------------


def path_baselines(samples: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The path baselines from every bucket's samples (vantage, resolver, rtt, IP TTL,
    count): the samples expanded and the embedded step's own query run over them."""
    con = connect()
    try:
        _load(con, "grouped", [*_PATH, ("rtt", "DOUBLE"), ("ip_ttl", "INTEGER"), ("n", "BIGINT")],
              samples)  # fmt: skip
        con.execute("CREATE TABLE path_samples AS SELECT vantage, resolver_address, rtt, ip_ttl "
                    "FROM (SELECT *, unnest(range(n)) FROM grouped)")  # fmt: skip
        make_steps(con, ("path_baseline",))
        return [tuple(r) for r in con.execute("SELECT * FROM path_baseline").fetchall()]
    finally:
        con.close()


def _write_reduced(out: Dataset, parts: Sequence[tuple[Any, ...]]) -> None:
    """The families from every bucket's parts, and the rules and pools the verdicts used."""
    con = connect()
    try:
        _load(con, "parts", _FAMILY_PARTS, parts)
        con.execute("CREATE TABLE injector_families AS "
                    + FAMILIES_FROM_PARTS_SQL.replace("{parts}", "parts"))  # fmt: skip
        load_reference(con)
        _write(con, out, {t: f"{t}/part-0.parquet"
                          for t in ("injector_families", "analysis_rules", "known_addresses")})  # fmt: skip
    finally:
        con.close()


# --- helpers ----------------------------------------------------------------------------


#: Column names and types of the tables handed between the rounds.
_PATH = (("vantage", "VARCHAR"), ("resolver_address", "VARCHAR"))
_FAMILY_PARTS = (("aa", "BOOLEAN"), ("name_form", "VARCHAR"), ("edns", "BOOLEAN"),
                 ("answer_ttl", "BIGINT"), ("df", "BOOLEAN"), ("ip_id_zero", "BOOLEAN"),
                 ("ip_ttl", "INTEGER"), ("replies", "BIGINT"),
                 ("example_measurement_uid", "VARCHAR"))  # fmt: skip


def _load(con: Any, table: str, columns: Sequence[tuple[str, str]],
          rows: Sequence[Sequence[Any]]) -> None:  # fmt: skip
    """``rows`` as the temporary table ``table`` of the given (name, DuckDB type) columns
    (through Arrow: one call, not a statement per row)."""
    import pyarrow as pa

    types = {"VARCHAR": pa.string(), "DOUBLE": pa.float64(), "INTEGER": pa.int32(),
             "BIGINT": pa.int64(), "BOOLEAN": pa.bool_(), "TIMESTAMP": pa.timestamp("us")}  # fmt: skip
    arrays = {name: pa.array([row[i] for row in rows], types[kind])
              for i, (name, kind) in enumerate(columns)}  # fmt: skip
    con.register("_ww_rows", pa.table(arrays))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _ww_rows")
    con.unregister("_ww_rows")


def _addresses(con: Any, table: str, addresses: Sequence[str]) -> None:
    _load(con, table, [("address", "VARCHAR")], [(a,) for a in addresses])


def _baselines(con: Any, rows: Sequence[tuple[Any, ...]]) -> None:
    _load(con, "path_baseline", [*_PATH, ("base_rtt", "DOUBLE"), ("base_ttl", "INTEGER")], rows)


def _write(con: Any, out: Dataset, targets: dict[str, str]) -> None:
    """Each table to its file under ``out``, whole (:meth:`Dataset.writing`)."""
    for table, relative in targets.items():
        with out.writing(relative) as local:
            con.execute(f"COPY {table} TO {sql_literal(str(local))} (FORMAT parquet)")
