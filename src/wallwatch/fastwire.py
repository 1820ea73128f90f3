"""The per-packet readers of passive detection: C when it was built, Python otherwise.

Why: a resolver answers 100,000+ queries a second; reading each answer's header,
question and addresses in Python costs more than that budget allows, so
``wallwatch._native`` (``_native.c``, compiled by ``pip install`` when a compiler is
there) reads them, and only what a packet *means* is decided in Python. The functions
below are its twins, value for value (``tests/test_fastwire.py`` runs both over the
same packets): they run when the extension is missing, which is said once on stderr.

:func:`summary` reads what the passive engine groups answers by, and declines (None) any
message the full parser (:func:`wallwatch.wire.parse_reply`) should read instead: a
malformed one, one without a question, a question name with bytes other than letters,
digits, ``-`` and ``_``, an IPv4-compatible or -mapped AAAA answer.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
from collections.abc import Callable, Container
from typing import Any

from wallwatch.wire import AA, CLASS_IN


def referral(flags: int, rcode: int, ancount: int) -> bool:
    """A reply that delegates the name (no answer, NOERROR, not authoritative): the root's
    or a TLD's step of a resolver's recursion, which answers no question. The one
    definition the passive readers count such replies by (the C loops test the same)."""
    return ancount == 0 and rcode == 0 and not flags & AA


#: (id, flags, rcode, qname, qtype, ancount, nscount, arcount, addresses, least address
#: TTL or -1, first Extended DNS Error code or -1)
Summary = tuple[int, int, int, str, int, int, int, int, tuple[str, ...], int, int]
#: (time, src, dst, sport, dport, ip_ttl, ip_id, df, payload, number) of an IPv4 packet,
#: or (time, the whole record, number) of an IPv6 one; number: the record's, from 1 at
#: the offset the scan started at.
Packet = tuple[float, str, str, int, int, int, int, bool, bytes, int] | tuple[float, bytes, int]

_NAME_BYTES = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


def _skip_name(m: bytes, n: int, off: int) -> int:
    for _ in range(128):
        if off >= n:
            return -1
        length = m[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= n else -1
        if length & 0xC0:
            return -1
        off += 1 + length
    return -1


def py_summary(msg: bytes) -> Summary | None:
    """The pure-Python :func:`summary`."""
    n = len(msg)
    if n < 12:
        return None
    txid, flags, qd, an, ns, ar = _HEADER.unpack_from(msg, 0)
    if qd < 1:
        return None
    labels = []
    off = 12
    while True:
        if off >= n:
            return None
        length = msg[off]
        off += 1
        if length == 0:
            break
        label = msg[off : off + length]
        if length > 63 or off + length > n or not _NAME_BYTES.issuperset(label):
            return None
        labels.append(label)
        off += length
    name = b".".join(labels)
    if len(name) > 254 or off + 4 > n:
        return None
    qtype = int.from_bytes(msg[off : off + 2], "big")
    off += 4
    for _ in range(1, qd):
        off = _skip_name(msg, n, off)
        if off < 0 or off + 4 > n:
            return None
        off += 4
    addresses: list[str] = []
    least, ede = -1, -1
    rcode = flags & 0xF
    for i in range(an + ns + ar):
        off = _skip_name(msg, n, off)
        if off < 0 or off + 10 > n:
            return None
        rtype, rclass, ttl, rdlen = _RR.unpack_from(msg, off)
        off += 10
        if off + rdlen > n:
            return None
        if i < an and rtype in (1, 28) and rclass != CLASS_IN:
            return None  # not an address: the full parser keeps it as rendered
        if i < an and ((rtype == 1 and rdlen == 4) or (rtype == 28 and rdlen == 16)):
            if rtype == 28 and not any(msg[off : off + 10]) and msg[off + 10 : off + 12] in (
                b"\0\0", b"\xff\xff",
            ):  # fmt: skip
                return None
            family = socket.AF_INET if rtype == 1 else socket.AF_INET6
            addresses.append(socket.inet_ntop(family, msg[off : off + rdlen]))
            least = ttl if least < 0 or ttl < least else least
        elif i >= an + ns and rtype == 41:
            rcode |= (ttl >> 24) << 4
            o, end = off, off + rdlen
            while o + 4 <= end:
                code, olen = struct.unpack_from("!HH", msg, o)
                if o + 4 + olen > end:
                    return None
                if code == 15 and olen >= 2 and ede < 0:
                    ede = int.from_bytes(msg[o + 4 : o + 6], "big")
                o += 4 + olen
        off += rdlen
    if off != n:
        return None
    return (txid, flags, rcode, name.lower().decode("ascii"), qtype, an, ns, ar,
            tuple(addresses), least, ede)  # fmt: skip


#: dnstap's message types that carry an answer (dnstap.proto, Message.Type).
RESOLVER_RESPONSE, CLIENT_RESPONSE, FORWARDER_RESPONSE = 4, 6, 8
_RESPONSES = (RESOLVER_RESPONSE, CLIENT_RESPONSE, FORWARDER_RESPONSE)
_tap: Any = None


def py_dnstap_answer(frame: bytes) -> tuple[Any, ...] | int | None:
    """The pure-Python :func:`dnstap_answer` (through dnstap's compiled protobuf)."""
    global _tap
    if _tap is None:
        import dnstap_pb

        _tap = dnstap_pb.Dnstap()
    try:
        _tap.ParseFromString(frame)
    except Exception:  # protobuf's DecodeError, and its C twin's
        return 0
    if not _tap.HasField("message"):
        return 1
    m = _tap.message
    if m.type not in _RESPONSES or not m.response_message:
        return 1
    read = py_summary(bytes(m.response_message))
    if read is None:
        return None
    if m.query_time_sec:
        start = m.query_time_sec + m.query_time_nsec / 1e9
    elif m.response_time_sec:
        start = m.response_time_sec + m.response_time_nsec / 1e9
    else:
        start = 0.0
    return (int(m.type), bytes(m.response_address), int(m.response_port),
            int(m.socket_protocol), bytes(m.query_address), start, *read)  # fmt: skip


def py_dnstap_group(data: bytes, offset: int, keys: dict[int, dict[Any, list[int]]],
                    tallies: dict[int, dict[tuple[str, int, int, int], int]],
                    judged: Container[int], clock: tuple[float, float, float],
                    upstream: bool, keep_clients: bool,
                    counts: list[int]) -> tuple[list[tuple[bytes, Any, Any]], int, bool]:  # fmt: skip
    """The pure-Python :func:`dnstap_group` (the grouping of ``Passive.offer``, a buffer of
    frames at a time)."""
    real0, scale, at0 = clock
    fresh: list[tuple[bytes, Any, Any]] = []
    n = len(data)
    control = False
    while n - offset >= 4:
        length = int.from_bytes(data[offset : offset + 4], "big")
        if length == 0 or length > 262144:
            control = True
            break
        if length > n - offset - 4:
            break
        frame = bytes(data[offset + 4 : offset + 4 + length])
        offset += 4 + length
        got = py_dnstap_answer(frame)
        if isinstance(got, int):
            counts[0 if got == 0 else 1] += 1
            continue
        if got is None:
            fresh.append((frame, None, None))
            continue
        to_client = got[0] == CLIENT_RESPONSE
        if not to_client:
            if not upstream:
                counts[2] += 1
                continue
            if referral(got[7], got[8], got[11]):
                counts[3] += 1
                continue
        client = got[4] if to_client and keep_clients and got[4] else None
        addresses = got[14] if len(got[14]) < 2 else tuple(sorted(got[14]))
        key = (got[0], got[1], got[2], got[3], got[9], got[10], got[8], addresses, client)
        minute = int(at0 + (got[5] - real0) * scale) // 60
        late = minute in judged
        held = None if late else keys.get(minute)
        entry = held.get(key) if held is not None else None
        if entry is not None:
            entry[1] += 1
            per = tallies.setdefault(minute, {})
            slot = ("users" if to_client else "upstream", got[8], got[15], got[16])
            per[slot] = per.get(slot, 0) + 1
            counts[4] += 1
            continue
        if not late:
            keys.setdefault(minute, {})[key] = [-1, 1]
        fresh.append((frame, key, minute))
    return fresh, offset, control


_LINK = {1: 14, 101: 0, 12: 0, 14: 0, 113: 16, 276: 20, 0: 4, 108: 4}


def py_scan_pcap(data: bytes, offset: int, big_endian: bool, nano: bool, linktype: int,
                 limit: int) -> tuple[list[Packet], int, int, bool]:  # fmt: skip
    """The pure-Python :func:`scan_pcap`."""
    if linktype not in _LINK:
        raise ValueError(f"link type {linktype} is not read")
    link = _LINK[linktype]
    record = struct.Struct(">IIII" if big_endian else "<IIII")
    divisor = 1e9 if nano else 1e6
    n = len(data)
    packets: list[Packet] = []
    seen = 0
    cut = False
    while len(packets) < limit:
        if offset == n:
            break
        if offset + 16 > n:
            cut = True
            break
        sec, frac, caplen, _ = record.unpack_from(data, offset)
        if offset + 16 + caplen > n:
            cut = True
            break
        start, length = offset + 16, caplen
        offset += 16 + caplen
        seen += 1
        if length < link + 20:
            continue
        t = sec + frac / divisor
        if linktype == 1:
            kind = int.from_bytes(data[start + 12 : start + 14], "big")
            at = 14
            if kind == 0x8100 and length >= 38:
                kind, at = int.from_bytes(data[start + 16 : start + 18], "big"), 18
            if kind not in (0x0800, 0x86DD):
                continue
            v6 = kind == 0x86DD
        else:
            at = link
            v6 = data[start + at] >> 4 == 6
        if v6:
            packets.append((t, bytes(data[start : start + caplen]), seen))
            continue
        p, length = start + at, length - at
        if data[p] >> 4 != 4:
            continue
        ihl = (data[p] & 0xF) * 4
        total, ip_id, frag = struct.unpack_from("!HHH", data, p + 2)
        if ihl < 20 or length < ihl + 8 or data[p + 9] != 17 or frag & 0x3FFF:
            continue
        if ihl + 8 <= total < length:
            length = total
        u = p + ihl
        sport, dport, ulen = struct.unpack_from("!HHH", data, u)
        plen = length - ihl - 8
        if ulen >= 8 and ulen - 8 < plen:
            plen = ulen - 8
        packets.append((t, socket.inet_ntoa(data[p + 12 : p + 16]),
                        socket.inet_ntoa(data[p + 16 : p + 20]), sport, dport, data[p + 8],
                        ip_id, bool(frag & 0x4000), bytes(data[u + 8 : u + 8 + plen]), seen))  # fmt: skip
    return packets, offset, seen, cut


summary: Callable[[bytes], Summary | None]
scan_pcap: Callable[..., tuple[list[Packet], int, int, bool]]
#: dnstap_answer(frame) -> 0 (not decodable) | 1 (no answer: a query) | None (the full
#: parser must read the DNS message) | (type, response address, response port, socket
#: protocol, query address, start time, *summary).
dnstap_answer: Callable[[bytes], tuple[Any, ...] | int | None]
#: dnstap_group(data, offset, keys, tallies, judged, clock, upstream, keep_clients,
#: counts) -> (fresh, offset, control): see :func:`py_dnstap_group`.
dnstap_group: Callable[..., tuple[list[tuple[bytes, Any, Any]], int, bool]]
#: scan_match(...): ``Passive.read_pcap``'s reading, matching and grouping of a classic
#: pcap file in C. Its twin is that method's Python path itself (the pcap matcher and
#: ``Passive._queries``), compared on the same files by ``tests/test_fastwire.py``.
scan_match: Callable[..., tuple[list[Any], list[Any], int, int, bool, bool, float | None]] | None
try:
    if os.environ.get("WALLWATCH_NO_NATIVE"):  # the pure-Python twins, on purpose
        raise ModuleNotFoundError("WALLWATCH_NO_NATIVE is set")
    from wallwatch import _native  # type: ignore[attr-defined]

    NATIVE = True
    summary = _native.summary
    scan_pcap = _native.scan_pcap
    dnstap_answer = _native.dnstap_answer
    dnstap_group = _native.dnstap_group
    scan_match = _native.scan_match
except ImportError:  # pragma: no cover - the build hook compiles it where it can
    NATIVE = False
    summary = py_summary
    scan_pcap = py_scan_pcap
    dnstap_answer = py_dnstap_answer
    dnstap_group = py_dnstap_group
    scan_match = None
    if not os.environ.get("WALLWATCH_NO_NATIVE"):
        print("wallwatch: the native packet reader is not built (no compiler at install); "
              "passive reading runs in pure Python, several times slower", file=sys.stderr)  # fmt: skip


def native_module() -> Any:
    """The extension module, or None (for tests comparing the twins)."""
    if os.environ.get("WALLWATCH_NO_NATIVE"):
        return None
    try:
        from wallwatch import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native
