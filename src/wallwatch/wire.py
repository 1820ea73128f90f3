"""The DNS wire codec of the hot path, with dnspython as its reference.

Why a second codec: dnspython spends ~100 us building a query and 100-700 us
parsing a reply on this machine (about 2,200 Python calls for a 138-byte message,
docs/performance.md); a prober that must keep up with tens of thousands of replies
a second cannot afford it. This module does only what the prober needs -- build a
query; pull the header, the question, the answer records and the presence of OPT
out of a reply -- with ``struct`` and slicing, in 2-4 us.

dnspython stays the reference. The fast parser *declines* (internally) any answer
record whose type it does not render itself (TXT, MX, SOA, ...), and such
messages go through :func:`dns.message.from_wire`; tests/test_wire.py checks with
hypothesis that both paths agree on every valid message. A message that is
malformed never raises: :func:`parse_reply` returns what it could read plus a
:class:`~wallwatch.vocab.ParseFailure` code, and the caller keeps the raw bytes.
"""

from __future__ import annotations

import base64
import functools
import socket
import struct
import time
from dataclasses import dataclass, field

import dns.message
import dns.name
import dns.rdatatype

from wallwatch.vocab import ParseFailure

_HEADER = struct.Struct("!HHHHHH")
_RR_FIXED = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")

#: Flag bits of the DNS header (RFC 1035 4.1.1, RFC 4035 for AD/CD).
QR, AA, TC, RD, RA, AD, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0020, 0x0010

TYPE_A, TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_AAAA, TYPE_DNAME, TYPE_OPT = 1, 2, 5, 12, 28, 39, 41
#: The Internet class: only there are A and AAAA data addresses (dnspython renders an A
#: record of another class in the generic form, and so does the record).
CLASS_IN = 1
_NAME_TYPES = frozenset({TYPE_NS, TYPE_CNAME, TYPE_PTR, TYPE_DNAME})
TYPE_RRSIG = 46
#: RRSIG's fixed part: type covered, algorithm, labels, original TTL, expiration,
#: inception, key tag (RFC 4034 3.1).
_RRSIG_FIXED = struct.Struct("!HBBIIIH")

# Bytes dnspython prints as themselves inside a label; everything else is escaped.
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in b'"().;\\@$')
_PLAIN_DOT = _PLAIN + b"."
# Length byte of a label: 1-63 are valid; an empty or too long label maps to b"",
# which makes the encoded length check in encode_name fail.
_LENGTH = [bytes((n,)) if 0 < n <= 63 else b"" for n in range(256)] + [b""] * 65536


class _Malformed(Exception):
    """Internal: the message breaks the wire format at a known place."""

    def __init__(self, code: ParseFailure) -> None:
        super().__init__(code.value)
        self.code = code


class _Decline(Exception):
    """Internal: the fast path does not render this record type; use dnspython."""


class NameError_(ValueError):
    """A query name that cannot be encoded (empty label, label > 63, name > 255)."""


@dataclass(slots=True)
class WireAnswer:
    """One record of the answer section, rendered as dnspython renders it."""

    name: str
    rtype: int
    rclass: int
    ttl: int
    data: str

    @property
    def address(self) -> str | None:
        """The address the record gives: an A or AAAA record's data in the Internet class
        (in another class the same bytes are no address), else None."""
        if self.rtype in (TYPE_A, TYPE_AAAA) and self.rclass == CLASS_IN:
            return self.data
        return None


@dataclass(slots=True)
class ParsedReply:
    """What the prober reads out of one reply.

    Fields are ``None`` when the message ended before they could be read; in that
    case ``failure`` says why. ``qname_wire`` is the question name exactly as it
    came (case kept, uncompressed), used to match the reply to its query.
    """

    id: int | None = None
    flags: int | None = None
    rcode: int | None = None
    qdcount: int = 0
    ancount: int = 0
    nscount: int = 0
    arcount: int = 0
    qname: str | None = None
    qname_wire: bytes | None = None
    qtype: int | None = None
    qclass: int | None = None
    answers: list[WireAnswer] = field(default_factory=list)
    edns: bool = False
    edns_payload: int | None = None
    failure: ParseFailure | None = None
    slow_path: bool = False


