"""The hosts at the forged addresses: count every packet that reaches them.

In January 2014 the traffic of a country's browsers fell on 65.49.2.178 and took
that host down (GreatFire 2014; [greatfire-2014]). The sink namespace holds every
forged address of the scenario and counts, per address and protocol, the IPv4
packets that arrive, so the lab can say how much traffic a redirection sent where.

Run as ``python -m wallwatch.lab.sink STATS.json`` inside the sink namespace.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections import Counter
from pathlib import Path

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4


def main() -> None:
    stats_path = Path(sys.argv[1])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind(("eth0", ETH_P_IP))
    sock.settimeout(0.5)
    counts: Counter[str] = Counter()
    next_write = 0.0
    while True:
        try:
            frame, addr = sock.recvfrom(65535)
            if addr[2] != PACKET_OUTGOING and len(frame) >= 34:
                proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(frame[23], str(frame[23]))
                counts[f"{socket.inet_ntoa(frame[30:34])}/{proto}"] += 1
        except TimeoutError:
            pass
        now = time.monotonic()
        if now >= next_write:
            tmp = stats_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(dict(counts)))
            tmp.replace(stats_path)
            next_write = now + 0.5


if __name__ == "__main__":
    main()
