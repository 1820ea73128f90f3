"""The records wallwatch writes: one JSON line per measurement, stray reply or bad input line.

The raw wire bytes of every reply are the archival truth (as RIPE Atlas keeps
``abuf`` and OONI ``raw_response``); every other field of a response is derived
from them by :mod:`wallwatch.wire` and can be derived again when parsers improve.

Field names follow OONI's ``df-002-dnst`` where OONI has the field (``hostname``,
``query_type``, ``engine``, ``resolver_address``, ``failure``, ``raw_response``,
``t0``, ``t``, ``transaction_id``, ``answer_type``, ``ipv4``/``ipv6``/``hostname``).
wallwatch's extension is :attr:`Measurement.responses`: *every* packet that
answered the query, not just the first, because the firewall's injectors race the
genuine answer ([holdon-2012], OONI tq-002 "second DNS reply").

Field-by-field documentation: docs/schema.md. Bump :data:`SCHEMA_VERSION` on any
change a reader could notice, and keep old readers working (tests/fixtures has a
file per version).
"""

from __future__ import annotations

import base64

import msgspec

from wallwatch.vocab import Engine, Failure, ParseFailure, TargetKind

#: Version of the record layout; readers refuse versions they do not know.
SCHEMA_VERSION = 1


class Answer(msgspec.Struct, frozen=True, omit_defaults=True, gc=False):
    """One record of a reply's answer section, in OONI's shape."""

    #: RR type mnemonic: ``"A"``, ``"AAAA"``, ``"CNAME"``, ...
    answer_type: str
    #: The record's TTL in seconds, as the reply stated it.
    ttl: int
    #: Owner name of the record (absolute, with the trailing dot).
    name: str
    #: The address of an A record.
    ipv4: str | None = None
    #: The address of an AAAA record.
    ipv6: str | None = None
    #: The target of a CNAME/NS/PTR/DNAME record.
    hostname: str | None = None
    #: The presentation form of any other record type.
    rdata: str | None = None


class Response(msgspec.Struct, frozen=True, gc=False):
    """One packet received in reply to a query (or a TCP reply to its retry)."""

    #: Seconds since the sweep started, at the kernel's receive time.
    t: float
    #: Seconds between sending the attempt this reply answers and receiving it.
    rtt: float
    #: Source address of the packet.
    src: str
    #: Source port of the packet.
    sport: int
    #: IP TTL (IPv4) or hop limit (IPv6) of the packet; null over TCP.
    ip_ttl: int | None
    #: The packet's DNS payload, base64 (standard alphabet, padded).
    raw_response: str
    #: Transport of this reply (``tcp`` when a truncated UDP reply was retried).
    engine: Engine = Engine.UDP
    #: Which attempt (0 = first send) this reply answered.
    attempt: int = 0
    #: Why ``raw_response`` would not parse, or null when it parsed.
    failure: ParseFailure | None = None
    #: DNS header ID of the reply.
    transaction_id: int | None = None
    #: The 16-bit flags word of the header (QR, AA, TC, RD, RA, ...).
    flags: int | None = None
    #: RCODE, extended by OPT when present.
    rcode: int | None = None
    #: The question name as the reply echoed it (case preserved).
    qname: str | None = None
    #: The question type as the reply echoed it.
    qtype: int | None = None
    #: Whether the reply carried an OPT record (injectors drop it).
    edns: bool = False
    #: Record counts of the header: answer, authority, additional.
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0
    #: The answer section.
    answers: tuple[Answer, ...] = ()
    #: True when the reply's question does not match the query's (kept, not dropped).
    question_mismatch: bool = False
    #: IP ID of the packet, with ``--raw-capture`` (root); null otherwise.
    ip_id: int | None = None
    #: The IP Don't Fragment bit, with ``--raw-capture``; null otherwise.
    df: bool | None = None

    def wire(self) -> bytes:
        """The packet's raw bytes."""
        return base64.b64decode(self.raw_response)


class IcmpError(msgspec.Struct, frozen=True, gc=False):
    """An ICMP error that came back for one of the query's packets."""

    #: Seconds since the sweep started.
    t: float
    #: Address of the host that sent the ICMP error.
    src: str
    #: ICMP type (3 = destination unreachable) and code (3 = port unreachable).
    icmp_type: int
    icmp_code: int
    #: Which attempt it answered.
    attempt: int = 0


