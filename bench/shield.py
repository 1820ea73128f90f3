"""Benchmark: ``wallwatch shield`` against dnsperf straight to the same Unbound, one run.

Starts Unbound on 127.0.0.1 answering every ``*.test`` name locally (no recursion, as
``bench/probe.py``), then:

1. dnsperf straight to Unbound for ``--seconds`` (the reference);
2. the same dnsperf through the shield (``--cache-size 0``: every query goes upstream
   and is checked, the shield's whole path; ``--workers 2``, one process per core)
   over the same names: answered queries/s;
3. added latency: ``--samples`` queries one at a time, straight and through the shield
   (cache off again), in alternation; the added latency at a percentile is the
   shield's percentile minus the direct one;
4. the cache: dnsperf through a shield with its cache on, over a few names.

All of it shares the machine's 2 cores with Unbound and dnsperf. The last line:

    shield qps=<n> direct_qps=<n> ratio=<shield/direct> p50_added_ms=<n> p99_added_ms=<n> cached_qps=<n> answered_pct=<n> workers=<n>

Usage: ``.venv/bin/python bench/shield.py [--seconds 8] [--samples 3000]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from probe import UNBOUND_CONF, free_port, wait_for_unbound  # noqa: E402


def dnsperf(port: int, names: Path, seconds: float, clients: int = 20) -> tuple[float, float]:
    """(queries answered per second, share of queries answered)."""
    out = subprocess.run(
        ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(names), "-l", str(seconds),
         "-c", str(clients), "-q", "500", "-t", "5"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    completed = re.search(r"Queries completed:\s+\d+ \(([\d.]+)%\)", out)
    return qps, float(completed.group(1)) if completed else 0.0


def start_shield(upstream: int, port: int, *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "wallwatch", "shield", "--listen", f"127.0.0.1:{port}",
         "--upstream", f"127.0.0.1:{upstream}", "--max-pending", "40000", *args],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    wait_for_unbound(port, timeout=20)
    return proc


def latencies(port: int, names: list[str]) -> list[float]:
    """Milliseconds per query, one at a time."""
    out = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2.0)
        for i, name in enumerate(names):
            txid = i & 0xFFFF
            query = txid.to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x01"
            query += b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\x00"
            query += b"\x00\x01\x00\x01" + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
            started = time.perf_counter()
            s.sendto(query, ("127.0.0.1", port))
            while True:
                reply = s.recv(4096)
                if reply[:2] == query[:2]:
                    break
            out.append((time.perf_counter() - started) * 1000)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=2, help="shield processes (one per core)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ww-bench-shield-"))
    port = free_port()
    (work / "unbound.conf").write_text(UNBOUND_CONF.format(port=port, dir=work))
    unbound = subprocess.Popen(["unbound", "-d", "-c", str(work / "unbound.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        wait_for_unbound(port)
        rng = random.Random(7)
        names = work / "names.txt"
        listed = [f"n{rng.getrandbits(48):012x}.test" for _ in range(2_000_000)]
        names.write_text("".join(f"{n} A\n" for n in listed))
        direct_qps, _ = dnsperf(port, names, args.seconds)
        shield_port = free_port()
        procs.append(start_shield(port, shield_port, "--cache-size", "0",
                                  "--workers", str(args.workers)))  # fmt: skip
        shield_qps, answered = dnsperf(shield_port, names, args.seconds)
        sample = [f"s{rng.getrandbits(48):012x}.test" for _ in range(args.samples)]
        direct_ms: list[float] = []
        shield_ms: list[float] = []
        for chunk in range(0, len(sample), 100):
            part = sample[chunk : chunk + 100]
            direct_ms += latencies(port, part)
            shield_ms += latencies(shield_port, [f"x{n}" for n in part])
        procs[-1].terminate()
        procs[-1].wait(timeout=30)
        cached_port = free_port()
        few = work / "few.txt"
        few.write_text("".join(f"c{i}.test A\n" for i in range(1000)))
        procs.append(start_shield(port, cached_port))
        cached_qps, _ = dnsperf(cached_port, few, max(2.0, args.seconds / 2))

        def pct(values: list[float], q: int) -> float:
            return statistics.quantiles(values, n=100)[q - 1]

        p50 = pct(shield_ms, 50) - pct(direct_ms, 50)
        p99 = pct(shield_ms, 99) - pct(direct_ms, 99)
        print(json.dumps({"direct_p50_ms": round(pct(direct_ms, 50), 3),
                          "shield_p50_ms": round(pct(shield_ms, 50), 3),
                          "direct_p99_ms": round(pct(direct_ms, 99), 3),
                          "shield_p99_ms": round(pct(shield_ms, 99), 3)}))  # fmt: skip
        print(
            f"shield qps={shield_qps:.0f} direct_qps={direct_qps:.0f} "
            f"ratio={shield_qps / direct_qps:.2f} p50_added_ms={p50:.3f} "
            f"p99_added_ms={p99:.3f} cached_qps={cached_qps:.0f} answered_pct={answered:.1f} "
            f"workers={args.workers}"
        )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        unbound.terminate()
        unbound.wait(timeout=10)
        for path in work.iterdir():
            path.unlink()
        os.rmdir(work)


if __name__ == "__main__":
    main()
