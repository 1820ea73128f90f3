"""dnstap from a resolver as wallwatch records: what its users were told, and what upstream said.

Why: a resolver operator sees every answer its users get, and the first alarm of
21 January 2014 came from operators ([greatfire-2014]). Unbound, BIND and Knot log
dnstap: protobuf ``dnstap.Dnstap`` messages in Frame Streams, to a file or a Unix socket
([dnstap]). Each response message becomes one measurement of the same shape the
prober writes, so the same analysis and the same minute detector read it:

* ``RESOLVER_RESPONSE`` (and ``FORWARDER_RESPONSE``, Unbound's word for an upstream it
  forwards to): an upstream server answered the resolver. ``resolver_address`` is that server; the answer's round trip is the
  message's response time minus its query time.
* ``CLIENT_RESPONSE``: the resolver answered a user. ``resolver_address`` is the
  resolver's own address; the user's address is not kept unless asked
  (:class:`ClientPolicy`): an operator's log holds its users' addresses, which
  wallwatch has no need of to see a mass redirection.

What dnstap cannot show: the resolver accepts the first reply to an upstream query and
closes its port, so a genuine answer that arrives after a forgery is neither logged
nor answered to. Only packets on the upstream side show the race (``--pcap``).

Frame Streams (fstrm): a file is a START control frame with the content type, data
frames, and a STOP; a socket adds a handshake (the writer sends READY, the reader
ACCEPT, then START ... STOP, answered by FINISH). The messages are decoded with
``dnstap_pb`` (dnstap's own schema, compiled). The framing is three big-endian integers
and is read here, with bounds on every length: the ``fstrm`` package joins its whole
buffer again on every read, which is quadratic at a resolver's message rate.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import socket
import struct
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from wallwatch import records
from wallwatch.fastwire import CLIENT_RESPONSE, FORWARDER_RESPONSE, RESOLVER_RESPONSE, referral
from wallwatch.interop.summary import ImportSummary
from wallwatch.probe.reply import make_response
from wallwatch.records import InputError, Measurement
from wallwatch.vocab import Engine, TargetKind
from wallwatch.wire import parse_reply, qtype_text

#: The content type a dnstap stream announces.
CONTENT_TYPE = b"protobuf:dnstap.Dnstap"
#: Frame Streams control frame types (fstrm).
_ACCEPT, _START, _STOP, _READY, _FINISH = 1, 2, 3, 4, 5
#: A data frame longer than this is not dnstap (a DNS message is at most 64 KiB).
MAX_FRAME = 1 << 18

_TCP_PROTOCOLS = {2: Engine.TCP, 3: Engine.DOT, 4: Engine.DOH}
#: dnstap's message types that carry an answer, by the name records give them.
_KINDS = {RESOLVER_RESPONSE: "resolver_response", CLIENT_RESPONSE: "client_response",
          FORWARDER_RESPONSE: "forwarder_response"}  # fmt: skip


class ClientPolicy(StrEnum):
    """What is kept of a user's address (``CLIENT_RESPONSE``)."""

    #: Nothing: counted, then dropped (the default).
    DROP = "drop"
    #: A keyed hash (HMAC-SHA-256, first 16 hex digits): one user's answers can be
    #: grouped, and without the key the address cannot be recovered by trying them all.
    HASH = "hash"
    #: The address itself.
    KEEP = "keep"


class FrameError(ValueError):
    """A stream that is not Frame Streams of dnstap, with where it went wrong."""


def is_dnstap(head: bytes) -> bool:
    """The first bytes of a dnstap Frame Streams file (an escape, then a START frame)."""
    if len(head) < 12 or head[:4] != b"\0\0\0\0":
        return False
    kind: int = struct.unpack("!I", head[8:12])[0]
    return kind == _START


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    data = stream.read(size)
    return data if data is not None else b""