class Measurement(
    msgspec.Struct, frozen=True, tag="measurement", tag_field="record_type", gc=False
):
    """One query (name x target x qtype), its retries, and every reply it drew."""

    schema_version: int
    #: Unique id of this measurement (stable: derived from report and query key).
    measurement_uid: str
    #: Id of the sweep that produced it.
    report_id: str
    #: UTC start of the sweep, OONI format ``YYYY-MM-DD HH:MM:SS``.
    measurement_start_time: str
    #: Name of the vantage point (``--vantage``; defaults to the host name).
    vantage: str
    #: The queried name, ASCII (IDN names are punycode), without trailing dot.
    hostname: str
    #: ``"A"``, ``"AAAA"``, ...
    query_type: str
    #: Transport of the first attempt.
    engine: Engine
    #: ``"ip:port"`` (IPv6 in brackets), as OONI writes it.
    resolver_address: str
    #: What the target is believed to be.
    target_kind: TargetKind
    #: ID of the first attempt (later attempts get fresh IDs; see responses).
    transaction_id: int
    #: Local port the queries left from.
    source_port: int
    #: Seconds since the sweep started when the first attempt was sent.
    t0: float
    #: Seconds since the sweep started when the measurement was closed.
    t: float
    #: OONI-style failure, from the first reply or the transport; null when it answered.
    failure: Failure | None = None
    #: IP TTL set on the outgoing queries; null = the system default.
    ip_ttl: int | None = None
    #: How many times the query was sent (1 + retries used).
    attempts: int = 1
    #: Whether the query asked for recursion.
    rd: bool = True
    #: EDNS UDP payload size advertised, or null when the query had no OPT.
    edns_payload: int | None = None
    #: The input line as given, when it differs from ``hostname`` (IDN, URL).
    input: str | None = None
    #: Every reply received, in arrival order.
    responses: tuple[Response, ...] = ()
    #: ICMP errors received for the query's packets.
    icmp: tuple[IcmpError, ...] = ()
    #: Free-form ``key=value`` annotations given on the command line.
    annotations: dict[str, str] = {}

    def key(self) -> tuple[str, str, str, str]:
        """The identity of the query; a resumed sweep skips keys it already has."""
        return (self.hostname, self.resolver_address, self.query_type, self.engine.value)


class Stray(msgspec.Struct, frozen=True, tag="stray", tag_field="record_type", gc=False):
    """A reply that matched no open query.

    Usually a reply that came after its measurement's window closed (a slow
    genuine answer, or an injector's late duplicate); ``measurement_uid`` then
    names the measurement it belongs to. Kept so that no packet is ever lost.
    """

    schema_version: int
    report_id: str
    #: Local port the reply arrived on.
    local_port: int
    response: Response
    #: The measurement it answered, when still remembered; else null.
    measurement_uid: str | None = None


class InputError(msgspec.Struct, frozen=True, tag="input_error", tag_field="record_type", gc=False):
    """An input line that could not become a query name: reported, never silently lost."""

    schema_version: int
    report_id: str
    #: File the line came from (``-`` for stdin).
    source: str
    #: 1-based line number.
    line: int
    #: The line's text (stripped).
    text: str
    #: Why it was refused.
    error: str


Record = Measurement | Stray | InputError

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Record)


def encode_into(record: Record, buffer: bytearray) -> None:
    """Append one record as a JSON line to ``buffer`` (no intermediate copies)."""
    _encoder.encode_into(record, buffer, -1)
    buffer += b"\n"


def encode(record: Record) -> bytes:
    """One record as a JSON line (with its newline)."""
    return _encoder.encode(record) + b"\n"


def decode(line: bytes | str) -> Record:
    """Parse one JSON line; raises :class:`msgspec.ValidationError` / ``DecodeError``."""
    record: Record = _decoder.decode(line)
    if record.schema_version != SCHEMA_VERSION:
        raise msgspec.ValidationError(
            f"schema_version {record.schema_version} is not supported (expected {SCHEMA_VERSION})"
        )
    return record
