"""Who did it: one attribution per (name, query type) from all the replies about it.

Modelled on the checklist of gfw-dns.md 3.10 (GreatFire's 2014 argument): a forgery
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


ATTRIBUTION_SQL = """
SELECT hostname, query_type,
       count(*) AS replies,
       count(DISTINCT vantage) AS vantages,
       CASE
         WHEN bool_or(outcome IN ('injected.dark_destination', 'injected.multi_reply'))
           THEN 'on_path_injector'
         WHEN bool_or(outcome = 'injected.fingerprint') THEN 'on_path_injector'
         WHEN bool_or(outcome = 'resolver.nxdomain_rewrite') THEN 'isp_nxdomain_rewrite'
         WHEN bool_or(outcome IN ('resolver.tampered', 'injected.forged_pool', 'ip.bogon'))
           THEN 'tampering_resolver'
         WHEN bool_and(outcome LIKE 'ok.%' OR outcome = 'dns.timeout') AND bool_or(changed)
           THEN 'hijacked_authoritative'
         WHEN bool_and(outcome LIKE 'ok.%' OR outcome = 'dns.timeout')
              AND bool_or(outcome LIKE 'ok.%') THEN 'none'
         ELSE 'unknown'
       END AS attribution,
       CASE
         WHEN bool_or(evidence = 'confirmed') THEN 'high'
         WHEN bool_or(evidence = 'strong') THEN 'medium'
         WHEN bool_or(changed) THEN 'low'
         WHEN bool_or(outcome LIKE 'ok.%') AND bool_and(outcome LIKE 'ok.%' OR outcome = 'dns.timeout')
           THEN 'high'
         ELSE 'low'
       END AS confidence,
       list_sort(list_distinct(list(rule_id) || CASE WHEN bool_or(changed)
           THEN ['authoritative_changed'] ELSE [] END)) AS reasons,
       list_sort(list_distinct(flatten(list(ips) FILTER (WHERE outcome NOT LIKE 'ok.%'))))
           AS bad_answers
FROM (SELECT v.*, coalesce(c.changed, false) AS changed
      FROM reply_verdicts v LEFT JOIN name_changes c USING (hostname, query_type))
GROUP BY ALL
"""

#: Attribution per (name, type, vantage, time window): the same rules, and the cache tail.
#: A resolver still serving an address that was seen injected for the name in an earlier
#: (or the same) window is not lying on its own account: its cache was poisoned on the
#: path (gfw-dns.md 2.6, 4.1: the 2014 tail lasted hours after the injection stopped).
WINDOW_ATTRIBUTION_SQL = """
WITH w AS (
    SELECT v.hostname, v.query_type, v.vantage, v.outcome, v.rule_id,
           CAST(floor((epoch(CAST(m.measurement_start_time AS TIMESTAMP)) + v.t0) / {window})
                * {window} AS BIGINT) AS window_start
    FROM reply_verdicts v JOIN measurements m ON m.measurement_uid = v.measurement_uid
),
per AS (
    SELECT hostname, query_type, vantage, window_start,
           bool_or(outcome IN ('injected.dark_destination', 'injected.multi_reply',
                               'injected.fingerprint')) AS path,
           bool_or(outcome = 'resolver.nxdomain_rewrite') AS rewrite,
           bool_or(outcome IN ('resolver.tampered', 'injected.forged_pool', 'ip.bogon')) AS lie,
           bool_and(outcome LIKE 'ok.%' OR outcome = 'dns.timeout')
               AND bool_or(outcome LIKE 'ok.%') AS clean,
           list(DISTINCT rule_id ORDER BY rule_id) AS reasons
    FROM w GROUP BY ALL
),
seen AS (
    SELECT hostname, query_type, min(window_start) FILTER (WHERE path) AS first_injected
    FROM per GROUP BY ALL
)
SELECT p.hostname, p.query_type, p.vantage, make_timestamp(p.window_start * 1000000) AS window_start,
       CASE
         WHEN p.path THEN 'on_path_injector'
         WHEN p.lie AND s.first_injected <= p.window_start THEN 'on_path_injector'
         WHEN p.rewrite THEN 'isp_nxdomain_rewrite'
         WHEN p.lie THEN 'tampering_resolver'
         WHEN p.clean THEN 'none'
         ELSE 'unknown'
       END AS attribution,
       coalesce(p.lie AND NOT p.path AND s.first_injected <= p.window_start, false) AS cache_tail,
       p.reasons
FROM per p LEFT JOIN seen s ON s.hostname = p.hostname AND s.query_type = p.query_type
"""
