"""Evidence columns per reply, in SQL over the store ([triplet-2021]; [holdon-2012]; [iris-2017]).

One row per reply (and one per measurement that drew none), with boolean ``s_*``
columns the rules read:

* ``s_dark``: the query went to a host that runs no DNS server (3.1);
* ``s_later_genuine``: a later reply to the same query agrees with the control, by
  address or by NXDOMAIN (3.2);
* ``s_referral``: the reply delegates the name elsewhere (no answer, NS records in the
  authority section, NOERROR, not authoritative): what a root or TLD server says to a
  resolver's upstream query; ``s_later_referral``: a reply with an answer that such a
  referral to the same query followed. A server answers a query once, and the one that
  delegates the name cannot also have answered it: the answer came from the path. This
  is the race on a resolver's upstream side, where no control exists (docs/passive.md);
* ``s_control_match`` / ``s_control_mismatch``: the reply's addresses against the
  trusted control's for the same name and type (TCP/DoT/DoH lookups, any vantage);
  ``s_control_nx``: the control said NXDOMAIN;
* ``s_forged_pool``: an answer in a known forged pool, in Teredo 2001::/32 (3.4), or
  learned from this dataset: seen in a reply from a dark host, or in a reply that a
  later, control-matching reply to the same query raced (3.1-3.2, 3.4);
* ``s_nx_redirect``: an answer in a known ISP NXDOMAIN-redirect list;
* ``s_type_mismatch``: an A record answering a non-A query (2.2);
* ``s_no_opt``: no OPT in a UDP reply to a query that had one (2.2);
* ``s_fast``: faster than half the path's baseline RTT, and ``s_ttl_off``: an IP TTL
  more than 1 off the path's baseline -- Hold-On's two tests, with the baseline
  learned from this dataset's control-matching replies per (vantage, resolver);
* ``s_bogon``: a private, loopback, link-local, multicast or reserved address;
* ``s_asn_match``: an answer's origin AS is among the control's, as of the day (the
  bundled table, or dated MMDB snapshots first, :mod:`.netinfo`): CDNs and GeoDNS answer
  differently but from the same AS (OONI ``dns_consistency`` [ooni-ts017]; [iris-2017]);
* ``s_source_match``: the source's own check vouches for an answer: a verified TLS
  handshake for the name to that address (OONI's ``tls_handshakes``, ts-017) where no
  control answer exists to compare (a transparent proxy passes TLS through, so a
  handshake never outweighs a control that disagrees), or Satellite's per-answer tags matching its controls by certificate, HTTP page, IP or AS
  ([satellite-docs]), kept by the importers in ``annotations``;
* ``s_unrelated_platform``: an answer in the AS of a large platform (Facebook, Twitter,
  Dropbox; ``data/platforms.toml``) for a name outside that platform's domains -- the
  firewall's published forged-pool behaviour ([triplet-2021], [wallbleed-2025]), which
  needs no control to see.
"""

from __future__ import annotations

BOGON_V4 = (
    r"^(0\.|10\.|127\.|169\.254\.|192\.168\.|172\.(1[6-9]|2[0-9]|3[01])\.|22[4-9]\.|2[3-5][0-9]\.)"
)
BOGON_V6 = r"^(::1?$|fe[89ab][0-9a-f]:|f[cd][0-9a-f]{2}:|ff[0-9a-f]{2}:)"
TEREDO = r"^2001:(0{1,4})?:"

#: Hold-On's two path tests ([holdon-2012]), one definition for the analysis and the
#: shield (:mod:`wallwatch.shield`): a reply faster than this share of the path's RTT
#: came from nearer than the server, and one whose IP TTL is more than this many hops
#: off the path's did not travel the server's path.
FAST_SHARE = 0.5
TTL_SLACK = 1

