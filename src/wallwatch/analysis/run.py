"""Run the analysis over a DuckDB store: evidence, verdicts, attributions, as tables.

Tables written beside the store's own (docs/schema.md):

* ``reply_signals``: the evidence columns per reply (:mod:`.signals`);
* ``reply_verdicts``: per reply, the first rule that holds, every rule that holds,
  its outcome and evidence level, and ``rules_version``;
* ``attributions``: per (hostname, query_type), who did it, with confidence and reasons;
* ``analysis_rules`` and ``known_addresses``: the rules and pools the verdicts used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallwatch.analysis import pools, signals
from wallwatch.analysis.attribution import ATTRIBUTION_SQL
from wallwatch.analysis.rules import RULES_VERSION, rules_table, verdict_sql


@dataclass(frozen=True, slots=True)
class AnalysisSummary:
    replies: int
    attributions: dict[str, int]
    rules_version: int
    pools_version: str


def analyze(db: str | Path) -> AnalysisSummary:
    """Compute (or recompute) the analysis tables of the store ``db``."""
    import duckdb

    con: Any = duckdb.connect(str(db))
    try:
        version, known = pools.load()
        con.execute(
            "CREATE OR REPLACE TABLE known_addresses (address VARCHAR, kind VARCHAR, list_id VARCHAR)"
        )
        con.executemany("INSERT INTO known_addresses VALUES (?, ?, ?)",
                        [(k.address, k.kind, k.list_id) for k in known])  # fmt: skip
        con.execute(
            "CREATE OR REPLACE TABLE analysis_rules (rule_id VARCHAR, outcome VARCHAR, "
            "evidence VARCHAR, rationale VARCHAR)"
        )
        con.executemany("INSERT INTO analysis_rules VALUES (?, ?, ?, ?)", rules_table())
        for table, sql in signals.steps():
            con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS {sql}")
        con.execute("CREATE OR REPLACE TABLE reply_signals AS SELECT * FROM temp.reply_signals")
        con.execute(
            "CREATE OR REPLACE TABLE reply_verdicts AS "
            f"SELECT s.*, r.outcome, r.evidence, {RULES_VERSION} AS rules_version, "
            f"'{version}' AS pools_version FROM (SELECT *, {verdict_sql()} FROM reply_signals) s "
            "JOIN analysis_rules r USING (rule_id)"
        )
        con.execute(f"CREATE OR REPLACE TABLE attributions AS {ATTRIBUTION_SQL}")
        replies = int(con.execute("SELECT count(*) FROM reply_verdicts").fetchone()[0])
        counts = dict(
            con.execute("SELECT attribution, count(*) FROM attributions GROUP BY ALL").fetchall()
        )
    finally:
        con.close()
    return AnalysisSummary(
        replies, {str(k): int(v) for k, v in counts.items()}, RULES_VERSION, version
    )
