"""The shield's resolver loop: users' queries in, checked answers out, every decision kept.

One asyncio loop owns everything: the listening UDP socket and TCP server, one
capturing upstream socket (:class:`wallwatch.probe.udp.UdpChannel`, for each reply's IP
TTL and kernel receive time, which asyncio's own datagram transport cannot give),
the hold timers, the cache. The secure channel and TCP retries are blocking lookups
(:func:`wallwatch.probe.stream.exchange`) in a small thread pool: they are the rare
path. A query in flight is asked upstream once, whoever else asks the same question
meanwhile waits for the same answer. The query stays open after it is answered, until
its hold ends, so a late reply is recorded with it: each upstream query becomes a
measurement in the prober's own schema (:mod:`wallwatch.records`) with every reply and
why each was accepted or dropped, and a collector judges it as any other.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import json
import os
import socket
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import msgspec

from wallwatch import records
from wallwatch.observatory.agent import Spool
from wallwatch.probe.engine import make_report_id
from wallwatch.probe.reply import make_response, type_text
from wallwatch.probe.stream import StreamError, StreamReply, StreamServer, exchange
from wallwatch.probe.udp import UdpChannel
from wallwatch.records import Measurement, Response
from wallwatch.shield.cache import Cache, strip_opt, truncated
from wallwatch.shield.checks import ForgedPool, PathModel, Seen, judge
from wallwatch.targets import Target
from wallwatch.vocab import Decision, Drop, Engine, TargetKind
from wallwatch.wire import AA, parse_reply

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Send = Callable[[bytes], None]

_HEADER = struct.Struct("!HHHHHH")
#: Largest query the shield reads: a question and an OPT fit in far less.
MAX_QUERY = 4096
#: Upstream queries open at once, answered ones included: the 16-bit ID space of the one
#: upstream socket, with room left so that a fresh random ID is found at once.
MAX_IDS = 49152
#: Seconds an answered query stays open for late replies (an injector's duplicate after
#: the genuine answer: from outside China 11 % of forgeries came last, [gfwatch-2021]).
LINGER = 0.25
#: Reasons that say a reply came from the path, not the server: its addresses are
#: learned as forged when a later reply that passed every check disagrees with it.
_PATH_SIGNS = frozenset({Drop.INJECTOR_PROFILE, Drop.NO_OPT, Drop.TOO_FAST, Drop.IP_TTL_OFF,
                         Drop.FORGED_POOL})  # fmt: skip
_RCODE_SERVFAIL, _RCODE_FORMERR, _RCODE_REFUSED = 2, 1, 5


class ShieldDecision(msgspec.Struct, frozen=True, omit_defaults=True):
    """One user query and what the shield did with it (no user address is kept)."""

    #: Unix time the query arrived.
    t: float
    hostname: str
    query_type: str
    decision: Decision
    #: Milliseconds between the query's arrival and the shield's answer.
    added_ms: float
    #: The upstream measurement the answer came from (its replies, each judged).
    measurement_uid: str | None = None


@dataclass(frozen=True, slots=True)
class ShieldConfig:
    upstream: tuple[str, int]
    listen: tuple[str, int] = ("127.0.0.1", 53)
    #: DoT/DoH server asked when no UDP reply passes within the hold.
    secure: StreamServer | None = None
    #: Ask the secure channel at once, beside UDP, and give whichever passes first.
    race: bool = False
    #: Networks allowed to use the shield besides loopback (needed off loopback).
    allow: tuple[Network, ...] = ()
    cache_size: int = 10000
    max_pending: int = 10000
    max_tcp: int = 256
    #: Where records, decisions and the state are written (None: counters only).
    out: Path | None = None
    vantage: str = "shield"
    #: Seconds between calibration lookups of the root (Hold-On relearned every ~5 min).
    calibrate_every: float = 300.0
    #: Share the listening port with other shield processes (``--workers``; the kernel
    #: spreads users' queries over them by their address and port).
    reuse_port: bool = False

    def check(self) -> None:
        """Refuse what would make an open resolver or cannot work, naming the option."""
        listen = ipaddress.ip_address(self.listen[0])
        if not listen.is_loopback and not self.allow:
            raise ValueError(
                f"--listen {self.listen[0]}: not a loopback address; the shield is no open "
                "resolver, name the networks it serves with --allow CIDR"
            )
        if self.cache_size < 0 or self.max_pending < 1 or self.max_tcp < 1:
            raise ValueError("--cache-size must be >= 0, --max-pending >= 1")
        if self.race and self.secure is None:
            raise ValueError("--race needs --secure doh:URL or dot:ADDR")


class BadQuery(Exception):
    """A user query the shield will not forward; ``txid`` None: not even a header."""

    def __init__(self, txid: bytes | None, detail: str) -> None:
        super().__init__(detail)
        self.txid = txid


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs, per query
class Query:
    txid: bytes
    flags: int
    #: The question name in wire form, case as the user wrote it.
    qname_wire: bytes
    qtype: int
    qclass: int
    #: Header-less question as the user wrote it (name, type, class).
    question: bytes
    #: The user's EDNS payload size, or None when the query had no OPT.
    edns: int | None
    do: bool
    #: What the cache and the queries in flight are keyed by (the name lower-cased).
    key: tuple[bytes, int, int, bool]

    def hostname(self) -> str:
        labels, off = [], 0
        name = self.qname_wire
        while off < len(name) and name[off]:
            labels.append(name[off + 1 : off + 1 + name[off]].decode("ascii", "backslashreplace"))
            off += 1 + name[off]
        return ".".join(labels) or "."


def parse_query(data: bytes) -> Query:
    """A user's query, strictly: one question, uncompressed name, at most one OPT."""
    if len(data) < 12:
        raise BadQuery(None, f"{len(data)} bytes: shorter than a DNS header")
    if len(data) > MAX_QUERY:
        raise BadQuery(None, f"{len(data)} bytes: longer than any query")
    txid = data[:2]
    _id, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    if flags & 0x8000:
        raise BadQuery(None, "a response, not a query")  # never answered: no reply loops
    if (flags >> 11) & 0xF or qd != 1 or an or ns or ar > 1:
        raise BadQuery(txid, "not a standard query with one question")
    n, off = len(data), 12
    while True:
        if off >= n:
            raise BadQuery(txid, "the question name runs past the message")
        length = data[off]
        if length == 0:
            off += 1
            break
        if length > 63:
            raise BadQuery(txid, "a compressed or invalid label in the question")
        off += 1 + length
    if off - 12 > 255 or off + 4 > n:
        raise BadQuery(txid, "the question is longer than 255 bytes or cut short")
    qtype, qclass = struct.unpack_from("!HH", data, off)
    end = off + 4
    edns, do = None, False
    if ar:
        if end + 11 > n or data[end] != 0:
            raise BadQuery(txid, "the additional record is not an OPT")
        rtype, payload, ttl, rdlen = struct.unpack_from("!HHIH", data, end + 1)
        if rtype != 41 or end + 11 + rdlen != n:
            raise BadQuery(txid, "the additional record is not an OPT")
        edns, do = max(512, payload), bool(ttl & 0x8000)
    elif end != n:
        raise BadQuery(txid, "bytes after the question")
    qname = data[12:off]
    return Query(txid, flags, qname, qtype, qclass, data[12:end], edns, do,
                 (qname.lower(), qtype, qclass, do))  # fmt: skip


