"""Hostile replies through an AddressSanitizer build of _probeloop (the prober's C loop).

Run by tests/test_probeloop.py in a subprocess with libasan preloaded: an out-of-bounds
read or write, a use after free, or a failed CPython assertion ends it with an error.
Mutated messages go through the reply writer alone, then a sweep runs against a loopback
server that answers each query with mutated, duplicated, truncated and stray replies.
Usage: python tests/asan_probeloop.py PATH_TO_ASAN_BUILD.so [ROUNDS]
"""

import importlib.util
import random
import socket
import sys
import tempfile
import threading
from pathlib import Path

import dns.message
import dns.rrset
import msgspec

spec = importlib.util.spec_from_file_location("wallwatch._probeloop", sys.argv[1])
assert spec is not None and spec.loader is not None
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)

from wallwatch.journal import Journal, read_records  # noqa: E402
from wallwatch.names import QueryName  # noqa: E402
from wallwatch.probe import native  # noqa: E402
from wallwatch.probe.engine import ProbeConfig, Prober, Query  # noqa: E402
from wallwatch.targets import parse_target  # noqa: E402
from wallwatch.wire import encode_name  # noqa: E402

rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 20000
rng = random.Random(7)
TYPES = tuple(msgspec.json.encode(t) for t in ("A", "AAAA", "NS", "CNAME", "PTR", "DNAME"))


def genuine(query: bytes) -> bytes:
    q = dns.message.from_wire(query)
    r = dns.message.make_response(q)
    name = q.question[0].name
    r.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "c.example."))
    r.answer.append(dns.rrset.from_text("c.example.", 60, "IN", "A", "10.0.0.1"))
    return r.to_wire()


def mutate(data: bytes) -> bytes:
    b = bytearray(data[: rng.randrange(len(data) + 1)] if rng.random() < 0.3 else data)
    for _ in range(rng.randrange(6)):
        if len(b) > 2:
            b[2 + rng.randrange(len(b) - 2)] = rng.randrange(256)  # keep the ID: it matches
    b += bytes(rng.randrange(256) for _ in range(rng.randrange(8)))
    return bytes(b)


base = genuine(dns.message.make_query("x.example", "A", use_edns=0).to_wire())
qwire = encode_name("x.example").lower()
for _ in range(rounds):
    mod.encode_response(mutate(base), "127.0.0.1", 53, 64, rng.randrange(10**12),
                        rng.randrange(10**9), 0, 1, qwire, b'"udp"', TYPES)  # fmt: skip
print("ok", rounds)

server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
server.bind(("127.0.0.1", 0))
server.settimeout(0.2)
stop = threading.Event()


def serve() -> None:
    while not stop.is_set():
        try:
            query, peer = server.recvfrom(4096)
        except TimeoutError:
            continue
        reply = genuine(query)
        for _ in range(rng.randrange(4)):
            server.sendto(mutate(reply), peer)
        if rng.random() < 0.2:
            server.sendto(reply[:1], peer)  # a stray without an ID
        if rng.random() < 0.1:
            server.sendto(bytes([reply[0] ^ 0xFF]) + reply[1:], peer)  # a stray ID


thread = threading.Thread(target=serve, daemon=True)
thread.start()
native.module = mod
target = parse_target(f"127.0.0.1:{server.getsockname()[1]}")
queries = [Query(QueryName(f"n{i}.example", None, "asan", i), 1, target) for i in range(3000)]
with tempfile.TemporaryDirectory() as tmp:
    out = Path(tmp) / "out.jsonl"
    journal = Journal.open(out)
    prober = Prober(
        ProbeConfig(rate=None, timeout=0.2, window=0.05, retries=1, vantage="asan"), journal
    )
    stats = prober.run(queries)
    journal.close()
    assert prober._core is not None
    kept = list(read_records(out))
stop.set()
thread.join()
assert stats.measurements == 3000, stats
print("sweep", len(kept), "ok")