def _control(payload: bytes) -> tuple[int, list[bytes]]:
    if len(payload) < 4:
        raise FrameError("a control frame shorter than its type")
    kind = struct.unpack("!I", payload[:4])[0]
    types: list[bytes] = []
    rest = payload[4:]
    while len(rest) >= 8:
        field, length = struct.unpack("!II", rest[:8])
        if length > len(rest) - 8:
            raise FrameError("a control field longer than its frame")
        if field == 1:
            types.append(rest[8 : 8 + length])
        rest = rest[8 + length :]
    return kind, types


START, STOP = _START, _STOP


class ForeignStream(FrameError):
    """A Frame Streams stream of another content type."""


class NeedMore(Exception):
    """The buffer ends inside the frame: read more."""


def control_at(buf: bytes, pos: int, base: int = 0) -> tuple[int | None, int]:
    """The frame at ``buf[pos:]``: (its control type, or None for a data frame, and the
    offset after it). :class:`NeedMore` when ``buf`` ends inside it, :class:`FrameError`
    when it is not a frame (``base``: the stream offset of ``buf[0]``, for the message)."""
    if len(buf) - pos < 4:
        raise NeedMore
    length = int.from_bytes(buf[pos : pos + 4], "big")
    if length:
        if length > MAX_FRAME:
            raise FrameError(f"byte {base + pos + 4}: a frame of {length} bytes is not dnstap")
        if len(buf) - pos - 4 < length:
            raise NeedMore
        return None, pos + 4 + length
    if len(buf) - pos < 8:
        raise NeedMore
    length = int.from_bytes(buf[pos + 4 : pos + 8], "big")
    if length > MAX_FRAME:
        raise FrameError(f"byte {base + pos + 8}: a frame of {length} bytes is not dnstap")
    if len(buf) - pos - 8 < length:
        raise NeedMore
    payload = buf[pos + 8 : pos + 8 + length]
    kind, types = _control(payload)
    if kind == _START and types and CONTENT_TYPE not in types:
        raise ForeignStream(f"content type {types[0][:60]!r}, not {CONTENT_TYPE.decode()}")
    return kind, pos + 8 + length


def frames(stream: BinaryIO, chunk: int = 1 << 20) -> Iterator[tuple[int | None, bytes]]:
    """(control type, fields) or (None, data) for each frame of a Frame Streams stream.

    Ends at the end of the stream; a frame cut short raises :class:`FrameError`. Read a
    chunk at a time (a busy resolver's file holds millions of small frames; two reads
    per frame would cost more than decoding it).
    """
    buf = b""
    pos = 0  # of the next frame in buf
    base = 0  # the stream's byte offset of buf[0]
    ended = False

    def fill(size: int) -> bool:
        """At least ``size`` bytes from pos on, unless the stream ends first."""
        nonlocal buf, pos, base, ended
        while len(buf) - pos < size and not ended:
            more = _read_exact(stream, max(chunk, size))
            if not more:
                ended = True
                break
            base += pos
            buf = buf[pos:] + more
            pos = 0
        return len(buf) - pos >= size

    while True:
        # The usual case first: a data frame wholly in the buffer.
        if pos + 4 <= len(buf):
            length = int.from_bytes(buf[pos : pos + 4], "big")
            if length and pos + 4 + length <= len(buf) and length <= MAX_FRAME:
                pos += 4 + length
                yield None, buf[pos - length : pos]
                continue
        if not fill(4):
            if len(buf) - pos:
                raise FrameError(f"byte {base + pos}: the stream ends inside a frame length")
            return
        length = int.from_bytes(buf[pos : pos + 4], "big")
        pos += 4
        control = length == 0
        if control:
            if not fill(4):
                raise FrameError(f"byte {base + pos}: the stream ends inside a control frame")
            length = int.from_bytes(buf[pos : pos + 4], "big")
            pos += 4
        if length > MAX_FRAME:
            raise FrameError(f"byte {base + pos}: a frame of {length} bytes is not dnstap")
        if not fill(length):
            raise FrameError(f"byte {base + pos}: the stream ends inside a frame "
                             f"({len(buf) - pos} of {length} bytes)")  # fmt: skip
        payload = buf[pos : pos + length]
        pos += length
        if control:
            kind, _ = _control(payload)
            yield kind, payload
        else:
            yield None, payload


