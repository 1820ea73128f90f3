"""Run the analysis over a DuckDB store: evidence, verdicts, attributions, as tables.

Tables written beside the store's own (docs/schema.md):

* ``reply_verdicts``: per reply, the evidence columns (:mod:`.signals`), the first rule
  that holds, every rule that holds, its outcome and evidence level, ``rules_version``;
* ``attributions``: per (hostname, query_type), who did it, with confidence and reasons;
* ``window_attributions``: per (hostname, query_type, vantage, time window), with the
  cache tail told apart;
* ``injector_families``: forged replies grouped by fingerprint, named when they fit a profile;
* ``analysis_rules`` and ``known_addresses``: the rules and pools the verdicts used.

Every verdict row carries ``rules_version``, ``pools_version`` (date, count and content
hash of the forged and redirect lists loaded) and ``netinfo_version`` (the IP-to-AS
datasets, by name, date and content hash).
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
import tomllib
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path
from typing import Any

from wallwatch.analysis import pools, signals
from wallwatch.analysis.attribution import (
    ATTRIBUTION_FINAL_SQL,
    ATTRIBUTION_SQL,
    BASELINE_SQL,
    NAME_CHANGES_SQL,
    WINDOW_ATTRIBUTION_SQL,
)
from wallwatch.analysis.families import FAMILIES_FROM_PARTS_SQL, FAMILIES_SQL, FAMILY_PARTS_SQL
from wallwatch.analysis.netinfo import Netinfo
from wallwatch.analysis.rules import RULES_VERSION, rules_table, verdict_sql
from wallwatch.store import connect, limit_bytes, sql_literal
from wallwatch.vocab import TargetKind

#: One row of ``ip_asn``: day, address, ASN, AS name, the dataset that said so.
AsnRow = tuple[date, str, int | None, str | None, str | None]


@dataclass(frozen=True, slots=True)
class AnalysisSummary:
    replies: int
    attributions: dict[str, int]
    rules_version: int
    pools_version: str
    #: The IP-to-AS datasets the verdicts used (name, date and content hash), or none.
    netinfo_versions: tuple[str, ...] = ()


def analyze(
    db: str | Path,
    *,
    baseline: str | Path | None = None,
    mmdb: str | Path | None = None,
    window: int = 60,
    netinfo: Netinfo | None = None,
    slices: int | None = None,
) -> AnalysisSummary:
    """Compute (or recompute) the analysis tables of the store ``db``.

    ``baseline`` is an earlier store of the same names: with it, answers that every
    vantage and the control agree on but that changed since are told apart (see
    :mod:`.attribution`). Origin ASes come from the bundled table, or first from
    ``mmdb``, a directory of dated MMDB snapshots (or one file) (:mod:`.netinfo`).
    """
    con = connect(db)
    try:
        return analyze_connection(con, baseline=baseline, mmdb=mmdb, window=window,
                                   netinfo=netinfo, slices=slices)  # fmt: skip
    finally:
        con.close()


def open_netinfo(mmdb: str | Path | None = None) -> Netinfo | None:
    """The default origin-AS source: ``mmdb`` snapshots first, then the bundled table; None
    when neither exists (the analysis then runs without AS evidence and says so)."""
    try:
        return Netinfo(mmdb)
    except FileNotFoundError:
        return None


def analyze_connection(
    con: Any,
    *,
    baseline: str | Path | None = None,
    mmdb: str | Path | None = None,
    window: int = 60,
    netinfo: Netinfo | None = None,
    injected_before: Iterable[tuple[str, str, int]] = (),
    preset: Collection[str] = (),
    own_asns: Sequence[AsnRow] | None = None,
    families: bool = True,
    slices: int | None = None,
) -> AnalysisSummary:
    """The analysis on an open DuckDB connection whose store tables are loaded.

    ``injected_before``: (hostname, query_type, epoch second) of names a monitor saw
    injected in earlier minutes, so a cache still serving the forgery reads as the
    path's cache tail rather than the resolver's own lie.

    A partitioned run (:mod:`.scale`) runs this per bucket of names, with what needs
    every bucket computed once beforehand: ``preset`` names the evidence steps whose
    tables are already on the connection (the learned pools, the path baselines),
    ``own_asns`` the sources' own per-answer ASNs of the whole dataset; ``families``
    False leaves the injector families (summed over buckets) to the caller.

    ``slices``: analyse the store in that many slices of names (default:
    :func:`slices_for`, by the store's size), which bounds memory (:func:`_analyze_in_slices`).
    """
    # A partitioned run's connection may hold the reference tables already (made once).
    version = pools.load()[0] if "known_addresses" in preset else load_reference(con)
    own = netinfo is None
    if own:
        netinfo = open_netinfo(mmdb)
    try:
        datasets = _load_asns(con, netinfo, own_asns)
    finally:
        if own and netinfo is not None:
            netinfo.close()
    if baseline is not None:
        con.execute(f"ATTACH {sql_literal(str(baseline))} AS base (READ_ONLY)")
        con.execute(f"CREATE OR REPLACE TEMP TABLE baseline_answers AS {BASELINE_SQL}")
        con.execute("DETACH base")
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE baseline_answers "
            "(hostname VARCHAR, query_type VARCHAR, ips VARCHAR[])"
        )
    con.execute("CREATE OR REPLACE TEMP TABLE injected_before "
                "(hostname VARCHAR, query_type VARCHAR, first_injected BIGINT)")  # fmt: skip
    values = ", ".join(
        f"({sql_literal(h)}, {sql_literal(q)}, {int(t)})" for h, q, t in injected_before
    )
    if values:
        con.execute(f"INSERT INTO injected_before VALUES {values}")
    stamp = Stamp(version, "; ".join(datasets) or "none", max(1, int(window)))
    count = (slices or slices_for(con)) if not preset else 1
    if count > 1:
        _analyze_in_slices(con, count, stamp, families=families)
    else:
        _judge(con, stamp, skip=preset, temp=False, families=families)
    replies = int(con.execute("SELECT count(*) FROM reply_verdicts").fetchone()[0])
    counts = dict(
        con.execute("SELECT attribution, count(*) FROM attributions GROUP BY ALL").fetchall()
    )
    return AnalysisSummary(
        replies, {str(k): int(v) for k, v in counts.items()}, RULES_VERSION, version,
        tuple(datasets),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Stamp:
    """What every verdict row carries besides its evidence, and the window width."""

    pools_version: str
    netinfo_version: str
    window: int


#: The tables :func:`_judge` writes per name (a sliced run appends each slice's rows).
_PER_NAME_OUTPUTS = ("reply_verdicts", "attributions", "window_attributions")
#: The base tables a slice holds its own rows of (each carries the measurement's name).
_BASE_TABLES = ("measurements", "responses", "answers")
#: Evidence steps that round 2 of a sliced run makes and round 3 reads again.
_KEPT = ("reply_ips", "control_answers", "reply_base")
#: Evidence steps that need every name: a sliced run computes them over every slice
#: first (as a partitioned run does over its buckets, :mod:`.scale`).
_ACROSS_NAMES = ("learned_forged", "raced_forged", "path_samples", "path_baseline")


def _judge(
    con: Any,
    stamp: Stamp,
    *,
    skip: Collection[str],
    temp: bool,
    families: bool,
    append: tuple[str, bool] | None = None,
) -> None:
    """The evidence steps not in ``skip``, then the verdicts, attributions and window
    attributions (and the injector families when ``families``) over the base tables the
    connection shows. ``temp``: write the per-name outputs as temporary tables (one
    slice's, which its caller appends to the store's). ``append`` (the store's schema,
    whether this is the first slice): the verdicts go straight into the store's
    ``reply_verdicts`` instead (:func:`_append_verdicts`).

    Each working table made here is dropped once the last statement that reads it has
    run: the evidence steps' tables are most of what the analysis holds, and they are
    not all needed at once.
    """
    *intermediate, (_, final) = signals.steps()
    kind = "TEMP TABLE" if temp else "TABLE"
    # (table, its kind, its query); the last evidence step is not materialised on its
    # own: the verdicts are computed in the same pass and stored with the evidence
    # columns (one table, one write).
    plan = [(table, "TEMP TABLE", sql) for table, sql in intermediate if table not in skip]
    plan += [
        ("reply_verdicts", kind,
         f"SELECT s.*, r.outcome, r.evidence, {RULES_VERSION} AS rules_version, "
         f"{sql_literal(stamp.pools_version)} AS pools_version, "
         f"{sql_literal(stamp.netinfo_version)} AS netinfo_version "
         f"FROM (SELECT *, {verdict_sql()} FROM ({final})) s JOIN analysis_rules r USING (rule_id)"),
        ("name_changes", "TEMP TABLE", NAME_CHANGES_SQL),
        ("attributions_raw", "TEMP TABLE", ATTRIBUTION_SQL),
        ("attributions", kind, ATTRIBUTION_FINAL_SQL),
        ("window_attributions", kind, WINDOW_ATTRIBUTION_SQL.replace("{window}", str(stamp.window))),
    ]  # fmt: skip
    if families:
        plan.append(("injector_families", "TABLE", FAMILIES_SQL))
    working = {table for table, made, _ in plan if made == "TEMP TABLE"} - set(_PER_NAME_OUTPUTS)
    last = {table: max(i for i, (_, _, sql) in enumerate(plan) if _reads(sql, table))
            for table in working if any(_reads(sql, table) for _, _, sql in plan)}  # fmt: skip
    for index, (table, made, sql) in enumerate(plan):
        if append is not None and table == "reply_verdicts":
            _append_verdicts(con, sql, *append)
        else:
            con.execute(f"CREATE OR REPLACE {made} {table} AS {sql}")
        for done in sorted(t for t, at in last.items() if at == index):
            con.execute(f"DROP TABLE IF EXISTS temp.{done}")


def _append_verdicts(con: Any, sql: str, store: str, first: bool) -> None:
    """Write one slice's verdicts (``sql``) into the store's ``reply_verdicts`` (made by
    the ``first`` slice), and show them alone as the temporary view ``reply_verdicts``
    that the slice's attributions read.

    Why: a temporary table appended to the store's afterwards was written twice, the
    widest table of the analysis (2.1 s to make and 3.6 s to copy for 2.08M replies in 3
    slices, against 2.5-2.7 s for one write in one go). The slice's rows are the ones
    appended last: a table that nothing deletes from numbers appended rows after the
    others (``rowid``), and the scan skips the row groups before them.
    """
    before = 0
    if first:
        con.execute(f"CREATE OR REPLACE TABLE {store}.reply_verdicts AS {sql}")
    else:
        before = int(con.execute(f"SELECT count(*) FROM {store}.reply_verdicts").fetchone()[0])
        con.execute(f"INSERT INTO {store}.reply_verdicts {sql}")
    con.execute(f"CREATE OR REPLACE TEMP VIEW reply_verdicts AS "
                f"SELECT * FROM {store}.reply_verdicts WHERE rowid >= {before}")  # fmt: skip


def _reads(sql: str, table: str) -> bool:
    """Whether ``sql`` names the table ``table`` (as a whole word)."""
    return re.search(rf"\b{re.escape(table)}\b", sql) is not None


#: What the analysis holds per reply while it runs, measured (docs/performance.md): a
#: store whose replies need more than the memory cap is analysed in slices of names.
REPLY_BYTES = 1024


def slices_for(con: Any, limit: int | None = None) -> int:
    """How many slices of names the store on ``con`` is analysed in under the memory cap
    ``limit`` (bytes; default :data:`wallwatch.store.MEMORY_LIMIT`); 1 is in one go."""
    replies = int(con.execute("SELECT count(*) FROM responses").fetchone()[0])
    per_slice = max(1, (limit or limit_bytes()) // REPLY_BYTES)
    return max(1, -(-replies // per_slice))


def _analyze_in_slices(con: Any, count: int, stamp: Stamp, *, families: bool) -> None:
    """The analysis in ``count`` slices of names, in three rounds, so that memory stays
    flat as the store grows instead of holding every reply's evidence at once.

    A slice holds every reply about its names (:data:`SLICE_SQL`), so the per-name steps
    need nothing else; the steps that need every name (:data:`_ACROSS_NAMES`: the pool
    learned from dark hosts, the raced addresses, the path baselines) are computed over
    every slice first, as the partitioned run does over its buckets (:mod:`.scale`),
    and the result is the one-go result row for row (tests/test_analysis.py).
    """
    held = set(_BASE_TABLES)
    # The store's own schema, by its catalog: "main" alone would find the temporary
    # catalog's schema of that name, where the slice's copies live.
    catalog = str(con.execute("SELECT current_database()").fetchone()[0])
    store = '"' + catalog.replace('"', '""') + '".main'

    try:
        # Round 1: the addresses dark hosts answered with, from every slice (of which
        # only the queries to dark hosts are read: the step reads no other).
        con.execute("CREATE OR REPLACE TEMP TABLE _ww_learned (address VARCHAR)")
        for index in range(count):
            _hold_slice(con, store, index, count, dark=True)
            make_steps(con, ("reply_ips", "learned_forged"))
            con.execute("INSERT INTO _ww_learned SELECT * FROM learned_forged")
        con.execute("CREATE OR REPLACE TEMP TABLE learned_forged AS "
                    "SELECT DISTINCT address FROM _ww_learned")  # fmt: skip
        make_steps(con, ("forged_addresses",))
        # Round 2: the raced addresses and the path samples, from every slice. What
        # round 3 reads again is kept in the store's file (evicted under memory
        # pressure), slice after slice, so that a slice's rows are read back alone.
        con.execute("CREATE OR REPLACE TEMP TABLE _ww_raced (address VARCHAR)")
        for index in range(count):
            _hold_slice(con, store, index, count)
            make_steps(con, (*_KEPT, "raced_forged", "path_samples"))
            con.execute("INSERT INTO _ww_raced SELECT * FROM raced_forged")
            for table in (*_KEPT, "path_samples"):
                con.execute(
                    f"CREATE OR REPLACE TABLE {store}._ww_{table} AS "
                    f"SELECT {index} AS _ww_slice, * FROM {table}"
                    if index == 0
                    else f"INSERT INTO {store}._ww_{table} SELECT {index}, * FROM {table}"
                )
        con.execute("CREATE OR REPLACE TEMP TABLE raced_forged AS "
                    "SELECT DISTINCT address FROM _ww_raced")  # fmt: skip
        con.execute("CREATE OR REPLACE TEMP TABLE path_samples AS "
                    f"SELECT * EXCLUDE (_ww_slice) FROM {store}._ww_path_samples")  # fmt: skip
        make_steps(con, ("path_baseline",))
        con.execute("DROP TABLE path_samples")
        # Round 3: every rule per slice, the tables above preset; each slice's rows
        # appended to the store's tables, and its family counts kept to sum at the end.
        held |= set(_PER_NAME_OUTPUTS)
        for index in range(count):
            _hold_slice(con, store, index, count)
            for table in _KEPT:
                con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * EXCLUDE "
                            f"(_ww_slice) FROM {store}._ww_{table} WHERE _ww_slice = {index}")  # fmt: skip
            _judge(con, stamp, skip={*_ACROSS_NAMES, "forged_addresses", *_KEPT}, temp=True,
                   families=False, append=(store, index == 0))  # fmt: skip
            for table in _PER_NAME_OUTPUTS:
                if table == "reply_verdicts":
                    continue  # in the store already (_append_verdicts)
                con.execute(
                    f"CREATE OR REPLACE TABLE {store}.{table} AS SELECT * FROM temp.{table}"
                    if index == 0
                    else f"INSERT INTO {store}.{table} SELECT * FROM temp.{table}"
                )
            if families:
                parts = f"SELECT * FROM ({FAMILY_PARTS_SQL})"
                con.execute(f"CREATE OR REPLACE TEMP TABLE _ww_family_parts AS {parts}"
                            if index == 0 else f"INSERT INTO _ww_family_parts {parts}")  # fmt: skip
        if families:
            con.execute("CREATE OR REPLACE TABLE injector_families AS "
                        + FAMILIES_FROM_PARTS_SQL.replace("{parts}", "_ww_family_parts"))  # fmt: skip
    finally:
        for table in held:  # the store's own tables are seen again
            kind = "VIEW" if table in (*_BASE_TABLES, "reply_verdicts") else "TABLE"
            con.execute(f"DROP {kind} IF EXISTS temp.{table}")
        for table in ("_ww_learned", "_ww_raced", "_ww_family_parts"):
            con.execute(f"DROP TABLE IF EXISTS temp.{table}")
        for table in (*_KEPT, "path_samples"):
            con.execute(f"DROP TABLE IF EXISTS {store}._ww_{table}")


#: The rows of one slice of names (``{count}`` and ``{index}`` filled in): every row
#: about a name falls in one slice.
SLICE_SQL = "hash(coalesce(hostname, '')) % {count} = {index}"


def _hold_slice(con: Any, store: str, index: int, count: int, *, dark: bool = False) -> None:
    """Views of the base tables with one slice's rows (``dark``: only its queries to dark
    hosts), under the same names: the steps' SQL, unchanged, then reads the slice
    (temporary objects are found first)."""
    where = SLICE_SQL.format(count=count, index=index)
    if dark:
        where += f" AND target_kind = {sql_literal(TargetKind.DARK.value)}"
    for table in _BASE_TABLES:
        con.execute(f"CREATE OR REPLACE TEMP VIEW {table} AS "
                    f"SELECT * FROM {store}.{table} WHERE {where}")  # fmt: skip


def make_steps(con: Any, names: Collection[str], made: set[str] | None = None) -> None:
    """The named evidence steps not yet ``made``, in the order :func:`signals.steps`
    runs them (each added to ``made``); a sliced run's rounds and a partitioned run's
    (:mod:`.scale`) make the steps they need with it."""
    wanted = set(names) - (made or set())
    for table, sql in signals.steps():
        if table in wanted:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
            if made is not None:
                made.add(table)


def load_reference(con: Any) -> str:
    """The tables the rules read besides the store: the known pools, the rules, the
    platforms; the pools' version."""
    version, known = pools.load()
    _load_table(con, "known_addresses", ("address", "kind", "list_id"),
                [(k.address, k.kind, k.list_id) for k in known])  # fmt: skip
    _load_table(
        con, "analysis_rules", ("rule_id", "outcome", "evidence", "rationale"), rules_table()
    )
    _load_platforms(con)
    return version


