"""Benchmark: the lab's injector driven by the prober, in the namespace lab (root).

Brings up ``bench/injector.toml`` (one Injector-3 profile forging every .com
name), then sweeps from the outside vantage to the inside dark host -- every
reply is a forgery, so forged replies per second is the injector's throughput --
at increasing offered rates, reading the border's kernel drop counter
(``PACKET_STATISTICS``) and the prober's (``SO_RXQ_OVFL``). A last sweep from the
inside client through 8.8.8.8 measures how often the forgery wins the race.

The last line is machine-readable:

    injector offered_qps=<n> forged_qps=<n> drops=<n> forged_first_pct=<n>

(the highest offered rate with no kernel drop, or the highest tried).
Usage: ``sudo .venv/bin/python bench/injector.py [--seconds 4] [--rates 15000,30000,60000,80000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wallwatch.lab import netns, scenario, topology


def border_drops() -> int:
    time.sleep(0.7)  # the border writes its counters twice a second
    stats = json.loads((topology.state_dir() / "border-stats.json").read_text())
    return int(stats["kernel_drops"])


def sweep(node: str, target: str, names: Path, rate: int, out: Path) -> list[dict[str, object]]:
    cmd = ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m", "wallwatch", "probe",
           "-f", str(names), "-t", target, "--rate", str(rate), "--window", "0.3", "--timeout", "1",
           "--retries", "0", "--max-inflight", "20000", "-o", str(out), "--quiet"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    print(done.stderr.strip(), file=sys.stderr)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    out.unlink()
    return [r for r in records if r["record_type"] == "measurement"]


def dnsperf(target: str, names: Path, rate: int, seconds: float) -> float:
    """Replies per second dnsperf saw (every one of them forged: the target runs no server)."""
    cmd = ["ip", "netns", "exec", netns.ns_name("outside"), "dnsperf", "-s", target, "-d", str(names),
           "-Q", str(rate), "-l", str(int(seconds)), "-c", "4", "-q", "2000", "-t", "1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Queries per second" in line:
            return float(line.split()[-1])
    raise RuntimeError("dnsperf printed no rate:\n" + out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="15000,30000,60000,80000")
    parser.add_argument(
        "--driver",
        choices=["dnsperf", "wallwatch"],
        default="dnsperf",
        help="load generator: dnsperf (C) or the prober itself",
    )
    args = parser.parse_args()
    reason = netns.can_use_namespaces()
    if reason:
        sys.exit(f"bench/injector.py: {reason}")
    bench = scenario.load(str(Path(__file__).with_name("injector.toml")))
    if netns.ours():
        topology.down()
    topology.up(bench, log=lambda text: print(text, file=sys.stderr))
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="ww-bench-") as tmp:
            work = Path(tmp)
            for rate in (int(r) for r in args.rates.split(",")):
                count = int(rate * args.seconds)
                names = work / "names.txt"
                names.write_text("".join(f"n{i}.bench{rate}.com\n" for i in range(count)))
                before = border_drops()
                if args.driver == "dnsperf":
                    names.write_text("".join(f"n{i}.bench.com A\n" for i in range(count)))
                    forged_qps = dnsperf("10.10.3.7", names, rate, args.seconds)
                else:
                    ms = sweep("outside", "dark:10.10.3.7", names, rate, work / "out.jsonl")
                    forged = sum(len(m["responses"]) for m in ms)
                    span = max(float(m["t"]) for m in ms) - min(float(m["t0"]) for m in ms)
                    forged_qps = forged / (span - 0.3)
                drops = border_drops() - before
                results.append((rate, forged_qps, drops))
                print(f"offered {rate}/s ({args.driver}): {forged_qps:.0f} forged replies/s, "
                      f"border kernel drops {drops}", file=sys.stderr)  # fmt: skip
            names.write_text("".join(f"w{i}.race.com\n" for i in range(2000)))
            ms = sweep("client1", "8.8.8.8", names, 1000, work / "out.jsonl")
            pool = set(bench.pool_addresses())
            first = [m for m in ms if m["responses"]]
            won = sum(
                1 for m in first if (m["responses"][0]["answers"] or [{}])[0].get("ipv4") in pool
            )
            pct = 100.0 * won / max(len(first), 1)
            print(
                f"race: forged reply first in {won} of {len(first)} queries via 8.8.8.8",
                file=sys.stderr,
            )
    finally:
        topology.down()
    clean = [r for r in results if r[2] == 0] or results
    rate, forged_qps, drops = max(clean, key=lambda r: r[1])
    print(
        f"injector offered_qps={rate} forged_qps={forged_qps:.0f} drops={drops} forged_first_pct={pct:.1f}"
    )


if __name__ == "__main__":
    main()
