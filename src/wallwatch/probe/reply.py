"""What a received packet becomes: a :class:`~wallwatch.records.Response` record.

Kept apart from the loop so that importers of other people's data (pcap, OONI)
build replies with the same code, and so that OONI's ``failure`` is derived in
exactly one place.
"""

from __future__ import annotations

from binascii import b2a_base64 as _B64
from collections.abc import Iterable

from wallwatch.records import Answer, IcmpError, Response
from wallwatch.vocab import Engine, Failure
from wallwatch.wire import ParsedReply, qtype_text

_TYPE_TEXT: dict[int, str] = {}
_RCODE_FAILURE = {
    3: Failure.DNS_NXDOMAIN,
    5: Failure.DNS_REFUSED,
    2: Failure.DNS_SERVFAIL,
}


def type_text(value: int) -> str:
    text = _TYPE_TEXT.get(value)
    if text is None:
        text = _TYPE_TEXT[value] = qtype_text(value)
    return text


def _answers(parsed: ParsedReply) -> tuple[Answer, ...]:
    out = []
    for a in parsed.answers:
        rtype = a.rtype
        address = a.address  # None for an A or AAAA record outside the Internet class
        if address is not None:
            out.append(Answer("A", a.ttl, a.name, address) if rtype == 1
                       else Answer("AAAA", a.ttl, a.name, None, address))  # fmt: skip
        elif rtype in (2, 5, 12, 39):
            out.append(Answer(type_text(rtype), a.ttl, a.name, hostname=a.data))
        else:
            out.append(Answer(type_text(rtype), a.ttl, a.name, rdata=a.data))
    return tuple(out)


def make_response(
    data: bytes,
    parsed: ParsedReply,
    *,
    src: str,
    sport: int,
    ip_ttl: int | None,
    t: float,
    rtt: float,
    attempt: int = 0,
    engine: Engine = Engine.UDP,
    mismatch: bool = False,
    ip_id: int | None = None,
    df: bool | None = None,
) -> Response:
    """Turn one received packet and its parse into a :class:`Response` record."""
    # Positional: this runs once per received packet, and keywords cost.
    return Response(
        t,
        rtt,
        src,
        sport,
        ip_ttl,
        _B64(data, newline=False).decode("ascii"),
        engine,
        attempt,
        parsed.failure,
        parsed.id,
        parsed.flags,
        parsed.rcode,
        parsed.qname,
        parsed.qtype,
        parsed.edns,
        parsed.ancount,
        parsed.nscount,
        parsed.arcount,
        _answers(parsed),
        mismatch,
        ip_id,
        df,
    )


def first_reply_failure(responses: Iterable[Response], icmp: Iterable[IcmpError]) -> Failure | None:
    """OONI's ``failure`` of a lookup: from its first reply, else from the transport."""
    for first in responses:
        if first.failure is not None:
            return Failure.DNS_SERVER_MISBEHAVING
        rcode = first.rcode or 0
        if rcode:
            return _RCODE_FAILURE.get(rcode, Failure.DNS_SERVER_MISBEHAVING)
        if not first.answers:
            return Failure.DNS_NO_ANSWER
        return None
    for error in icmp:
        if error.icmp_type in (3, 1) and error.icmp_code in (3, 4):  # port unreachable
            return Failure.CONNECTION_REFUSED
        return Failure.HOST_UNREACHABLE
    return Failure.GENERIC_TIMEOUT
