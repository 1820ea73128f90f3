"""The border: a userspace router between inside and outside, with the injector on its tap.

Why userspace: this kernel has no ``netem``, and the defining property of the
firewall's injector is a race -- the forged reply leaves the border at once while
the genuine one still has the international path ahead of it ([holdon-2012]; [triplet-2021],
2.5). So the border namespace does not forward in the kernel (``ip_forward=0``);
this process reads every IPv4 frame addressed to the border on either side with an
``AF_PACKET`` socket, and:

1. emulates ``hops`` routers: a packet whose TTL would expire before the tap is
   dropped, the rest leave with their TTL lowered by ``hops`` (so a TTL-limited
   probe finds the hop where injection starts, Triplet 4.3);
2. shows UDP packets to port 53 -- in both directions -- to every injector, whose
   forged replies are sent straight back to the querier (on-path: it adds packets,
   it never drops the query or the answer);
3. forwards the original packet after ``delay_ms`` (the international path).

Run as ``python -m wallwatch.lab.border CONFIG.json`` inside the border namespace.

Steps 1 and 3, and the sending of every frame, run in C when ``wallwatch._border`` was
built (``recvmmsg``/``sendmmsg`` batches; ``WALLWATCH_NO_NATIVE=1`` forces this module's
Python loop); the injectors of step 2 stay Python either way, so the forged bytes have
one definition (:mod:`wallwatch.lab.forge`).
"""

from __future__ import annotations

import contextlib
import heapq
import ipaddress
import json
import os
import random
import select
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wallwatch.lab.injector import PROFILES, Anchor, Injector, Rule

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
SOL_PACKET, PACKET_STATISTICS = 263, 6
_IP = struct.Struct("!BBHHHBBH4s4s")


def checksum(header: bytes) -> int:
    """The Internet checksum of an IP header (RFC 1071)."""
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ip_packet(src: bytes, dst: bytes, proto: int, payload: bytes, *, ttl: int, ip_id: int,
              df: bool) -> bytes:  # fmt: skip
    """An IPv4 packet with a correct header checksum."""
    header = bytearray(_IP.pack(0x45, 0, 20 + len(payload), ip_id, 0x4000 if df else 0, ttl,
                                proto, 0, src, dst))  # fmt: skip
    struct.pack_into("!H", header, 10, checksum(bytes(header)))
    return bytes(header) + payload


def udp_datagram(sport: int, dport: int, payload: bytes) -> bytes:
    """A UDP header (checksum 0: optional in IPv4) and payload."""
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


@dataclass
class Side:
    ifname: str
    mac: bytes
    ip: str
    sock: socket.socket


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def load_injectors(specs: list[dict[str, Any]]) -> list[Injector]:
    out = []
    for spec in specs:
        rules = [Rule(r["pattern"], Anchor(r.get("anchor", "suffix")), r.get("pool", ""))
                 for r in spec["rules"]]  # fmt: skip
        out.append(
            Injector(
                spec["id"], PROFILES[spec["profile"]], rules, spec["pools"],
                processes=spec.get("processes", 3),
                active=[(float(a), float(b)) for a, b in spec.get("active", [])],
            )
        )  # fmt: skip
    return out


