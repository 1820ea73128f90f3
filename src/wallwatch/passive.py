"""Passive detection: the minute detector over a resolver's own traffic (dnstap and packets).

Why: the operator of a resolver sees every answer its users get, and needs to know within
minutes whether the upstream, the path or its own cache is at fault -- on 21 January
2014 the first public alarm came from operators ("all domestic gTLD root is abnormal",
[greatfire-2014]). The answers a resolver logs (:mod:`wallwatch.interop.dnstap`) and the
packets on its upstream side (:mod:`wallwatch.interop.pcap`) become measurements of the
prober's shape, grouped by the minute they were answered in, and judged by the code of
``wallwatch watch`` (:class:`wallwatch.watch.Watch`): the analysis's verdicts, the
per-stream minute signals (one address for many unrelated names, answers outside the
usual origin ASes) and the CUSUM. The streams are the resolver's own answers to its users
(``CLIENT_RESPONSE``: what users were told, its cache included) and each upstream
server's answers to it (``RESOLVER_RESPONSE``, or packets).

Only packets show the race: two replies to one upstream query, the injector's first
(dnstap logs the one the resolver accepted). Each such query is counted per minute with
the first reply's IP TTL, so the summary says whether the path was seen at work.

Privacy: users' addresses are never written unless asked (:class:`ClientPolicy`); the
names asked and the answers are, since they are what the detector reads.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dpkt
import msgspec

from wallwatch import fastwire, records
from wallwatch.events.detector import Level, minute_iso
from wallwatch.events.operator import Operator
from wallwatch.fastwire import dnstap_group, referral
from wallwatch.interop import dnstap
from wallwatch.interop.capture import Capture
from wallwatch.interop.dnstap import ClientPolicy, Converter
from wallwatch.interop.pcap import ClassicPcap, Matcher, Query, open_capture, read_queries
from wallwatch.interop.pcap import ip_packet as pcap_ip_packet
from wallwatch.interop.summary import ImportSummary
from wallwatch.journal import recover
from wallwatch.observatory.agent import Spool
from wallwatch.records import InputError, Measurement
from wallwatch.watch import Clock, Watch, WatchConfig, alert_ids, read_measurements
from wallwatch.wire import AA


@contextlib.contextmanager
def collector(on: bool) -> Iterator[None]:
    """The cyclic garbage collector on or off for a block, as it was after it.

    Why: reading a file holds hundreds of thousands of open queries and minute keys,
    none in a cycle, and each full collection walked them all (a quarter of a pcap
    read, measured by bench/passive.py); the judging of a minute, which does make
    cycles, runs with it on again (:meth:`Passive._judge`).
    """
    was = gc.isenabled()
    (gc.enable if on else gc.disable)()
    try:
        yield
    finally:
        (gc.enable if was else gc.disable)()


@functools.lru_cache(maxsize=4096)
def _minute(start: str) -> int:
    return int(datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp() // 60)


def minute_of(m: Measurement) -> int:
    """The minute a measurement was answered in (its start time's)."""
    return _minute(m.measurement_start_time)


def delegates(m: Measurement) -> bool:
    """Every reply is a referral (:func:`wallwatch.fastwire.referral`): the root's or a
    TLD's step of a resolver's recursion, which answers no question (dnstap's are
    skipped alike)."""
    return bool(m.responses) and all(
        r.failure is None and referral(r.flags or 0, r.rcode or 0, r.ancount) for r in m.responses
    )


def raced(m: Measurement) -> bool:
    """Two or more replies to one query whose answers differ: the injector raced the server."""
    if len(m.responses) < 2:
        return False
    answers = {tuple(sorted(a.ipv4 or a.ipv6 or "" for a in r.answers)) for r in m.responses
               if r.failure is None}  # fmt: skip
    return len(answers) >= 2


@dataclass
class Passive:
    """Measurements in time order (roughly) in, minutes judged as they close, alerts out."""

    out: Path
    #: A collector to ship each closed minute to, and the vantage's token.
    upload: str | None = None
    token: str | None = None
    emit: Callable[[str], None] = field(default=lambda line: print(line, flush=True))
    #: A minute is closed once data this many minutes later has arrived (answers are
    #: logged as they are given, so a minute is complete soon after it ends).
    lag: int = 2
    pending: dict[int, list[Measurement]] = field(default_factory=dict)
    late: int = 0
    races: Counter[int] = field(default_factory=Counter)
    race_ttls: Counter[int] = field(default_factory=Counter)
    answers: int = 0
    #: Real time to the time reported in (the scenario's clock, in the lab).
    clock: Clock = field(default_factory=Clock)
    #: Seconds a captured upstream query waits for its replies (a race's genuine reply
    #: comes within the round trip; Unbound gives up on a server after a few seconds).
    window: float = 3.0
    #: Queries seen in packets: measured (recorded, or counted on a record), and on the
    #: upstream side those that drew only referrals, or no reply.
    captured: int = 0
    referrals: int = 0
    unanswered: int = 0
    #: Seconds between writes of the open minutes' journal: the most a kill -9 loses.
    flush_every: float = 1.0

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        #: Per open minute, the repeats' (stream, rcode, TTL, EDE) for the operator's signals.
        self._tallies: dict[int, dict[tuple[str, int, int, int], int]] = {}
        #: Per open minute, each recorded answer's key: [its index, the answers it stands for].
        self.keys: dict[int, dict[tuple[object, ...], list[int]]] = {}
        self.operator = Operator()
        self.operator_alarms: list[dict[str, object]] = []
        self.capture_summary = ImportSummary()
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "measurements").mkdir(exist_ok=True)
        panel = self.out / "panel.txt"
        panel.touch()
        self.watch = Watch(WatchConfig(names=panel, out=self.out, vantages=[], clock=self.clock),
                           emit=self.emit)  # fmt: skip
        self.spool = (
            Spool(self.out / "spool", self.upload, self.token).start()
            if self.upload and self.token else None
        )  # fmt: skip
        self.journal = self.out / "pending"
        self.journal.mkdir(exist_ok=True)
        self._unflushed: dict[int, bytearray] = {}
        #: Per open minute, each held record's JSON line (None: to encode at judgement),
        #: so the minute's file is written without encoding every record twice.
        self._lines: dict[int, list[bytes | None]] = {}
        self._flushed_at = time.monotonic()
        #: What a restart found: minutes replayed, answers of open minutes restored.
        self.resumed = self._resume()

    def add(self, m: Measurement, key: tuple[object, ...] | None = None) -> None:
        """One measurement (thread-safe: a dnstap socket and a capture feed one engine);
        ``key``: what its repeats in the same minute will be counted under."""
        with self._lock:
            self._add(m, key)

    def offer(self, payload: bytes, converter: Converter) -> None:
        """One dnstap frame on its own (a writer's, handed over one at a time): through
        the grouping loop as :meth:`take_frames` runs it."""
        self.take_frames(len(payload).to_bytes(4, "big") + payload, converter)

    def read_dnstap(self, path: str | Path, converter: Converter,
                    errors: Callable[[InputError], None], chunk: int = 1 << 22) -> None:  # fmt: skip
        """A dnstap file, grouped a buffer of frames at a time by
        :func:`wallwatch.fastwire.dnstap_group` (C; its Python twin otherwise): repeats
        are counted there and only new answers reach Python, as :meth:`offer` would
        do frame by frame."""
        summary = ImportSummary()
        summary.files += 1
        source = str(path)
        clock = (0.0, 1.0, 0.0)  # a file's answers are dated as they were logged
        counts = [0, 0, 0, 0, 0]
        buf, pos, base, started, ended = b"", 0, 0, False, False
        with open(path, "rb") as handle, collector(False):
            while True:
                if started:
                    pos, control = self._group(buf, pos, converter, clock, counts)
                else:
                    control = len(buf) - pos >= 4
                if control:
                    try:
                        kind, pos = dnstap.control_at(buf, pos, base)
                    except dnstap.NeedMore:
                        control = False
                    except dnstap.ForeignStream as exc:
                        errors(summary.skip("dnstap", source, 0, "not dnstap", str(exc)))
                        break
                    except dnstap.FrameError as exc:
                        errors(summary.skip("dnstap", source, converter.count, "stream cut short",
                                            f"{exc}; the {converter.count} answers before it "
                                            "are kept"))  # fmt: skip
                        break
                    else:
                        if kind is None:
                            errors(summary.skip("dnstap", source, 0, "not dnstap",
                                                "a data frame before the START frame"))  # fmt: skip
                            break
                        if kind == dnstap.START:
                            started = True
                        elif kind == dnstap.STOP:
                            break
                        continue
                if ended:
                    if pos < len(buf):
                        errors(summary.skip("dnstap", source, converter.count, "stream cut short",
                                            f"byte {base + pos}: the stream ends inside a frame; "
                                            f"the {converter.count} answers before it are kept"))  # fmt: skip
                    break
                more = handle.read(chunk)
                ended = not more
                base += pos
                buf, pos = buf[pos:] + more, 0
        self._counted(converter, counts)

    def take_frames(self, data: bytes, converter: Converter) -> int:
        """Data frames from a live dnstap writer, as many as ``data`` holds whole (the
        grouping loop, as :meth:`read_dnstap` runs it); how many bytes were used."""
        counts = [0, 0, 0, 0, 0]
        clock = (self.clock.real0, self.clock.scale, self.clock.at0)
        used, _ = self._group(data, 0, converter, clock, counts)
        self._counted(converter, counts)
        return used

    def _group(self, buf: bytes, pos: int, converter: Converter,
               clock: tuple[float, float, float], counts: list[int]) -> tuple[int, bool]:  # fmt: skip
        before = counts[4]
        with self._lock:
            fresh, pos, control = dnstap_group(
                buf, pos, self.keys, self._tallies, self.watch.judged, clock,
                converter.upstream, converter.clients != ClientPolicy.DROP, counts)  # fmt: skip
            self.answers += counts[4] - before
            self._due()
        for frame, key, _ in fresh:
            record = converter.measurement(frame)
            if record is not None:
                self.add(record, key)
        return pos, control

    @staticmethod
    def _counted(converter: Converter, counts: list[int]) -> None:
        converter.undecodable += counts[0]
        converter.queries += counts[1]
        converter.upstream_in_packets += counts[2]
        converter.referrals += counts[3]
        counts[:4] = [0, 0, 0, 0]

    def _add(self, m: Measurement, key: tuple[object, ...] | None = None) -> None:
        minute = minute_of(m)
        if "minute" not in m.annotations:  # as watch's rounds carry it (the report reads it)
            m = msgspec.structs.replace(m, annotations={**m.annotations, "minute": str(minute)})
        self.answers += 1
        if raced(m):
            self._race(minute, m.responses[0].ip_ttl)
        if minute in self.watch.judged:
            self.late += 1  # written beside it, not judged: the minute's sums have moved on
            buffer = bytearray()
            records.encode_into(m, buffer)
            with open(self.out / "measurements" / f"passive-m{minute}.late.jsonl", "ab") as f:
                f.write(buffer)
            if self.spool is not None:
                self.spool.add(bytes(buffer).splitlines())
            return
        self.operator.observe_measurement(minute, m)
        held = self.pending.setdefault(minute, [])
        if key is not None:
            keys = self.keys.setdefault(minute, {})
            entry = keys.get(key)
            if entry is None:
                keys[key] = [len(held), 1]
            else:  # held by the grouping loop since it saw the answer: its count stays
                entry[0] = len(held)
        held.append(m)
        line = records.encode(m)
        self._unflushed.setdefault(minute, bytearray()).extend(line)
        self._lines.setdefault(minute, []).append(line)
        self._due()
        newest = max(self.pending)
        for closed in sorted(k for k in self.pending if k <= newest - self.lag):
            self._judge(closed)

    def listen(self, capture: Capture, stop: Callable[[], bool], *, vantage: str,
               clients: ClientPolicy, hide: Callable[[str], str | None]) -> None:  # fmt: skip
        """Read the upstream side of a live capture until ``stop()``: each upstream query
        with every reply to it (the race) becomes a measurement of the upstream stream."""
        summary = self.capture_summary
        summary.files += 1
        matcher = Matcher(f"interface:{capture.interface}", summary, window=self.window,
                          ports=frozenset({capture.port}), clock=self.clock.at)  # fmt: skip
        take = self._queries(matcher, vantage, clients, hide, upstream=True)
        number = 0
        for item in capture.packets(stop):
            if item is None:  # quiet: finish the queries whose window has passed
                take(matcher.expire(time.time() - self.window))
                continue
            t, packet = item
            number += 1
            try:
                ip = dpkt.ip6.IP6(packet) if packet[0] >> 4 == 6 else dpkt.ip.IP(packet)
            except (dpkt.dpkt.UnpackError, struct.error):
                summary.skipped["not IP"] += 1
                continue
            take(matcher.ip(number, t, ip))
        take(matcher.flush())

    def read_pcap(self, path: str | Path, *, vantage: str, clients: ClientPolicy,
                  hide: Callable[[str], str | None], errors: Callable[[InputError], None],
                  native: bool = True) -> None:  # fmt: skip
        """A capture file: each query and its replies, as the prober records them (the
        streams are per server: a file does not say which side the resolver was on)."""
        # Queries finish as the capture goes on (a file may hold hours): memory stays flat.
        matcher = Matcher(str(path), self.capture_summary, window=self.window)
        take = self._queries(matcher, vantage, clients, hide, upstream=False)
        with collector(False):
            if native and self._read_pcap_native(path, matcher, take, vantage, clients, hide,
                                                 errors):  # fmt: skip
                return
            for item in read_queries(path, matcher):
                if isinstance(item, InputError):
                    errors(item)
                else:
                    take((item,))

    def _read_pcap_native(self, path: str | Path, matcher: Matcher,
                          take: Callable[[Iterable[Query]], None], vantage: str,
                          clients: ClientPolicy, hide: Callable[[str], str | None],
                          errors: Callable[[InputError], None]) -> bool:  # fmt: skip
        """A classic pcap file read, matched and grouped in C (:func:`wallwatch.fastwire`'s
        ``scan_match``: a repeat of an answer already recorded this minute becomes no
        Python object), IPv6 packets and odd names by ``matcher``; False when the file is
        not classic pcap (pcapng: the Python reader's) or the extension is not built."""
        if fastwire.scan_match is None:
            return False
        with open(path, "rb") as handle:
            try:
                reader = open_capture(handle)
            except (ValueError, struct.error, dpkt.dpkt.NeedData):
                return False
            if not isinstance(reader, ClassicPcap):
                return False
            data = handle.read()
        self.capture_summary.files += 1
        linktype = reader.datalink()
        big, nano = reader.order == ">", reader.divisor == 1e9
        (port,) = matcher.ports
        state: list[Any] = [None, -1, None]
        counts = [0]
        keep = clients != ClientPolicy.DROP
        offset, number = 0, 0
        while True:
            before = counts[0]
            try:
                with self._lock:
                    fresh, fallback, offset, seen, cut, final, last_t = fastwire.scan_match(
                        data, offset, big, nano, linktype, 65536, number, port, self.window,
                        state, self.keys, self._tallies, self.watch.judged, self.races,
                        self.race_ttls, (0.0, 1.0, 0.0), keep, counts)  # fmt: skip
                    self.answers += counts[0] - before
                    self.captured += counts[0] - before
                    self._due()
            except ValueError as exc:
                errors(self.capture_summary.skip("pcap", str(path), number + 1,
                                                 "unreadable link type", str(exc)))  # fmt: skip
                return True
            finished: list[Query] = []
            for packet in fallback:  # IPv6 and odd names: the Python matcher's
                if len(packet) == 3:
                    try:
                        ip = pcap_ip_packet(linktype, packet[1])
                    except (dpkt.dpkt.UnpackError, struct.error):
                        continue
                    finished.extend(matcher.ip(number + packet[2], packet[0], ip))
                else:
                    t, src, dst, sport, dport, ttl, ip_id, df, payload, at = packet
                    finished.extend(matcher.add(number + at, t, src, dst, sport, dport, ttl,
                                                ip_id, df, payload))  # fmt: skip
            number += seen
            if final:
                finished.extend(matcher.flush())
            elif last_t is not None:
                finished.extend(matcher.expire(last_t - self.window))
            if state[1] >= 0 and (matcher.first_number is None or state[1] < matcher.first_number):
                matcher.first_t, matcher.first_number = state[2], state[1]
            # Both matchers' queries, in capture order, so minutes close as in one.
            merged = sorted([(q.index, 0, q, None) for q in finished]
                            + [(item[0][0], 1, item[0], item[1]) for item in fresh],
                            key=lambda x: (x[0], x[1]))  # fmt: skip
            for _, native_side, q, key in merged:
                if not native_side:
                    take((q,))
                    continue
                query = Query(*q[:10])
                query.replies = q[10]
                m = private(matcher.record(query), vantage, clients, hide)
                self.captured += 1
                self.add(m, key)
            if cut:
                errors(self.capture_summary.skip(
                    "pcap", str(path), number + 1, "capture cut short",
                    f"packet {number + 1}: the capture ends mid-packet; the {number} "
                    "packets before it are kept"))  # fmt: skip
            if final:
                return True

    def _queries(self, matcher: Matcher, vantage: str, clients: ClientPolicy,
                 hide: Callable[[str], str | None], *,
                 upstream: bool) -> Callable[[Iterable[Query]], None]:  # fmt: skip
        """What becomes of each finished query: counted when its replies repeat a
        query's already recorded this minute (read from their summaries, as
        :meth:`offer` does for dnstap), recorded otherwise; on the upstream side,
        queries that drew only referrals or nothing are counted and dropped."""
        clock = matcher.clock or (lambda t: t)
        stream = "upstream" if upstream else "users"

        def take(queries: Iterable[Query]) -> None:
            for q in queries:
                # The replies' summaries: a query is grouped only when every reply has one.
                reads = [r[7] for r in q.replies if r[7] is not None]
                key = None
                if reads and len(reads) == len(q.replies):
                    if upstream and all(referral(r[1], r[2], r[5]) for r in reads):
                        self.referrals += 1
                        continue
                    minute = int(clock(q.t)) // 60
                    key = ("packets", stream, q.server, q.sport, q.qname, q.qtype,
                           q.client if clients != ClientPolicy.DROP else None,
                           tuple((r[2], tuple(sorted(r[8])), r[1] & AA) for r in reads))  # fmt: skip
                    with self._lock:
                        held = self.keys.get(minute)
                        entry = held.get(key) if held is not None else None
                        if entry is not None:  # a repeat: counted on its record
                            entry[1] += 1
                            self.answers += 1
                            self.captured += 1
                            first = reads[0]
                            tally = self._tallies.setdefault(minute, {})
                            slot = (stream, first[2], first[9], first[10])
                            tally[slot] = tally.get(slot, 0) + 1
                            if len(reads) > 1 and len({r[8] for r in reads}) >= 2:
                                self._race(minute, q.replies[0][3])
                            self._due()
                            continue
                m = matcher.record(q)
                if upstream:
                    if not m.responses:
                        self.unanswered += 1
                        continue
                    if delegates(m):
                        self.referrals += 1
                        continue
                m = private(m, vantage, clients, hide)
                if upstream:
                    m = msgspec.structs.replace(m, annotations={**m.annotations, "stream": stream})
                self.captured += 1
                self.add(m, key)

        return take

    def tick(self) -> None:
        """Write the journal if it is due (a live receiver calls this while idle)."""
        with self._lock:
            self._due()

    def _due(self) -> None:
        if time.monotonic() - self._flushed_at >= self.flush_every:
            self._flush()

    def _flush(self) -> None:
        """The open minutes' new records to their journal, and the repeat counts so far
        (what a restart after a kill -9 picks up: :meth:`_resume`)."""
        self._flushed_at = time.monotonic()
        for minute, buffer in self._unflushed.items():
            if buffer:
                with open(self.journal / f"m{minute}.jsonl", "ab") as handle:
                    handle.write(buffer)
                buffer.clear()
            # [index, count] pairs (msgspec: a minute may hold a hundred thousand).
            counts = [e for e in (self.keys.get(minute) or {}).values() if e[1] > 1 and e[0] >= 0]
            if counts:
                tmp = self.journal / f"m{minute}.counts.tmp"
                tmp.write_bytes(msgspec.json.encode(counts))
                tmp.replace(self.journal / f"m{minute}.counts.json")
        self._unflushed = {m: b for m, b in self._unflushed.items() if m in self.pending}

    def _judge(self, minute: int) -> None:
        with collector(True):
            self._judge_minute(minute)

    def _judge_minute(self, minute: int) -> None:
        ms = self.pending.pop(minute)
        self._unflushed.pop(minute, None)
        lines = self._lines.pop(minute, [])
        lines += [None] * (len(ms) - len(lines))
        for index, count in (self.keys.pop(minute, None) or {}).values():
            if count > 1 and index >= 0:  # the answers this record stands for
                m = ms[index]
                ms[index] = msgspec.structs.replace(m, annotations={**m.annotations,
                                                                    "count": str(count)})  # fmt: skip
                lines[index] = None  # changed: encoded again
        buffer = bytearray()
        for m, line in zip(ms, lines, strict=True):
            if line is None:
                records.encode_into(m, buffer)
            else:
                buffer += line
        encoded = bytes(buffer)
        # Whole or not at all: a restart judges again a minute not marked judged.
        final = self.out / "measurements" / f"passive-m{minute}.jsonl"
        tmp = final.with_suffix(".tmp")
        tmp.write_bytes(encoded)
        tmp.replace(final)
        if self.spool is not None:
            self.spool.add(encoded.splitlines())
        self.watch.judge(minute, ms, now=minute * 60.0 + 60.0, encoded=encoded)
        self._operator_minute(minute, live=True)
        with open(self.out / "passive-judged.txt", "a") as handle:
            handle.write(f"{minute}\n")
        for leftover in (f"m{minute}.jsonl", f"m{minute}.counts.json"):
            (self.journal / leftover).unlink(missing_ok=True)

    def _operator_minute(self, minute: int, *, live: bool) -> None:
        """Close the operator's minute: its rows, and its alarms as alerts (raised once)."""
        for (stream, rcode, ttl, ede), n in (self._tallies.pop(minute, None) or {}).items():
            self.operator.observe(minute, stream, rcode, ttl, ede, n)
        rows, changes = self.operator.close(minute)
        tz = self.watch.config.clock.tz
        if live:
            lines = [json.dumps(dict(r, minute=minute_iso(minute, tz, "minutes"))) for r in rows]
            with open(self.out / "operator.jsonl", "a") as handle:
                handle.write("".join(line + "\n" for line in lines))
        alerts = []
        for change in changes:
            alert = {
                "type": "wallwatch.operator", "id": f"op-{change['stream']}-{change['signal']}-"
                f"{change['change']}-{minute}", **change,
                "at": minute_iso(minute, tz, "minutes"), "time": minute * 60,
                "level": (Level.WARNING if change["change"] == "start" else Level.NORMAL).value,
                "method": "cusum",
            }  # fmt: skip
            self.operator_alarms.append(alert)
            if alert["id"] not in self.watch.raised:
                self.watch.raised.add(str(alert["id"]))
                alerts.append(json.dumps(alert))
        self.watch.raise_alerts(alerts)

    def _account(self, minute: int, m: Measurement, count: int) -> None:
        """A restored record's share of the totals (its repeats included)."""
        self.answers += count
        if raced(m):
            self._race(minute, m.responses[0].ip_ttl, count)
        self.operator.observe_measurement(minute, m, count)

    def _race(self, minute: int, first_ttl: int | None, n: int = 1) -> None:
        """``n`` raced queries in ``minute``, their first reply's IP TTL (the injector's when
        it won: [holdon-2012])."""
        self.races[minute] += n
        if first_ttl is not None:
            self.race_ttls[first_ttl] += n

    def _resume(self) -> tuple[int, int]:
        """Pick up after a crash: replay the judged minutes through the detector (its
        sums, the operator's, the totals; alerts already logged are not raised again)
        and restore the open minutes from their journal. A line torn by the kill is
        dropped and named."""
        marks = self.out / "passive-judged.txt"
        judged = sorted({int(x) for x in marks.read_text().split() if x.isdigit()}
                        if marks.exists() else set())  # fmt: skip
        if judged:
            self.watch.raised = alert_ids(self.out / "alerts.jsonl")
        for minute in judged:
            ms = self._read(self.out / "measurements" / f"passive-m{minute}.jsonl")
            for m in ms:
                self._account(minute, m, int(m.annotations.get("count", "1")))
            self.watch.judge(minute, ms, now=minute * 60.0 + 60.0, live=False)
            self._operator_minute(minute, live=False)
        restored = 0
        for path in sorted(self.journal.glob("m*.jsonl")):
            minute = int(path.stem[1:])
            counts_path = path.with_name(f"m{minute}.counts.json")
            if minute in self.watch.judged:  # judged just before the crash
                path.unlink()
                counts_path.unlink(missing_ok=True)
                continue
            counts = (
                dict(msgspec.json.decode(counts_path.read_bytes())) if counts_path.exists() else {}
            )
            held = self.pending.setdefault(minute, [])
            for index, m in enumerate(self._read(path)):
                count = int(counts.get(index, 1))
                if count > 1:
                    m = msgspec.structs.replace(m, annotations={**m.annotations,
                                                                "count": str(count)})  # fmt: skip
                held.append(m)
                self._lines.setdefault(minute, []).append(None)
                self._account(minute, m, count)
                restored += count
        if judged or restored:
            self.watch.write_series()
            self.watch.save()
            print(f"passive: resumed: {len(judged)} judged minutes replayed, {restored} "
                  f"answers of {len(self.pending)} open minutes restored", file=sys.stderr)  # fmt: skip
        return len(judged), restored

    @staticmethod
    def _read(path: Path) -> list[Measurement]:
        if not path.exists():
            return []
        for at_line, reason in recover(path).dropped:
            print(f"passive: {path}:{at_line}: dropped a torn record ({reason})", file=sys.stderr)
        return [m for m in read_measurements([path])]

    def close(self) -> dict[str, object]:
        """Judge what is pending (the input ended), save, and say what was seen."""
        with self._lock:
            return self._close()

    def _close(self) -> dict[str, object]:
        for minute in sorted(self.pending):
            self._judge(minute)
        self._flush()
        self.watch.save()
        tz = self.watch.config.clock.tz
        summary: dict[str, object] = {
            "answers": self.answers,
            "minutes_judged": len(self.watch.judged),
            "late_answers_not_judged": self.late,
            "raced_queries": sum(self.races.values()),
            "raced_minutes": [minute_iso(m, tz, "minutes") for m in sorted(self.races)],
            "first_reply_ip_ttls": dict(self.race_ttls.most_common(5)),
            "captured_upstream_queries": {
                "measured": self.captured,
                "referrals_only": self.referrals,
                "unanswered": self.unanswered,
            },
            "events": [self.watch.event_dict(e) for e in self.watch.detector.events],
            # The operator's own signals (docs/passive.md): each alarm's start and end.
            "operator_alarms": self.operator_alarms,
        }
        (self.out / "passive.json").write_text(json.dumps(summary, indent=1))
        if self.spool is not None:
            self.spool.close(timeout=10.0)
        return summary


def private(m: Measurement, vantage: str, clients: ClientPolicy,
            hide: Callable[[str], str | None]) -> Measurement:  # fmt: skip
    """A packet capture's measurement as the passive vantage's: the asking host (a user,
    on the user side of a resolver) is kept only as the policy says."""
    client = m.vantage.removeprefix("pcap:")
    annotations = dict(m.annotations)
    kept = hide(client)
    if kept is not None:
        annotations["client"] = kept
    return msgspec.structs.replace(
        m, vantage=vantage, annotations=annotations,
        source_port=m.source_port if clients == ClientPolicy.KEEP else 0,
    )  # fmt: skip
