"""Who did it: one attribution per (name, query type) from all the replies about it.

Modelled on the checklist of gfw-dns.md 3.10 (GreatFire's 2014 argument): a forgery
that a dark host "sends", or that a genuine reply races from behind, can only have
come from the path (confirmed); an injector's fingerprint on an answer the control
disowns is strong evidence of the path; an address the ISP uses for non-existent
names is the resolver's NXDOMAIN rewrite; a resolver's single answer that the control
disowns, with no sign of the path anywhere, is the resolver's own lie.

A changed authoritative server cannot be told from the truth without history: every
vantage and the control agree. That needs a baseline of earlier sweeps, which this
version does not take yet; such names come out as ``none``.
"""

from __future__ import annotations

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
         WHEN bool_and(outcome IN ('ok.match_ip', 'dns.timeout'))
              AND bool_or(outcome = 'ok.match_ip') THEN 'none'
         ELSE 'unknown'
       END AS attribution,
       CASE
         WHEN bool_or(evidence = 'confirmed') THEN 'high'
         WHEN bool_or(evidence = 'strong') THEN 'medium'
         WHEN bool_or(outcome = 'ok.match_ip') AND bool_and(outcome IN ('ok.match_ip', 'dns.timeout'))
           THEN 'high'
         ELSE 'low'
       END AS confidence,
       list(DISTINCT rule_id ORDER BY rule_id) AS reasons,
       list_sort(list_distinct(flatten(list(ips) FILTER (WHERE outcome <> 'ok.match_ip'))))
           AS bad_answers
FROM reply_verdicts
GROUP BY ALL
"""