def _address(raw: bytes) -> str:
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return socket.inet_ntop(socket.AF_INET6, raw)
    return raw.hex()


@functools.lru_cache(maxsize=4096)
def _second(at: int) -> str:
    """One second as the records write it (a resolver logs thousands per second)."""
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S")


class Converter:
    """dnstap messages to measurements, with the client policy applied."""

    def __init__(self, *, vantage: str = "passive", clients: ClientPolicy = ClientPolicy.DROP,
                 key: bytes | None = None, source: str = "dnstap",
                 clock: Callable[[float], float] | None = None,
                 upstream: bool = True) -> None:  # fmt: skip
        import dnstap_pb

        self._tap = dnstap_pb.Dnstap()
        self.vantage = vantage
        self.clients = clients
        # A key that lives only as long as the process unless the operator keeps one:
        # hashes then group a user's answers within one run and nothing more.
        self.key = key if key is not None else os.urandom(32)
        self.source = source
        #: Real time to the time reported in (the scenario's clock, in the lab).
        self.clock = clock or (lambda t: t)
        self.count = 0
        #: Messages read that carry no answer (queries), and undecodable ones.
        self.queries = 0
        self.undecodable = 0
        self.referrals = 0
        #: Whether upstream answers (``RESOLVER_RESPONSE``, ``FORWARDER_RESPONSE``) are
        #: measured: not when packets of the upstream side are read too (they hold the
        #: same answers and the race), so that no answer is counted twice.
        self.upstream = upstream
        self.upstream_in_packets = 0

    def client(self, address: str) -> str | None:
        if self.clients == ClientPolicy.KEEP:
            return address
        if self.clients == ClientPolicy.HASH:
            return hmac.new(self.key, address.encode(), hashlib.sha256).hexdigest()[:16]
        return None

    def measurement(self, payload: bytes) -> Measurement | None:
        """One data frame; None for a message that carries no answer."""
        tap = self._tap  # one message object, parsed into again and again
        try:
            tap.ParseFromString(payload)
        except Exception:  # protobuf's DecodeError, and its C twin's
            self.undecodable += 1
            return None
        m = tap.message
        if (
            m.type not in (RESOLVER_RESPONSE, CLIENT_RESPONSE, FORWARDER_RESPONSE)
            or not m.response_message
        ):
            self.queries += 1
            return None
        to_client = m.type == CLIENT_RESPONSE
        if not to_client and not self.upstream:
            self.upstream_in_packets += 1
            return None
        data = bytes(m.response_message)
        parsed = parse_reply(data)
        if not to_client and parsed.failure is None and referral(
                parsed.flags or 0, parsed.rcode or 0, parsed.ancount):  # fmt: skip
            # A referral (the root's or a TLD's NS records) answers no question; the
            # answer comes later from the domain's servers. Counted, not measured.
            self.referrals += 1
            return None
        self.count += 1
        sent = m.query_time_sec + m.query_time_nsec / 1e9 if m.query_time_sec else None
        got = m.response_time_sec + m.response_time_nsec / 1e9 if m.response_time_sec else sent
        at = got if got is not None else 0.0
        start = sent if sent is not None else at
        # Upstream answers: the server is the responder. Answers to users: the resolver is.
        server = _address(bytes(m.response_address)) if m.response_address else "unknown"
        port = int(m.response_port or 53)
        engine = _TCP_PROTOCOLS.get(int(m.socket_protocol), Engine.UDP)
        response = make_response(data, parsed, src=server, sport=port, ip_ttl=None, t=at - start,
                                 rtt=max(0.0, at - start), engine=engine)  # fmt: skip
        annotations = {"source": f"{self.source}#{self.count}", "dnstap": _KINDS[int(m.type)]}
        if not to_client:
            # One stream for everything upstream (the root's, a TLD's, the domain's servers):
            # per server, a TLD server's stream holds referrals until an injector answers
            # in its name, and a stream that starts in the anomaly has no baseline.
            annotations["stream"] = "upstream"
        if tap.identity:
            annotations["identity"] = bytes(tap.identity).decode("utf-8", "replace")[:200]
        if to_client and m.query_address:
            kept = self.client(_address(bytes(m.query_address)))
            if kept is not None:
                annotations["client"] = kept
        host = f"[{server}]" if ":" in server else server
        return Measurement(
            schema_version=records.SCHEMA_VERSION,
            measurement_uid=hashlib.blake2b(payload, digest_size=12).hexdigest(),
            report_id=f"dnstap-{self.vantage}",
            measurement_start_time=_second(int(self.clock(start))),
            vantage=self.vantage, hostname=(parsed.qname or "").lower().rstrip("."),
            query_type=qtype_text(parsed.qtype or 1), engine=engine,
            resolver_address=f"{host}:{port}", target_kind=TargetKind.RESOLVER,
            transaction_id=parsed.id or 0, t0=0.0,
            # A user's port says little alone but joins a user's queries: kept as the address.
            source_port=int(m.query_port or 0)
            if not to_client or self.clients == ClientPolicy.KEEP else 0,
            t=max(0.0, at - start), responses=(response,), annotations=annotations,
        )  # fmt: skip