STEPS: tuple[tuple[str, str], ...] = (
    (
        # Lists are made distinct and sorted after the aggregate (list_sort(list_distinct(
        # list(x)))): DuckDB's list(DISTINCT x ORDER BY x) keeps and sorts every group's
        # rows on its own, which took twice as long over 2M replies.
        "reply_ips",
        """
        SELECT measurement_uid, response_index,
               list_sort(list_distinct(list(lower(coalesce(ipv4, ipv6)))
                   FILTER (WHERE coalesce(ipv4, ipv6) IS NOT NULL))) AS ips,
               bool_or(answer_type = 'A') AS has_a
        FROM answers GROUP BY ALL
        """,
    ),
    (
        # Addresses seen in replies from hosts that run no DNS server: forged by
        # definition, so the dataset teaches its own forged pool (as GFWatch built
        # its list from daily data, [gfwatch-2021]).
        "learned_forged",
        """
        SELECT DISTINCT unnest(ri.ips) AS address
        FROM measurements m JOIN reply_ips ri ON ri.measurement_uid = m.measurement_uid
        WHERE m.target_kind = 'dark'
        """,
    ),
    (
        "forged_addresses",
        """
        SELECT address FROM known_addresses WHERE kind = 'forged'
        UNION SELECT address FROM learned_forged
        """,
    ),
    (
        # A control reached over TCP can still be wrong: a public resolver whose
        # recursion crossed the border has the forgery in its cache (collateral
        # damage, [ccr-2012]). Forged addresses are dropped from the control.
        "control_answers",
        """
        SELECT hostname, query_type,
               coalesce(list_sort(list_distinct(list(ip) FILTER (
                   WHERE ip IS NOT NULL AND ip NOT IN (SELECT address FROM forged_addresses)
                         AND NOT regexp_matches(ip, '{teredo}')))), []) AS ips,
               bool_or(rcode = 3) AS nxdomain
        FROM (SELECT m.hostname, m.query_type, r.rcode,
                     unnest(CASE WHEN len(coalesce(ri.ips, [])) = 0 THEN [NULL] ELSE ri.ips END) AS ip
              FROM measurements m
              JOIN responses r ON r.measurement_uid = m.measurement_uid
              LEFT JOIN reply_ips ri ON ri.measurement_uid = r.measurement_uid
                   AND ri.response_index = r.response_index
              WHERE m.target_kind = 'control' AND r.failure IS NULL)
        GROUP BY ALL
        """,
    ),
    (
        "reply_base",
        """
        SELECT m.measurement_uid, m.hostname, m.query_type, m.vantage, m.resolver_address,
               m.target_kind, m.edns_payload, m.t0,
               CAST(substr(m.measurement_start_time, 1, 10) AS DATE) AS day,
               r.response_index, r.rtt, r.ip_ttl, r.edns, r.rcode, r.failure AS parse_failure,
               r.engine, coalesce(ri.ips, []) AS ips, coalesce(ri.has_a, false) AS has_a,
               c.ips AS control_ips, coalesce(c.nxdomain, false) AS s_control_nx,
               m.annotations['tls_validated'] AS tls_validated,
               m.annotations['matched'] AS source_tags,
               r.response_index IS NOT NULL AS s_has_reply,
               coalesce(r.ancount = 0 AND r.nscount > 0 AND r.rcode = 0
                        AND (r.flags & 1024) = 0, false) AS s_referral,
               coalesce(len(c.ips) > 0 AND len(list_intersect(coalesce(ri.ips, []), c.ips)) > 0,
                        false) AS s_control_match,
               coalesce(len(c.ips) > 0 AND len(coalesce(ri.ips, [])) > 0
                        AND len(list_intersect(ri.ips, c.ips)) = 0, false) AS s_control_mismatch
        FROM measurements m
        LEFT JOIN responses r ON r.measurement_uid = m.measurement_uid
        LEFT JOIN reply_ips ri ON ri.measurement_uid = r.measurement_uid
             AND ri.response_index = r.response_index
        LEFT JOIN control_answers c ON c.hostname = m.hostname AND c.query_type = m.query_type
        WHERE m.target_kind <> 'control'
        """,
    ),
    (
        # Addresses in a reply that the genuine answer to the same query followed: the
        # injector's own (Hold-On, 3.2). Learning them matters for a resolver that
        # serves a forgery from its cache: its single reply carries no path signal,
        # but its address is one the injector was caught using on another path.
        "raced_forged",
        """
        SELECT DISTINCT unnest(b.ips) AS address
        FROM reply_base b
        JOIN (SELECT measurement_uid, max(response_index) AS last_genuine FROM reply_base
              WHERE len(list_intersect(ips, control_ips)) > 0 GROUP BY ALL) g
             ON g.measurement_uid = b.measurement_uid
        WHERE b.response_index < g.last_genuine AND len(b.control_ips) > 0 AND len(b.ips) > 0
              AND len(list_intersect(b.ips, b.control_ips)) = 0
        UNION
        SELECT DISTINCT unnest(b.ips) AS address
        FROM reply_base b
        JOIN (SELECT measurement_uid, max(response_index) AS last_referral FROM reply_base
              WHERE s_referral GROUP BY ALL) g ON g.measurement_uid = b.measurement_uid
        WHERE b.response_index < g.last_referral AND len(b.ips) > 0
        """,
    ),
    (
        # Origin ASes of each reply's addresses, as of the measurement's day (netinfo).
        "reply_asn",
        """
        SELECT b.measurement_uid, b.response_index, list(DISTINCT n.asn) AS asns
        FROM (SELECT measurement_uid, response_index, day, unnest(ips) AS ip FROM reply_base) b
        JOIN ip_asn n ON n.day = b.day AND n.ip = b.ip
        WHERE n.asn IS NOT NULL
        GROUP BY ALL
        """,
    ),
    (
        "control_asn",
        """
        SELECT m.hostname, m.query_type, list(DISTINCT n.asn) AS asns
        FROM measurements m
        JOIN answers a ON a.measurement_uid = m.measurement_uid
        JOIN ip_asn n ON n.day = CAST(substr(m.measurement_start_time, 1, 10) AS DATE)
             AND n.ip = lower(coalesce(a.ipv4, a.ipv6))
        WHERE m.target_kind = 'control' AND n.asn IS NOT NULL
          AND n.ip NOT IN (SELECT address FROM forged_addresses)
        GROUP BY ALL
        """,
    ),
    (
        # Answers in a large platform's AS for a name that is not the platform's.
        "reply_platform",
        """
        SELECT b.measurement_uid, b.response_index, list(DISTINCT p.platform) AS platforms
        FROM (SELECT measurement_uid, response_index, day, lower(hostname) AS hostname,
                     unnest(ips) AS ip FROM reply_base) b
        JOIN ip_asn n ON n.day = b.day AND n.ip = b.ip
        JOIN platforms p ON p.asn = n.asn
        WHERE len(list_filter(p.domains,
                  lambda d: b.hostname = d OR ends_with(b.hostname, '.' || d))) = 0
        GROUP BY ALL
        """,
    ),
    (
        # Flags per distinct address: addresses repeat across replies (a forged pool is
        # small), so the pattern matching runs once per address, not once per reply.
        "ip_flags",
        """
        SELECT i.ip,
               bool_or(k.kind = 'forged' OR regexp_matches(i.ip, '{teredo}')
                       OR i.ip IN (SELECT address FROM learned_forged)
                       OR i.ip IN (SELECT address FROM raced_forged)) AS forged,
               bool_or(k.kind = 'nxdomain_redirect') AS nx_redirect,
               bool_or(regexp_matches(i.ip, '{bogon4}') OR regexp_matches(i.ip, '{bogon6}')) AS bogon
        FROM (SELECT DISTINCT unnest(ips) AS ip FROM reply_ips) i
        LEFT JOIN known_addresses k ON k.address = i.ip
        GROUP BY ALL
        """,
    ),
    (
        "known_flags",
        """
        SELECT r.measurement_uid, r.response_index,
               bool_or(f.forged) AS s_forged_pool,
               coalesce(bool_or(f.nx_redirect), false) AS s_nx_redirect,
               bool_or(f.bogon) AS s_bogon
        FROM (SELECT measurement_uid, response_index, unnest(ips) AS ip FROM reply_ips) r
        JOIN ip_flags f ON f.ip = r.ip
        GROUP BY ALL
        """,
    ),
    (
        # The replies that teach each path's RTT and IP TTL: the control-matching ones.
        "path_samples",
        """
        SELECT vantage, resolver_address, rtt, ip_ttl
        FROM reply_base WHERE s_control_match AND engine = 'udp'
        """,
    ),
    (
        # The commonest IP TTL, the lowest on a tie: mode()'s pick among ties follows
        # row order, and a partitioned run (:mod:`.scale`) must find the same baseline.
        "path_baseline",
        """
        SELECT r.vantage, r.resolver_address, r.base_rtt, t.ip_ttl AS base_ttl
        FROM (SELECT vantage, resolver_address, median(rtt) AS base_rtt
              FROM path_samples GROUP BY ALL) r
        LEFT JOIN (SELECT vantage, resolver_address, ip_ttl
                   FROM (SELECT vantage, resolver_address, ip_ttl, count(*) AS n
                         FROM path_samples WHERE ip_ttl IS NOT NULL GROUP BY ALL)
                   QUALIFY row_number() OVER (PARTITION BY vantage, resolver_address
                                              ORDER BY n DESC, ip_ttl) = 1) t
             ON t.vantage IS NOT DISTINCT FROM r.vantage
             AND t.resolver_address IS NOT DISTINCT FROM r.resolver_address
        """,
    ),
    (
        "reply_signals",
        """
        -- Each reply's base evidence with its per-address flags, ASes and source checks,
        -- in this one pass (not a table of its own: written and read back whole, that
        -- wide table cost about half a second over 2M replies).
        WITH reply_matched AS (
            SELECT b.*,
                   len(b.ips) > 0 AS s_has_answer,
                   b.target_kind = 'dark' AS s_dark,
                   b.query_type NOT IN ('A', 'ANY') AND b.has_a AS s_type_mismatch,
                   coalesce(b.edns_payload IS NOT NULL AND NOT b.edns AND b.parse_failure IS NULL
                            AND b.engine = 'udp', false) AS s_no_opt,
                   coalesce(f.s_forged_pool, false) AS s_forged_pool,
                   coalesce(f.s_nx_redirect, false) AS s_nx_redirect,
                   coalesce(f.s_bogon, false) AS s_bogon,
                   coalesce(len(list_intersect(ra.asns, ca.asns)) > 0, false) AS s_asn_match,
                   coalesce(len(rp.platforms) > 0, false) AS s_unrelated_platform,
                   coalesce(len(b.ips) > 0 AND (
                       -- A verified handshake vouches for the *content*, not the lookup: a
                       -- transparent proxy passes it through (OONI's dnsHijackingToProxy QA
                       -- case). So it counts only where no control answer can be compared.
                       (coalesce(len(b.control_ips), 0) = 0 AND len(list_intersect(
                           b.ips, string_split(coalesce(b.tls_validated, ''), ' '))) > 0)
                       OR list_bool_or(list_transform(b.ips, lambda ip: coalesce(len(list_intersect(
                           CAST(json_extract(b.source_tags, '$."' || ip || '"') AS VARCHAR[]),
                           ['ip', 'cert', 'http', 'asnum'])) > 0, false)))), false) AS s_source_match,
                   coalesce(rp.platforms, []) AS unrelated_platforms,
                   coalesce(ra.asns, []) AS answer_asns
            FROM reply_base b
            LEFT JOIN known_flags f ON f.measurement_uid = b.measurement_uid
                 AND f.response_index IS NOT DISTINCT FROM b.response_index
            LEFT JOIN reply_asn ra ON ra.measurement_uid = b.measurement_uid
                 AND ra.response_index IS NOT DISTINCT FROM b.response_index
            LEFT JOIN control_asn ca ON ca.hostname = b.hostname AND ca.query_type = b.query_type
            LEFT JOIN reply_platform rp ON rp.measurement_uid = b.measurement_uid
                 AND rp.response_index IS NOT DISTINCT FROM b.response_index
        )
        SELECT m.*,
               coalesce(m.response_index < g.last_genuine, false) AS s_later_genuine,
               coalesce(m.s_has_answer AND m.response_index < g.last_referral, false)
                   AS s_later_referral,
               coalesce(m.rtt < {fast_share} * p.base_rtt, false) AS s_fast,
               coalesce(abs(m.ip_ttl - p.base_ttl) > {ttl_slack}, false) AS s_ttl_off
        FROM reply_matched m
        -- The last genuine and the last referral reply of each query, by a narrow
        -- aggregate (of reply_base: the columns it reads are there) joined back: a
        -- window over the query would sort every wide row.
        LEFT JOIN (SELECT measurement_uid,
                          max(response_index) FILTER (
                              WHERE s_control_match OR (s_control_nx AND rcode = 3)) AS last_genuine,
                          max(response_index) FILTER (WHERE s_referral) AS last_referral
                   FROM reply_base GROUP BY ALL) g ON g.measurement_uid = m.measurement_uid
        LEFT JOIN path_baseline p ON p.vantage = m.vantage AND p.resolver_address = m.resolver_address
        """,
    ),
)


def steps() -> list[tuple[str, str]]:
    """(table, query) pairs to run in order."""
    return [
        (
            table,
            sql.replace("{teredo}", TEREDO)
            .replace("{bogon4}", BOGON_V4)
            .replace("{bogon6}", BOGON_V6)
            .replace("{fast_share}", repr(FAST_SHARE))
            .replace("{ttl_slack}", str(TTL_SLACK)),
        )
        for table, sql in STEPS
    ]
