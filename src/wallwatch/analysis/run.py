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
from wallwatch.analysis.families import FAMILIES_SQL
from wallwatch.analysis.netinfo import Netinfo
from wallwatch.analysis.rules import RULES_VERSION, rules_table, verdict_sql
from wallwatch.store import MEMORY_LIMIT, sql_literal

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
) -> AnalysisSummary:
    """Compute (or recompute) the analysis tables of the store ``db``.

    ``baseline`` is an earlier store of the same names: with it, answers that every
    vantage and the control agree on but that changed since are told apart (see
    :mod:`.attribution`). Origin ASes come from the bundled table, or first from
    ``mmdb``, a directory of dated MMDB snapshots (or one file) (:mod:`.netinfo`).
    """
    import duckdb

    con: Any = duckdb.connect(str(db))
    con.execute("SET enable_progress_bar = false")  # stderr belongs to wallwatch's own messages
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    try:
        return analyze_connection(con, baseline=baseline, mmdb=mmdb, window=window, netinfo=netinfo)
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
    *intermediate, (_, final) = signals.steps()
    for table, sql in intermediate:
        if table not in preset:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
    # The last step is not materialised on its own: the verdicts are computed in
    # the same pass and stored with the evidence columns (one table, one write).
    con.execute(
        "CREATE OR REPLACE TABLE reply_verdicts AS "
        f"SELECT s.*, r.outcome, r.evidence, {RULES_VERSION} AS rules_version, "
        f"{sql_literal(version)} AS pools_version, "
        f"{sql_literal('; '.join(datasets) or 'none')} AS netinfo_version "
        f"FROM (SELECT *, {verdict_sql()} FROM ({final})) s "
        "JOIN analysis_rules r USING (rule_id)"
    )
    if baseline is not None:
        con.execute(f"ATTACH {sql_literal(str(baseline))} AS base (READ_ONLY)")
        con.execute(f"CREATE OR REPLACE TEMP TABLE baseline_answers AS {BASELINE_SQL}")
        con.execute("DETACH base")
    else:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE baseline_answers "
            "(hostname VARCHAR, query_type VARCHAR, ips VARCHAR[])"
        )
    con.execute(f"CREATE OR REPLACE TEMP TABLE name_changes AS {NAME_CHANGES_SQL}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE attributions_raw AS {ATTRIBUTION_SQL}")
    con.execute(f"CREATE OR REPLACE TABLE attributions AS {ATTRIBUTION_FINAL_SQL}")
    con.execute("CREATE OR REPLACE TEMP TABLE injected_before "
                "(hostname VARCHAR, query_type VARCHAR, first_injected BIGINT)")  # fmt: skip
    values = ", ".join(
        f"({sql_literal(h)}, {sql_literal(q)}, {int(t)})" for h, q, t in injected_before
    )
    if values:
        con.execute(f"INSERT INTO injected_before VALUES {values}")
    con.execute(
        "CREATE OR REPLACE TABLE window_attributions AS "
        + WINDOW_ATTRIBUTION_SQL.replace("{window}", str(max(1, int(window))))
    )
    if families:
        con.execute(f"CREATE OR REPLACE TABLE injector_families AS {FAMILIES_SQL}")
    replies = int(con.execute("SELECT count(*) FROM reply_verdicts").fetchone()[0])
    counts = dict(
        con.execute("SELECT attribution, count(*) FROM attributions GROUP BY ALL").fetchall()
    )
    return AnalysisSummary(
        replies, {str(k): int(v) for k, v in counts.items()}, RULES_VERSION, version,
        tuple(datasets),
    )  # fmt: skip


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
