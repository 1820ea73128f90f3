"""Benchmark: what a flood of crafted replies costs the prober, against ordinary ones.

Feeds the prober's receive path (``Prober._on_datagram``, the code every datagram from a
socket goes through) with unsolicited replies from one source: worst-case ones (64 KB,
every answer named by a long backward chain of compression pointers: quadratic work for
an unbounded reader) and ordinary ones (a 45-byte A reply). Records go to /dev/null. The
per-packet cost includes the header match, the per-source budget, and parsing and
recording the packets within it. A second line times one worst-case parse alone.

The last line is machine-readable:

    hostile worst_case_us_per_packet=<n> ordinary_us_per_packet=<n> ratio=<n>

Usage: ``.venv/bin/python bench/hostile.py [--packets 100000]``
"""

from __future__ import annotations

import argparse
import struct
import time

from wallwatch.journal import Journal
from wallwatch.probe.engine import ProbeConfig, Prober
from wallwatch.wire import parse_reply


def pointer_chain_reply(size: int = 65000) -> bytes:
    """Each answer named by a pointer to the previous answer's name while offsets fit a
    pointer, then every answer by the chain's end: each one walks the whole chain."""
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    out = bytearray(struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0) + question)
    previous, count = 12, 0
    while len(out) + 16 <= size:
        here = len(out)
        out += struct.pack("!H", 0xC000 | previous) + struct.pack("!HHIH", 1, 1, 60, 4)
        out += b"\x01\x02\x03\x04"
        if here < 0x3FF0:
            previous = here
        count += 1
    struct.pack_into("!H", out, 6, count)
    return bytes(out)


ORDINARY = (
    struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 1, 0, 0)
    + b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    + b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x5d\xb8\xd7\x0e"
)  # fmt: skip


def per_packet_us(packet: bytes, count: int) -> float:
    journal = Journal.open("/dev/null")
    prober = Prober(ProbeConfig(rate=None, vantage="bench"), journal)
    index = prober._add_channel(2, 0)
    addr = ("192.0.2.66", 53)
    start = time.perf_counter()
    for _ in range(count):
        prober._on_datagram(index, packet, addr, 64, 0)
    elapsed = time.perf_counter() - start
    prober._shutdown()
    journal.close()
    return elapsed / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=100000)
    args = parser.parse_args()
    worst = pointer_chain_reply()
    start = time.perf_counter()
    parsed = parse_reply(worst)
    one = (time.perf_counter() - start) * 1e3
    print(f"one worst-case parse: {one:.1f} ms ({len(worst)} bytes, {parsed.failure})")
    w = per_packet_us(worst, args.packets)
    o = per_packet_us(ORDINARY, args.packets)
    print(
        f"hostile worst_case_us_per_packet={w:.2f} ordinary_us_per_packet={o:.2f} ratio={w / o:.2f}"
    )


if __name__ == "__main__":
    main()
