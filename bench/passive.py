"""Benchmark: wallwatch passive reading and judging a resolver's traffic, pcap and dnstap.

Two files of the same generated traffic: a resolver answering ``--rate`` queries a
second, names drawn from a Zipf law (exponent ``--zipf``) over ``--names`` names, as
resolver query logs are ([zipf-dns] in docs/sources.md), each name with its own
addresses and a TTL counting down, one answer in 200 a SERVFAIL. The pcap file holds
each query and its reply (two DNS messages) as a capture of the resolver's upstream side
would; the dnstap file one ``CLIENT_RESPONSE`` per answer.

``wallwatch passive`` reads each file and *judges* it: every minute is closed and goes
through the analysis's rules and the detector, the operator's signals, and the records
written, exactly as ``wallwatch passive --pcap/--dnstap`` runs (minus the interpreter's
start). The references, in the same run over the same files, are the tools an operator
has: ``tcpdump -r -n`` decoding every packet to text, and BIND's ``dnstap-read`` printing
every message; both write to /dev/null.

Each size is also run at 1/4 and 1/2 of it, so the cost per message at each shows how
it grows. The last line is machine-readable:

    passive pcap_msgs_per_s=<n> dnstap_msgs_per_s=<n> tcpdump_msgs_per_s=<n>
        dnstap_read_msgs_per_s=<n> pcap_ratio=<n> dnstap_ratio=<n> new_share=<n> ...

``new_share``: the share of answers that were not a repeat, in their minute, of an answer
already recorded (the records written and judged); the rest are counted on them.

Usage: ``.venv/bin/python bench/passive.py [--messages 1000000] [--names 100000]``
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wallwatch import fastwire
from wallwatch.interop import dnstap
from wallwatch.passive import Passive

START = 1_390_288_500 - 1_390_288_500 % 60


def _name(i: int) -> bytes:
    return b"".join(bytes([len(p)]) + p for p in (b"site%d" % i, b"example", b"com")) + b"\0"


def _reply(i: int, txid: int, ttl: int, servfail: bool) -> bytes:
    question = _name(i) + b"\0\1\0\1"
    if servfail:
        return struct.pack("!HHHHHH", txid, 0x8182, 1, 0, 0, 0) + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, ttl, 4) + bytes(
        (198, 51, i % 250, i // 250 % 250))  # fmt: skip
    return struct.pack("!HHHHHH", txid, 0x8180, 1, 1, 0, 0) + question + answer


def _query(i: int, txid: int) -> bytes:
    return struct.pack("!HHHHHH", txid, 0x0100, 1, 0, 0, 0) + _name(i) + b"\0\1\0\1"


def _draws(n: int, names: int, zipf: float, seed: int = 1) -> list[int]:
    weights = [1.0 / (k + 1) ** zipf for k in range(names)]
    total = sum(weights)
    cumulative, run = [], 0.0
    for w in weights:
        run += w / total
        cumulative.append(run)
    rng = random.Random(seed)
    return [min(bisect.bisect_left(cumulative, rng.random()), names - 1) for _ in range(n)]


def _udp_ip(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, ttl, 17, 0, src,
                       dst) + udp  # fmt: skip


def write_files(tmp: Path, answers: int, names: int, zipf: float,
                rate: float) -> tuple[Path, Path]:  # fmt: skip
    """The pcap (a query and its reply per answer) and the dnstap file of one traffic,
    a resolver answering ``rate`` queries a second."""
    draws = _draws(answers, names, zipf)
    resolver, server = socket.inet_aton("10.10.2.53"), socket.inet_aton("192.5.6.30")
    pcap, tap = tmp / "upstream.pcap", tmp / "resolver.dnstap"
    step = 1.0 / rate
    payloads = []
    with open(pcap, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 101))
        for k, i in enumerate(draws):
            t = START + k * step
            txid, port = k % 65536, 1024 + k % 60000
            reply = _reply(i, txid, 3600 - (k // 7) % 3000, k % 200 == 0)
            for at, packet in (
                (t, _udp_ip(resolver, server, port, 53, _query(i, txid), 64)),
                (t + 0.03, _udp_ip(server, resolver, 53, port, reply, 50)),
            ):
                sec = int(at)
                out.write(struct.pack("<IIII", sec, int((at - sec) * 1e6), len(packet),
                                      len(packet)) + packet)  # fmt: skip
            sec, got = int(t), t + 0.0004
            payloads.append(dnstap.message_bytes(
                identity=b"isp-resolver", type=6, socket_family=1, socket_protocol=1,
                query_address=socket.inet_aton(f"10.0.{k % 250}.{k % 200 + 1}"),
                query_port=port, response_address=resolver, response_port=53,
                query_time_sec=sec, query_time_nsec=int((t - sec) * 1e9),
                response_time_sec=int(got), response_time_nsec=int((got - int(got)) * 1e9),
                response_message=reply))  # fmt: skip
    with open(tap, "wb") as out:
        dnstap.write_frames(out, payloads)
    return pcap, tap


def _passive(out: Path) -> Passive:
    return Passive(out, emit=lambda line: None)


def run_pcap(pcap: Path, out: Path) -> tuple[float, dict[str, object]]:
    engine = _passive(out)
    start = time.perf_counter()
    engine.read_pcap(pcap, vantage="isp", clients=dnstap.ClientPolicy.DROP,
                     hide=lambda client: None, errors=lambda e: None)  # fmt: skip
    summary = engine.close()
    return time.perf_counter() - start, summary


def run_dnstap(tap: Path, out: Path) -> tuple[float, dict[str, object]]:
    engine = _passive(out)
    converter = dnstap.Converter(vantage="isp", source=str(tap))
    start = time.perf_counter()
    engine.read_dnstap(tap, converter, errors=lambda e: None)
    summary = engine.close()
    return time.perf_counter() - start, summary


def _tool(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _records(out: Path) -> int:
    return sum(len(f.read_bytes().splitlines()) for f in (out / "measurements").glob("*.jsonl"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "--messages",
        type=int,
        default=1_000_000,
        help="answers at the full size (the pcap holds twice as many messages)",
    )
    parser.add_argument("--names", type=int, default=100_000)
    parser.add_argument("--zipf", type=float, default=1.0)
    parser.add_argument(
        "--rate",
        type=float,
        default=20_000,
        help="answers a second of the resolver modelled (its minutes' size)",
    )
    args = parser.parse_args()
    for tool in ("tcpdump", "dnstap-read"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is needed for the reference (scripts/setup installs it)")
    if not fastwire.NATIVE:
        print("note: the native reader is not built; pure Python", file=sys.stderr)
    results = []
    for fraction in (0.25, 0.5, 1.0):
        answers = int(args.messages * fraction)
        with tempfile.TemporaryDirectory(prefix="ww-bench-passive-") as tmp:
            root = Path(tmp)
            pcap, tap = write_files(root, answers, args.names, args.zipf, args.rate)
            tcpdump = _tool(["tcpdump", "-r", str(pcap), "-n"])
            dnstap_read = _tool(["dnstap-read", str(tap)])
            pcap_s, pcap_summary = run_pcap(pcap, root / "out-pcap")
            tap_s, tap_summary = run_dnstap(tap, root / "out-dnstap")
            recorded = _records(root / "out-dnstap")
            assert pcap_summary["answers"] == tap_summary["answers"] == answers, (
                pcap_summary["answers"], tap_summary["answers"], answers)  # fmt: skip
            row = {
                "answers": answers, "pcap_msgs_per_s": 2 * answers / pcap_s,
                "dnstap_msgs_per_s": answers / tap_s,
                "tcpdump_msgs_per_s": 2 * answers / tcpdump,
                "dnstap_read_msgs_per_s": answers / dnstap_read,
                "new_share": recorded / answers,
                "minutes_judged": tap_summary["minutes_judged"],
            }  # fmt: skip
            results.append(row)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), file=sys.stderr)  # fmt: skip
    full = results[-1]
    curve = " ".join(
        f"us_per_msg_at_{r['answers']}={1e6 / r['dnstap_msgs_per_s']:.2f}" for r in results
    )
    print(f"passive pcap_msgs_per_s={full['pcap_msgs_per_s']:.0f} "
          f"dnstap_msgs_per_s={full['dnstap_msgs_per_s']:.0f} "
          f"tcpdump_msgs_per_s={full['tcpdump_msgs_per_s']:.0f} "
          f"dnstap_read_msgs_per_s={full['dnstap_read_msgs_per_s']:.0f} "
          f"pcap_ratio={full['pcap_msgs_per_s'] / full['tcpdump_msgs_per_s']:.2f} "
          f"dnstap_ratio={full['dnstap_msgs_per_s'] / full['dnstap_read_msgs_per_s']:.2f} "
          f"new_share={full['new_share']:.3f} native={fastwire.NATIVE} {curve}")  # fmt: skip


if __name__ == "__main__":
    main()