def _load_platforms(con: Any) -> None:
    """Table ``platforms``: (asn, platform, domains) from ``data/platforms.toml``."""
    data = tomllib.loads(resources.files("wallwatch.data").joinpath("platforms.toml").read_text())
    con.execute(
        "CREATE OR REPLACE TEMP TABLE platforms (asn INTEGER, platform VARCHAR, domains VARCHAR[])"
    )
    rows = [
        f"({int(asn)}, {sql_literal(p['name'])}, [{', '.join(sql_literal(d) for d in p['domains'])}])"
        for p in data["platform"]
        for asn in p["asns"]
    ]
    con.execute(f"INSERT INTO platforms VALUES {', '.join(rows)}")


def _load_table(
    con: Any, name: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]
) -> None:
    """A small VARCHAR table in one statement (``executemany`` costs a round trip per row)."""
    values = ", ".join("(" + ", ".join(sql_literal(v) for v in row) + ")" for row in rows)
    names = ", ".join(columns)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM (VALUES {values}) v({names})")


def own_asns(con: Any) -> list[AsnRow]:
    """What the sources themselves recorded of their answers' ASNs (OONI's per-answer ASN,
    looked up by the probe on the day), as ``ip_asn`` rows."""
    own: dict[tuple[date, str], AsnRow] = {}
    for day, text in con.execute(
        "SELECT DISTINCT CAST(substr(measurement_start_time, 1, 10) AS DATE), "
        "annotations['answer_asns'] FROM measurements WHERE annotations['answer_asns'] IS NOT NULL"
    ).fetchall():
        try:
            found = json.loads(text)
        except ValueError:
            continue
        for ip, value in found.items() if isinstance(found, dict) else ():
            try:
                asn, org = value
                own[(day, str(ip))] = (
                    day,
                    str(ip),
                    int(asn),
                    str(org),
                    "the source's own lookup on the day",
                )
            except (TypeError, ValueError):
                continue  # not the shape the importer writes: today's table answers instead
    return list(own.values())