def error_reply(txid: bytes, flags: int, question: bytes | None, rcode: int) -> bytes:
    """A header (and the question, when there is one) with ``rcode``, RA and RD kept."""
    out_flags = 0x8000 | (flags & 0x0100) | 0x0080 | rcode
    head = txid + struct.pack("!HHHHH", out_flags, 1 if question else 0, 0, 0, 0)
    return head + (question or b"")


@dataclass(slots=True)
class _Waiter:
    query: Query
    #: Where the answer goes: a user's UDP address, or a TCP connection's writer.
    send: Send | tuple[str, int]
    limit: int
    arrived: float


class _Pending:
    """One upstream query, open until its hold (or, once answered, its linger) ends.

    A plain class with ``__slots__``: one is made per query, and a dataclass with list
    factories costs a tenth of the shield's time."""

    __slots__ = ("query", "txid", "wire", "sent_ns", "waiters", "calibration", "answered",
                 "accepted", "responses", "dropped", "deadline", "closed", "uid", "expired",
                 "secure_done")  # fmt: skip

    def __init__(self, query: Query, txid: int, wire: bytes, sent_ns: int,
                 waiters: list[_Waiter], calibration: bool = False) -> None:  # fmt: skip
        self.query = query
        self.txid = txid
        self.wire = wire
        self.sent_ns = sent_ns
        self.waiters = waiters
        self.calibration = calibration
        self.answered: Decision | None = None
        self.accepted: int | None = None
        self.responses: list[Response] = []
        self.dropped: list[tuple[int, tuple[Drop, ...], tuple[str, ...]]] = []
        #: When the hold (or, once answered, the linger) ends (monotonic seconds).
        self.deadline = 0.0
        self.closed = False
        self.uid = ""
        self.expired = False
        self.secure_done = False


