"""The sweep loop: send at a polite rate, keep listening, record every reply.

Plain UDP queries to IPv4 targets run in the C loop (:mod:`wallwatch.probe.native`,
``_probeloop.c``), which follows the same design and hands back what it does not write;
this module runs every other query and is the whole loop where C is not built.

Design (measured in docs/performance.md: a "batch loop"):

* one non-blocking capturing socket per family (more with ``ports``), drained
  with ``recvmsg`` until ``EAGAIN``; sends go out in token-bucket bursts of at
  most 64 while fewer than ``max_inflight`` queries await their first reply;
* a reply is matched by (socket, source address, source port, DNS ID); its
  question is then compared with the query's and a mismatch is *kept* and
  flagged, never dropped;
* a query stays open for ``window`` seconds after its first reply, so the genuine
  answer that loses the race against an injector (or a second and third injector)
  is recorded too (Hold-On; Triplet; OONI tq-002). Silence for ``timeout``
  seconds triggers a retry with a fresh ID, up to ``retries`` times; the old IDs
  stay valid so a late reply to an earlier attempt still counts;
* a reply after its query closed becomes a :class:`~wallwatch.records.Stray`
  record naming the measurement it belonged to (a two-generation table of recent
  IDs), so no packet is lost;
* truncated replies are retried over TCP, and queries whose engine is TCP, DoT or
  DoH (including the trusted control) run in a small thread pool whose results
  wake the loop through a socket pair.

Nothing here parses more than :mod:`wallwatch.wire` must, and nothing allocates
per packet beyond the record it will write.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import os
import queue
import random
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgspec

from wallwatch import records
from wallwatch.journal import Journal
from wallwatch.names import QueryName
from wallwatch.probe import native
from wallwatch.probe.ratelimit import TokenBucket
from wallwatch.probe.rawcapture import RawCapture
from wallwatch.probe.reply import first_reply_failure, make_response, type_text
from wallwatch.probe.stream import StreamError, StreamReply, StreamServer, exchange
from wallwatch.probe.udp import UdpChannel
from wallwatch.records import IcmpError, Measurement, Response, Stray
from wallwatch.targets import Target
from wallwatch.vocab import Engine, Failure, TargetKind
from wallwatch.wire import TC, encode_name, parse_reply, query_tail

_ID = struct.Struct("!H")
_JSON = msgspec.json.encode
#: Bytes of unsolicited replies parsed and kept per source: a burst, then a rate; the rest
#: are only counted. In bytes, not packets, because parsing costs about one step per
#: byte: a source flooding 64 KB crafted replies gets the CPU one sending small ones gets.
STRAY_BURST = 256 * 1024
STRAY_RATE = 64 * 1024.0


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    """How a sweep behaves.

    ProbeConfig(rate=5000)                 # 5k queries/s, defaults otherwise
    ProbeConfig(window=2.0, retries=0)     # listen 2 s after the first reply, never retry
    """

    #: Queries per second (None = as fast as the loop can go).
    rate: float | None = 1000.0
    #: Queries awaiting their first reply at any time.
    max_inflight: int = 2000
    #: Seconds of silence before a retry (or, after the last retry, a timeout).
    timeout: float = 2.0
    #: Seconds to keep listening after the first reply.
    window: float = 1.0
    #: Extra attempts after silence.
    retries: int = 1
    #: Ask for recursion.
    rd: bool = True
    #: EDNS UDP payload size to advertise, or None for no OPT.
    edns_payload: int | None = 1232
    #: Capturing sockets per address family (source-port spread).
    ports: int = 1
    #: Retry truncated UDP replies over TCP.
    tcp_fallback: bool = True
    #: Timeout of TCP/DoT/DoH lookups.
    stream_timeout: float = 5.0
    #: Threads for TCP/DoT/DoH lookups.
    stream_workers: int = 8
    #: Largest burst of sends in one loop iteration.
    burst: int = 64
    #: Name of the vantage point written into every record.
    vantage: str = field(default_factory=socket.gethostname)
    #: ``key=value`` annotations written into every record.
    annotations: dict[str, str] = field(default_factory=dict)
    #: Also read IP ID and DF of replies from a packet socket (root; :mod:`.rawcapture`).
    raw_capture: bool = False


class Query(NamedTuple):
    """One unit of work: a name, a type, and where and how to ask (a tuple: cheap to make)."""

    name: QueryName
    qtype: int
    #: UDP destination (None for stream-only queries such as the control).
    target: Target | None = None
    engine: Engine = Engine.UDP
    #: The server of a TCP/DoT/DoH query.
    stream: StreamServer | None = None
    kind: TargetKind = TargetKind.RESOLVER
    #: Outgoing IP TTL (None = system default).
    ip_ttl: int | None = None
    #: Fixed local port (None = one of the sweep's shared sockets).
    source_port: int | None = None


@dataclass(slots=True)
class Stats:
    """Counters of one sweep (shown as progress, printed at the end)."""

    sent: int = 0
    measurements: int = 0
    responses: int = 0
    strays: int = 0
    unmatched: int = 0
    #: Unmatched strays past their source's budget: counted here, not parsed or kept.
    strays_unkept: int = 0
    timeouts: int = 0
    parse_failures: int = 0
    icmp: int = 0
    kernel_drops: int = 0
    retries: int = 0


class _Slot:
    __slots__ = (
        "query", "tail", "qwire", "qtype", "channel", "dest", "txids", "sent_ns", "attempt",
        "t0", "responses", "icmp", "answered", "window_over", "stream_pending", "closed",
        "resolver_address",
    )  # fmt: skip

    def __init__(self, query: Query) -> None:
        self.query = query
        self.qtype = query.qtype
        self.txids: list[int] = []
        self.sent_ns: list[int] = []
        self.attempt = -1
        self.responses: list[Response] = []
        self.icmp: list[IcmpError] = []
        self.answered = False
        self.window_over = False
        self.stream_pending = False
        self.closed = False
        self.channel = -1
        self.tail = b""
        self.qwire = b""
        self.dest: tuple[str, int] = ("", 0)
        self.t0 = 0.0
        self.resolver_address = ""


class _NativeRetry(NamedTuple):
    """The TCP retry of a truncated reply the C loop received (its slot and generation)."""

    slot: int
    gen: int
    sent_ns: int
    attempt: int
    qtype: int


class Prober:
    """Runs one sweep and writes its records to a :class:`~wallwatch.journal.Journal`.

    Prober(config, journal).run(queries)   # returns the sweep's Stats
    """

    def __init__(
        self,
        config: ProbeConfig,
        journal: Journal,
        *,
        report_id: str | None = None,
        progress: Callable[[Stats], None] | None = None,
    ) -> None:
        self.config = config
        self.journal = journal
        self.start_ns = time.time_ns()
        self.start_time = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self.start_ns / 1e9))
        self.report_id = report_id or make_report_id(config.vantage, self.start_ns)
        self.stats = Stats()
        self._progress = progress
        self._channels: list[UdpChannel] = []
        self._receivers: list[Callable[[bytes, tuple[str, int], int | None, int], None]] = []
        self._icmp_receivers: list[
            Callable[[bytes, tuple[str, int], str, int, int, int], None]
        ] = []
        self._shared: dict[int, list[int]] = {}  # family -> indices of shared channels
        self._fixed: dict[tuple[int, int], int] = {}  # (family, port) -> index
        self._rr = 0
        self._pending: dict[tuple[int, str, int, int], _Slot] = {}
        self._recent: dict[tuple[int, str, int, int], tuple[str, int]] = {}
        self._recent_old: dict[tuple[int, str, int, int], tuple[str, int]] = {}
        self._recent_rotated = 0.0
        self._awaiting: deque[tuple[float, _Slot, int]] = deque()
        self._collecting: deque[tuple[float, _Slot]] = deque()
        self._outstanding = 0
        self._open_streams = 0
        self._tails: dict[tuple[str, int], tuple[bytes, bytes]] = {}
        self._now = time.monotonic()
        self._poll = select.poll()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._poll.register(self._wake_r.fileno(), select.POLLIN)
        self._results: queue.SimpleQueue[
            tuple[_Slot | _NativeRetry, StreamReply | StreamError, int]
        ] = queue.SimpleQueue()
        self._executor: ThreadPoolExecutor | None = None
        self._raw: RawCapture | None = None
        # Not a CSPRNG (a system call per ID halved the send rate): the IDs only need to
        # be unpredictable to off-path parties, and injectors are on-path anyway.
        self._getrandbits = random.Random(os.urandom(16)).getrandbits
        self._uid_prefix = hashlib.blake2b(
            f"{self.report_id}|{os.getpid()}".encode(), digest_size=4
        ).hexdigest()
        self._uid_counter = 0
        self._targets: dict[Target, tuple[str, tuple[str, int], int]] = {}
        self._stray_tokens: dict[str, tuple[float, float]] = {}
        # The C loop (wallwatch.probe.native) for plain IPv4 UDP queries, made on first use.
        self._native_ok = (
            native.module is not None
            and not config.raw_capture
            and config.retries + 2 <= native.MAX_ATTEMPTS
            and config.ports <= native.MAX_SOCKETS
        )
        self._core: Any = None
        self._core_channels: list[UdpChannel] = []
        self._core_counts: dict[str, int] = {}

    # -- public -------------------------------------------------------------------

    def run(self, queries: Iterable[Query]) -> Stats:
        """Probe every query; return the counters. Records stream into the journal."""
        source: Iterator[Query] | None = iter(queries)
        # The loop makes no reference cycles per query (refcounting frees everything),
        # but with millions of live names the cyclic collector's full passes cost
        # more than a third of the loop; freeze what exists and pause it.
        gc_was_enabled = gc.isenabled()
        gc.freeze()
        gc.disable()
        bucket = TokenBucket(self.config.rate, self.config.burst, now=time.monotonic())
        next_progress = 0.0
        try:
            while True:
                now = self._now = time.monotonic()
                if source is not None:
                    room = self.config.max_inflight - self._inflight()
                    if room > 0:
                        want = bucket.take(now, min(room, self.config.burst))
                        batch = list(itertools.islice(source, want))
                        if len(batch) < want:
                            source = None
                        if self._native_ok and batch:
                            # the C loop takes the plain IPv4 UDP queries, Python the rest
                            batch = self._native_core().start(batch)
                        for query in batch:
                            self._start(query)
                if self._raw is not None:
                    self._raw.drain()  # before the UDP sockets: their replies look it up
                for index, channel in enumerate(self._channels):
                    channel.drain(self._receivers[index], self._icmp_receivers[index])
                self._collect_streams()
                if self._core is not None:
                    self._pump_native()
                self._expire(now)
                self.journal.tick(now)
                if now >= next_progress:
                    self._report_progress()
                    next_progress = now + 0.5
                if (
                    source is None
                    and not self._awaiting
                    and not self._collecting
                    and not (self._open_streams)
                    and (self._core is None or not self._core.busy())
                ):
                    break
                self._wait(bucket, source is not None)
        finally:
            self._shutdown()
            if gc_was_enabled:
                gc.enable()
            gc.unfreeze()
        return self.stats

    # -- sending ------------------------------------------------------------------

    def _channel_index(self, query: Query, family: int) -> int:
        if query.source_port is not None:
            index = self._fixed.get((family, query.source_port))
            if index is None:
                index = self._fixed[(family, query.source_port)] = self._add_channel(
                    family, query.source_port
                )
            return index
        shared = self._shared.get(family)
        if shared is None:
            shared = self._shared[family] = [
                self._add_channel(family, 0) for _ in range(max(1, self.config.ports))
            ]
        self._rr += 1
        return shared[self._rr % len(shared)]

    def _add_channel(self, family: int, port: int) -> int:
        channel = UdpChannel(socket.AddressFamily(family), port=port)
        index = len(self._channels)
        self._channels.append(channel)
        self._poll.register(channel.fileno(), select.POLLIN)
        self._receivers.append(lambda d, a, ttl, ts: self._on_datagram(index, d, a, ttl, ts))
        self._icmp_receivers.append(
            lambda d, a, off, ty, co, ts: self._on_icmp(index, d, a, off, ty, co, ts)
        )
        return index

    def _start(self, query: Query) -> None:
        slot = _Slot(query)
        slot.t0 = (time.time_ns() - self.start_ns) / 1e9
        if query.engine != Engine.UDP:
            assert query.stream is not None
            slot.resolver_address = query.stream.resolver_address
            slot.tail = self._tail(query)[0]
            self._outstanding += 1
            self._submit_stream(slot, query.stream)
            return
        assert query.target is not None
        target = query.target
        known = self._targets.get(target)
        if known is None:
            known = self._targets[target] = (
                target.resolver_address,
                (target.address, target.port),
                target.family,
            )
        slot.resolver_address, slot.dest, family = known
        if self.config.raw_capture and self._raw is None:
            self._raw = RawCapture(port=target.port)
            self._poll.register(self._raw.fileno(), select.POLLIN)
        slot.channel = self._channel_index(query, family)
        slot.tail, slot.qwire = self._tail(query)
        self._outstanding += 1
        self._send(slot)

    def _tail(self, query: Query) -> tuple[bytes, bytes]:
        key = (query.name.hostname, query.qtype)
        cached = self._tails.get(key)
        if cached is None:
            if len(self._tails) > 4096:
                self._tails.clear()
            qwire = encode_name(query.name.hostname)
            tail = query_tail(
                qwire, query.qtype, rd=self.config.rd, edns_payload=self.config.edns_payload
            )
            cached = self._tails[key] = (tail, qwire.lower())
        return cached

    def _send(self, slot: _Slot) -> None:
        channel = self._channels[slot.channel]
        ip, port = slot.dest
        while True:
            txid = self._getrandbits(16)
            key = (slot.channel, ip, port, txid)
            if key not in self._pending:
                break
        self._pending[key] = slot
        slot.attempt += 1
        slot.txids.append(txid)
        payload = _ID.pack(txid) + slot.tail
        slot.sent_ns.append(time.time_ns())
        try:
            channel.send(payload, slot.dest, slot.query.ip_ttl)
        except ConnectionRefusedError:
            # A queued ICMP error of an earlier query surfaced on this send: read it
            # (attributing it to that query) and send again.
            channel.drain_errors(self._icmp_receivers[slot.channel])
            channel.send(payload, slot.dest, slot.query.ip_ttl)
        except OSError as exc:
            self._fail_send(slot, exc)
            return
        self.stats.sent += 1
        self._awaiting.append((self._now + self.config.timeout, slot, slot.attempt))

    def _fail_send(self, slot: _Slot, exc: OSError) -> None:
        failure = Failure.HOST_UNREACHABLE if exc.errno in (101, 113) else Failure.UNKNOWN
        self._outstanding -= 1
        self._finish(slot, failure)

    # -- receiving ----------------------------------------------------------------

    def _on_datagram(
        self, index: int, data: bytes, addr: tuple[str, int], ttl: int | None, stamp: int
    ) -> None:
        self.stats.responses += 1
        # Match on the header first (cheap); only a reply to an open query, a late one, or
        # an unsolicited one within its source's budget is parsed. A flood of crafted
        # unsolicited packets then costs what a flood of ordinary ones does.
        txid = _ID.unpack_from(data)[0] if len(data) >= 12 else -1
        key = (index, addr[0], addr[1], txid)
        slot = self._pending.get(key)
        if slot is None:
            known = self._recent.get(key) or self._recent_old.get(key)
            self._stray(self._channels[index].port, data, addr, ttl, stamp, known)
            return
        parsed = parse_reply(data)
        if parsed.failure is not None:
            self.stats.parse_failures += 1
        stamp = stamp or time.time_ns()
        attempt = slot.txids.index(key[3])
        ip_id, df = self._header_fields(index, addr, parsed.id)
        mismatch = parsed.qtype != slot.qtype or (
            parsed.qname_wire is None or parsed.qname_wire.lower() != slot.qwire
        )
        slot.responses.append(
            make_response(
                data, parsed, src=addr[0], sport=addr[1], ip_ttl=ttl,
                t=(stamp - self.start_ns) / 1e9, rtt=(stamp - slot.sent_ns[attempt]) / 1e9,
                attempt=attempt, mismatch=mismatch, ip_id=ip_id, df=df,
            )
        )  # fmt: skip
        if not slot.answered:
            slot.answered = True
            self._outstanding -= 1
            self._collecting.append((self._now + self.config.window, slot))
        if (
            parsed.flags is not None
            and parsed.flags & TC
            and self.config.tcp_fallback
            and not slot.stream_pending
            and slot.query.engine == Engine.UDP
            and not any(r.engine == Engine.TCP for r in slot.responses)
        ):
            server = StreamServer(Engine.TCP, slot.dest[0], slot.dest[1])
            self._submit_stream(slot, server)

    def _stray_budget(self, source: str, size: int) -> bool:
        """Take ``size`` bytes of ``source``'s unsolicited-reply budget (a token bucket per
        source address: :data:`STRAY_BURST` bytes, then :data:`STRAY_RATE` a second)."""
        now = time.monotonic()
        tokens, last = self._stray_tokens.get(source, (float(STRAY_BURST), now))
        tokens = min(float(STRAY_BURST), tokens + (now - last) * STRAY_RATE)
        if tokens < size:
            self._stray_tokens[source] = (tokens, now)
            return False
        self._stray_tokens[source] = (tokens - size, now)
        return True

    def _header_fields(
        self, index: int, addr: tuple[str, int], txid: int | None
    ) -> tuple[int | None, bool | None]:
        if self._raw is None:
            return None, None
        return self._raw.take(addr[0], addr[1], self._channels[index].port, txid)

    def _stray(
        self,
        local_port: int,
        data: bytes,
        addr: tuple[str, int],
        ttl: int | None,
        stamp: int,
        known: tuple[str, int] | None,
    ) -> None:
        """A reply that matched no open query: a ``Stray`` record naming the measurement it
        belonged to (``known``), or, past its source's byte budget, only counted."""
        if known is None and not self._stray_budget(addr[0], len(data)):
            self.stats.strays += 1
            self.stats.unmatched += 1
            self.stats.strays_unkept += 1
            return
        parsed = parse_reply(data)
        if parsed.failure is not None:
            self.stats.parse_failures += 1
        stamp = stamp or time.time_ns()
        self.stats.strays += 1
        if known is None:
            self.stats.unmatched += 1
        uid, sent_ns = known if known is not None else (None, stamp)
        response = make_response(
            data, parsed, src=addr[0], sport=addr[1], ip_ttl=ttl,
            t=(stamp - self.start_ns) / 1e9, rtt=(stamp - sent_ns) / 1e9,
        )  # fmt: skip
        self.journal.write(
            Stray(
                schema_version=records.SCHEMA_VERSION,
                report_id=self.report_id,
                local_port=local_port,
                response=response,
                measurement_uid=uid,
            )
        )

    def _on_icmp(
        self,
        index: int,
        payload: bytes,
        dest: tuple[str, int],
        offender: str,
        icmp_type: int,
        icmp_code: int,
        stamp: int,
    ) -> None:
        self.stats.icmp += 1
        if len(payload) < 2:
            return
        key = (index, dest[0], dest[1], _ID.unpack_from(payload)[0])
        slot = self._pending.get(key)
        if slot is None:
            return
        stamp = stamp or time.time_ns()
        slot.icmp.append(
            IcmpError(
                t=(stamp - self.start_ns) / 1e9,
                src=offender,
                icmp_type=icmp_type,
                icmp_code=icmp_code,
                attempt=slot.txids.index(key[3]),
            )
        )

    # -- streams (TCP / DoT / DoH) ------------------------------------------------

    def _submit_stream(self, slot: _Slot, server: StreamServer) -> None:
        slot.stream_pending = True
        txid = self._getrandbits(16)
        slot.txids.append(txid)
        slot.sent_ns.append(time.time_ns())
        self.stats.sent += 1
        self._submit_job(slot, server, _ID.pack(txid) + slot.tail, len(slot.txids) - 1)

    def _submit_job(
        self, owner: _Slot | _NativeRetry, server: StreamServer, payload: bytes, attempt: int
    ) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                max_workers=self.config.stream_workers, thread_name_prefix="ww-stream"
            )
        self._open_streams += 1
        timeout = self.config.stream_timeout

        def job() -> None:
            result: StreamReply | StreamError
            try:
                result = exchange(server, payload, timeout)
            except StreamError as exc:
                result = exc
            except Exception as exc:  # a bug must not hang the sweep: record it
                result = StreamError(Failure.UNKNOWN, repr(exc))
            self._results.put((owner, result, attempt))
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

        self._executor.submit(job)

    def _collect_streams(self) -> None:
        if not self._open_streams:
            return
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                slot, result, attempt = self._results.get_nowait()
            except queue.Empty:
                return
            self._open_streams -= 1
            if isinstance(slot, _NativeRetry):
                self._native_retry_done(slot, result)
                continue
            slot.stream_pending = False
            failure: Failure | None = None
            if isinstance(result, StreamError):
                failure = result.failure
            else:
                self.stats.responses += 1
                parsed = parse_reply(result.payload)
                mismatch = parsed.qtype != slot.qtype
                engine = slot.query.engine if slot.query.engine != Engine.UDP else Engine.TCP
                slot.responses.append(
                    make_response(
                        result.payload, parsed, src=result.src, sport=result.sport, ip_ttl=None,
                        t=(result.received_ns - self.start_ns) / 1e9,
                        rtt=(result.received_ns - slot.sent_ns[attempt]) / 1e9,
                        attempt=attempt, engine=engine, mismatch=mismatch,
                    )
                )  # fmt: skip
            if slot.query.engine != Engine.UDP:
                self._outstanding -= 1
                self._finish(slot, failure if not slot.responses else None)
            elif slot.window_over:
                self._finish(slot)

    # -- closing ------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        awaiting = self._awaiting
        while awaiting and awaiting[0][0] <= now:
            _, slot, attempt = awaiting.popleft()
            if slot.answered or slot.closed or slot.attempt != attempt:
                continue
            if slot.icmp or attempt >= self.config.retries:
                self._outstanding -= 1
                self.stats.timeouts += 0 if slot.icmp else 1
                self._finish(slot)
            else:
                self.stats.retries += 1
                self._send(slot)
        collecting = self._collecting
        while collecting and collecting[0][0] <= now:
            _, slot = collecting.popleft()
            slot.window_over = True
            if not slot.stream_pending:
                self._finish(slot)
        if now - self._recent_rotated > max(4 * self.config.window, 5.0):
            self._recent_old, self._recent = self._recent, {}
            self._recent_rotated = now

    def _finish(self, slot: _Slot, failure: Failure | None = None) -> None:
        if slot.closed:
            return
        slot.closed = True
        uid = self._next_uid()
        if slot.channel >= 0:
            ip, port = slot.dest
            for attempt, txid in enumerate(slot.txids):
                pkey = (slot.channel, ip, port, txid)
                if self._pending.pop(pkey, None) is not None:
                    self._recent[pkey] = (uid, slot.sent_ns[attempt])
        self._write_measurement(
            slot.query, uid, slot.resolver_address,
            slot.txids[0] if slot.txids else 0,
            self._channels[slot.channel].port if slot.channel >= 0 else 0,
            slot.t0, (time.time_ns() - self.start_ns) / 1e9, failure, len(slot.sent_ns),
            tuple(slot.responses), tuple(slot.icmp),
        )  # fmt: skip

    def _next_uid(self) -> str:
        if self._core is not None:  # one counter for both loops
            uid: str = self._core.next_uid()
            return uid
        self._uid_counter += 1
        return f"{self._uid_prefix}{self._uid_counter:08x}"

    def _write_measurement(
        self,
        query: Query,
        uid: str,
        resolver_address: str,
        transaction_id: int,
        source_port: int,
        t0: float,
        t: float,
        failure: Failure | None,
        attempts: int,
        responses: tuple[Response, ...],
        icmp: tuple[IcmpError, ...],
    ) -> None:
        measurement = Measurement(
            schema_version=records.SCHEMA_VERSION,
            measurement_uid=uid,
            report_id=self.report_id,
            measurement_start_time=self.start_time,
            vantage=self.config.vantage,
            hostname=query.name.hostname,
            query_type=type_text(query.qtype),
            engine=query.engine,
            resolver_address=resolver_address,
            target_kind=query.kind,
            transaction_id=transaction_id,
            source_port=source_port,
            t0=t0,
            t=t,
            failure=failure or first_reply_failure(responses, icmp),
            ip_ttl=query.ip_ttl,
            attempts=attempts,
            rd=self.config.rd,
            edns_payload=self.config.edns_payload,
            input=query.name.input,
            responses=responses,
            icmp=icmp,
            annotations=self.config.annotations,
        )
        self.stats.measurements += 1
        self.journal.write(measurement)

    # -- the C loop (wallwatch.probe.native) --------------------------------------

    def _inflight(self) -> int:
        return self._outstanding + (self._core.outstanding if self._core is not None else 0)

    def _native_core(self) -> Any:
        if self._core is None:
            assert native.module is not None
            self._core_channels = [
                UdpChannel(socket.AF_INET) for _ in range(max(1, self.config.ports))
            ]
            for channel in self._core_channels:
                self._poll.register(channel.fileno(), select.POLLIN)
            config = self.config
            self._core = native.module.Sweep(
                [c.fileno() for c in self._core_channels],
                [c.port for c in self._core_channels],
                config.window, config.timeout, config.retries, config.tcp_fallback,
                self.start_ns, int.from_bytes(os.urandom(8), "little"),
                native.strings(
                    uid_prefix=self._uid_prefix, report_id=self.report_id,
                    start_time=self.start_time, vantage=config.vantage, rd=config.rd,
                    edns_payload=config.edns_payload, annotations=config.annotations,
                ),
            )  # fmt: skip
            # UIDs the Python loop already gave stay unique: the C counter goes on from them.
            for _ in range(self._uid_counter):
                self._core.next_uid()
        return self._core

    def _pump_native(self) -> None:
        core = self._core
        lines, count, fallbacks, strays, truncated = core.poll()
        if count:
            self.journal.write_lines(lines, count)
        for item in fallbacks:
            self._finish_native(item)
        for item in strays:
            self._native_stray(item)
        for slot, gen, txid, attempt, sent_ns, ip, port, tail, qtype in truncated:
            retry = _NativeRetry(slot, gen, sent_ns, attempt, qtype)
            server = StreamServer(Engine.TCP, ip, port)
            self._submit_job(retry, server, _ID.pack(txid) + tail, attempt)

    def _merge_native_counts(self) -> None:
        """Add what the C loop counted since the last merge to the sweep's Stats (at each
        progress report and at the end, not per batch)."""
        counts = self._core.counts()
        last = self._core_counts
        stats = self.stats
        for name in ("sent", "responses", "measurements", "timeouts", "retries", "icmp"):
            setattr(stats, name, getattr(stats, name) + counts[name] - last.get(name, 0))
        self._core_counts = counts

    def _finish_native(self, item: tuple[Any, ...]) -> None:
        """A query the C loop closed but left to Python: an ICMP error, a TCP retry's
        reply, a failed send, or a reply its reader declined."""
        query, uid, txids, sent_ns, raw, icmp_raw, extra, t0, t, sport, failure = item
        qwire = self._tail(query)[1]
        start = self.start_ns
        responses = []
        for data, src, port, ttl, stamp, attempt in raw:
            parsed = parse_reply(data)
            if parsed.failure is not None:
                self.stats.parse_failures += 1
            mismatch = parsed.qtype != query.qtype or (
                parsed.qname_wire is None or parsed.qname_wire.lower() != qwire
            )
            responses.append(
                make_response(
                    data, parsed, src=src, sport=port, ip_ttl=ttl, t=(stamp - start) / 1e9,
                    rtt=(stamp - sent_ns[attempt]) / 1e9, attempt=attempt, mismatch=mismatch,
                )
            )  # fmt: skip
        if extra:  # TCP replies, in the order of arrival with the UDP ones
            responses = sorted(responses + extra, key=lambda r: r.t)
        icmp = tuple(
            IcmpError(t=(stamp - start) / 1e9, src=offender, icmp_type=kind, icmp_code=code,
                      attempt=attempt)
            for stamp, offender, kind, code, attempt in icmp_raw
        )  # fmt: skip
        assert query.target is not None
        self.stats.measurements -= 1  # the C loop counted it already
        self._write_measurement(
            query, uid, query.target.resolver_address, txids[0] if txids else 0, sport, t0, t,
            native.SEND_FAILURES[failure], len(sent_ns), tuple(responses), icmp,
        )  # fmt: skip

    def _native_stray(self, item: tuple[Any, ...]) -> None:
        local_port, data, src, sport, ttl, stamp, uid, sent_ns = item
        known = (uid, sent_ns) if uid is not None else None
        self._stray(local_port, data, (src, sport), ttl, stamp, known)

    def _native_retry_done(self, retry: _NativeRetry, result: StreamReply | StreamError) -> None:
        response = None
        if not isinstance(result, StreamError):
            self.stats.responses += 1
            parsed = parse_reply(result.payload)
            response = make_response(
                result.payload, parsed, src=result.src, sport=result.sport, ip_ttl=None,
                t=(result.received_ns - self.start_ns) / 1e9,
                rtt=(result.received_ns - retry.sent_ns) / 1e9, attempt=retry.attempt,
                engine=Engine.TCP, mismatch=parsed.qtype != retry.qtype,
            )  # fmt: skip
        self._core.stream_done(retry.slot, retry.gen, response)

    # -- waiting and teardown -----------------------------------------------------

    def _wait(self, bucket: TokenBucket, sending: bool) -> None:
        deadlines = []
        if sending and self._inflight() < self.config.max_inflight:
            deadlines.append(bucket.wait_time())
        if self._awaiting:
            deadlines.append(self._awaiting[0][0] - self._now)
        if self._collecting:
            deadlines.append(self._collecting[0][0] - self._now)
        if self._core is not None:
            due = self._core.wait()
            if due >= 0:
                deadlines.append(due)
        deadlines.append(0.25)  # journal flush and progress
        delay = min(deadlines)
        if delay <= 0:
            return
        self._poll.poll(delay * 1000.0)

    def _report_progress(self) -> None:
        self.stats.kernel_drops = sum(c.kernel_drops for c in self._channels)
        if self._core is not None:
            self._merge_native_counts()
            self.stats.kernel_drops += self._core_counts["kernel_drops"]
        if self._progress is not None:
            self._progress(self.stats)

    def _shutdown(self) -> None:
        self.journal.flush()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        for channel in self._channels + self._core_channels:
            channel.close()
        if self._raw is not None:
            self._raw.close()
        self._wake_r.close()
        self._wake_w.close()
        self._report_progress()


def make_report_id(vantage: str, start_ns: int) -> str:
    """``20140121T071500Z_<vantage>_<8 hex>``: sortable, unique per sweep."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(start_ns / 1e9))
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in vantage)[:32] or "vantage"
    return f"{stamp}_{safe}_{random.getrandbits(32):08x}"
