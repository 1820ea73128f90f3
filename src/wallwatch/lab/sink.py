"""The hosts at the forged (and the genuine) addresses: count what reaches them.

In January 2014 the traffic of a country's browsers fell on 65.49.2.178 and took
that host down (GreatFire 2014; [greatfire-2014]). The sink namespace holds every
forged address of the scenario, and the genuine addresses of the lab's names, and
counts two things:

* per address and protocol, the IPv4 packets that arrive (``sink-stats.json``), so the
  lab can say how much traffic a redirection sent where;
* per second and address, the TCP connections accepted on ports 80 and 443
  (``sink-connections.json``): the lab's emulated users (:mod:`wallwatch.lab.users`)
  connect to the address they were given, so the flood is *measured*, and a user
  whose shield waited out the forgery is seen reaching the genuine host.

Run as ``python -m wallwatch.lab.sink STATS.json`` inside the sink namespace.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import socket
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

ETH_P_IP = 0x0800
PACKET_OUTGOING = 4
PORTS = (80, 443)


def _write(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    tmp.replace(path)


def main() -> None:
    stats_path = Path(sys.argv[1])
    connections_path = stats_path.with_name("sink-connections.json")
    sel = selectors.DefaultSelector()
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IP))
    sock.bind(("eth0", ETH_P_IP))
    sock.setblocking(False)
    sel.register(sock, selectors.EVENT_READ, None)
    for port in PORTS:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("0.0.0.0", port))
        listener.listen(4096)
        listener.setblocking(False)
        sel.register(listener, selectors.EVENT_READ, port)
    counts: Counter[str] = Counter()
    #: second (Unix time) -> address -> connections accepted.
    per_second: dict[int, Counter[str]] = defaultdict(Counter)
    next_write = 0.0
    while True:
        for key, _mask in sel.select(timeout=0.5):
            source = key.fileobj
            assert isinstance(source, socket.socket)
            if key.data is None:
                for _ in range(1024):
                    try:
                        frame, addr = source.recvfrom(65535)
                    except BlockingIOError:
                        break
                    if addr[2] != PACKET_OUTGOING and len(frame) >= 34:
                        proto = {1: "icmp", 6: "tcp", 17: "udp"}.get(frame[23], str(frame[23]))
                        counts[f"{socket.inet_ntoa(frame[30:34])}/{proto}"] += 1
                continue
            for _ in range(1024):
                try:
                    conn, _peer = source.accept()
                except BlockingIOError:
                    break
                with contextlib.suppress(OSError):
                    per_second[int(time.time())][conn.getsockname()[0]] += 1
                conn.close()
        now = time.monotonic()
        if now >= next_write:
            _write(stats_path, dict(counts))
            _write(connections_path, {str(s): dict(c) for s, c in sorted(per_second.items())})
            next_write = now + 0.5


if __name__ == "__main__":
    main()
