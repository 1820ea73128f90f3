"""Run the analysis over a DuckDB store: evidence, verdicts, attributions, as tables.

Tables written beside the store's own (docs/schema.md):

* ``reply_verdicts``: per reply, the evidence columns (:mod:`.signals`), the first rule
  that holds, every rule that holds, its outcome and evidence level, ``rules_version``;
* ``attributions``: per (hostname, query_type), who did it, with confidence and reasons;
* ``window_attributions``: per (hostname, query_type, vantage, time window), with the
  cache tail told apart;
* ``injector_families``: forged replies grouped by fingerprint, named when they fit a profile;
* ``analysis_rules`` and ``known_addresses``: the rules and pools the verdicts used.
"""

from __future__ import annotations

import csv
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallwatch.analysis import pools, signals
from wallwatch.analysis.attribution import (
    ATTRIBUTION_SQL,
    BASELINE_SQL,
    NAME_CHANGES_SQL,
    WINDOW_ATTRIBUTION_SQL,
)
from wallwatch.analysis.families import FAMILIES_SQL
from wallwatch.analysis.rules import RULES_VERSION, rules_table, verdict_sql
from wallwatch.store import MEMORY_LIMIT, sql_literal


@dataclass(frozen=True, slots=True)
class AnalysisSummary:
    replies: int
    attributions: dict[str, int]
    rules_version: int
    pools_version: str


def analyze(
    db: str | Path,
    *,
    baseline: str | Path | None = None,
    mmdb: str | Path | None = None,
    window: int = 60,
) -> AnalysisSummary:
    """Compute (or recompute) the analysis tables of the store ``db``.

    ``baseline`` is an earlier store of the same names: with it, answers that every
    vantage and the control agree on but that changed since are told apart (see
    :mod:`.attribution`). ``mmdb`` is a directory of dated MMDB snapshots (or one
    file) for origin-AS matching (:mod:`.netinfo`).
    """
    import duckdb

    con: Any = duckdb.connect(str(db))
    con.execute("SET enable_progress_bar = false")  # stderr belongs to wallwatch's own messages
    con.execute(f"SET memory_limit = '{MEMORY_LIMIT}'")
    try:
        version, known = pools.load()
        _load_table(con, "known_addresses", ("address", "kind", "list_id"),
                    [(k.address, k.kind, k.list_id) for k in known])  # fmt: skip
        _load_table(
            con, "analysis_rules", ("rule_id", "outcome", "evidence", "rationale"), rules_table()
        )
        _load_asns(con, mmdb)
        *intermediate, (_, final) = signals.steps()
        for table, sql in intermediate:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
        # The last step is not materialised on its own: the verdicts are computed in
        # the same pass and stored with the evidence columns (one table, one write).
        con.execute(
            "CREATE OR REPLACE TABLE reply_verdicts AS "
            f"SELECT s.*, r.outcome, r.evidence, {RULES_VERSION} AS rules_version, "
            f"'{version}' AS pools_version FROM (SELECT *, {verdict_sql()} FROM ({final})) s "
            "JOIN analysis_rules r USING (rule_id)"
        )
        if baseline is not None:
            con.execute(f"ATTACH {sql_literal(str(baseline))} AS base (READ_ONLY)")
            con.execute(f"CREATE OR REPLACE TEMP TABLE baseline_answers AS {BASELINE_SQL}")
        else:
            con.execute(
                "CREATE OR REPLACE TEMP TABLE baseline_answers "
                "(hostname VARCHAR, query_type VARCHAR, ips VARCHAR[])"
            )
        con.execute(f"CREATE OR REPLACE TEMP TABLE name_changes AS {NAME_CHANGES_SQL}")
        con.execute(f"CREATE OR REPLACE TABLE attributions AS {ATTRIBUTION_SQL}")
        con.execute(
            "CREATE OR REPLACE TABLE window_attributions AS "
            + WINDOW_ATTRIBUTION_SQL.replace("{window}", str(max(1, int(window))))
        )
        con.execute(f"CREATE OR REPLACE TABLE injector_families AS {FAMILIES_SQL}")
        replies = int(con.execute("SELECT count(*) FROM reply_verdicts").fetchone()[0])
        counts = dict(
            con.execute("SELECT attribution, count(*) FROM attributions GROUP BY ALL").fetchall()
        )
    finally:
        con.close()
    return AnalysisSummary(
        replies, {str(k): int(v) for k, v in counts.items()}, RULES_VERSION, version
    )


def _load_table(
    con: Any, name: str, columns: tuple[str, ...], rows: Sequence[tuple[str, ...]]
) -> None:
    """A small VARCHAR table in one statement (``executemany`` costs a round trip per row)."""
    values = ", ".join("(" + ", ".join(sql_literal(v) for v in row) + ")" for row in rows)
    names = ", ".join(columns)
    con.execute(f"CREATE OR REPLACE TABLE {name} AS SELECT * FROM (VALUES {values}) v({names})")


def _load_asns(con: Any, mmdb: str | Path | None) -> None:
    """Table ``ip_asn``: one lookup per distinct (day, address) of the store."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE ip_asn (day DATE, ip VARCHAR, asn INTEGER, as_org VARCHAR)"
    )
    if mmdb is None:
        return
    from wallwatch.analysis.netinfo import NetinfoDB

    pairs = con.execute(
        "SELECT DISTINCT CAST(substr(m.measurement_start_time, 1, 10) AS DATE), "
        "lower(coalesce(a.ipv4, a.ipv6)) FROM answers a JOIN measurements m "
        "ON m.measurement_uid = a.measurement_uid WHERE coalesce(a.ipv4, a.ipv6) IS NOT NULL"
    ).fetchall()
    netinfo = NetinfoDB(mmdb)
    try:
        rows = netinfo.rows(pairs)
    finally:
        netinfo.close()
    with tempfile.NamedTemporaryFile("w", suffix=".csv", newline="", delete=False) as handle:
        csv.writer(handle).writerows(rows)
        name = handle.name
    try:
        con.execute(
            f"INSERT INTO ip_asn SELECT * FROM read_csv({sql_literal(name)}, header=false, "
            "columns={'day': 'DATE', 'ip': 'VARCHAR', 'asn': 'INTEGER', 'as_org': 'VARCHAR'})"
        )
    finally:
        Path(name).unlink()
