"""Benchmark: the watch's per-round judgement (the analysis, in memory) against ``ingest`` +
``analyze`` of the same round through a store file, the command line's path.

The watch judges every round with the analysis itself (one judgement,
``events.minute.judge_round``); this measures what that costs per round of the 2014
demo's shape (100 names; three resolver streams and a dark host, each raced by a
forgery; a TCP control), so the round period a panel allows can be read off.

The last line is machine-readable:

    judge_round ms_per_round=<n> measurements_per_s=<n> store_path_ms_per_round=<n> ratio=<n>

Usage: ``.venv/bin/python bench/judge.py [--names 100] [--rounds 10]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from wallwatch import store
from wallwatch.analysis.run import analyze, open_netinfo
from wallwatch.events.minute import judge_round
from wallwatch.journal import Journal
from wallwatch.records import SCHEMA_VERSION, Answer, Measurement, Response
from wallwatch.vocab import Engine, TargetKind


def _reply(address: str, index: int) -> Response:
    return Response(t=0.01 * (index + 1), rtt=0.01 * (index + 1), src="192.0.2.53", sport=53,
                    ip_ttl=50 + index, raw_response="", rcode=0, ancount=1,
                    answers=(Answer("A", 60, "", address),))  # fmt: skip


def round_of(names: int, number: int) -> list[Measurement]:
    out = []
    for n in range(names):
        name, genuine = f"n{n}.example.com", f"93.184.{n % 250}.{1 + n // 250}"
        common = dict(schema_version=SCHEMA_VERSION, report_id="r", hostname=name,
                      measurement_start_time="2014-01-21 07:15:00", query_type="A",
                      transaction_id=1, source_port=40000, t0=0.0, t=0.5)  # fmt: skip
        out.append(Measurement(**common, measurement_uid=f"{number}.c{n}", vantage="client1",  # type: ignore[arg-type]
                               engine=Engine.TCP, resolver_address="8.8.8.8:53",
                               target_kind=TargetKind.CONTROL, responses=(_reply(genuine, 0),)))  # fmt: skip
        for k, kind in enumerate([TargetKind.RESOLVER] * 3 + [TargetKind.DARK]):
            replies = (_reply("65.49.2.178", 0),) + (
                (_reply(genuine, 1),) if kind == "resolver" else ()
            )
            out.append(Measurement(**common, measurement_uid=f"{number}.m{n}.{k}", vantage=f"v{k}",  # type: ignore[arg-type]
                                   engine=Engine.UDP, resolver_address=f"10.10.{k}.53:53",
                                   target_kind=kind, responses=replies))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--names", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    netinfo = open_netinfo()
    rounds = [round_of(args.names, i) for i in range(args.rounds)]
    judge_round(rounds[0], netinfo)  # warm up (DuckDB extensions, the table)
    start = time.perf_counter()
    for r in rounds:
        judge_round(r, netinfo)
    judged = (time.perf_counter() - start) / len(rounds)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        for i, r in enumerate(rounds):
            path, db = Path(tmp) / f"{i}.jsonl", Path(tmp) / f"{i}.duckdb"
            journal = Journal.open(path)
            for m in r:
                journal.write(m)
            journal.close()
            store.ingest([path], db)
            analyze(db, netinfo=netinfo)
        stored = (time.perf_counter() - start) / len(rounds)
    per_round = len(rounds[0])
    print(f"round: {per_round} measurements ({args.names} names x 4 streams + control)")
    print(f"judge_round ms_per_round={judged * 1000:.0f} measurements_per_s={per_round / judged:.0f} "
          f"store_path_ms_per_round={stored * 1000:.0f} ratio={stored / judged:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
