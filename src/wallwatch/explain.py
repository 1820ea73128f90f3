"""Explain a measurement in plain words: who did it, why wallwatch believes so, and the packets.

For a journalist the attribution and its reasons; for a reviewer every reply with
the rule that judged it, the rule's basis, and the packet itself (from the raw bytes)
so the claim can be checked without trusting wallwatch.
"""

from __future__ import annotations

import base64
from pathlib import Path

import dns.message

from wallwatch import store

_WORDS = {
    "on_path_injector": "forged on the network path (an on-path injector, such as the firewall's)",
    "tampering_resolver": "given by the resolver itself, not forged on the path",
    "isp_nxdomain_rewrite": "the resolver turned 'no such name' into an address (an ISP redirect)",
    "hijacked_authoritative": "the name's own servers changed their answer",
    "none": "genuine: every answer agrees with the trusted control",
    "unknown": "not enough evidence to say who tampered",
}


def explain(db: str | Path, uid: str) -> str:
    """The explanation of measurement ``uid`` from an analysed store."""
    rows = store.query(db, f"""
        SELECT m.hostname, m.query_type, m.vantage, m.resolver_address, m.target_kind, m.engine,
               a.attribution, a.confidence, a.reasons
        FROM measurements m LEFT JOIN attributions a USING (hostname, query_type)
        WHERE m.measurement_uid = '{uid.replace("'", "''")}'""")  # fmt: skip
    if not rows:
        raise ValueError(f"{db}: no measurement {uid!r} (or the store was not analysed)")
    host, qtype, vantage, resolver, kind, engine, attribution, confidence, reasons = rows[0]
    lines = [
        f"{host} {qtype}, asked from {vantage} of {resolver} ({kind}, {engine}).",
        f"Verdict for the name: {_WORDS.get(attribution or 'unknown', attribution)}"
        f" - confidence {confidence or 'n/a'}; reasons: {', '.join(reasons or []) or 'none'}.",
    ]
    replies = store.query(db, f"""
        SELECT v.response_index, v.outcome, v.rule_id, r.rationale, v.rtt, v.ip_ttl, v.ips,
               v.control_ips, p.raw_response
        FROM reply_verdicts v JOIN analysis_rules r USING (rule_id)
        LEFT JOIN responses p ON p.measurement_uid = v.measurement_uid
             AND p.response_index = v.response_index
        WHERE v.measurement_uid = '{uid.replace("'", "''")}' ORDER BY v.response_index""")  # fmt: skip
    for index, outcome, rule_id, rationale, rtt, ip_ttl, ips, control, raw in replies:
        if index is None:
            lines.append(f"No reply: {outcome} ({rule_id}: {rationale}).")
            continue
        lines.append("")
        lines.append(
            f"Reply {index + 1}: {', '.join(ips) or 'no address'} after {rtt * 1000:.1f} ms, "
            f"IP TTL {ip_ttl}; the control says {', '.join(control or []) or 'nothing usable'}."
        )
        lines.append(f"  => {outcome}, by rule {rule_id}: {rationale}.")
        try:
            text = dns.message.from_wire(base64.b64decode(raw)).to_text()
        except Exception as exc:  # the packet is evidence even when it does not parse
            text = f"(does not parse: {exc}) {base64.b64decode(raw).hex()}"
        lines += ["  " + line for line in text.splitlines()]
    return "\n".join(lines) + "\n"
