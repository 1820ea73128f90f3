"""Emulated users: resolve a popular name, then connect to the address they were given.

Why: in 2014 the harm was not the forged answers themselves but where they sent
people -- a country's browsers connecting to 65.49.2.178 until it fell over
([greatfire-2014]). Counting forged answers says how many lookups were hit; users who
*act* on their answers let the lab measure the flood at the sink
(:mod:`wallwatch.lab.sink`) and show the same users reaching the genuine hosts through
a shield. Each user picks names by Zipf popularity (web traffic's shape: rank r is
asked ~1/r^s as often, [jung-2002]), resolves with a plain stub (the first reply
that matches its query, as libc's does) and opens a TCP connection to port 80 or
443 of the answer, then thinks for an exponentially distributed time.

Run in a lab node: ``wallwatch lab exec client1 -- .venv/bin/python -m wallwatch.lab.users
--resolver 8.8.8.8 --users 50 --duration 20 --out users.jsonl``. One JSON line per
lookup, written as it happens; a summary on stdout at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from pathlib import Path
from typing import IO

import dns.asyncquery
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype

from wallwatch.lab import topology


def popular_names() -> list[str]:
    """The lab's names in popularity order (the packaged list is ranked)."""
    return [n for n in topology.lab_names() if n.endswith((".com", ".net", ".org", ".cn"))]


async def _user(index: int, args: argparse.Namespace, names: list[str], weights: list[float],
                until: float, out: list[dict[str, object]], log: IO[str]) -> None:  # fmt: skip
    rng = random.Random(args.seed * 100003 + index)
    host, _, port = args.resolver.partition(":")
    while time.monotonic() < until:
        name = rng.choices(names, weights)[0]
        started = time.monotonic()
        record: dict[str, object] = {"t": round(time.time(), 3), "user": index, "name": name}
        query = dns.message.make_query(name, "A", use_edns=False)
        try:
            reply = await dns.asyncquery.udp(query, host, timeout=args.timeout,
                                             port=int(port or 53))  # fmt: skip
            record["rcode"] = reply.rcode()
            found = [r.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A
                     for r in rrset]  # fmt: skip
            record["answer"] = found[0] if found else None
        except (dns.exception.DNSException, OSError) as exc:
            record["rcode"], record["answer"] = None, None
            record["error"] = type(exc).__name__
        record["lookup_ms"] = round((time.monotonic() - started) * 1000, 2)
        answer = record.get("answer")
        if isinstance(answer, str) and args.connect:
            port_to = rng.choice((80, 443))
            try:
                _reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(answer, port_to), timeout=args.timeout
                )
                writer.close()
                record["connected"] = True
            except (OSError, TimeoutError):
                record["connected"] = False
        out.append(record)
        log.write(json.dumps(record) + "\n")  # as it happens: a killed run keeps its lookups
        log.flush()
        await asyncio.sleep(rng.expovariate(1.0 / args.think) if args.think > 0 else 0)


async def run(args: argparse.Namespace) -> list[dict[str, object]]:
    names = Path(args.names).read_text().split() if args.names else popular_names()
    if args.tlds:
        names = [n for n in names if n.rsplit(".", 1)[-1] in args.tlds.split(",")]
    weights = [1.0 / (rank**args.zipf) for rank in range(1, len(names) + 1)]
    until = time.monotonic() + args.duration
    out: list[dict[str, object]] = []
    with open(args.out, "w") as log:
        await asyncio.gather(*(_user(i, args, names, weights, until, out, log)
                               for i in range(args.users)))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wallwatch.lab.users", description=__doc__)
    parser.add_argument("--resolver", required=True, help="ADDR[:PORT] the users' stub asks")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between lookups")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--names", default=None, help="a ranked name list (default: the lab's)")
    parser.add_argument("--tlds", default=None, help="only these TLDs, e.g. com,net,org")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-connect",
        dest="connect",
        action="store_false",
        help="resolve only (a load, not users)",
    )
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    if args.users < 1 or args.duration <= 0 or args.think < 0 or args.timeout <= 0:
        parser.error("--users must be >= 1, --duration and --timeout > 0, --think >= 0")
    records = asyncio.run(run(args))
    answers = Counter(str(r.get("answer")) for r in records)
    print(json.dumps({"lookups": len(records), "top_answers": answers.most_common(5),
                      "connected": sum(1 for r in records if r.get("connected"))}))  # fmt: skip


if __name__ == "__main__":
    main()
