"""A generated store of any size, made in SQL from real records (bench/scale.py, tests).

Per name: a TCP control answering the genuine address; a resolver query that is clean,
or (three names in ten) raced by two forgeries and then answered; a dark-host query for
the blocked names, answered by the two forgeries. Three vantages, two days, RTTs and IP
TTLs that vary, so that the path baselines are medians of many values. Two kinds of
names tie buckets together as real data does: every hundredth blocked name's dark host
answers an address of its own, and a clean-looking name elsewhere gets that address from
its resolver (only the pool learned from *another* bucket's dark host marks it).

The records of five templates are made by the prober's own code (:func:`reply`, as
bench/analyze.py makes them) and ingested; the rows of every name are copies of them
with the name, IDs, addresses and timings rewritten in SQL, which makes 20M replies in
seconds rather than the hour that encoding them one by one would take.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import msgspec

sys.path.insert(0, str(Path(__file__).parent))

from analyze import FORGED, measurement, reply  # noqa: E402
from wallwatch import store  # noqa: E402
from wallwatch.journal import Journal  # noqa: E402
from wallwatch.names import QueryName  # noqa: E402
from wallwatch.vocab import Engine, TargetKind  # noqa: E402

GENUINE = "192.0.2.1"

#: role -> (kind, engine, replies: (address, rtt, ip_ttl, forged))
_ROLES: dict[str, tuple[TargetKind, Engine, tuple[tuple[str, float, int | None, bool], ...]]] = {
    "control": (TargetKind.CONTROL, Engine.TCP, ((GENUINE, 0.2, None, False),)),
    "clean": (TargetKind.RESOLVER, Engine.UDP, ((GENUINE, 0.16, 61, False),)),
    "raced": (TargetKind.RESOLVER, Engine.UDP, ((FORGED[0], 0.0005, 60, True),
                                                (FORGED[1], 0.0007, 99, True),
                                                (GENUINE, 0.16, 61, False))),
    "dark": (TargetKind.DARK, Engine.UDP, ((FORGED[0], 0.0005, 60, True),
                                           (FORGED[1], 0.0007, 99, True))),
}  # fmt: skip


def _templates(con: Any) -> None:
    """Tables t_measurements, t_responses, t_answers: one measurement per role (uid = role)."""
    with tempfile.TemporaryDirectory(prefix="ww-mix-") as tmp:
        path = Path(tmp) / "templates.jsonl"
        journal = Journal.open(path)
        for uid, (role, (kind, engine, spec)) in enumerate(_ROLES.items()):
            name = QueryName("template.example.com", None, "mix", uid)
            responses = tuple(reply(name.hostname, a, rtt=rtt, ip_ttl=ttl, forged=f)
                              for a, rtt, ttl, f in spec)  # fmt: skip
            m = measurement(uid, name, kind, engine, responses)
            journal.write(msgspec.structs.replace(m, measurement_uid=role))
        journal.close()
        store.ingest_into(con, [path])
    for table in ("measurements", "responses", "answers"):
        con.execute(f"ALTER TABLE {table} RENAME TO t_{table}")


def generate(con: Any, names: int) -> int:
    """Fill ``con``'s store tables with the mix for ``names`` names; the replies made."""
    _templates(con)
    con.execute(f"""
        CREATE TEMP TABLE mix_names AS
        SELECT i, 'n' || i || '.example.com' AS hostname,
               i % 10 < 3 AS blocked,
               '192.0.2.' || (i % 250 + 1) AS genuine,
               'v' || (i % 3) AS vantage,
               '2014-01-2' || (1 + i % 2) || ' 07:' || lpad(CAST(i % 60 AS VARCHAR), 2, '0') || ':00'
                   AS start_time,
               1 + (i % 13) / 1000.0 AS jitter,
               CASE WHEN i % 17 = 0 THEN 1 ELSE 0 END AS ttl_shift,
               -- a blocked name whose dark host answers an address of its own, and the
               -- clean name 53 later that its resolver hands that same address
               CASE WHEN i % 100 = 2 THEN '203.0.113.' || (i // 100 % 250 + 1)
                    WHEN i % 100 = 55 THEN '203.0.113.' || ((i - 53) // 100 % 250 + 1)
               END AS own_forgery
        FROM range({int(names)}) t(i)
    """)  # fmt: skip
    con.execute("""
        CREATE TEMP TABLE mix_roles AS
        SELECT n.*, r.role, n.hostname || '#' || r.role AS uid
        FROM mix_names n, (VALUES ('control'), ('clean'), ('raced'), ('dark')) r(role)
        WHERE r.role = 'control' OR (r.role = 'clean' AND NOT n.blocked)
           OR (r.role IN ('raced', 'dark') AND n.blocked)
    """)  # fmt: skip
    con.execute("""
        CREATE TABLE measurements AS
        SELECT t.* REPLACE (n.uid AS measurement_uid, n.hostname AS hostname,
                            n.vantage AS vantage, n.start_time AS measurement_start_time)
        FROM mix_roles n JOIN t_measurements t ON t.measurement_uid = n.role
    """)  # fmt: skip
    con.execute("""
        CREATE TABLE responses AS
        SELECT t.* REPLACE (n.uid AS measurement_uid, n.hostname AS hostname,
                            n.vantage AS vantage, t.rtt * n.jitter AS rtt,
                            t.ip_ttl + n.ttl_shift AS ip_ttl)
        FROM mix_roles n JOIN t_responses t ON t.measurement_uid = n.role
    """)  # fmt: skip
    con.execute(f"""
        CREATE TABLE answers AS
        SELECT t.* REPLACE (n.uid AS measurement_uid, n.hostname AS hostname,
                            n.vantage AS vantage,
                            CASE WHEN t.ipv4 = '{GENUINE}' AND n.role = 'clean'
                                      AND n.own_forgery IS NOT NULL AND n.i % 100 = 55
                                   THEN n.own_forgery
                                 WHEN t.ipv4 = '{GENUINE}' THEN n.genuine
                                 WHEN t.ipv4 = '{FORGED[1]}' AND n.role = 'dark'
                                      AND n.own_forgery IS NOT NULL THEN n.own_forgery
                                 ELSE t.ipv4 END AS ipv4)
        FROM mix_roles n JOIN t_answers t ON t.measurement_uid = n.role
    """)  # fmt: skip
    for table in ("strays", "input_errors"):
        store.create_empty(con, table)
    for table in ("measurements", "responses", "answers"):
        con.execute(f"DROP TABLE t_{table}")
    con.execute("DROP TABLE mix_roles")
    con.execute("DROP TABLE mix_names")
    return int(con.execute("SELECT count(*) FROM responses").fetchone()[0])
