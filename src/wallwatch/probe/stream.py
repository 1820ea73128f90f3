"""Queries over channels an on-path injector cannot race: TCP, DoT and DoH.

The firewall's DNS injector reacts to UDP port 53 only ([triplet-2021]; [holdon-2012]), so a
lookup over TCP, TLS (RFC 7858) or HTTPS (RFC 8484) is the trusted control of a
measurement, and TCP is also where a truncated UDP reply is retried (RFC 7766).
These calls are blocking and run in the prober's small thread pool: they are
few (one control lookup per name), so simplicity wins over speed here.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from urllib.parse import urlsplit

from wallwatch.vocab import Engine, Failure

_LEN = struct.Struct("!H")


class StreamError(Exception):
    """A stream lookup failed; ``failure`` is the OONI failure string."""

    def __init__(self, failure: Failure, detail: str) -> None:
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure


@dataclass(frozen=True, slots=True)
class StreamReply:
    """One reply read from a stream channel."""

    payload: bytes
    src: str
    sport: int
    #: Wall-clock receive time in ns (no kernel stamp exists for stream data).
    received_ns: int


@dataclass(frozen=True, slots=True)
class StreamServer:
    """Where a stream lookup goes.

    ``tcp:9.9.9.9``, ``dot:1.1.1.1`` (port 853), ``doh:https://host/dns-query``.
    """

    engine: Engine
    address: str
    port: int
    #: The DoH URL, or the TLS server name to verify for DoT (None = skip verification).
    url: str | None = None
    tls_name: str | None = None

    @property
    def resolver_address(self) -> str:
        if self.engine == Engine.DOH and self.url:
            return self.url
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{host}:{self.port}"


def parse_stream_server(spec: str) -> StreamServer:
    """Parse ``engine:address[:port][#tls-name]`` or ``doh:URL``."""
    engine_text, sep, rest = spec.partition(":")
    if not sep:
        raise ValueError(f"control {spec!r}: expected tcp:ADDR, dot:ADDR or doh:URL")
    try:
        engine = Engine(engine_text.lower())
    except ValueError:
        raise ValueError(f"control {spec!r}: unknown engine {engine_text!r}") from None
    if engine == Engine.UDP:
        raise ValueError(f"control {spec!r}: UDP is not a trusted channel")
    if engine == Engine.DOH:
        parts = urlsplit(rest)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"control {spec!r}: DoH needs an http(s) URL")
        default = 443 if parts.scheme == "https" else 80
        return StreamServer(engine, parts.hostname, parts.port or default, url=rest)
    rest, _, tls_name = rest.partition("#")
    from wallwatch.targets import parse_target  # local: targets imports nothing of ours

    default_port = 853 if engine == Engine.DOT else 53
    target = parse_target(rest if _has_port(rest) else _with_port(rest, default_port))
    return StreamServer(engine, target.address, target.port, tls_name=tls_name or None)


def _has_port(text: str) -> bool:
    if text.startswith("["):
        return "]:" in text
    return text.count(":") == 1


def _with_port(text: str, port: int) -> str:
    if ":" in text and not text.startswith("["):
        return f"[{text}]:{port}"
    return f"{text}:{port}"


def exchange(server: StreamServer, query: bytes, timeout: float) -> StreamReply:
    """Send ``query`` and return the reply, or raise :class:`StreamError`."""
    try:
        if server.engine == Engine.DOH:
            return _doh(server, query, timeout)
        return _framed(server, query, timeout)
    except StreamError:
        raise
    except TimeoutError as exc:
        raise StreamError(Failure.GENERIC_TIMEOUT, str(exc)) from exc
    except ConnectionRefusedError as exc:
        raise StreamError(Failure.CONNECTION_REFUSED, str(exc)) from exc
    except ssl.SSLError as exc:
        raise StreamError(Failure.SSL_ERROR, str(exc)) from exc
    except (ConnectionResetError, BrokenPipeError) as exc:
        raise StreamError(Failure.CONNECTION_RESET, str(exc)) from exc
    except OSError as exc:
        if exc.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
            raise StreamError(Failure.HOST_UNREACHABLE, str(exc)) from exc
        raise StreamError(Failure.UNKNOWN, str(exc)) from exc


def _framed(server: StreamServer, query: bytes, timeout: float) -> StreamReply:
    """DNS over TCP or TLS: two-byte length prefix (RFC 1035 4.2.2, RFC 7858)."""
    raw = socket.create_connection((server.address, server.port), timeout=timeout)
    sock: socket.socket = raw
    try:
        if server.engine == Engine.DOT:
            context = ssl.create_default_context()
            if server.tls_name is None:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            sock = context.wrap_socket(raw, server_hostname=server.tls_name)
        sock.sendall(_LEN.pack(len(query)) + query)
        (length,) = _LEN.unpack(_read_exact(sock, 2))
        payload = _read_exact(sock, length)
        peer = sock.getpeername()
        return StreamReply(payload, peer[0], peer[1], time.time_ns())
    finally:
        sock.close()


def _read_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = sock.recv(size - len(buf))
        if not chunk:
            raise StreamError(Failure.CONNECTION_RESET, "connection closed mid-reply")
        buf += chunk
    return bytes(buf)


def _doh(server: StreamServer, query: bytes, timeout: float) -> StreamReply:
    """DNS over HTTPS, POST with ``application/dns-message`` (RFC 8484 4.1)."""
    assert server.url is not None
    request = urllib.request.Request(
        server.url,
        data=query,
        headers={"Content-Type": "application/dns-message", "Accept": "application/dns-message"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            payload = reply.read()
    except urllib.error.HTTPError as exc:
        raise StreamError(Failure.DNS_SERVER_MISBEHAVING, f"HTTP {exc.code}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, OSError):
            raise reason from exc
        raise StreamError(Failure.UNKNOWN, str(reason)) from exc
    return StreamReply(payload, server.address, server.port, time.time_ns())
