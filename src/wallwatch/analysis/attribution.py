"""Who did it: one attribution per (name, query type) from all the replies about it.

Modelled on the checklist of [greatfire-2014] (GreatFire's 2014 argument): a forgery
that a dark host "sends", or that a genuine reply races from behind, can only have
come from the path (confirmed); an injector's fingerprint on an answer the control
disowns is strong evidence of the path; an address the ISP uses for non-existent
names is the resolver's NXDOMAIN rewrite; a resolver's single answer that the control
disowns, with no sign of the path anywhere, is the resolver's own lie.

A changed authoritative server cannot be told from the truth without history: every
vantage and the control agree. Given a baseline (an earlier store), a name whose
answers all agree with today's control while today's control shares no address with
the baseline's is attributed to a changed authoritative (low confidence: a legitimate
move looks the same; the report must say so). Without a baseline such names are ``none``.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum

from wallwatch.store import sql_literal
from wallwatch.vocab import PROVEN, Attribution, Reading, outcomes

BASELINE_SQL = """
SELECT m.hostname, m.query_type, list(DISTINCT lower(coalesce(a.ipv4, a.ipv6))) AS ips
FROM base.measurements m JOIN base.answers a ON a.measurement_uid = m.measurement_uid
WHERE m.target_kind = 'control' AND coalesce(a.ipv4, a.ipv6) IS NOT NULL
GROUP BY ALL
"""

NAME_CHANGES_SQL = """
SELECT c.hostname, c.query_type,
       len(c.ips) > 0 AND len(b.ips) > 0 AND len(list_intersect(c.ips, b.ips)) = 0 AS changed
FROM control_answers c JOIN baseline_answers b USING (hostname, query_type)
"""


def sql_set(members: Iterable[StrEnum]) -> str:
    """``('a', 'b')``: a vocabulary set as a SQL list (never spelled by hand)."""
    return "(" + ", ".join(sorted(sql_literal(m.value) for m in members)) + ")"


_PATH = sql_set(outcomes(Reading.PATH))
_LIE = sql_set(outcomes(Reading.FALSE_ANSWER))
_REWRITE = sql_set(outcomes(Reading.REWRITE))
_GENUINE = sql_set(outcomes(Reading.GENUINE))
_SILENT = sql_set(outcomes(Reading.SILENT))
_PROVEN = sql_set(PROVEN)
_A = {a: sql_literal(a.value) for a in Attribution}

#: The attributions that call a name tampered (its ``bad_answers`` are listed).
TAMPERED = frozenset(
    {Attribution.ON_PATH_INJECTOR, Attribution.TAMPERING_RESOLVER,
     Attribution.ISP_NXDOMAIN_REWRITE, Attribution.HIJACKED_AUTHORITATIVE}
)  # fmt: skip

ATTRIBUTION_SQL = f"""
SELECT hostname, query_type,
       count(*) FILTER (WHERE response_index IS NOT NULL) AS replies,
       -- A measurement's rows are its replies, numbered from 0, or one row with no
       -- reply (NULL): counting its first row counts it once, without the per-name
       -- hash set of count(DISTINCT), which was most of this statement's time.
       count(*) FILTER (WHERE coalesce(response_index, 0) = 0) AS measurements,
       count(DISTINCT vantage) AS vantages,
       CASE
         WHEN bool_or(outcome IN {_PATH}) THEN {_A[Attribution.ON_PATH_INJECTOR]}
         WHEN bool_or(outcome IN {_REWRITE}) THEN {_A[Attribution.ISP_NXDOMAIN_REWRITE]}
         WHEN bool_or(outcome IN {_LIE}) THEN {_A[Attribution.TAMPERING_RESOLVER]}
         WHEN bool_and(outcome IN {_GENUINE} OR outcome IN {_SILENT}) AND bool_or(changed)
           THEN {_A[Attribution.HIJACKED_AUTHORITATIVE]}
         WHEN bool_and(outcome IN {_GENUINE} OR outcome IN {_SILENT})
              AND bool_or(outcome IN {_GENUINE}) THEN {_A[Attribution.NONE]}
         ELSE {_A[Attribution.UNKNOWN]}
       END AS attribution,
       CASE
         WHEN bool_or(evidence = 'confirmed') THEN 'high'
         WHEN bool_or(evidence = 'strong') THEN 'medium'
         WHEN bool_or(changed) THEN 'low'
         WHEN bool_or(outcome IN {_GENUINE}) AND bool_and(outcome IN {_GENUINE} OR outcome IN {_SILENT})
           THEN 'high'
         ELSE 'low'
       END AS confidence,
       list_sort(list_distinct(list(rule_id) || CASE WHEN bool_or(changed)
           THEN ['authoritative_changed'] ELSE [] END)) AS reasons,
       -- What the data lacks for a stronger claim, named rather than guessed around.
       bool_or(control_ips IS NOT NULL) AS has_control,
       bool_or(outcome IN {_PROVEN} OR s_dark OR s_later_genuine) AS has_path_evidence,
       list_sort(list_distinct(flatten(list(ips) FILTER (WHERE outcome NOT IN {_GENUINE}))))
           AS non_genuine_answers
