"""Explain a measurement in plain words: who did it, why wallwatch believes so, and the packets.

For a journalist the attribution and its reasons; for a reviewer every reply with
the rule that judged it, the rule's basis, and the packet itself (from the raw bytes,
or from the parsed fields when the source kept no bytes) so the claim can be checked
without trusting wallwatch. Every sentence says only what the data shows, and names
what it lacks for a stronger claim (no control, no path evidence): a monitor that
says more than its data is worse than none.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.message
import dns.rcode

from wallwatch import store
from wallwatch.store import sql_literal
from wallwatch.vocab import Attribution

Query = Callable[[str], list[tuple[Any, ...]]]

#: What each attribution claims, in words; the evidence and what is missing follow it.
WORDS: dict[Attribution, str] = {
    Attribution.ON_PATH_INJECTOR: "forged on the network path (an on-path injector, such as a "
    "national firewall's)",
    Attribution.TAMPERING_RESOLVER: "a false answer came back through the resolver",
    Attribution.ISP_NXDOMAIN_REWRITE: "the resolver turned 'no such name' into an address "
    "(an ISP redirect)",
    Attribution.HIJACKED_AUTHORITATIVE: "the name's own servers changed their answer (or the "
    "name moved legitimately: history alone cannot tell)",
    Attribution.NONE: "genuine: every answer agrees with the trusted control",
    Attribution.UNKNOWN: "the data does not show whether the answer was tampered with",
}


def missing(attribution: Attribution, has_control: bool, has_path: bool) -> str:
    """What the data lacks for a stronger claim, in words ('' when nothing is missing)."""
    gaps = []
    if not has_control:
        gaps.append("no control lookup of this name")
    if attribution in (Attribution.TAMPERING_RESOLVER, Attribution.UNKNOWN) and not has_path:
        gaps.append("no path evidence (no host without a DNS server was asked, no second reply "
                    "raced the first)")  # fmt: skip
    if not gaps:
        return ""
    tail = {
        Attribution.TAMPERING_RESOLVER: "whether the resolver lied or the answer was forged in "
        "transit cannot be told from this data",
        Attribution.UNKNOWN: "whether this was tampered with cannot be told from this data",
    }.get(attribution, "")
    return "Missing: " + "; ".join(gaps) + (f": {tail}." if tail else ".")


def _control_words(control: list[str] | None, control_nx: bool) -> str:
    if control is None:
        return "there is no control lookup for this name"
    if control_nx:
        return "the control says the name does not exist (NXDOMAIN)"
    if not control:
        return "the control found no address of this type"
    return "the control says " + ", ".join(control)


def explain(db: str | Path, uid: str) -> str:
    """The explanation of measurement ``uid`` (or a source's own measurement ID) in a store."""
    return explain_with(lambda sql: store.query(db, sql), uid, str(db))


def explain_with(query: Query, uid: str, where: str = "the store") -> str:
    """:func:`explain` over any query function (an open connection of the Python API)."""
    uids = _resolve(query, uid)
    if not uids:
        raise ValueError(f"{where}: no measurement {uid!r} (or the store was not analysed)")
    parts = [_explain_one(query, u) for u in uids]
    head = f"Source measurement {uid} holds {len(uids)} lookups.\n\n" if len(uids) > 1 else ""
    return head + "\n".join(parts)


def _resolve(query: Query, uid: str) -> list[str]:
    """wallwatch measurement IDs for ``uid``: itself, or those imported from a source ID."""
    literal = sql_literal(uid)
    rows = query(
        f"SELECT measurement_uid FROM measurements WHERE measurement_uid = {literal} "
        f"UNION SELECT measurement_uid FROM measurements WHERE target_kind <> 'control' AND "
        f"(annotations[{sql_literal('ooni_measurement_uid')}] = {literal} "
        f"OR starts_with(measurement_uid, {sql_literal(uid + '.')})) ORDER BY 1"
    )
    exact = [r[0] for r in rows if r[0] == uid]
    return exact or [r[0] for r in rows]


def _explain_one(query: Query, uid: str) -> str:
    literal = sql_literal(uid)
    rows = query(f"""
        SELECT m.hostname, m.query_type, m.vantage, m.resolver_address, m.target_kind, m.engine,
               a.attribution, a.confidence, a.reasons, a.has_control, a.has_path_evidence
        FROM measurements m LEFT JOIN attributions a USING (hostname, query_type)
        WHERE m.measurement_uid = {literal}""")  # fmt: skip
    host, qtype, vantage, resolver, kind, engine, attribution, confidence, reasons, *has = rows[0]
    verdict = Attribution(attribution) if attribution else Attribution.UNKNOWN
    lines = [
        f"{uid}: {host} {qtype}, asked from {vantage} of {resolver} ({kind}, {engine}).",
        f"Verdict for the name: {WORDS[verdict]} - confidence {confidence or 'n/a'}; "
        f"reasons: {', '.join(reasons or []) or 'none'}.",
    ]
    gap = missing(verdict, bool(has[0]), bool(has[1])) if attribution else ""
    if gap:
        lines.append(gap)
    replies = query(f"""
        SELECT v.response_index, v.outcome, v.rule_id, r.rationale, v.rtt, v.ip_ttl, v.ips,
               v.control_ips, v.s_control_nx, p.raw_response, p.rcode, v.unrelated_platforms
        FROM reply_verdicts v JOIN analysis_rules r USING (rule_id)
        LEFT JOIN responses p ON p.measurement_uid = v.measurement_uid
             AND p.response_index = v.response_index
        WHERE v.measurement_uid = {literal} ORDER BY v.response_index""")  # fmt: skip
    answers = query(f"""
        SELECT response_index, answer_type, ttl, name, coalesce(ipv4, ipv6, target, rdata)
        FROM answers WHERE measurement_uid = {literal} ORDER BY response_index, answer_index""")  # fmt: skip
    for (
        index,
        outcome,
        rule_id,
        rationale,
        rtt,
        ip_ttl,
        ips,
        control,
        nx,
        raw,
        rcode,
        plat,
    ) in replies:
        if index is None:
            lines.append(f"No reply: {outcome} ({rule_id}: {rationale}).")
            continue
        timing = f" after {rtt * 1000:.1f} ms" if rtt else ""
        ttl = f", IP TTL {ip_ttl}" if ip_ttl is not None else ""
        lines += [
            "",
            f"Reply {index + 1}: {', '.join(ips) or 'no address'}{timing}{ttl}; "
            f"{_control_words(control, bool(nx))}.",
            f"  => {outcome}, by rule {rule_id}: {rationale}."
            + (f" (AS of {', '.join(plat)})" if plat else ""),
        ]
        lines += [
            "  " + line for line in _packet(raw, rcode, [a[1:] for a in answers if a[0] == index])
        ]
    return "\n".join(lines) + "\n"


def _packet(raw: str | None, rcode: int | None, answers: list[tuple[Any, ...]]) -> list[str]:
    """The reply dig-style from its bytes; from its parsed fields when the source kept none."""
    if raw:
        try:
            wire = base64.b64decode(raw)
        except (binascii.Error, ValueError):
            return [f"(raw bytes are not base64: {raw[:40]!r})"]
        try:
            return dns.message.from_wire(wire).to_text().splitlines()
        except Exception as exc:  # the packet is evidence even when it does not parse
            return [f"(does not parse: {exc}) {wire.hex()}"]
    text = dns.rcode.to_text(dns.rcode.Rcode(rcode)) if rcode is not None else "unknown rcode"
    out = [f"(no packet bytes in the source; from its parsed fields) rcode {text}"]
    out += [f"{name or '.'} {ttl} IN {atype} {value}" for atype, ttl, name, value in answers]
    return out