def encode_name(name: str) -> bytes:
    """Encode an ASCII (already punycoded) name as uncompressed wire labels.

    Raises :class:`NameError_` for names DNS cannot carry.
    """
    text = name[:-1] if name.endswith(".") else name
    if not text:
        return b"\x00"
    labels = text.encode("ascii").split(b".")
    out = b"".join([_LENGTH[len(label)] + label for label in labels]) + b"\x00"
    if len(out) <= 255 and len(out) == len(text) + 2:
        return out
    for label in labels:
        if not label:
            raise NameError_(f"empty label in {name!r}")
        if len(label) > 63:
            raise NameError_(f"label longer than 63 bytes in {name!r}")
    raise NameError_(f"name longer than 255 bytes: {name!r}")


def query_tail(
    qname_wire: bytes, qtype: int, *, rd: bool = True, edns_payload: int | None = 1232
) -> bytes:
    """Everything of a query after its 2-byte ID.

    The prober builds this once per (name, qtype) and prefixes a fresh ID per
    attempt, so sending costs one ``struct.pack`` and a concatenation.
    """
    flags = RD if rd else 0
    arcount = 1 if edns_payload is not None else 0
    head = struct.pack("!HHHHH", flags, 1, 0, 0, arcount)
    body = qname_wire + _TYPE_CLASS.pack(qtype, 1)
    if edns_payload is not None:
        body += b"\x00" + struct.pack("!HHIH", TYPE_OPT, edns_payload, 0, 0)
    return head + body


def build_query(
    txid: int,
    qname: str,
    qtype: int,
    *,
    rd: bool = True,
    edns_payload: int | None = 1232,
) -> bytes:
    """Build a complete query message (one question, optional OPT)."""
    return struct.pack("!H", txid) + query_tail(
        encode_name(qname), qtype, rd=rd, edns_payload=edns_payload
    )


def _label_text(label: bytes) -> str:
    if not label.translate(None, _PLAIN):
        return label.decode("ascii")
    out = []
    for c in label:
        if c in b'"().;\\@$':
            out.append("\\" + chr(c))
        elif 0x20 < c < 0x7F:
            out.append(chr(c))
        else:
            out.append(f"\\{c:03d}")
    return "".join(out)


def work_budget(size: int) -> list[int]:
    """Steps (labels read plus pointers followed) one message of ``size`` bytes may cost.

    Why a budget: pointers that only go backwards still chain, and every record may
    start its name on a long chain, so an unbounded reader does quadratic work on one
    crafted 64 KB reply. Names reached through a pointer are decoded once per message
    (:func:`_read_name` keeps them by offset), so a genuine message costs about one step
    per label it holds; past the budget, one step per byte, the message is malformed
    (``bad_pointer``), and its bytes are kept like any other malformed reply's.
    """
    return [64 + size]


#: Names already decoded in one message, by the offset a pointer reached them at.
Memo = dict[int, tuple[bytes, ...]]


def _read_name(
    msg: bytes, off: int, n: int, budget: list[int], memo: Memo | None = None
) -> tuple[list[bytes], int]:
    """Read a possibly compressed name at ``off``; return its labels and the end offset."""
    labels: list[bytes] = []
    end = -1
    limit = off  # pointers must go strictly backwards (as dnspython demands)
    length = 1
    jumps: list[tuple[int, int]] = []  # (pointer target, labels read before it)
    while True:
        if off >= n:
            raise _Malformed(ParseFailure.NAME_TRUNCATED)
        count = msg[off]
        if count == 0:
            off += 1
            break
        budget[0] -= 1
        if budget[0] < 0:
            raise _Malformed(ParseFailure.BAD_POINTER)
        kind = count & 0xC0
        if kind == 0xC0:
            if off + 1 >= n:
                raise _Malformed(ParseFailure.NAME_TRUNCATED)
            target = ((count & 0x3F) << 8) | msg[off + 1]
            if target >= limit:
                raise _Malformed(ParseFailure.BAD_POINTER)
            if end < 0:
                end = off + 2
            known = memo.get(target) if memo is not None else None
            if known is not None:
                length += sum(len(label) + 1 for label in known)
                if length > 255:
                    raise _Malformed(ParseFailure.NAME_TOO_LONG)
                labels.extend(known)
                break
            jumps.append((target, len(labels)))
            limit = off = target
            continue
        if kind:
            raise _Malformed(ParseFailure.BAD_LABEL)
        stop = off + 1 + count
        if stop > n:
            raise _Malformed(ParseFailure.NAME_TRUNCATED)
        labels.append(msg[off + 1 : stop])
        length += count + 1
        if length > 255:
            raise _Malformed(ParseFailure.NAME_TOO_LONG)
        off = stop
    if memo is not None:
        for target, first in jumps:
            memo[target] = tuple(labels[first:])
    return labels, (end if end >= 0 else off)


