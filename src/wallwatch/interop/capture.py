"""Live capture of a resolver's upstream DNS from a network interface (root).

Why: only packets show the race -- the injector's forgery and the genuine reply to the
same upstream query -- because the resolver keeps the first and closes its port
(docs/passive.md). A capture on the resolver's own machine sees every packet it sends
and receives; wallwatch keeps its *upstream side* only (queries it sends to port 53 and
the replies to them), since the answers it gives its users are already in its dnstap
and are the users' business. The packets go to the pcap reader's
:class:`~wallwatch.interop.pcap.Matcher`, so a live capture and a file become the same
measurements.

An ``AF_PACKET`` socket in cooked mode (IP packets without the link header), bound to
every protocol (the kernel shows a host's own outgoing packets only to such sockets),
with a classic BPF filter for "UDP to or from port 53 over IPv4 (not a fragment) or IPv6", as the prober's raw
capture uses (:mod:`wallwatch.probe.rawcapture`); the kernel stamps each packet
(``SO_TIMESTAMPNS``). ``netns`` opens it inside a named network namespace (the lab's
ISP node) without moving the process: only the socket lives there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from wallwatch.probe.rawcapture import SO_ATTACH_FILTER, _SockFilter, _SockFprog

ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35
_PACKET_OUTGOING = 4
_CLONE_NEWNET = 0x40000000

# 'udp port 53 and not fragment' over IPv4 and IPv6 (no extension headers) for a cooked
# socket of every protocol (only a socket bound to ETH_P_ALL sees the packets this host
# sends); the port is patched in. Jumps are relative: target = index + 1 + offset.
_FILTER = [
    (0x28, 0, 0, 0xFFFFF000),  # 0  ldh [protocol]   (SKF_AD_PROTOCOL)
    (0x15, 0, 9, 0x00000800),  # 1  jeq #IPv4 else 11
    (0x30, 0, 0, 0x00000009),  # 2  ldb [9]          protocol
    (0x15, 0, 15, 0x00000011),  # 3  jeq #17 (UDP) else drop
    (0x28, 0, 0, 0x00000006),  # 4  ldh [6]          flags + fragment offset
    (0x45, 13, 0, 0x00001FFF),  # 5  jset #0x1fff -> drop (a fragment)
    (0xB1, 0, 0, 0x00000000),  # 6  ldxb 4*([0]&0xf) IP header length
    (0x48, 0, 0, 0x00000000),  # 7  ldh [x+0]        UDP source port
    (0x15, 9, 0, 0x00000035),  # 8  jeq #PORT -> accept
    (0x48, 0, 0, 0x00000002),  # 9  ldh [x+2]        UDP destination port
    (0x15, 7, 8, 0x00000035),  # 10 jeq #PORT -> accept else drop
    (0x15, 0, 7, 0x000086DD),  # 11 jeq #IPv6 else drop
    (0x30, 0, 0, 0x00000006),  # 12 ldb [6]          next header
    (0x15, 0, 5, 0x00000011),  # 13 jeq #17 (UDP) else drop
    (0x28, 0, 0, 0x00000028),  # 14 ldh [40]         UDP source port
    (0x15, 2, 0, 0x00000035),  # 15 jeq #PORT -> accept
    (0x28, 0, 0, 0x0000002A),  # 16 ldh [42]         UDP destination port
    (0x15, 0, 1, 0x00000035),  # 17 jeq #PORT else drop
    (0x06, 0, 0, 0x00040000),  # 18 ret #262144      accept
    (0x06, 0, 0, 0x00000000),  # 19 ret #0           drop
]


class CaptureError(OSError):
    """The capture could not be opened (no such interface or namespace, not root)."""


@contextlib.contextmanager
def _inside(netns: str | None) -> Iterator[None]:
    """Run the body in network namespace ``netns`` (this thread only), then come back."""
    if netns is None:
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            there = os.open(Path("/run/netns") / netns, os.O_RDONLY)
        except OSError as exc:
            raise CaptureError(f"network namespace {netns!r}: {exc.strerror}") from None
        try:
            if libc.setns(there, _CLONE_NEWNET) != 0:
                raise CaptureError(f"network namespace {netns!r}: "
                                   f"{os.strerror(ctypes.get_errno())}")  # fmt: skip
        finally:
            os.close(there)
        try:
            yield
        finally:
            if libc.setns(here, _CLONE_NEWNET) != 0:  # pragma: no cover - cannot fail back
                raise CaptureError(f"could not leave {netns!r}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(here)


def _open(interface: str, port: int) -> socket.socket:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    except PermissionError:
        raise CaptureError("a live capture needs root (CAP_NET_RAW)") from None
    try:
        code = [(c, jt, jf, port if c == 0x15 and k == 53 else k) for c, jt, jf, k in _FILTER]
        program = (_SockFilter * len(code))(*(_SockFilter(*f) for f in code))
        fprog = _SockFprog(len(code), ctypes.cast(program, ctypes.POINTER(_SockFilter)))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.bind((interface, ETH_P_ALL))
    except OSError as exc:
        sock.close()
        raise CaptureError(f"interface {interface!r}: {exc.strerror or exc}") from None
    return sock


class Capture:
    """The upstream side of a host's DNS on one interface, packet by packet."""

    def __init__(self, interface: str, *, netns: str | None = None, port: int = 53) -> None:
        self.interface = interface
        self.port = port
        with _inside(netns):
            self.sock = _open(interface, port)
        self.seen = 0
        #: Packets of the other side (users asking this host), dropped unread.
        self.user_side = 0

    def upstream(self, packet: bytes, outgoing: bool) -> bool:
        """Whether a packet is of this host asking (a query it sends, a reply to it)."""
        ihl = 40 if packet[0] >> 4 == 6 else (packet[0] & 0x0F) * 4
        if len(packet) < ihl + 4:
            return False
        sport, dport = (int(v) for v in struct.unpack_from("!HH", packet, ihl))
        if outgoing:
            return dport == self.port
        return sport == self.port and dport != self.port

    def packets(self, stop: Callable[[], bool], *,
                tick: float = 0.5) -> Iterator[tuple[float, bytes] | None]:  # fmt: skip
        """``(kernel time, IP packet)`` of the upstream side until ``stop()``; ``None``
        every ``tick`` seconds without a packet, so the reader can expire its queries."""
        size = struct.calcsize("qq")
        while not stop():
            ready, _, _ = select.select([self.sock], [], [], tick)
            if not ready:
                yield None
                continue
            packet, ancillary, _, address = self.sock.recvmsg(65535, socket.CMSG_SPACE(size))
            self.seen += 1
            if len(packet) < 20 or packet[0] >> 4 not in (4, 6):
                continue
            if not self.upstream(packet, address[2] == _PACKET_OUTGOING):
                self.user_side += 1
                continue
            stamp = None
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= size:
                    sec, nsec = struct.unpack_from("qq", data)
                    stamp = sec + nsec / 1e9
            if stamp is None:  # pragma: no cover - the kernel stamps when asked
                stamp = time.time()
            yield stamp, packet

    def close(self) -> None:
        self.sock.close()
