"""Rules as data: each turns evidence columns into a verdict, with a stable id and a reason.

Why data and not code: a verdict must say *which* rule produced it, a rule must be
testable on its own, and a change of meaning must be visible (the ooni/data design:
``analysis/rules.py`` there). So each rule is a frozen record with a stable
``rule_id``, a SQL condition over the columns of :mod:`wallwatch.analysis.signals`,
the :class:`~wallwatch.vocab.Outcome` it assigns, an evidence level and a one-line
rationale citing its source. Rules are tried in order; the first that holds gives
the verdict, and every rule that holds is recorded. Never change what an existing
``rule_id`` means: add a new one and bump :data:`RULES_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass

from wallwatch.store import sql_literal
from wallwatch.vocab import Evidence, Outcome

#: 2: ``s_forged_pool`` also learns the addresses of replies raced by the genuine answer.
#: 3: ``unrelated_platform``, ``source_check_match``; origin ASes from the bundled table.
#: 4: ``raced_by_referral`` (a resolver's upstream race: the server's own reply was a
#:    referral); ``s_forged_pool`` learns the addresses it raced too.
RULES_VERSION = 4


@dataclass(frozen=True, slots=True)
class Rule:
    rule_id: str
    #: A SQL boolean expression over the reply signal columns.
    when: str
    outcome: Outcome
    evidence: Evidence
    rationale: str


RULES: tuple[Rule, ...] = (
    Rule("dark_destination", "s_dark AND s_has_answer", Outcome.INJECTED_DARK, Evidence.CONFIRMED,
         "a host that runs no DNS server cannot answer ([triplet-2021] 2.1; [ooni-ts012])"),
    Rule("raced_by_genuine", "s_later_genuine AND NOT s_control_match", Outcome.INJECTED_MULTI_REPLY,
         Evidence.CONFIRMED,
         "a later reply to the same query agrees with the control ([holdon-2012])"),
    Rule("raced_by_referral", "s_later_referral AND NOT s_control_match",
         Outcome.INJECTED_MULTI_REPLY, Evidence.CONFIRMED,
         "the server asked delegated the name in a later reply to the same query: it did not "
         "send the earlier answer, the path did ([holdon-2012]; [gfwrev-2009])"),
    Rule("nxdomain_redirect_address", "s_nx_redirect", Outcome.NXDOMAIN_REWRITE, Evidence.STRONG,
         "a known ISP NXDOMAIN-redirect address ([dnsmasq-china-list])"),
    Rule("forged_pool", "s_forged_pool AND NOT s_control_match", Outcome.INJECTED_FORGED_POOL,
         Evidence.STRONG, "the answer is in a published forged pool ([gfwatch-2021]; [wallbleed-2025]; [pcap-dnsproxy])"),
    Rule("unrelated_platform", "s_unrelated_platform AND NOT s_control_match AND NOT s_asn_match",
         Outcome.INJECTED_UNRELATED_PLATFORM, Evidence.STRONG,
         "a Facebook, Twitter or Dropbox address for a name outside that platform: the firewall's "
         "forged pools are mostly such addresses [triplet-2021] [wallbleed-2025]; a published "
         "behaviour, not proof by itself"),
    Rule("nxdomain_in_control", "s_control_nx AND s_has_answer AND NOT s_control_match",
         Outcome.NXDOMAIN_REWRITE, Evidence.SCORED,
         "the control says the name does not exist, the reply gives an address"),
    Rule("injector_fingerprint",
         "s_control_mismatch AND (s_type_mismatch OR (s_no_opt AND (s_fast OR s_ttl_off)))",
         Outcome.INJECTED_FINGERPRINT, Evidence.STRONG,
         "A answer to a non-A query, or no OPT with a too-fast or off-path IP TTL ([triplet-2021]; [gfwrev-2009])"),
    Rule("bogon_answer", "s_bogon AND NOT s_control_match", Outcome.IP_BOGON, Evidence.SCORED,
         "a private, loopback or reserved address ([censoredplanet-analysis] ip.invalid)"),
    Rule("control_match", "s_control_match", Outcome.OK_MATCH_IP, Evidence.NONE,
         "the answer agrees with the trusted control by address"),
    Rule("control_nxdomain", "s_control_nx AND rcode = 3", Outcome.OK_MATCH_NXDOMAIN, Evidence.NONE,
         "the name does not exist, and the control agrees"),
    Rule("control_nodata", "NOT s_has_answer AND s_has_reply AND rcode = 0 AND control_ips IS NOT NULL "
         "AND len(control_ips) = 0 AND NOT s_control_nx", Outcome.OK_MATCH_NODATA, Evidence.NONE,
         "no address of this type, and the control has none either"),
    Rule("source_check_match", "s_source_match AND NOT s_control_match AND NOT s_forged_pool",
         Outcome.OK_MATCH_SOURCE, Evidence.NONE,
         "the source's own check vouches for the answer: a verified TLS handshake for the name "
         "[ooni-ts017], or Satellite's certificate, page, IP or AS tags match its controls "
         "[satellite-docs]"),
    Rule("control_match_asn", "s_asn_match AND NOT s_control_match AND NOT s_forged_pool",
         Outcome.OK_MATCH_ASN, Evidence.NONE,
         "the answer's origin AS is the control's (CDN/GeoDNS; OONI dns_consistency, Iris)"),
    Rule("nxdomain_but_control_resolves", "rcode = 3 AND NOT s_has_answer AND len(control_ips) > 0",
         Outcome.RESOLVER_TAMPERED, Evidence.SCORED,
         "the resolver says the name does not exist; the control resolves it (NXDOMAIN blocking)"),
    Rule("resolver_mismatch", "s_control_mismatch AND target_kind = 'resolver'",
         Outcome.RESOLVER_TAMPERED, Evidence.SCORED,
         "a resolver's single answer that the control disowns, with no sign of the path"),
    Rule("no_reply", "NOT s_has_reply", Outcome.DNS_TIMEOUT, Evidence.NONE,
         "the query drew no reply"),
    Rule("malformed_reply", "parse_failure IS NOT NULL", Outcome.DNS_MALFORMED, Evidence.SCORED,
         "the reply is not a valid DNS message (kept raw; the injector of [wallbleed-2025] leaked memory)"),
)  # fmt: skip


def verdict_sql() -> str:
    """SQL expressions: the first matching rule's id, and the list of every matching rule."""
    first = " ".join(f"WHEN {r.when} THEN {sql_literal(r.rule_id)}" for r in RULES)
    every = ", ".join(f"CASE WHEN {r.when} THEN {sql_literal(r.rule_id)} END" for r in RULES)
    return (
        f"CASE {first} ELSE 'unexplained' END AS rule_id, "
        f"list_filter([{every}], lambda x: x IS NOT NULL) AS rules_fired"
    )


def rules_table() -> list[tuple[str, str, str, str]]:
    """(rule_id, outcome, evidence, rationale) rows, plus the fallback."""
    rows = [(r.rule_id, r.outcome.value, r.evidence.value, r.rationale) for r in RULES]
    return [*rows, ("unexplained", Outcome.UNKNOWN.value, Evidence.NONE.value, "no rule applied")]
