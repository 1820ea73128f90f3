"""IP ID and DF of every DNS reply, read from a packet socket beside the UDP socket (root).

A UDP socket hands over the TTL but never the IP ID or the DF bit, and those are two of
the injector fingerprints (Triplet Table 3: Injector 2 sets DF, Injector 3 sends IP ID 0;
gfwrev09: the 2009 Type 2 decrements its ID by 13). With ``--raw-capture`` the prober
also opens an ``AF_PACKET`` socket with a classic BPF filter for "UDP from port 53" and
remembers, per (source, source port, destination port, DNS ID), the IP header fields of
the packet (the filter matches one source port: that of the sweep's first UDP target); the UDP path then attaches them to the reply's record. The packet socket
sees a datagram before the UDP socket delivers it, so the lookup is ready in time.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections import OrderedDict, deque

ETH_P_IP = 0x0800
SO_ATTACH_FILTER = 26
_PACKET_OUTGOING = 4

# tcpdump -dd 'ip and udp src port 53 and not ip[6:2] & 0x1fff != 0' for a cooked (no
# Ethernet header) IPv4 socket: protocol at 9, fragment field at 6, ports after the header.
_FILTER = [
    (0x30, 0, 0, 0x00000009),  # ldb [9]            protocol
    (0x15, 0, 6, 0x00000011),  # jeq #17 (UDP) else drop
    (0x28, 0, 0, 0x00000006),  # ldh [6]            flags + fragment offset
    (0x45, 4, 0, 0x00001FFF),  # jset #0x1fff -> drop (a fragment)
    (0xB1, 0, 0, 0x00000000),  # ldxb 4*([0]&0xf)   IP header length
    (0x48, 0, 0, 0x00000000),  # ldh [x+0]          UDP source port
    (0x15, 0, 1, 0x00000035),  # jeq #PORT (53 unless told otherwise) else drop
    (0x06, 0, 0, 0x00040000),  # ret #262144        accept
    (0x06, 0, 0, 0x00000000),  # ret #0             drop
]


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]  # fmt: skip


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


class RawCapture:
    """The IP header fields of DNS replies, looked up by (src, sport, dport, DNS ID)."""

    def __init__(self, port: int = 53, limit: int = 1 << 16) -> None:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        code = [*_FILTER[:6], (0x15, 0, 1, port), *_FILTER[7:]]
        program = (_SockFilter * len(code))(*(_SockFilter(*f) for f in code))
        self._program = program  # the kernel copies it, but keep it alive until then
        fprog = _SockFprog(len(code), ctypes.cast(program, ctypes.POINTER(_SockFilter)))
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.setblocking(False)
        self.sock = sock
        # Several replies share one key when injectors race the genuine answer; both
        # sockets see them in the same order, so each key holds a queue.
        self._seen: OrderedDict[tuple[str, int, int, int], deque[tuple[int, bool]]] = OrderedDict()
        self._limit = limit

    def fileno(self) -> int:
        return self.sock.fileno()

    def drain(self) -> None:
        """Read every captured packet and remember its header fields."""
        while True:
            try:
                packet, addr = self.sock.recvfrom(256)
            except BlockingIOError:
                return
            if addr[2] == _PACKET_OUTGOING or len(packet) < 20:
                continue
            ihl = (packet[0] & 0x0F) * 4
            if len(packet) < ihl + 10:
                continue
            ip_id, frag = struct.unpack_from("!HH", packet, 4)
            sport, dport = struct.unpack_from("!HH", packet, ihl)
            txid = struct.unpack_from("!H", packet, ihl + 8)[0]
            key = (socket.inet_ntoa(packet[12:16]), sport, dport, txid)
            queue = self._seen.get(key)
            if queue is None:
                queue = self._seen[key] = deque()
            queue.append((ip_id, bool(frag & 0x4000)))
            if len(self._seen) > self._limit:
                self._seen.popitem(last=False)

    def take(
        self, src: str, sport: int, dport: int, txid: int | None
    ) -> tuple[int | None, bool | None]:
        """(IP ID, DF) of the reply, when it was captured."""
        if txid is None:
            return None, None
        key = (src, sport, dport, txid)
        # Read what has arrived since the loop's last drain: this reply's header may be
        # behind an earlier reply of the same query in the packet socket's queue.
        self.drain()
        queue = self._seen.get(key)
        if not queue:
            return None, None
        ip_id, df = queue.popleft()
        if not queue:
            del self._seen[key]
        return ip_id, df

    def close(self) -> None:
        self.sock.close()