def read_records(path: str | Path, summary: ImportSummary | None = None, *,
                 converter: Converter | None = None) -> Iterator[Measurement | InputError]:  # fmt: skip
    """Measurements of one dnstap file (Frame Streams, as ``unbound``/``dnstap -w`` write)."""
    summary = summary if summary is not None else ImportSummary()
    converter = converter or Converter(source=str(path))
    for payload in read_payloads(path, summary, converter):
        if isinstance(payload, InputError):
            yield payload
            continue
        record = converter.measurement(payload)
        if record is not None:
            summary.measurements += 1
            summary.documents += 1
            yield record


def read_payloads(path: str | Path, summary: ImportSummary, converter: Converter
                  ) -> Iterator[bytes | InputError]:  # fmt: skip
    """The dnstap messages of one file, undecoded, and an ``input_error`` where it stops
    short (naming how many answers ``converter`` had read before)."""
    path = Path(path)
    summary.files += 1
    with open(path, "rb") as handle:
        started = False
        try:
            for kind, payload in frames(handle):
                if kind == _START:
                    _, types = _control(payload)
                    if types and CONTENT_TYPE not in types:
                        yield summary.skip("dnstap", str(path), 0, "not dnstap",
                                           f"content type {types[0][:60]!r}, not {CONTENT_TYPE.decode()}")  # fmt: skip
                        return
                    started = True
                elif kind is None:
                    if not started:
                        yield summary.skip("dnstap", str(path), 0, "not dnstap",
                                           "a data frame before the START frame")  # fmt: skip
                        return
                    yield payload
                elif kind == _STOP:
                    return
        except FrameError as exc:
            yield summary.skip("dnstap", str(path), converter.count, "stream cut short",
                               f"{exc}; the {converter.count} answers before it are kept")  # fmt: skip


def _send_control(conn: socket.socket, kind: int, types: list[bytes]) -> None:
    fields = b"".join(struct.pack("!II", 1, len(t)) + t for t in types)
    conn.sendall(struct.pack("!III", 0, 4 + len(fields), kind) + fields)