def _load_asns(con: Any, netinfo: Netinfo | None,
               given: Sequence[AsnRow] | None = None) -> list[str]:  # fmt: skip
    """Table ``ip_asn``: one lookup per distinct (day, address) of the store; the datasets
    used. ``given``: the sources' own lookups (:func:`own_asns`) when known already."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ip_asn "
        "(day DATE, ip VARCHAR, asn INTEGER, as_org VARCHAR, dataset VARCHAR)"
    )
    # First what the source itself recorded: the routing of the measurement's own day
    # beats any later table.
    own = {(row[0], row[1]): row for row in (own_asns(con) if given is None else given)}
    pairs = con.execute(
        "SELECT DISTINCT CAST(substr(m.measurement_start_time, 1, 10) AS DATE), "
        "lower(coalesce(a.ipv4, a.ipv6)) FROM answers a JOIN measurements m "
        "ON m.measurement_uid = a.measurement_uid WHERE coalesce(a.ipv4, a.ipv6) IS NOT NULL"
    ).fetchall()
    rest = [p for p in pairs if tuple(p) not in own]
    rows = list(own.values()) + (netinfo.rows(rest) if netinfo is not None else [])
    if rows:
        with tempfile.NamedTemporaryFile("w", suffix=".csv", newline="", delete=False) as handle:
            csv.writer(handle).writerows(rows)
            name = handle.name
        try:
            con.execute(
                f"INSERT INTO ip_asn SELECT * FROM read_csv({sql_literal(name)}, header=false, "
                "columns={'day': 'DATE', 'ip': 'VARCHAR', 'asn': 'INTEGER', 'as_org': 'VARCHAR', "
                "'dataset': 'VARCHAR'})"
            )
        finally:
            Path(name).unlink()
    used = list(netinfo.datasets) if netinfo is not None else []
    return (["source: per-answer ASNs of the measurements"] if own else []) + used