FROM (SELECT v.*, coalesce(c.changed, false) AS changed
      FROM reply_verdicts v LEFT JOIN name_changes c USING (hostname, query_type))
GROUP BY ALL
"""

#: ``bad_answers`` only where the name was judged tampered: an address that merely
#: could not be judged (no control) is not called bad.
ATTRIBUTION_FINAL_SQL = f"""
SELECT * EXCLUDE (non_genuine_answers),
       CASE WHEN attribution IN {sql_set(TAMPERED)} THEN non_genuine_answers
            ELSE [] END AS bad_answers
FROM attributions_raw
"""

#: Attribution per (name, type, vantage, time window): the same rules, and the cache tail.
#: A resolver still serving an address that was seen injected for the name in an earlier
#: (or the same) window is not lying on its own account: its cache was poisoned on the
#: path ([greatfire-2014]: the 2014 tail lasted hours after the injection stopped).
#: ``injected_before`` (hostname, query_type, first_injected epoch seconds) carries what
#: a monitor judging minute by minute saw in earlier minutes; empty for a one-off analysis.
WINDOW_ATTRIBUTION_SQL = f"""
WITH w AS (
    SELECT v.hostname, v.query_type, v.vantage, v.outcome, v.rule_id,
           CAST(floor((epoch(CAST(m.measurement_start_time AS TIMESTAMP)) + v.t0) / {{window}})
                * {{window}} AS BIGINT) AS window_start
    FROM reply_verdicts v JOIN measurements m ON m.measurement_uid = v.measurement_uid
),
per AS (
    SELECT hostname, query_type, vantage, window_start,
           bool_or(outcome IN {_PATH}) AS path,
           bool_or(outcome IN {_REWRITE}) AS rewrite,
           bool_or(outcome IN {_LIE}) AS lie,
           bool_and(outcome IN {_GENUINE} OR outcome IN {_SILENT})
               AND bool_or(outcome IN {_GENUINE}) AS clean,
           list_sort(list_distinct(list(rule_id))) AS reasons
    FROM w GROUP BY ALL
),
seen AS (
    -- Injected in this data, or before it (a running monitor's memory: injected_before).
    SELECT hostname, query_type, min(first_injected) AS first_injected
    FROM (SELECT hostname, query_type, window_start AS first_injected FROM per WHERE path
          UNION ALL SELECT hostname, query_type, first_injected FROM injected_before)
    GROUP BY ALL
)
SELECT p.hostname, p.query_type, p.vantage, make_timestamp(p.window_start * 1000000) AS window_start,
       CASE
         WHEN p.path THEN {_A[Attribution.ON_PATH_INJECTOR]}
         WHEN p.lie AND s.first_injected <= p.window_start THEN {_A[Attribution.ON_PATH_INJECTOR]}
         WHEN p.rewrite THEN {_A[Attribution.ISP_NXDOMAIN_REWRITE]}
         WHEN p.lie THEN {_A[Attribution.TAMPERING_RESOLVER]}
         WHEN p.clean THEN {_A[Attribution.NONE]}
         ELSE {_A[Attribution.UNKNOWN]}
       END AS attribution,
       coalesce(p.lie AND NOT p.path AND s.first_injected <= p.window_start, false) AS cache_tail,
       p.reasons
FROM per p LEFT JOIN seen s ON s.hostname = p.hostname AND s.query_type = p.query_type
"""
