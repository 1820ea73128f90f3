"""The loopback lab: an in-process DNS server whose handler may answer many times.

Why: every test of the prober needs an injector to race a genuine server, and CI
has no root for network namespaces on every path. On 127.0.0.0/8 a server thread
plays the whole path: a handler returns *several* replies for one query -- forged
ones first, the genuine one later -- each with its own delay and IP TTL
(loopback does not decrement TTLs, so the prober sees exactly the TTL chosen).
That is what an on-path injector looks like from the prober's socket: every
reply comes from the address and port the query went to ([triplet-2021]; [holdon-2012]).

The handler's contract follows the shape of dnspython's test name server: it
gets a :class:`Request` and returns a :class:`Reply`, raw ``bytes`` (to send
malformed packets), a :class:`dns.message.Message`, ``None`` (stay silent), or a
list of those.

    with LoopbackServer(authoritative({"www.example.com": ["93.184.216.34"]})) as srv:
        ...  # query srv.address

Only loopback addresses are accepted: the lab never sends a packet off the machine.
"""

from __future__ import annotations

import contextlib
import errno
import heapq
import ipaddress
import itertools
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

from wallwatch.lab.forge import NameForm, NotForgeable, forge_reply, question_end
from wallwatch.lab.injector import flatten


@dataclass(frozen=True, slots=True)
class Request:
    """One query as the server received it."""

    wire: bytes
    #: The parsed query, or None when it would not parse.
    message: dns.message.Message | None
    client: tuple[str, int]
    transport: str  # "udp" or "tcp"


@dataclass(frozen=True, slots=True)
class Reply:
    """One packet to send back."""

    payload: bytes | dns.message.Message
    #: Seconds after the query's arrival.
    delay: float = 0.0
    #: IP TTL (hop limit) of the packet; None = system default (64).
    ip_ttl: int | None = None

    def wire(self) -> bytes:
        if isinstance(self.payload, bytes):
            return self.payload
        return self.payload.to_wire()


Handled = Reply | bytes | dns.message.Message | None
Handler = Callable[[Request], Handled | Sequence[Handled]]


def _replies(result: Handled | Sequence[Handled]) -> list[Reply]:
    items: Iterable[Handled] = (
        result if isinstance(result, list | tuple) else [result]  # type: ignore[list-item]
    )
    out = []
    for item in items:
        if item is None:
            continue
        out.append(item if isinstance(item, Reply) else Reply(item))
    return out


@dataclass
class ServerStats:
    """What the server saw (read them after the test)."""

    queries: int = 0
    replies: int = 0
    tcp_queries: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)


