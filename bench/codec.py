"""Benchmark: wallwatch's wire codec against dnspython (the reference), same messages.

Prints one line per operation and, last, a summary line:

    codec build_us=<n> parse_us=<n> parse_big_us=<n> speedup_build=<x> speedup_parse=<x>

Usage: ``.venv/bin/python bench/codec.py``
"""

from __future__ import annotations

import sys
import timeit

import dns.message
import dns.rrset

from wallwatch import wire


def per_call_us(fn: object, number: int) -> float:
    best = min(timeit.repeat(fn, number=number, repeat=5))  # type: ignore[arg-type]
    return best / number * 1e6


def main() -> None:
    query = dns.message.make_query("www.example.com", "A", use_edns=0, payload=1232)
    small = dns.message.make_response(query)
    small.answer.append(dns.rrset.from_text("www.example.com.", 300, "IN", "A", "93.184.216.34"))
    small_wire = small.to_wire()
    big = dns.message.make_response(query)
    big.answer.append(
        dns.rrset.from_text("www.example.com.", 300, "IN", "CNAME", "edge.example.net.")
    )
    big.answer.append(
        dns.rrset.from_text("edge.example.net.", 60, "IN", "A", "192.0.2.1", "192.0.2.2")
    )
    big.authority.append(
        dns.rrset.from_text(
            "example.net.", 3600, "IN", "NS", "a.ns.example.net.", "b.ns.example.net."
        )
    )
    big_wire = big.to_wire()

    ours_build = per_call_us(lambda: wire.build_query(0x1234, "www.example.com", 1), 20000)
    ref_build = per_call_us(
        lambda: dns.message.make_query("www.example.com", "A", use_edns=0).to_wire(), 2000
    )
    ours_parse = per_call_us(lambda: wire.parse_reply(small_wire), 20000)
    ref_parse = per_call_us(lambda: dns.message.from_wire(small_wire).answer[0][0].to_text(), 2000)
    ours_big = per_call_us(lambda: wire.parse_reply(big_wire), 20000)
    ref_big = per_call_us(
        lambda: [r.to_text() for s in dns.message.from_wire(big_wire).answer for r in s], 2000
    )
    for label, ours, ref in (
        ("build query", ours_build, ref_build),
        (f"parse {len(small_wire)} B reply (1 A + OPT)", ours_parse, ref_parse),
        (f"parse {len(big_wire)} B reply (CNAME + 2 A + 2 NS + OPT)", ours_big, ref_big),
    ):
        print(f"{label:48s} wallwatch {ours:7.2f} us   dnspython {ref:7.1f} us   x{ref / ours:.0f}")
    print(f"python {sys.version.split()[0]} ({sys.executable})", file=sys.stderr)
    print(
        f"codec build_us={ours_build:.2f} parse_us={ours_parse:.2f} parse_big_us={ours_big:.2f} "
        f"speedup_build={ref_build / ours_build:.0f} speedup_parse={ref_parse / ours_parse:.0f}"
    )


if __name__ == "__main__":
    main()