class Border:
    """The router-with-tap process."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        inside = ipaddress.IPv4Network(config["inside"]["prefix"])
        self.inside_mask = int(inside.netmask)
        self.inside_net = int(inside.network_address)
        self.sides = {}
        for key in ("inside", "outside"):
            spec = config[key]
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
            sock.bind((spec["ifname"], ETH_P_IP))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.setblocking(False)
            self.sides[key] = Side(spec["ifname"], mac_bytes(spec["mac"]), spec["ip"], sock)
        self.own = {socket.inet_aton(s.ip) for s in self.sides.values()}
        self.macs = {socket.inet_aton(ip): mac_bytes(mac) for ip, mac in config["macs"].items()}
        self.delay = config.get("delay_ms", 80) / 1000.0
        self.hops = max(1, int(config.get("hops", 3)))
        clock = config.get("clock", {})
        self.real0 = float(clock.get("start_real", time.time()))
        self.scenario0 = float(clock.get("start_scenario", 0.0))
        self.scale = float(clock.get("scale", 1.0))
        # Until the lab writes the clock file, the scenario clock stands at 0.
        self.clock_file = Path(clock["file"]) if clock.get("file") else None
        self.clock_started = self.clock_file is None
        self.injectors = load_injectors(config.get("injectors", []))
        self.queue: list[tuple[float, int, socket.socket, bytes]] = []
        self.seq = 0
        self.stats = {"forwarded": 0, "expired": 0, "no_route": 0, "forged": 0, "queries_seen": 0,
                      "kernel_drops": 0}  # fmt: skip
        self.stats_path = Path(config["stats"]) if config.get("stats") else None
        self.router = self._native_router()

    def _native_router(self) -> Any:
        """The C forwarding loop over the two sockets, or None (not built, or refused)."""
        if os.environ.get("WALLWATCH_NO_NATIVE"):
            return None
        try:
            from wallwatch import _border  # type: ignore[attr-defined]
        except ImportError:  # pragma: no cover - the build hook compiles it where it can
            print("wallwatch border: the native router is not built; forwarding in Python",
                  file=sys.stderr)  # fmt: skip
            return None
        inside, outside = self.sides["inside"], self.sides["outside"]
        return _border.Router(
            inside.sock.fileno(), outside.sock.fileno(), inside.mac, outside.mac,
            socket.inet_aton(inside.ip), socket.inet_aton(outside.ip), self.inside_net,
            self.inside_mask, self.hops, self.delay, self.macs,
        )  # fmt: skip

    def clock(self) -> float:
        """Scenario seconds now."""
        if not self.clock_started:
            return self.scenario0
        return self.scenario0 + (time.time() - self.real0) * self.scale

    def start_clock(self) -> None:
        """Start the scenario clock once the lab has written it (``clock.json``)."""
        assert self.clock_file is not None
        try:
            clock = json.loads(self.clock_file.read_text())
        except (OSError, ValueError):
            return
        self.real0 = float(clock["start_real"])
        self.scenario0 = float(clock.get("start_scenario", 0.0))
        self.scale = float(clock.get("scale", self.scale))
        self.clock_started = True

    def run(self) -> None:
        if self.router is not None:
            self.run_native()
            return
        poll = select.poll()
        by_fd = {}
        for key, side in self.sides.items():
            poll.register(side.sock.fileno(), select.POLLIN)
            by_fd[side.sock.fileno()] = key
        next_stats = 0.0
        while True:
            now = time.monotonic()
            while self.queue and self.queue[0][0] <= now:
                _, _, sock, frame = heapq.heappop(self.queue)
                with contextlib.suppress(OSError):
                    sock.send(frame)
            timeout = (self.queue[0][0] - now) * 1000 if self.queue else 200
            if not self.clock_started:
                self.start_clock()
                timeout = min(timeout, 20)
            for fd, _event in poll.poll(max(0.0, min(timeout, 200))):
                self.drain(by_fd[fd])
            if self.stats_path and now >= next_stats:
                self.write_stats()
                next_stats = now + 0.5

    def run_native(self) -> None:
        """The loop with the C router: it reads, routes and delays; Python forges."""
        router = self.router
        poll = select.poll()
        for side in self.sides.values():
            poll.register(side.sock.fileno(), select.POLLIN)
        next_stats = 0.0
        while True:
            wait = router.flush()
            timeout = 200.0 if wait < 0 else min(200.0, wait * 1000)
            if not self.clock_started:
                self.start_clock()
                timeout = min(timeout, 20)
            if poll.poll(timeout):
                for came, client_mac, packet, ihl, sport, tap_ttl in router.pump():
                    replies = self.forged_replies(packet, ihl, tap_ttl)
                    if replies:
                        router.send_forged(came, client_mac, packet[12:16], packet[16:20], sport,
                                           replies)  # fmt: skip
            now = time.monotonic()
            if self.stats_path and now >= next_stats:
                self.stats.update(router.counts())
                self.write_stats()
                next_stats = now + 0.5

    def drain(self, key: str) -> None:
        side = self.sides[key]
        while True:
            try:
                frame, addr = side.sock.recvfrom(65535)
            except BlockingIOError:
                return
            if addr[2] == PACKET_OUTGOING or frame[:6] != side.mac or len(frame) < 34:
                continue
            self.handle(key, frame)

    def handle(self, came_from: str, frame: bytes) -> None:
        packet = frame[14:]
        ihl = (packet[0] & 0x0F) * 4
        ttl, proto = packet[8], packet[9]
        _src, dst = packet[12:16], packet[16:20]
        if dst in self.own:
            return
        inbound = int.from_bytes(dst, "big") & self.inside_mask == self.inside_net
        out_key = "inside" if inbound else "outside"
        if out_key == came_from:
            return
        if ttl < self.hops:
            self.stats["expired"] += 1
            return
        tap_ttl = ttl - (self.hops - 1)
        fragment = struct.unpack_from("!H", packet, 6)[0] & 0x3FFF
        if proto == 17 and not fragment and len(packet) >= ihl + 8:
            sport, dport = struct.unpack_from("!HH", packet, ihl)
            if dport == 53:
                self.inject(came_from, frame[6:12], packet, ihl, sport, tap_ttl)
        self.forward(out_key, packet, ttl - self.hops)

    def inject(self, came_from: str, client_mac: bytes, packet: bytes, ihl: int, sport: int,
               tap_ttl: int) -> None:  # fmt: skip
        self.stats["queries_seen"] += 1
        side = self.sides[came_from]
        src, dst = packet[12:16], packet[16:20]
        for payload, ttl, ip_id, df in self.forged_replies(packet, ihl, tap_ttl):
            reply = ip_packet(dst, src, 17, udp_datagram(53, sport, payload), ttl=ttl,
                              ip_id=ip_id, df=df)  # fmt: skip
            try:
                side.sock.send(client_mac + side.mac + b"\x08\x00" + reply)
                self.stats["forged"] += 1
            except OSError:
                pass

    def forged_replies(
        self, packet: bytes, ihl: int, tap_ttl: int
    ) -> list[tuple[bytes, int, int, bool]]:
        """Every injector's forged replies to the query in ``packet``: (DNS payload, IP TTL,
        IP ID, DF), to go back from the queried address to the querier."""
        query = packet[ihl + 8 :]
        flow = packet[12:20] + packet[ihl : ihl + 4]  # the UDP 4-tuple, raw
        clock = self.clock()
        replies = []
        for injector in self.injectors:
            for payload in injector.forge(query, flow, clock):
                # The reply leaves the tap with the profile's TTL and crosses the
                # emulated hops back to the querier; it dies on the way if too low.
                ttl = injector.ip_ttl(tap_ttl) - (self.hops - 1)
                if ttl < 1:
                    continue
                profile = injector.profile
                ip_id = profile.ip_id if profile.ip_id is not None else random.getrandbits(16)
                replies.append((payload, ttl, ip_id, profile.df))
        return replies

    def forward(self, out_key: str, packet: bytes, ttl: int) -> None:
        if ttl < 1:
            self.stats["expired"] += 1
            return
        mac = self.macs.get(packet[16:20])
        if mac is None:
            self.stats["no_route"] += 1
            return
        ihl = (packet[0] & 0x0F) * 4
        header = bytearray(packet[:ihl])
        # RFC 1624 incremental update: only the TTL byte of the TTL/protocol word changed.
        old_word = (packet[8] << 8) | packet[9]
        new_word = (ttl << 8) | packet[9]
        total = (
            (~struct.unpack_from("!H", packet, 10)[0] & 0xFFFF) + (~old_word & 0xFFFF) + new_word
        )
        total = (total & 0xFFFF) + (total >> 16)
        total = (total & 0xFFFF) + (total >> 16)
        header[8] = ttl
        struct.pack_into("!H", header, 10, ~total & 0xFFFF)
        side = self.sides[out_key]
        frame = mac + side.mac + b"\x08\x00" + bytes(header) + packet[ihl:]
        self.seq += 1
        heapq.heappush(self.queue, (time.monotonic() + self.delay, self.seq, side.sock, frame))
        self.stats["forwarded"] += 1

    def write_stats(self) -> None:
        assert self.stats_path is not None
        for side in self.sides.values():
            # struct tpacket_stats {packets, drops}; reading it resets the counters.
            raw = side.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            self.stats["kernel_drops"] += struct.unpack("=II", raw)[1]
        data: dict[str, object] = dict(self.stats)
        data["clock"] = self.clock()
        data["injectors"] = {i.id: i.forged for i in self.injectors}
        tmp = self.stats_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        tmp.replace(self.stats_path)


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    Border(config).run()


if __name__ == "__main__":
    main()