def _name_text(labels: list[bytes]) -> str:
    if not labels:
        return "."
    joined = b".".join(labels)
    # Common case in one C call: nothing to escape and no dot inside a label.
    if not joined.translate(None, _PLAIN_DOT) and joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii") + "."
    return ".".join(_label_text(label) for label in labels) + "."


def _rdata_text(msg: bytes, rtype: int, rclass: int, off: int, rdlen: int, budget: list[int],
                memo: Memo) -> str:  # fmt: skip
    if rtype in (TYPE_A, TYPE_AAAA) and rclass != CLASS_IN:
        raise _Decline
    if rtype == TYPE_A:
        if rdlen != 4:
            raise _Malformed(ParseFailure.BAD_RDATA)
        return socket.inet_ntop(socket.AF_INET, msg[off : off + 4])
    if rtype == TYPE_AAAA:
        if rdlen != 16:
            raise _Malformed(ParseFailure.BAD_RDATA)
        return socket.inet_ntop(socket.AF_INET6, msg[off : off + 16])
    if rtype in _NAME_TYPES:
        labels, end = _read_name(msg, off, off + rdlen, budget, memo)
        if end != off + rdlen:
            raise _Malformed(ParseFailure.BAD_RDATA)
        return _name_text(labels)
    if rtype == TYPE_RRSIG and rdlen > _RRSIG_FIXED.size + 1:
        # Signed answers (a DO query's, as OONI's DoH lookups keep them) are common
        # enough that handing each to dnspython cost a fifth of an import: rendered
        # here as dnspython renders them (tests/test_wire.py compares the two).
        covered, algorithm, labels_n, ttl, expires, incepted, tag = _RRSIG_FIXED.unpack_from(
            msg, off
        )
        labels, end = _read_name(msg, off + _RRSIG_FIXED.size, off + rdlen, budget, memo)
        signature = base64.b64encode(msg[end : off + rdlen]).decode("ascii")
        if end >= off + rdlen:
            raise _Decline
        chunks = " ".join(signature[i : i + 32] for i in range(0, len(signature), 32))
        return (f"{dns.rdatatype.to_text(covered)} {algorithm} {labels_n} {ttl} "
                f"{_sigtime(expires)} {_sigtime(incepted)} {tag} {_name_text(labels)} {chunks}")  # fmt: skip
    raise _Decline


def _sigtime(when: int) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.gmtime(when))