def receive(path: str | Path, on_payload: Callable[[bytes], None], *,
            stop: Callable[[], bool] = lambda: False,
            ready: Callable[[], None] = lambda: None,
            on_frames: Callable[[bytes], int] | None = None) -> None:  # fmt: skip
    """Listen on the Unix socket ``path`` for dnstap writers (a resolver connects and
    reconnects as it pleases); hand each data frame to ``on_payload`` until ``stop()``.

    The bidirectional handshake of Frame Streams: READY (with the content types the
    writer offers) is answered by ACCEPT of dnstap's, then START, data, and STOP, which
    is answered by FINISH. A writer offering no dnstap is refused (the connection closed).
    ``on_frames``, when given, takes the buffered data frames many at a time (the bytes
    from a data frame on) and says how many bytes it used: whole frames only.
    """
    import selectors

    path = Path(path)
    path.unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    server.setblocking(False)
    chooser = selectors.DefaultSelector()
    chooser.register(server, selectors.EVENT_READ, None)
    buffers: dict[socket.socket, bytearray] = {}
    ready()
    try:
        while not stop():
            for key, _ in chooser.select(0.2):
                if key.data is None:
                    conn, _ = server.accept()
                    conn.setblocking(True)
                    conn.settimeout(5.0)
                    chooser.register(conn, selectors.EVENT_READ, "conn")
                    buffers[conn] = bytearray()
                    continue
                conn = key.fileobj  # type: ignore[assignment]
                try:
                    chunk = conn.recv(1 << 16)
                except OSError:
                    chunk = b""
                try:
                    keep = bool(chunk) and _consume(conn, buffers[conn], chunk, on_payload,
                                                    on_frames)  # fmt: skip
                except OSError:  # the writer went away mid-handshake (a resolver stopping)
                    keep = False
                if not keep:
                    chooser.unregister(conn)
                    del buffers[conn]
                    conn.close()
    finally:
        for conn in list(buffers):
            conn.close()
        chooser.close()
        server.close()
        path.unlink(missing_ok=True)


def _consume(conn: socket.socket, buffer: bytearray, chunk: bytes,
             on_payload: Callable[[bytes], None],
             on_frames: Callable[[bytes], int] | None = None) -> bool:  # fmt: skip
    """Add bytes from one writer; act on every whole frame. False: close the connection."""
    buffer += chunk
    while True:
        if len(buffer) < 4:
            return True
        (length,) = struct.unpack_from("!I", buffer)
        if on_frames is not None and 0 < length <= MAX_FRAME and len(buffer) >= 4 + length:
            used = on_frames(bytes(buffer))
            if used:
                del buffer[:used]
                continue
        if length == 0:
            if len(buffer) < 8:
                return True
            length = int(struct.unpack_from("!I", buffer, 4)[0])
            if length > MAX_FRAME or len(buffer) < 8 + length:
                return length <= MAX_FRAME
            kind, types = _control(bytes(buffer[8 : 8 + length]))
            del buffer[: 8 + length]
            if kind == _READY:
                if CONTENT_TYPE not in types:
                    return False
                _send_control(conn, _ACCEPT, [CONTENT_TYPE])
            elif kind == _STOP:
                _send_control(conn, _FINISH, [])
                return False
            continue
        if length > MAX_FRAME:
            return False
        if len(buffer) < 4 + length:
            return True
        payload = bytes(buffer[4 : 4 + length])
        del buffer[: 4 + length]
        on_payload(payload)


def write_frames(handle: BinaryIO, payloads: Iterator[bytes] | list[bytes]) -> None:
    """A dnstap Frame Streams file of ``payloads`` (as ``dnstap -w`` writes one)."""
    fields = struct.pack("!II", 1, len(CONTENT_TYPE)) + CONTENT_TYPE
    handle.write(struct.pack("!III", 0, 4 + len(fields), _START) + fields)
    for payload in payloads:
        handle.write(struct.pack("!I", len(payload)) + payload)
    handle.write(struct.pack("!III", 0, 4, _STOP))


def message_bytes(**fields: Any) -> bytes:
    """A serialised dnstap message (``dnstap_pb``) from Message fields, for tools and tests."""
    import dnstap_pb

    tap = dnstap_pb.Dnstap()
    tap.type = 1
    identity = fields.pop("identity", b"")
    if identity:
        tap.identity = identity
    for name, value in fields.items():
        setattr(tap.message, name, value)
    data: bytes = tap.SerializeToString()
    return data
