"""Show a measurement the way people already read DNS: dig-style, one line, or JSON.

dig's text is the lingua franca for a single reply (RIPE Atlas tools copy it), so
``dig`` prints every reply of a measurement as dig would have printed it, each
headed by what dig cannot show: arrival order, IP TTL, RTT and source. The text
is rendered from the raw wire bytes, the archival truth, with dnspython; a reply
that does not parse is shown as its parse-failure code and a hex dump.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import msgspec

from wallwatch import __version__
from wallwatch.records import InputError, Record, Response, Stray


class Format(StrEnum):
    """Renderers of ``wallwatch show``."""

    DIG = "dig"
    COMPACT = "compact"
    JSON = "json"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _section(title: str, rrsets: list[object]) -> list[str]:
    if not rrsets:
        return []
    lines = [f";; {title} SECTION:"]
    for rrset in rrsets:
        lines.extend(str(line) for line in rrset.to_text().splitlines())  # type: ignore[attr-defined]
    return [*lines, ""]


def dig_response(response: Response, index: int, total: int) -> str:
    """One reply as dig prints it, headed by wallwatch's capture metadata."""
    wire = response.wire()
    ttl = "n/a" if response.ip_ttl is None else str(response.ip_ttl)
    head = (
        f";; reply {index} of {total}: from {response.src}#{response.sport} ({response.engine}), "
        f"IP TTL {ttl}, {_ms(response.rtt)} after attempt {response.attempt}"
    )
    lines = [head]
    if response.question_mismatch:
        lines.append(";; WARNING: the reply's question does not match the query")
    try:
        msg = dns.message.from_wire(wire)
    except Exception as exc:  # render whatever the bytes are
        lines.append(f";; PARSE FAILURE: {response.failure or 'other'} ({exc})")
        lines.append(";; raw: " + wire.hex())
        return "\n".join(lines)
    flags = dns.flags.to_text(msg.flags).lower()
    lines += [
        f";; ->>HEADER<<- opcode: {dns.opcode.to_text(msg.opcode())}, "
        f"status: {dns.rcode.to_text(msg.rcode())}, id: {msg.id}",
        f";; flags: {flags}; QUERY: {len(msg.question)}, ANSWER: {response.ancount}, "
        f"AUTHORITY: {response.nscount}, ADDITIONAL: {response.arcount}",
    ]
    if msg.edns >= 0:
        lines += ["", ";; OPT PSEUDOSECTION:", f"; EDNS: version: {msg.edns}, udp: {msg.payload}"]
    lines.append("")
    lines.append(";; QUESTION SECTION:")
    lines += [f";{q.name}\t\tIN\t{dns.rdatatype.to_text(q.rdtype)}" for q in msg.question]
    lines.append("")
    lines += _section("ANSWER", list(msg.answer))
    lines += _section("AUTHORITY", list(msg.authority))
    lines += _section("ADDITIONAL", list(msg.additional))
    lines.append(f";; MSG SIZE  rcvd: {len(wire)}")
    return "\n".join(lines)


def dig(record: Record) -> str:
    """A measurement (or stray reply, or input error) in dig's style."""
    if isinstance(record, InputError):
        return f";; input error {record.source}:{record.line}: {record.text!r}: {record.error}"
    if isinstance(record, Stray):
        return (
            f";; stray reply on port {record.local_port} (measurement {record.measurement_uid})\n"
            + (dig_response(record.response, 1, 1))
        )
    m = record
    lines = [
        f"; <<>> wallwatch {__version__} <<>> @{m.resolver_address} {m.hostname} {m.query_type}"
        f" ({m.engine}, {m.target_kind})",
        f"; measurement {m.measurement_uid} of report {m.report_id}, vantage {m.vantage}",
        f"; sent {m.attempts} time(s) from port {m.source_port}"
        + (f" with IP TTL {m.ip_ttl}" if m.ip_ttl is not None else "")
        + f"; {len(m.responses)} reply(ies); failure: {m.failure or 'none'}",
    ]
    for error in m.icmp:
        lines.append(
            f";; ICMP type {error.icmp_type} code {error.icmp_code} from {error.src} at {error.t:.3f}s"
        )
    for i, response in enumerate(m.responses, start=1):
        lines += ["", dig_response(response, i, len(m.responses))]
    return "\n".join(lines) + "\n"


def _compact_reply(r: Response) -> str:
    ttl = "-" if r.ip_ttl is None else str(r.ip_ttl)
    if r.failure is not None:
        status = f"PARSE:{r.failure}"
    else:
        status = dns.rcode.to_text(dns.rcode.Rcode.make(r.rcode or 0))
    data = ",".join(a.ipv4 or a.ipv6 or a.hostname or a.rdata or "" for a in r.answers) or "-"
    return f"[ttl={ttl} {_ms(r.rtt)}] {status} {data}"


def compact(record: Record) -> str:
    """One line per measurement: every reply in arrival order."""
    if isinstance(record, InputError):
        return f"input_error {record.source}:{record.line} {record.text!r}: {record.error}"
    if isinstance(record, Stray):
        return f"stray uid={record.measurement_uid} {_compact_reply(record.response)}"
    m = record
    replies = " | ".join(_compact_reply(r) for r in m.responses) or (m.failure or "no reply")
    return f"{m.measurement_uid} @{m.resolver_address} {m.hostname} {m.query_type}: {replies}"


def as_json(record: Record) -> str:
    """The record as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(record), indent=2).decode()


RENDERERS: dict[Format, Callable[[Record], str]] = {
    Format.DIG: dig,
    Format.COMPACT: compact,
    Format.JSON: as_json,
}


__all__ = ["Format", "RENDERERS", "as_json", "compact", "dig", "dig_response"]