def _parse_fast(msg: bytes, out: ParsedReply) -> None:
    n = len(msg)
    if n < 12:
        raise _Malformed(ParseFailure.SHORT_HEADER)
    out.id, flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 0)
    out.flags, out.rcode = flags, flags & 0xF
    out.qdcount, out.ancount, out.nscount, out.arcount = qd, an, ns, ar
    off = 12
    budget = work_budget(n)
    memo: Memo = {}
    for i in range(qd):
        labels, end = _read_name(msg, off, n, budget, memo)
        if end + 4 > n:
            raise _Malformed(ParseFailure.SECTION_TRUNCATED)
        if i == 0:
            out.qname = _name_text(labels)
            out.qname_wire = msg[off:end]
            out.qtype, out.qclass = _TYPE_CLASS.unpack_from(msg, end)
        off = end + 4
    answers = out.answers
    qname = out.qname
    declined = False
    for i in range(an + ns + ar):
        if qname is not None and msg[off : off + 2] == b"\xc0\x0c":
            owner, off = qname, off + 2  # the usual pointer to the question name
        else:
            labels, off = _read_name(msg, off, n, budget, memo)
            owner = _name_text(labels)
        if off + 10 > n:
            raise _Malformed(ParseFailure.SECTION_TRUNCATED)
        rtype, rclass, ttl, rdlen = _RR_FIXED.unpack_from(msg, off)
        off += 10
        if off + rdlen > n:
            raise _Malformed(ParseFailure.SECTION_TRUNCATED)
        if i < an:
            try:
                data = _rdata_text(msg, rtype, rclass, off, rdlen, budget, memo)
            except _Decline:
                # Finish the walk first: dnspython only sees messages whose structure
                # was read within the work budget.
                declined = True
            else:
                answers.append(WireAnswer(owner, rtype, rclass, ttl, data))
        elif rtype == TYPE_OPT and i >= an + ns:
            out.edns, out.edns_payload = True, rclass
            out.rcode = (out.rcode or 0) | ((ttl >> 24) << 4)
        off += rdlen
    if off != n:
        raise _Malformed(ParseFailure.TRAILING_DATA)
    if declined:
        raise _Decline


_SLOW_FAILURES: tuple[tuple[type[BaseException], ParseFailure], ...] = (
    (dns.message.ShortHeader, ParseFailure.SHORT_HEADER),
    (dns.name.BadPointer, ParseFailure.BAD_POINTER),
    (dns.name.BadLabelType, ParseFailure.BAD_LABEL),
    (dns.name.NameTooLong, ParseFailure.NAME_TOO_LONG),
    (dns.message.TrailingJunk, ParseFailure.TRAILING_DATA),
)


def _parse_slow(msg: bytes, out: ParsedReply) -> None:
    """The reference path: dnspython, for answer types the fast path does not render."""
    out.slow_path = True
    try:
        m = dns.message.from_wire(msg, ignore_trailing=False)
    except Exception as exc:  # dnspython raises many types on bad input; all are kept
        out.failure = next(
            (code for kind, code in _SLOW_FAILURES if isinstance(exc, kind)), ParseFailure.OTHER
        )
        return
    out.id, out.flags, out.rcode = m.id, int(m.flags), int(m.rcode())
    out.answers = [
        WireAnswer(
            rrset.name.to_text(), int(rrset.rdtype), int(rrset.rdclass), rrset.ttl, rd.to_text()
        )
        for rrset in m.answer
        for rd in rrset
    ]
    out.edns, out.edns_payload = m.edns >= 0, (int(m.payload) if m.edns >= 0 else None)


def parse_reply(msg: bytes) -> ParsedReply:
    """Parse one reply; never raises.

    On malformed input the result holds every field read before the fault and
    ``failure`` names the fault. Answer types the fast path does not render are
    parsed by dnspython (``slow_path`` is then true).
    """
    out = ParsedReply()
    try:
        _parse_fast(msg, out)
    except _Malformed as exc:
        out.failure = exc.code
    except _Decline:
        question = (out.qname, out.qname_wire, out.qtype, out.qclass)
        out.answers = []
        _parse_slow(msg, out)
        out.qname, out.qname_wire, out.qtype, out.qclass = question
    return out


def qtype_value(text: str) -> int:
    """``"AAAA"`` -> 28; accepts numbers and ``TYPE65`` forms too."""
    try:
        return int(dns.rdatatype.from_text(text.upper()))
    except (dns.rdatatype.UnknownRdatatype, ValueError) as exc:
        raise ValueError(f"unknown query type {text!r}") from exc


@functools.cache
def qtype_text(value: int) -> str:
    """28 -> ``"AAAA"``; unknown numbers print as ``TYPE<n>`` (cached: importers ask
    once per record, and dnspython's enum lookup costs more than the rest of a record)."""
    return dns.rdatatype.to_text(value)  # type: ignore[arg-type]


__all__ = [
    "AA",
    "AD",
    "CD",
    "QR",
    "RA",
    "RD",
    "TC",
    "NameError_",
    "ParsedReply",
    "WireAnswer",
    "build_query",
    "encode_name",
    "parse_reply",
    "qtype_text",
    "qtype_value",
    "query_tail",
]
