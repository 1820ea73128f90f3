"""The evidence packets as a pcap file that Wireshark and tcpdump open.

Why rebuild packets rather than capture them: the prober keeps each reply's raw DNS
bytes, IP TTL and arrival time (and, with ``--raw-capture``, IP ID and DF), which is
everything a reader needs to check a forgery by eye. Each measurement becomes its
query and every reply to it, as IPv4/UDP packets (LINKTYPE_RAW) built with dpkt
(dpkt writes the pcap). The vantage's own address is not
in the records; it is taken from the lab's topology when known, else 192.0.2.1
(TEST-NET-1), and said so in the report.
"""

from __future__ import annotations

import base64
import calendar
import socket
import time
from collections.abc import Iterable
from pathlib import Path

import dns.flags
import dns.message
import dns.rdatatype
import dpkt

from wallwatch.records import Measurement

LINKTYPE_RAW = 101
UNKNOWN_LOCAL = "192.0.2.1"


def _start(m: Measurement) -> float:
    return float(calendar.timegm(time.strptime(m.measurement_start_time, "%Y-%m-%d %H:%M:%S")))


def _ip(src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64,
        ip_id: int = 0, df: bool = False) -> bytes:  # fmt: skip
    udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=socket.inet_aton(src), dst=socket.inet_aton(dst), p=dpkt.ip.IP_PROTO_UDP,
                    ttl=ttl, id=ip_id, data=udp)  # fmt: skip
    ip.df = int(df)
    ip.len = len(ip)
    return bytes(ip)


def write(path: Path, measurements: Iterable[Measurement], local: dict[str, str], *,
          pcapng: bool = False) -> int:  # fmt: skip
    """Write every measurement's query and replies; return the packet count."""
    count = 0
    with open(path, "wb") as f:
        module = dpkt.pcapng if pcapng else dpkt.pcap
        writer = module.Writer(f, snaplen=65535, linktype=LINKTYPE_RAW)
        for m in measurements:
            if ":" in m.resolver_address.rsplit(":", 1)[0]:
                continue  # IPv6 targets are not drawn (LINKTYPE_RAW v4 only here)
            server, _, port = m.resolver_address.rpartition(":")
            me = local.get(m.vantage, UNKNOWN_LOCAL)
            base = _start(m)
            query = dns.message.make_query(m.hostname, dns.rdatatype.from_text(m.query_type),
                                           use_edns=m.edns_payload is not None,
                                           payload=m.edns_payload or 1232)  # fmt: skip
            query.id = m.transaction_id
            if not m.rd:
                query.flags &= ~dns.flags.RD
            writer.writepkt(_ip(me, server, m.source_port, int(port or 53), query.to_wire(),
                                ttl=m.ip_ttl or 64), base + m.t0)  # fmt: skip
            count += 1
            for r in m.responses:
                if r.engine.value != "udp":
                    continue
                writer.writepkt(_ip(r.src, me, r.sport, m.source_port,
                                    base64.b64decode(r.raw_response), ttl=r.ip_ttl or 0,
                                    ip_id=r.ip_id or 0, df=bool(r.df)), base + r.t)  # fmt: skip
                count += 1
    return count