class Shield:
    """The stub resolver. ``await serve()`` runs it until :meth:`stop`."""

    def __init__(self, config: ShieldConfig, *, log: Callable[[str], None] = lambda _t: None,
                 spool: Spool | None = None) -> None:  # fmt: skip
        config.check()
        self.config = config
        self.log = log
        #: Where each second's measurements are also queued for a collector.
        self.spool = spool
        self.path = PathModel()
        self.forged = ForgedPool()
        self.cache = Cache(config.cache_size)
        self.decisions: Counter[Decision] = Counter()
        self.drops: Counter[Drop] = Counter()
        self.strays = 0
        self.queries = 0
        self._pending: dict[int, _Pending] = {}
        self._holds: deque[tuple[float, _Pending]] = deque()
        self._lingers: deque[tuple[float, _Pending]] = deque()
        self._ids: deque[int] = deque()
        self._allow_memo: dict[str, bool] = {}
        self._inflight: dict[tuple[bytes, int, int, bool], _Pending] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="shield-secure"
        )
        self._stop = asyncio.Event()
        self._tcp_open = 0
        self._tcp_tasks: set[asyncio.Task[None]] = set()
        self._records = bytearray()
        self._decision_log = bytearray()
        self._to_spool = bytearray()
        self._logs: list[BinaryIO] = []
        self._uid = 0
        self._start_ns = time.time_ns()
        self._report_id = make_report_id(config.vantage, self._start_ns)
        self._start_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._start_ns / 1e9))
        self._recalibrated = 0.0
        self._encoder = msgspec.json.Encoder()
        self.listening: tuple[str, int] | None = None
        self._target = Target(str(ipaddress.ip_address(config.upstream[0])), config.upstream[1])
        self.upstream = UdpChannel(self._target.family)
        #: Where replies must come from: the address as the socket reports it.
        self._upstream_addr = (self._target.address, self._target.port)

    # -- running ------------------------------------------------------------------------

    async def serve(self, ready: Callable[[tuple[str, int]], None] | None = None) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        loop.add_reader(self.upstream.fileno(), self._on_upstream)
        await self.calibrate(wait=2.0)
        host, port = self.config.listen
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # UDP and TCP share one port; with port 0 the kernel's pick for UDP may be taken
        # for TCP, so a free pair is looked for.
        for attempt in range(1 if port else 20):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            try:
                udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                if self.config.reuse_port:
                    udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                udp.bind((host, port))
                chosen = udp.getsockname()[1]
                tcp = await asyncio.start_server(self._on_tcp, host, chosen, reuse_address=True,
                                                 reuse_port=self.config.reuse_port or None)  # fmt: skip
            except OSError:
                udp.close()
                if port or attempt == 19:
                    raise
                continue
            break
        udp.setblocking(False)
        self._udp = udp
        port = chosen
        loop.add_reader(udp.fileno(), self._on_udp)
        self.listening = (host, port)
        if ready is not None:
            ready(self.listening)
        ticker = asyncio.ensure_future(self._tick())
        sweeper = asyncio.ensure_future(self._sweep())
        try:
            await self._stop.wait()
        finally:
            ticker.cancel()
            sweeper.cancel()
            loop.remove_reader(udp.fileno())
            loop.remove_reader(self.upstream.fileno())
            tcp.close()
            for task in list(self._tcp_tasks):
                task.cancel()
            await asyncio.gather(*self._tcp_tasks, return_exceptions=True)
            udp.close()
            for pending in list(self._pending.values()):
                self._expire(pending, final=True)
            self._flush()
            for handle in self._logs:
                handle.close()
            self._pool.shutdown(wait=False, cancel_futures=True)
            self.upstream.close()

    def stop(self) -> None:
        self._stop.set()

    def _random_id(self) -> int:
        """An unpredictable query ID ([rfc5452]), from the OS, a few thousand at a time."""
        if not self._ids:
            self._ids.extend(memoryview(os.urandom(8192)).cast("H"))
        return self._ids.pop()

    async def _sweep(self) -> None:
        """Close the queries whose hold or linger ended. One task for all, every 20 ms,
        instead of a timer per query: deadlines come in the order queries were sent."""
        while True:
            await asyncio.sleep(0.02)
            now = time.monotonic()
            for queue in (self._holds, self._lingers):
                while queue and queue[0][0] <= now:
                    deadline, pending = queue.popleft()
                    if not pending.closed and pending.deadline == deadline:
                        self._expire(pending)
            self._write_logs()

    async def _tick(self) -> None:
        next_calibration = time.monotonic() + self.config.calibrate_every
        while True:
            await asyncio.sleep(1.0)
            self._flush()
            if time.monotonic() >= next_calibration:
                next_calibration = time.monotonic() + self.config.calibrate_every
                await self.calibrate()

    async def calibrate(self, wait: float = 0.0, count: int = 3) -> None:
        """Ask the upstream for the root's NS (a name no blocklist holds) to learn the
        path's RTT and IP TTL ([holdon-2012]: learned from names not censored)."""
        for _ in range(count):
            query = Query(b"\0\0", 0x0100, b"\x00", 2, 1, b"\x00\x00\x02\x00\x01", 1232, False,
                          (b"\x00", 2, 1, False))  # fmt: skip
            self._ask(query, calibration=True)
        deadline = time.monotonic() + wait
        while wait and time.monotonic() < deadline and not self.path.rtts:
            await asyncio.sleep(0.02)

    # -- users' side ----------------------------------------------------------------------

    def _allowed(self, host: str) -> bool:
        known = self._allow_memo.get(host)
        if known is not None:
            return known
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        allowed = ip.is_loopback or any(ip in net for net in self.config.allow)
        if len(self._allow_memo) >= 65536:
            self._allow_memo.clear()
        self._allow_memo[host] = allowed
        return allowed

    def _on_udp(self) -> None:
        sock = self._udp
        for _ in range(256):
            try:
                data, addr = sock.recvfrom(MAX_QUERY + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue
            self.take(data, addr[0], addr, tcp=False)

    def _send(self, to: Send | tuple[str, int], payload: bytes) -> None:
        if type(to) is tuple:
            try:  # noqa: SIM105 - cheaper than contextlib.suppress, per answer
                self._udp.sendto(payload, to)
            except OSError:
                pass  # the user's socket is gone; nothing to tell
        else:
            to(payload)  # type: ignore[operator]

    async def _on_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._tcp_open >= self.config.max_tcp or not self._allowed(peer[0] if peer else ""):
            writer.close()
            return
        self._tcp_open += 1
        task = asyncio.current_task()
        if task is not None:
            self._tcp_tasks.add(task)

        def send(payload: bytes) -> None:
            if not writer.is_closing():
                writer.write(len(payload).to_bytes(2, "big") + payload)

        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), timeout=10.0)
                data = await asyncio.wait_for(
                    reader.readexactly(int.from_bytes(head, "big")), timeout=10.0
                )
                self.take(data, peer[0], send, tcp=True)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError, OSError):
            pass
        finally:
            self._tcp_open -= 1
            if task is not None:
                self._tcp_tasks.discard(task)
            writer.close()

    def take(self, data: bytes, source: str, send: Send | tuple[str, int], *, tcp: bool) -> None:
        """One query from a user."""
        arrived = time.monotonic()
        self.queries += 1
        if not self._allowed(source):
            self._decide(None, Decision.REFUSED, arrived)
            if len(data) >= 12 and not data[2] & 0x80:
                self._send(send, error_reply(data[:2], int.from_bytes(data[2:4], "big"), None,
                                 _RCODE_REFUSED))  # fmt: skip
            return
        try:
            query = parse_query(data)
        except BadQuery as exc:
            self._decide(None, Decision.FORMERR, arrived)
            if exc.txid is not None:
                self._send(send, error_reply(exc.txid, int.from_bytes(data[2:4], "big"), None,
                                 _RCODE_FORMERR))  # fmt: skip
            return
        limit = 65535 if tcp else (query.edns or 512)
        waiter = _Waiter(query, send, limit, arrived)
        hit = self.cache.get(query.key, query.txid, query.question, time.monotonic())
        if hit is not None:
            self._answer(waiter, hit, Decision.CACHED, None)
            return
        inflight = self._inflight.get(query.key)
        if inflight is not None and inflight.answered is None:
            inflight.waiters.append(waiter)
            return
        if len(self._inflight) >= self.config.max_pending or len(self._pending) >= MAX_IDS:
            self._decide(query, Decision.OVERLOADED, arrived)
            self._send(send, error_reply(query.txid, query.flags, query.question, _RCODE_SERVFAIL))
            return
        self._ask(query, waiter=waiter)

    def _answer(self, waiter: _Waiter, reply: bytes, decision: Decision, uid: str | None) -> None:
        query = waiter.query
        out = bytearray(reply)
        out[0:2] = query.txid
        question_end = 12 + len(query.question)
        if out[12:question_end].lower() == query.question.lower():
            out[12:question_end] = query.question
        body = bytes(out)
        if query.edns is None:
            body = strip_opt(body)
        if len(body) > waiter.limit:
            body = truncated(body, question_end)
        self._decide(query, decision, waiter.arrived, uid)
        self._send(waiter.send, body)

    def _decide(self, query: Query | None, decision: Decision, arrived: float,
                uid: str | None = None) -> None:  # fmt: skip
        self.decisions[decision] += 1
        if self.config.out is None or query is None:
            return
        record = ShieldDecision(
            time.time(),
            query.hostname(),
            type_text(query.qtype),
            decision,
            round((time.monotonic() - arrived) * 1000, 3),
            uid,
        )
        self._decision_log += self._encoder.encode(record) + b"\n"

    # -- upstream side --------------------------------------------------------------------

    def _ask(self, query: Query, *, waiter: _Waiter | None = None,
             calibration: bool = False) -> None:  # fmt: skip
        txid = self._random_id()
        while txid in self._pending:
            txid = self._random_id()
        opt = b"\x00" + struct.pack("!HHIH", 41, 1232, 0x8000 if query.do else 0, 0)
        wire = struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 1) + query.question + opt
        pending = _Pending(query, txid, wire, time.time_ns(), [waiter] if waiter else [],
                           calibration=calibration)  # fmt: skip
        self._pending[txid] = pending
        if not calibration:
            self._inflight[query.key] = pending
        try:
            self.upstream.send(wire, self._upstream_addr)
        except OSError as exc:
            self.log(f"shield: upstream {self._upstream_addr[0]}: {exc}")
        pending.deadline = time.monotonic() + self.path.hold()
        self._holds.append((pending.deadline, pending))
        if self.config.race and not calibration:
            self._secure(pending)

    def _on_upstream(self) -> None:
        self.upstream.drain(self._on_reply, lambda *_a: None)

    def _on_reply(self, data: bytes, src: tuple[str, int], ip_ttl: int | None, stamp: int) -> None:
        pending = self._pending.get(int.from_bytes(data[:2], "big")) if len(data) >= 2 else None
        if pending is None or src != self._upstream_addr:
            self.strays += 1
            return
        received = stamp or time.time_ns()
        rtt = max(0.0, (received - pending.sent_ns) / 1e9)
        parsed = parse_reply(data)
        query = pending.query
        addresses = tuple(a.address for a in parsed.answers if a.address is not None)
        question_end = 12 + len(query.question)
        seen = Seen(
            qtype=query.qtype,
            question_ok=parsed.failure is None and parsed.qname_wire == query.qname_wire
            and parsed.qtype == query.qtype and parsed.qclass == query.qclass,
            rtt=rtt, ip_ttl=ip_ttl, edns=parsed.edns, aa=bool((parsed.flags or 0) & AA),
            name_form="pointer" if data[question_end : question_end + 2] == b"\xc0\x0c" else "full",
            answer_ttl=parsed.answers[0].ttl if parsed.answers else None,
            addresses=addresses, has_a=any(a.rtype == 1 for a in parsed.answers),
        )  # fmt: skip
        reasons = judge(seen, self.path, self.forged)
        if pending.calibration:
            self._calibrated(seen, reasons)
            return
        index = len(pending.responses)
        if self.config.out is not None:
            pending.responses.append(make_response(
                data, parsed, src=src[0], sport=src[1], ip_ttl=ip_ttl,
                t=(received - self._start_ns) / 1e9, rtt=rtt,
                mismatch=not seen.question_ok,
            ))  # fmt: skip
        if reasons:
            self.drops.update(reasons)
            pending.dropped.append((index, reasons, addresses))
            if reasons == (Drop.IP_TTL_OFF,) and time.monotonic() - self._recalibrated > 10:
                # Only the TTL is off: the path may have changed; calibration says.
                self._recalibrated = time.monotonic()
                asyncio.ensure_future(self.calibrate())
            return
        if pending.answered is not None:
            return
        self.path.learn(rtt, ip_ttl, seen.edns)
        for _i, why, forged in pending.dropped:
            if _PATH_SIGNS.intersection(why) and not set(forged) & set(addresses):
                self.forged.learn(forged)
        pending.accepted = index
        if (parsed.flags or 0) & 0x0200:
            pending.answered = Decision.TCP
            self._retry_tcp(pending)
            return
        self._deliver(pending, data, Decision.ACCEPTED)

    def _calibrated(self, seen: Seen, reasons: tuple[Drop, ...]) -> None:
        path_tests = {Drop.IP_TTL_OFF, Drop.TOO_FAST}
        if any(r not in path_tests for r in reasons):
            return
        if Drop.IP_TTL_OFF in reasons:
            self.log(f"shield: the upstream's IP TTL is now {seen.ip_ttl} "
                     f"(was {self.path.ttl}): relearning the path")  # fmt: skip
            self.path.relearn()
        self.path.learn(seen.rtt, seen.ip_ttl, seen.edns)

    def _deliver(self, pending: _Pending, reply: bytes, decision: Decision) -> None:
        pending.answered = decision
        if not pending.expired:
            pending.deadline = time.monotonic() + LINGER
            self._lingers.append((pending.deadline, pending))
        self.cache.put(pending.query.key, reply, time.monotonic())
        self._inflight.pop(pending.query.key, None)
        for waiter in pending.waiters:
            self._answer(waiter, reply, decision, self._uid_of(pending))
        pending.waiters.clear()

    def _uid_of(self, pending: _Pending) -> str | None:
        """The measurement's ID, made only when measurements are written."""
        if self.config.out is None:
            return None
        return pending.uid or self._next_uid(pending)

    def _next_uid(self, pending: _Pending) -> str:
        self._uid += 1
        pending.uid = f"{self._report_id}_{self._uid:08x}"
        return pending.uid

    def _expire(self, pending: _Pending, final: bool = False) -> None:
        """The hold ended: close the query, after the secure channel's answer if it is
        to give one."""
        pending.expired = True
        if pending.answered is None and not pending.calibration and not final:
            if self.config.secure is not None and not self.config.race:
                self._secure(pending)
                return
            if self.config.race and not pending.secure_done:
                return  # the racing secure lookup answers or fails it
        if pending.answered is None and not pending.calibration:
            self._fail(pending)
        self._close(pending)

    def _fail(self, pending: _Pending) -> None:
        pending.answered = Decision.FAILED
        self._inflight.pop(pending.query.key, None)
        uid = self._uid_of(pending)
        for waiter in pending.waiters:
            q = waiter.query
            self._decide(q, Decision.FAILED, waiter.arrived, uid)
            self._send(waiter.send, error_reply(q.txid, q.flags, q.question, _RCODE_SERVFAIL))
        pending.waiters.clear()

    def _close(self, pending: _Pending) -> None:
        pending.closed = True
        if self._pending.get(pending.txid) is pending:
            del self._pending[pending.txid]
        if self._inflight.get(pending.query.key) is pending:
            del self._inflight[pending.query.key]
        if pending.calibration or self.config.out is None:
            return
        self._record(pending)

    def _record(self, pending: _Pending) -> None:
        query = pending.query
        dropped = ";".join(
            f"{i}:{'+'.join(r.value for r in why)}" for i, why, _a in pending.dropped
        )
        annotations = {"shield": (pending.answered or Decision.FAILED).value}
        if pending.accepted is not None:
            annotations["shield_accepted"] = str(pending.accepted)
        if dropped:
            annotations["shield_dropped"] = dropped
        m = Measurement(
            schema_version=records.SCHEMA_VERSION,
            measurement_uid=pending.uid or self._next_uid(pending),
            report_id=self._report_id,
            measurement_start_time=self._start_time,
            vantage=self.config.vantage,
            hostname=query.hostname(),
            query_type=type_text(query.qtype),
            engine=Engine.UDP,
            resolver_address=self._target.resolver_address,
            target_kind=TargetKind.RESOLVER,
            transaction_id=pending.txid,
            source_port=self.upstream.port,
            t0=(pending.sent_ns - self._start_ns) / 1e9,
            t=(time.time_ns() - self._start_ns) / 1e9,
            edns_payload=1232,
            responses=tuple(pending.responses),
            annotations=annotations,
        )
        records.encode_into(m, self._records)

    # -- the rare paths, in threads -------------------------------------------------------

    def _secure(self, pending: _Pending) -> None:
        """Ask the secure channel (at once when racing, else when the hold ends)."""
        server = self.config.secure
        assert server is not None
        wire = pending.wire
        future = self._loop.run_in_executor(self._pool, exchange, server, wire, 5.0)

        def done(f: asyncio.Future[StreamReply]) -> None:
            pending.secure_done = True
            payload = self._reply_of(f, wire, server)
            if payload is not None:
                addresses = tuple(a.address for a in parse_reply(payload).answers
                                  if a.address is not None)  # fmt: skip
                # A secure channel can serve a poisoned cache too ([dnscrypt-proxy-1315]).
                if any(self.forged(a) for a in addresses):
                    payload = None
            if pending.answered is None and pending.waiters:
                if payload is not None:
                    self._deliver(pending, payload, Decision.SECURE)
                elif pending.expired:
                    self._fail(pending)
            if pending.expired:
                self._close(pending)

        future.add_done_callback(done)

    def _retry_tcp(self, pending: _Pending) -> None:
        server = StreamServer(Engine.TCP, self._target.address, self._target.port)
        future = self._loop.run_in_executor(self._pool, exchange, server, pending.wire, 5.0)

        def done(f: asyncio.Future[StreamReply]) -> None:
            payload = self._reply_of(f, pending.wire, server)
            if payload is not None and pending.waiters:
                self._deliver(pending, payload, Decision.TCP)
            elif pending.waiters:
                self._fail(pending)

        future.add_done_callback(done)

    def _reply_of(self, f: asyncio.Future[StreamReply], wire: bytes,
                  server: StreamServer) -> bytes | None:  # fmt: skip
        """A stream lookup's reply to ``wire`` (its ID), or None; a failure is logged."""
        try:
            payload = f.result().payload
        except (StreamError, OSError) as exc:
            self.log(f"shield: {server.engine.value} {server.resolver_address}: {exc}")
            return None
        except (concurrent.futures.CancelledError, asyncio.CancelledError):
            return None
        return payload if len(payload) >= 12 and payload[:2] == wire[:2] else None

    # -- what it writes -------------------------------------------------------------------

    def _write_logs(self) -> None:
        """Append what closed since the last call (every sweep, 20 ms): a kill -9 loses at
        most that. Whole lines in one ``write`` each, so no line is ever torn."""
        out = self.config.out
        if out is None:
            self._records.clear()
            self._decision_log.clear()
            return
        if not self._logs:
            out.mkdir(parents=True, exist_ok=True)
            self._logs = [open(out / name, "ab", buffering=0)  # noqa: SIM115 - kept open
                          for name in ("measurements.jsonl", "decisions.jsonl")]  # fmt: skip
        for handle, buf in zip(self._logs, (self._records, self._decision_log), strict=True):
            if buf:
                handle.write(buf)
                if buf is self._records and self.spool is not None:
                    self._to_spool += buf
                buf.clear()

    def _flush(self) -> None:
        """The logs, the upload spool's batch, and the state file (every second)."""
        self._write_logs()
        out = self.config.out
        if out is None:
            return
        if self._to_spool and self.spool is not None:
            self.spool.add(bytes(self._to_spool).splitlines(keepends=True))
            self._to_spool.clear()
        state = out / "shield.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state(), indent=1))
        os.replace(tmp, state)

    def state(self) -> dict[str, object]:
        """Counters and what was learned of the path (``shield.json``)."""
        return {
            "upstream": self._target.resolver_address,
            "listening": list(self.listening) if self.listening else None,
            "queries": self.queries,
            "decisions": {d.value: self.decisions[d] for d in Decision},
            "drops": {d.value: self.drops[d] for d in Drop},
            "strays": self.strays,
            "pending": len(self._pending),
            "cache": {"entries": len(self.cache), "hits": self.cache.hits},
            "path": {"least_rtt_ms": None if self.path.least_rtt is None
                     else round(self.path.least_rtt * 1000, 3),
                     "ip_ttl": self.path.ttl, "echoes_opt": self.path.echoes_opt,
                     "hold_ms": round(self.path.hold() * 1000, 1),
                     "samples": len(self.path.rtts)},
            "learned_forged": len(self.forged.learned),
        }  # fmt: skip