class LoopbackServer:
    """A UDP (and TCP) DNS server on a loopback address, run in a thread."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tcp: bool = True,
        tcp_handler: Handler | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise ValueError(f"the loopback lab binds loopback addresses only, not {host}")
        self.handler = handler
        self.tcp_handler = tcp_handler or handler
        #: With a server context, the TCP listener speaks DNS over TLS (RFC 7858).
        self.tls = tls
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.tcp: socket.socket | None = None
        # UDP and TCP share one port: an ephemeral UDP port may be taken for TCP by
        # another process, so a free pair is looked for (and nothing leaks on failure).
        for attempt in range(50):
            self.udp = socket.socket(self.family, socket.SOCK_DGRAM)
            try:
                self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                self.udp.bind((host, port))
                self.address: tuple[str, int] = self.udp.getsockname()[:2]
                if tcp:
                    self.tcp = socket.socket(self.family, socket.SOCK_STREAM)
                    self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    self.tcp.bind(self.address)
                    self.tcp.listen(64)
                break
            except OSError as exc:
                self.udp.close()
                if self.tcp is not None:
                    self.tcp.close()
                    self.tcp = None
                if port or exc.errno != errno.EADDRINUSE or attempt == 49:
                    raise
        self.stats = ServerStats()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._ttl_level, self._ttl_type = (
            (socket.IPPROTO_IPV6, 52) if self.family == socket.AF_INET6 else
            (socket.IPPROTO_IP, socket.IP_TTL)
        )  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------

    def start(self) -> LoopbackServer:
        self._threads.append(threading.Thread(target=self._serve_udp, daemon=True))
        if self.tcp is not None:
            self._threads.append(threading.Thread(target=self._serve_tcp, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=5)
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def spec(self) -> str:
        """The address as a prober target spec (``127.0.0.1:port``)."""
        host, port = self.address
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    # -- serving ------------------------------------------------------------------

    def _serve_udp(self) -> None:
        schedule: list[tuple[float, int, Reply, tuple[str, int]]] = []
        counter = itertools.count()
        while not self._stop.is_set():
            now = time.monotonic()
            while schedule and schedule[0][0] <= now:
                _, _, reply, client = heapq.heappop(schedule)
                self._send(reply, client)
            timeout = min(0.05, max(0.0, schedule[0][0] - now)) if schedule else 0.05
            readable, _, _ = select.select([self.udp], [], [], timeout)
            if not readable:
                continue
            while True:
                try:
                    wire, client = self.udp.recvfrom(65535, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                except OSError:
                    break
                self.stats.queries += 1
                self.stats.clients.add(client[:2])
                arrival = time.monotonic()
                request = Request(wire, _parse(wire), client[:2], "udp")
                for reply in _replies(self.handler(request)):
                    if reply.delay <= 0:
                        self._send(reply, client[:2])
                    else:
                        heapq.heappush(
                            schedule, (arrival + reply.delay, next(counter), reply, client[:2])
                        )

    def _send(self, reply: Reply, client: tuple[str, int]) -> None:
        payload = reply.wire()
        try:
            if reply.ip_ttl is None:
                self.udp.sendto(payload, client)
            else:
                anc = [(self._ttl_level, self._ttl_type, struct.pack("=i", reply.ip_ttl))]
                self.udp.sendmsg([payload], anc, 0, client)
            self.stats.replies += 1
        except OSError:
            pass  # the client went away; a lab must not die of it

    def _serve_tcp(self) -> None:
        assert self.tcp is not None
        while not self._stop.is_set():
            readable, _, _ = select.select([self.tcp], [], [], 0.05)
            if not readable:
                continue
            try:
                conn, client = self.tcp.accept()
            except OSError:
                continue
            with contextlib.suppress(OSError):
                if self.tls is not None:
                    conn.settimeout(2.0)
                    conn = self.tls.wrap_socket(conn, server_side=True)
                with conn:
                    conn.settimeout(2.0)
                    self._answer_tcp(conn, client[:2])

    def _answer_tcp(self, conn: socket.socket, client: tuple[str, int]) -> None:
        head = _recv_exact(conn, 2)
        wire = _recv_exact(conn, struct.unpack("!H", head)[0])
        self.stats.queries += 1
        self.stats.tcp_queries += 1
        request = Request(wire, _parse(wire), client, "tcp")
        for reply in _replies(self.tcp_handler(request)):
            if reply.delay > 0:
                time.sleep(reply.delay)
            payload = reply.wire()
            conn.sendall(struct.pack("!H", len(payload)) + payload)
            self.stats.replies += 1


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    buf = b""
    while len(buf) < size:
        chunk = conn.recv(size - len(buf))
        if not chunk:
            raise ConnectionResetError("client closed")
        buf += chunk
    return buf


def _parse(wire: bytes) -> dns.message.Message | None:
    try:
        return dns.message.from_wire(wire)
    except Exception:  # malformed queries are the handler's business
        return None


# -- handlers ---------------------------------------------------------------------


def authoritative(zone: Mapping[str, Sequence[str]], *, ttl: int = 300, aa: bool = True) -> Handler:
    """A handler that answers A/AAAA from ``zone`` (name -> addresses), else NXDOMAIN.

    Names not in ``zone`` get NXDOMAIN; names in it with no address of the asked
    family get NOERROR with an empty answer (NODATA).
    """
    table: dict[str, list[str]] = {}
    for name, addresses in zone.items():
        table[name.lower().rstrip(".") + "."] = list(addresses)

    def handle(request: Request) -> Handled:
        query = request.message
        if query is None or not query.question:
            return None
        reply = dns.message.make_response(query)
        if aa:
            reply.flags |= dns.flags.AA
        question = query.question[0]
        name = question.name.to_text().lower()
        if name not in table:
            reply.set_rcode(dns.rcode.NXDOMAIN)
            return reply
        want = {dns.rdatatype.A: 4, dns.rdatatype.AAAA: 6}.get(question.rdtype)
        addresses = [a for a in table[name] if ipaddress.ip_address(a).version == want]
        if addresses:
            rrset = dns.rrset.from_text_list(question.name, ttl, "IN", question.rdtype, addresses)
            reply.answer.append(rrset)
        return reply

    return handle


@dataclass(frozen=True, slots=True)
class Forgery:
    """One forged reply an injector sends: where it points and how it looks."""

    address: str
    delay: float = 0.0
    ip_ttl: int | None = None
    answer_ttl: int = 236
    aa: bool | None = None
    name_form: NameForm = NameForm.POINTER
    ipv6: str = "2001::1"


def racing_injector(
    genuine: Handler,
    matches: Callable[[str], bool],
    forgeries: Sequence[Forgery],
    *,
    genuine_delay: float = 0.05,
    genuine_ip_ttl: int | None = None,
) -> Handler:
    """An on-path injector in front of ``genuine``: forged replies first, then the real one.

    ``matches`` gets the lower-case query name (no trailing dot). Queries it does
    not match get only the genuine answer, after ``genuine_delay``, as on a long
    international path; matched queries also get every forgery, each after its
    own (short) delay, built by :func:`~wallwatch.lab.forge.forge_reply`.
    """

    def handle(request: Request) -> list[Handled]:
        out: list[Handled] = []
        name = flatten(request.wire)
        try:
            end = question_end(request.wire)
        except NotForgeable:
            name = None
        if name is not None and matches(name):
            qtype = struct.unpack_from("!H", request.wire, end - 4)[0]
            for forgery in forgeries:
                address = forgery.ipv6 if qtype == 28 else forgery.address
                try:
                    payload = forge_reply(
                        request.wire, address, answer_ttl=forgery.answer_ttl, aa=forgery.aa,
                        name_form=forgery.name_form,
                    )  # fmt: skip
                except ValueError:
                    continue
                out.append(Reply(payload, forgery.delay, forgery.ip_ttl))
        for reply in _replies(genuine(request)):
            out.append(Reply(reply.payload, reply.delay + genuine_delay, genuine_ip_ttl))
        return out

    return handle
