"""DNS from a packet capture as wallwatch records: every reply to every query, with its IP header.

Why: a capture of an injection (tcpdump on a vantage, Wireshark on a laptop) already
holds what wallwatch's prober records -- the forged reply and the genuine one to the
same query, with arrival times, IP TTL, IP ID and DF -- so it should feed the same
analysis. Queries and replies are matched by (client address and port, server address
and port, transaction ID, question); a query becomes one measurement whose replies are
every matching reply in arrival order. A reply whose query is not in the capture (a
capture on the server side, or a filter) becomes a measurement of its own, its query
inferred from its question.

pcap and pcapng, Ethernet, raw IP, Linux cooked (v1 and v2) and BSD loopback link
types, IPv4 and IPv6, UDP port 53 (dpkt). A packet that is
not DNS is skipped and counted; one that claims to be DNS but does not parse is kept as
a reply with its parse failure (malformed replies are evidence: Wallbleed); a capture
that ends mid-packet stops there with an ``input_error`` naming the packet, and
everything before it is kept.
"""

from __future__ import annotations

import functools
import hashlib
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt

from wallwatch import records
from wallwatch.fastwire import Summary, scan_pcap
from wallwatch.fastwire import summary as fast_summary
from wallwatch.interop.summary import ImportSummary
from wallwatch.probe.reply import make_response
from wallwatch.records import InputError, Measurement, Response
from wallwatch.vocab import Engine, Failure, TargetKind
from wallwatch.wire import QR, parse_reply, qtype_text

_SLL = 113
_SLL2 = 276
_RAW = (101, 12, 14)
_NULL = (0, 108)


@dataclass
class Query:
    """One query and every reply to it, as captured (the replies not read yet)."""

    index: int
    t: float
    client: str
    cport: int
    server: str
    sport: int
    txid: int
    qname: str
    qtype: int
    ip_ttl: int | None
    #: The replies as received: (time, source, source port, IP TTL, IP ID, DF, payload,
    #: summary); turned into records when the query is finished.
    replies: list[_Reply] = field(default_factory=list)


_Reply = tuple[float, str, int, int | None, int | None, bool | None, bytes, Summary | None]


def ip_packet(linktype: int, buf: bytes) -> Any:
    """The IP layer of a frame, or None."""
    if linktype == 1:
        eth = dpkt.ethernet.Ethernet(buf)
        return eth.data if isinstance(eth.data, dpkt.ip.IP | dpkt.ip6.IP6) else None
    if linktype in _RAW:
        return dpkt.ip.IP(buf) if buf[:1] and buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
    if linktype == _SLL:
        return ip_packet(101, buf[16:])
    if linktype == _SLL2:
        return ip_packet(101, buf[20:])
    if linktype in _NULL:
        return ip_packet(101, buf[4:])
    raise ValueError(
        f"link type {linktype} is not read (Ethernet, raw IP, Linux cooked, BSD loopback)"
    )


