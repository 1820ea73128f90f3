"""A UDP socket that reports, for every datagram, its IP TTL and kernel receive time.

Why not asyncio or dnspython's ``receive_udp``: neither returns ancillary data, so
neither can see the IP TTL of a reply -- the single most telling fingerprint of an
on-path injector (Hold-On; Triplet 4.3; [holdon-2012]; [triplet-2021]). Here one non-blocking
socket is drained with ``recvmsg`` until ``EAGAIN`` (the batch loop measured in
docs/performance.md), with:

* ``IP_RECVTTL`` / ``IPV6_RECVHOPLIMIT``: the TTL of each reply;
* ``SO_TIMESTAMPNS``: the kernel's receive time, so RTTs do not include the time
  the reply waited for the Python loop;
* ``SO_RXQ_OVFL``: the kernel's count of datagrams dropped on this socket, so a
  benchmark can prove that nothing was lost;
* ``IP_RECVERR`` / ``IPV6_RECVERR``: ICMP errors (port unreachable becomes OONI's
  ``connection_refused``) are read from the error queue with the query that
  caused them, instead of being an unattributable exception.

An outgoing TTL per packet is set with an ``IP_TTL`` control message on
``sendmsg``, which later work uses to find the hop where injection starts.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Callable

# Linux constants that Python 3.11's socket module lacks.
IP_RECVERR = 11
IP_RECVTTL = 12
IPV6_RECVERR = 25
IPV6_RECVHOPLIMIT = 51
IPV6_HOPLIMIT = 52
SO_TIMESTAMPNS = 35
SO_RXQ_OVFL = 40
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32

_SOL_SOCKET = socket.SOL_SOCKET
_IPPROTO_IP = socket.IPPROTO_IP
_IPPROTO_IPV6 = socket.IPPROTO_IPV6
_IP_TTL = socket.IP_TTL
_TIMESPEC = struct.Struct("=qq")
_INT = struct.Struct("=i")
_UINT = struct.Struct("=I")
# struct sock_extended_err (linux/errqueue.h) followed by the offender's sockaddr.
_EXT_ERR = struct.Struct("=IBBBBII")
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3

_ANC_SIZE = socket.CMSG_SPACE(16) + socket.CMSG_SPACE(4) * 2 + socket.CMSG_SPACE(64)
_RECV_SIZE = 65535


class UdpChannel:
    """One capturing UDP socket (IPv4 or IPv6).

    ``port=0`` picks an ephemeral port; a fixed port gives the per-query source
    port control that source-port-dependent routing demands (ManyRoads, [gfwatch-2021]; [manyroads-2022]).
    """

    def __init__(
        self,
        family: socket.AddressFamily = socket.AF_INET,
        *,
        address: str | None = None,
        port: int = 0,
        rcvbuf: int = 8 << 20,
    ) -> None:
        self.family = family
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._configure(sock, rcvbuf)
            bind_to = address or ("::" if family == socket.AF_INET6 else "0.0.0.0")
            sock.bind((bind_to, port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        #: Datagrams the kernel dropped on this socket so far (SO_RXQ_OVFL).
        self.kernel_drops = 0

    def _configure(self, sock: socket.socket, rcvbuf: int) -> None:
        if self.family == socket.AF_INET6:
            sock.setsockopt(_IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(_IPPROTO_IPV6, IPV6_RECVHOPLIMIT, 1)
            sock.setsockopt(_IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(_IPPROTO_IP, IP_RECVTTL, 1)
            sock.setsockopt(_IPPROTO_IP, IP_RECVERR, 1)
        sock.setsockopt(_SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.setsockopt(_SOL_SOCKET, SO_RXQ_OVFL, 1)
        for forced, plain, size in (
            (SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf),
            (SO_SNDBUFFORCE, socket.SO_SNDBUF, 4 << 20),
        ):
            try:
                sock.setsockopt(_SOL_SOCKET, forced, size)  # needs CAP_NET_ADMIN
            except PermissionError:
                with contextlib.suppress(OSError):
                    sock.setsockopt(_SOL_SOCKET, plain, size)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def send(self, payload: bytes, dest: tuple[str, int], ip_ttl: int | None = None) -> None:
        """Send one datagram, with an explicit IP TTL / hop limit when given."""
        if ip_ttl is None:
            self.sock.sendto(payload, dest)
        elif self.family == socket.AF_INET6:
            self.sock.sendmsg(
                [payload], [(_IPPROTO_IPV6, IPV6_HOPLIMIT, _INT.pack(ip_ttl))], 0, dest
            )
        else:
            self.sock.sendmsg([payload], [(_IPPROTO_IP, _IP_TTL, _INT.pack(ip_ttl))], 0, dest)

    def drain(
        self,
        on_datagram: Callable[[bytes, tuple[str, int], int | None, int], None],
        on_icmp: Callable[[bytes, tuple[str, int], str, int, int, int], None],
        limit: int = 4096,
    ) -> int:
        """Read until the socket is empty (or ``limit`` datagrams); return how many.

        Callbacks rather than a returned list: the hot loop then does no extra
        allocation per packet.
        """
        recvmsg = self.sock.recvmsg
        count = 0
        ttl_level = _IPPROTO_IPV6 if self.family == socket.AF_INET6 else _IPPROTO_IP
        ttl_type = IPV6_HOPLIMIT if self.family == socket.AF_INET6 else _IP_TTL
        while count < limit:
            try:
                data, anc, _flags, addr = recvmsg(_RECV_SIZE, _ANC_SIZE)
            except BlockingIOError:
                break
            except OSError:
                # An ICMP error was queued (ECONNREFUSED, EHOSTUNREACH, ...).
                self.drain_errors(on_icmp)
                continue
            ttl: int | None = None
            stamp = 0
            for level, kind, value in anc:
                if level == ttl_level and kind == ttl_type:
                    ttl = _INT.unpack(value)[0]
                elif level == _SOL_SOCKET:
                    if kind == SO_TIMESTAMPNS:
                        sec, nsec = _TIMESPEC.unpack(value)
                        stamp = sec * 1_000_000_000 + nsec
                    elif kind == SO_RXQ_OVFL:
                        self.kernel_drops = _UINT.unpack(value)[0]
            on_datagram(data, (addr[0], addr[1]), ttl, stamp)
            count += 1
        return count

    def drain_errors(
        self, on_icmp: Callable[[bytes, tuple[str, int], str, int, int, int], None]
    ) -> None:
        """Read the socket's error queue: ICMP errors with the packet that caused them."""
        while True:
            try:
                data, anc, _flags, addr = self.sock.recvmsg(
                    _RECV_SIZE, _ANC_SIZE, socket.MSG_ERRQUEUE
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            stamp = 0
            for level, kind, value in anc:
                if level == _SOL_SOCKET and kind == SO_TIMESTAMPNS:
                    sec, nsec = _TIMESPEC.unpack(value)
                    stamp = sec * 1_000_000_000 + nsec
                elif (level, kind) in ((_IPPROTO_IP, IP_RECVERR), (_IPPROTO_IPV6, IPV6_RECVERR)):
                    report = _parse_ext_err(value)
                    if report is not None:
                        offender, icmp_type, icmp_code = report
                        on_icmp(data, (addr[0], addr[1]), offender, icmp_type, icmp_code, stamp)


def _parse_ext_err(value: bytes) -> tuple[str, int, int] | None:
    if len(value) < _EXT_ERR.size:
        return None
    _errno, origin, icmp_type, icmp_code, _pad, _info, _data = _EXT_ERR.unpack_from(value)
    if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
        return None
    raw = value[_EXT_ERR.size :]
    family = int.from_bytes(raw[:2], "little") if len(raw) >= 2 else 0
    offender = ""
    if family == socket.AF_INET and len(raw) >= 8:
        offender = socket.inet_ntop(socket.AF_INET, raw[4:8])
    elif family == socket.AF_INET6 and len(raw) >= 24:
        offender = socket.inet_ntop(socket.AF_INET6, raw[8:24])
    return offender, icmp_type, icmp_code