def _addr(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


class _Cut(Exception):
    """A classic pcap record longer than what is left of the file."""


#: First four bytes of a classic pcap file, by byte order (micro- and nanosecond stamps),
#: of a nanosecond one, and of pcapng.
_LITTLE = (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1")
_BIG = (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
_NANO = (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
_PCAPNG = b"\x0a\x0d\x0d\x0a"


def is_capture(head: bytes) -> bool:
    """Whether a file starting with ``head`` is a pcap or pcapng capture."""
    return head[:4] in _LITTLE + _BIG or head[:4] == _PCAPNG


class ClassicPcap:
    """Classic pcap records, read strictly: a record cut short raises :class:`_Cut`
    (dpkt's reader yields the short piece and stops without a word)."""

    def __init__(self, handle: Any) -> None:
        header = handle.read(24)
        if len(header) < 24:
            raise ValueError("shorter than a pcap file header")
        magic = header[:4]
        if magic in _LITTLE:
            self.order = "<"
        elif magic in _BIG:
            self.order = ">"
        else:
            raise ValueError(f"bad magic {magic.hex()}")
        self.divisor = 1e9 if magic in _NANO else 1e6
        self.linktype = struct.unpack(self.order + "I", header[20:24])[0] & 0x0FFFFFFF
        self.handle = handle

    def datalink(self) -> int:
        return int(self.linktype)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        while True:
            record = self.handle.read(16)
            if not record:
                return
            if len(record) < 16:
                raise _Cut(f"a record header of {len(record)} of 16 bytes")
            sec, frac, caplen, _ = struct.unpack(self.order + "IIII", record)
            buf = self.handle.read(caplen)
            if len(buf) < caplen:
                raise _Cut(f"{len(buf)} of its {caplen} bytes")
            yield sec + frac / self.divisor, buf


def open_capture(handle: Any) -> Any:
    """The reader of a capture file: :class:`ClassicPcap`, or dpkt's for pcapng."""
    magic = handle.read(4)
    handle.seek(0)
    if magic == _PCAPNG:
        return dpkt.pcapng.Reader(handle)
    return ClassicPcap(handle)


def read_records(path: str | Path, summary: ImportSummary | None = None, *,
                 dark: frozenset[str] = frozenset(),
                 ports: frozenset[int] = frozenset({53}),
                 native: bool = True) -> Iterator[Measurement | InputError]:  # fmt: skip
    """Measurements of one capture; ``dark`` lists addresses that run no DNS server,
    ``ports`` the server ports that carry DNS. A classic pcap file is read by
    :func:`wallwatch.fastwire.scan_pcap` (C) unless ``native`` is false; pcapng and
    IPv6 packets by dpkt: both give the same measurements."""
    summary = summary if summary is not None else ImportSummary()
    matcher = Matcher(str(path), summary, dark=dark, ports=ports)
    for item in read_queries(path, matcher, native=native):
        yield item if isinstance(item, InputError) else matcher.record(item)


def read_queries(path: str | Path, matcher: Matcher, *,
                 native: bool = True) -> Iterator[Query | InputError]:  # fmt: skip
    """The queries of one capture as ``matcher`` finishes them, replies unread (the
    caller records those it keeps), and an ``input_error`` where the capture stops."""
    summary, source = matcher.summary, str(path)
    summary.files += 1
    handle = open(path, "rb")  # noqa: SIM115
    try:
        reader = open_capture(handle)
    except (ValueError, dpkt.dpkt.NeedData, struct.error) as exc:
        handle.close()
        yield summary.skip(
            "pcap", source, 0, "not a packet capture", f"not a pcap or pcapng file: {exc}"
        )
        return
    with handle:
        if native and isinstance(reader, ClassicPcap):
            yield from _scan_classic(reader, matcher)
        else:
            yield from _read_frames(reader, matcher)
    yield from matcher.flush()


def _cut(summary: ImportSummary, source: str, number: int, why: object) -> InputError:
    return summary.skip("pcap", source, number + 1, "capture cut short",
                        f"packet {number + 1}: the capture ends mid-packet ({why}); "
                        f"the {number} packets before it are kept")  # fmt: skip


def _read_frames(reader: Any, matcher: Matcher) -> Iterator[Query | InputError]:
    """Frame by frame through dpkt: pcapng, and classic pcap without the C reader."""
    summary, source = matcher.summary, matcher.source
    linktype = reader.datalink()
    packets = iter(reader)
    number = 0
    while True:
        try:
            ts, buf = next(packets)
        except StopIteration:
            break
        except (_Cut, dpkt.dpkt.NeedData, dpkt.dpkt.UnpackError, ValueError, struct.error) as exc:
            yield _cut(summary, source, number, exc)
            break
        number += 1
        try:
            ip = ip_packet(linktype, buf)
        except ValueError as exc:
            yield summary.skip("pcap", source, number, "unreadable link type", str(exc))
            return
        except (dpkt.dpkt.UnpackError, struct.error):
            summary.skipped["not IP"] += 1
            continue
        yield from matcher.ip(number, float(ts), ip)


def _scan_classic(reader: ClassicPcap, matcher: Matcher) -> Iterator[Query | InputError]:
    """A classic pcap file through the C reader, a batch of packets at a time."""
    summary, source = matcher.summary, matcher.source
    linktype = reader.datalink()
    data = reader.handle.read()
    offset, number = 0, 0
    big, nano = reader.order == ">", reader.divisor == 1e9
    while True:
        try:
            packets, offset, seen, cut = scan_pcap(data, offset, big, nano, linktype, 65536)
        except ValueError as exc:
            yield summary.skip("pcap", source, number + 1, "unreadable link type",
                               f"{exc} (Ethernet, raw IP, Linux cooked, BSD loopback)")  # fmt: skip
            return
        read = 0
        for packet in packets:
            read += 1
            if len(packet) == 3:  # IPv6: dpkt reads it
                try:
                    ip = ip_packet(linktype, packet[1])
                except (dpkt.dpkt.UnpackError, struct.error):
                    summary.skipped["not IP"] += 1
                    continue
                yield from matcher.ip(number + packet[2], packet[0], ip)
            else:
                t, src, dst, sport, dport, ttl, ip_id, df, payload, at = packet
                yield from matcher.add(number + at, t, src, dst, sport, dport, ttl, ip_id, df,
                                       payload)  # fmt: skip
        # Records that were neither (other protocols, fragments) are numbered too.
        summary.skipped["not DNS over UDP"] += seen - read
        number += seen
        if cut:
            yield _cut(summary, source, number, "the last record is incomplete")
            return
        if not packets and (seen == 0 or offset >= len(data)):
            return


_NONE: tuple[Query, ...] = ()


class Matcher:
    """Queries and their replies, matched as packets pass, one measurement per query.

    Why a class: a file is read to its end before a query is given up on (a reply may
    come any time later in it), but a live capture never ends, so with ``window`` a
    query is finished once packets that many seconds newer have been seen, and a reply
    after that becomes a measurement of its own (as one whose query was not captured).
    Finished queries come out with their replies as they came (time, source, IP
    header fields, payload, and :func:`wallwatch.fastwire.summary`); :meth:`record`
    reads them fully into a measurement, for those the caller keeps (the passive
    engine counts repeats of an answer it already holds instead of recording them).
    """

    def __init__(self, source: str, summary: ImportSummary, *,
                 dark: frozenset[str] = frozenset(), ports: frozenset[int] = frozenset({53}),
                 window: float | None = None,
                 clock: Callable[[float], float] | None = None) -> None:  # fmt: skip
        self.source = source
        #: Capture time to the time measurements are dated in (the lab's scenario clock);
        #: round trips stay in capture time.
        self.clock = clock
        self.summary = summary
        self.dark = dark
        self.ports = ports
        self.window = window
        self.open: dict[tuple[Any, ...], Query] = {}
        #: The open queries in the order they were asked (expiry walks it from the left;
        #: a dict's first key is slow to find once many keys before it were removed).
        self.order: deque[Query] = deque()
        self.done: list[Query] = []
        self.first_t: float | None = None
        #: The number of the packet that set ``first_t``.
        self.first_number: int | None = None

    def ip(self, number: int, t: float, ip: Any) -> Iterable[Query]:
        """One IP packet as dpkt reads it."""
        udp = getattr(ip, "data", None)
        if not isinstance(udp, dpkt.udp.UDP):
            self.summary.skipped["not DNS over UDP"] += 1
            return _NONE
        v4 = isinstance(ip, dpkt.ip.IP)
        ttl = int(ip.ttl) if v4 else int(getattr(ip, "hlim", 0))
        return self.add(number, t, _addr(ip.src), _addr(ip.dst), udp.sport, udp.dport, ttl,
                        ip.id if v4 else None, bool(ip.df) if v4 else None, bytes(udp.data))  # fmt: skip

    def add(self, number: int, t: float, src: str, dst: str, sport: int, dport: int,
            ttl: int, ip_id: int | None, df: bool | None,
            payload: bytes) -> Iterable[Query]:  # fmt: skip
        """Take one UDP datagram, numbered ``number`` in its source, seen at ``t``;
        the queries finished by it (with ``window`` only)."""
        ports = self.ports
        if sport not in ports and dport not in ports:
            self.summary.skipped["not DNS over UDP"] += 1
            return _NONE
        if self.first_t is None:
            self.first_t, self.first_number = t, number
        read = fast_summary(payload)
        if read is not None:
            txid, qname, qtype = read[0], read[3], read[4] or 1
            is_reply, has_question = bool(read[1] & QR), True
        else:
            parsed = parse_reply(payload)
            txid, qtype = parsed.id or 0, parsed.qtype or 1
            qname = (parsed.qname or "").lower().rstrip(".")
            is_reply = len(payload) > 2 and bool(payload[2] & 0x80)
            has_question = parsed.qname is not None
        if not is_reply and dport in ports and has_question:
            q = Query(number, t, src, sport, dst, dport, txid, qname, qtype, ttl)
            key = (src, sport, dst, dport, txid, qname, qtype)
            if key in self.open:
                self.done.append(self.open.pop(key))
            self.open[key] = q
            self.order.append(q)
        elif sport not in ports:
            self.summary.skipped["not DNS over UDP"] += 1
            return _NONE
        else:
            if read is None:
                txid = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 0
            key = (dst, dport, src, sport, txid, qname, qtype)
            query = self.open.get(key)
            if query is None:
                query = Query(number, t, dst, dport, src, sport, txid, qname, qtype, None)
                self.done.append(query)
            query.replies.append((t, src, sport, ttl, ip_id, df, payload, read))
        # Expiry in batches, a second of capture at a time: one generator per packet
        # would cost as much as matching it.
        order = self.order
        if self.window is not None and (
            len(self.done) > 64 or (order and order[0].t < t - self.window - 1.0)
        ):
            return self.expire(t - self.window)
        return _NONE

    def expire(self, before: float) -> Iterator[Query]:
        """The queries asked before ``before`` (and lone replies), in capture order."""
        finished = self.done
        self.done = []
        order, open_ = self.order, self.open
        while order and order[0].t < before:
            q = order.popleft()
            key = (q.client, q.cport, q.server, q.sport, q.txid, q.qname, q.qtype)
            if open_.get(key) is q:  # not finished already (a retransmission replaced it)
                del open_[key]
                finished.append(q)
        if len(finished) > 1:
            finished.sort(key=lambda q: q.index)
        yield from finished

    def flush(self) -> Iterator[Query]:
        """Every query still waiting: the input ended."""
        self.done.extend(self.open.values())
        self.open = {}
        self.order.clear()
        yield from self.expire(float("-inf"))

    def record(self, query: Query) -> Measurement:
        """A finished query as a measurement, every reply read."""
        self.summary.measurements += 1
        self.summary.documents += 1
        first_t = self.first_t or query.t
        responses = tuple(
            make_response(payload, parse_reply(payload), src=src, sport=sport, ip_ttl=ttl,
                          t=t - first_t, rtt=max(0.0, t - query.t), ip_id=ip_id, df=df)
            for t, src, sport, ttl, ip_id, df, payload, _ in query.replies
        )  # fmt: skip
        return _measurement(query, responses, self.source, first_t, self.dark, self.clock)


@functools.lru_cache(maxsize=256)
def _second(t: int) -> str:
    """A UTC second as the store writes it (cached: a capture's queries share seconds)."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")


@functools.lru_cache(maxsize=64)
def _report_id(source: str) -> str:
    return f"pcap-{Path(source).stem}"


def _measurement(q: Query, replies: tuple[Response, ...], source: str, t_first: float,
                 dark: frozenset[str],
                 clock: Callable[[float], float] | None = None) -> Measurement:  # fmt: skip
    # The second as datetime would round it (to the microsecond first).
    start = _second(round((clock(q.t) if clock else q.t) * 1e6) // 1_000_000)
    kind = TargetKind.DARK if q.server in dark else TargetKind.RESOLVER
    server = f"[{q.server}]" if ":" in q.server else q.server
    return Measurement(
        schema_version=records.SCHEMA_VERSION,
        measurement_uid=hashlib.blake2b(f"{source}|{q.index}".encode(), digest_size=8).hexdigest(),
        report_id=_report_id(source), measurement_start_time=start,
        vantage=f"pcap:{q.client}", hostname=q.qname, query_type=qtype_text(q.qtype),
        engine=Engine.UDP, resolver_address=f"{server}:{q.sport}", target_kind=kind,
        transaction_id=q.txid, source_port=q.cport, t0=q.t - t_first,
        t=(q.t - t_first) + max((r.rtt for r in replies), default=0.0), ip_ttl=q.ip_ttl,
        responses=replies, annotations={"source": f"{source}#{q.index}"},
        failure=None if replies else Failure.GENERIC_TIMEOUT,
    )  # fmt: skip
