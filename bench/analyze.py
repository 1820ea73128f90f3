"""Benchmark: the SQL analysis over millions of replies, against a per-row Python baseline.

Generates a realistic mix of records (per name: a TCP control; a resolver query that is
either clean or raced by two forgeries; a dark-host query that is either silent or
answered by two forgeries), loads them into a fresh store with ``wallwatch ingest``'s code
and runs the analysis, timing both. The baseline parses each reply with dnspython and
applies the same rules in Python, row by row, on a sample.

Each size runs in a child process (as the CLI runs; its peak RSS is that run's): a
quarter, a half and all of ``--names`` (the cost curve), and with ``--growth`` four times
as many (memory must stay flat as the data grows: the analysis runs in slices of names
once the store outgrows ``WALLWATCH_MEMORY_LIMIT``). The last line is machine-readable:

    analyze replies_per_s=<n> baseline_replies_per_s=<n> ratio=<n> peak_rss_mb=<n> ...

(``replies_per_s`` is end to end: ingest plus analysis. ``write_floor_s`` is what only
writing the tables costs, nothing computed: the full size's store tables and verdicts
copied as they are into the same store (:func:`write_floor`), and ``floor_replies_per_s``
the end-to-end rate that alone allows. The records are written with their
Parquet twin, as ``wallwatch probe`` writes them, so ingest reads columns; the line also
gives the full size ingested from the JSON alone (``json_ingest_s``, ``json_replies_per_s``)
and what the twin cost its writer, converting in a background thread
(``twin_us_per_reply``).)
Usage: ``WALLWATCH_MEMORY_LIMIT=800MB .venv/bin/python bench/analyze.py [--names 650000] [--growth]``
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset

from wallwatch import columns, records, store, wire
from wallwatch.analysis.run import analyze, slices_for
from wallwatch.journal import Journal
from wallwatch.lab.forge import forge_reply
from wallwatch.names import QueryName
from wallwatch.probe.reply import make_response
from wallwatch.records import Measurement, Response
from wallwatch.vocab import Engine, TargetKind

FORGED = ("65.49.2.178", "59.24.3.173")


def reply(
    name: str, address: str | None, *, rtt: float, ip_ttl: int | None, forged: bool
) -> Response:
    query = wire.build_query(0x1234, name, 1)
    if forged:
        assert address is not None
        data = forge_reply(query, address)
    else:
        msg = dns.message.from_wire(query)
        answer = dns.message.make_response(msg)
        if address:
            answer.answer.append(dns.rrset.from_text(name + ".", 300, "IN", "A", address))
        data = answer.to_wire()
    return make_response(data, wire.parse_reply(data), src="198.51.100.53", sport=53, ip_ttl=ip_ttl,
                         t=1.0, rtt=rtt)  # fmt: skip


def measurement(
    uid: int, name: QueryName, kind: TargetKind, engine: Engine, responses: tuple[Response, ...]
) -> Measurement:
    return Measurement(
        schema_version=records.SCHEMA_VERSION, measurement_uid=f"b{uid:010x}", report_id="bench",
        measurement_start_time="2014-01-21 07:15:00", vantage="bench", hostname=name.hostname,
        query_type="A", engine=engine, resolver_address="8.8.8.8:53" if kind != TargetKind.DARK else "10.10.3.7:53",
        target_kind=kind, transaction_id=0x1234, source_port=40000, t0=0.0, t=0.5,
        edns_payload=1232, responses=responses,
    )  # fmt: skip


def generate(path: Path, count: int) -> tuple[int, float]:
    """Write the records for ``count`` names, with their Parquet twin as the prober writes
    it; return the number of replies and the seconds the twin's conversion took."""
    journal = Journal.open(path, twin=True)
    assert journal.columns is not None
    # A whole twin, as a rate-limited sweep leaves (a sweep outrunning the conversion
    # leaves some ranges to the JSON; this generator runs faster than any sweep).
    journal.columns.wait = True
    replies = uid = 0
    # Replies come from templates: the analysis reads addresses, timing and TTLs, which the
    # templates vary; the name inside the raw bytes is not re-read.
    for i in range(count):
        name = QueryName(f"n{i}.example.com", None, "bench", i)
        genuine = f"192.0.2.{i % 250 + 1}"
        blocked = i % 10 < 3
        ctrl = (_templates[genuine][0],)
        resolver = _templates[genuine][1] if not blocked else _templates[genuine][2]
        dark = _templates[genuine][3] if blocked else ()
        for kind, engine, responses in ((TargetKind.CONTROL, Engine.TCP, ctrl), (TargetKind.RESOLVER, Engine.UDP, resolver),
                                        (TargetKind.DARK, Engine.UDP, dark)):  # fmt: skip
            uid += 1
            replies += len(responses)
            journal.write(measurement(uid, name, kind, engine, responses))
    journal.close()
    assert journal.columns is not None and journal.columns.failed is None
    return replies, journal.columns.seconds


_templates: dict[
    str, tuple[Response, tuple[Response, ...], tuple[Response, ...], tuple[Response, ...]]
] = {}


def build_templates() -> None:
    for last in range(1, 251):
        genuine = f"192.0.2.{last}"
        name = "template.example.com"
        clean = reply(name, genuine, rtt=0.16, ip_ttl=61, forged=False)
        f1 = reply(name, FORGED[0], rtt=0.0005, ip_ttl=60, forged=True)
        f2 = reply(name, FORGED[1], rtt=0.0007, ip_ttl=99, forged=True)
        _templates[genuine] = (
            reply(name, genuine, rtt=0.2, ip_ttl=None, forged=False),
            (clean,),
            (f1, f2, clean),
            (f1, f2),
        )


def baseline(path: Path, sample: int) -> float:
    """Replies per second of a row-by-row Python analysis (dnspython + the same rules)."""
    from wallwatch.journal import read_records

    controls: dict[str, set[str]] = {}
    rows: list[Measurement] = []
    for record in read_records(path):
        if isinstance(record, Measurement):
            rows.append(record)
        if len(rows) >= sample:
            break
    start = time.perf_counter()
    done = 0
    for m in rows:
        parsed = [dns.message.from_wire(base64.b64decode(r.raw_response)) for r in m.responses]
        ips = [{rd.to_text() for rrset in p.answer for rd in rrset} for p in parsed]
        if m.target_kind == TargetKind.CONTROL:
            controls[m.hostname] = set().union(*ips) if ips else set()
            done += len(ips)
            continue
        control = controls.get(m.hostname, set())
        for index, got in enumerate(ips):
            later = any(later_ips & control for later_ips in ips[index + 1 :])
            if m.target_kind == TargetKind.DARK and got:
                verdict = "injected.dark_destination"
            elif later and not got & control:
                verdict = "injected.multi_reply"
            elif got & control:
                verdict = "ok.match_ip"
            else:
                verdict = "unknown"
            done += 1
            _ = verdict
    return done / (time.perf_counter() - start)


def run_one(path: Path, work: Path, twin: bool, floor_too: bool = False) -> dict[str, float]:
    """Ingest (through the twin, or the JSON) and analyse ``path`` in this process (a
    child: its peak RSS is this run's); ``floor_too``: then, with the peak read, measure
    :func:`write_floor` on the same store."""
    db = work / "ww.duckdb"
    t1 = time.perf_counter()
    store.ingest([path], db, twin=twin)
    t2 = time.perf_counter()
    con = store.connect(db, read_only=True)
    slices = slices_for(con)
    con.close()
    summary = analyze(db)
    t3 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    floor = write_floor(db) if floor_too else 0.0
    db.unlink()
    print(f"  {summary.replies} verdicts: ingest {t2 - t1:.1f} s ({'twin' if twin else 'JSON'}), analysis {t3 - t2:.1f} s "
          f"({summary.replies / (t3 - t2):.0f} replies/s) in {slices} slice(s); "
          f"attributions {summary.attributions}", file=sys.stderr)  # fmt: skip
    return {"seconds": t3 - t1, "ingest": t2 - t1, "analysis": t3 - t2, "slices": slices,
            "rss_mb": peak, "floor": floor}  # fmt: skip


#: The tables an ingest and an analysis must write, whatever they compute: every table
#: ingest writes and the per-reply verdicts (the other outputs are per name, and small).
FLOOR_TABLES = (*store.TABLES, "reply_verdicts")


def write_floor(db: Path) -> float:
    """Seconds to copy :data:`FLOOR_TABLES` as they are into new tables of the same store,
    with nothing computed: the least an ingest plus analysis that writes them can take in
    this design (a measured bound, not an estimate; docs/performance.md)."""
    con = store.connect(db)
    try:
        con.execute("SET preserve_insertion_order = false")  # as ingest writes
        start = time.perf_counter()
        for table in FLOOR_TABLES:
            con.execute(f"CREATE TABLE _floor_{table} AS SELECT * FROM {table}")
        con.execute("CHECKPOINT")
        return time.perf_counter() - start
    finally:
        con.close()


def measure(
    path: Path, replies: int, *, twin: bool = True, floor: bool = False
) -> dict[str, float]:
    """:func:`run_one` in a child process, as the CLI would run it."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            str(path),
            *([] if twin else ["--json"]),
            *(["--floor"] if floor else []),
        ],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    result["us_per_reply"] = result["seconds"] / replies * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--names", type=int, default=650_000)
    parser.add_argument("--sample", type=int, default=30_000)
    parser.add_argument("--growth", action="store_true",
                        help="also run at 4x the names (the memory-growth check)")  # fmt: skip
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(run_one(args.one, args.one.parent, not args.json, args.floor)))
        return
    build_templates()
    sizes = {"quarter": args.names // 4, "half": args.names // 2, "": args.names}
    if args.growth:
        sizes["4x"] = args.names * 4
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="ww-bench-") as tmp:
        work = Path(tmp)
        for label, names in sizes.items():
            path = work / f"records-{label or 'full'}.jsonl"
            replies, converted = generate(path, names)
            # The records reach the disk before the clock starts: otherwise the kernel's
            # writeback of the gigabytes just written competes with the first timed run
            # (the twin's) for the two cores, and not with the JSON run after it.
            os.sync()
            print(f"{label or 'full'}: {replies} replies ({path.stat().st_size >> 20} MiB), "
                  f"twin converted in {converted:.1f} s of CPU", file=sys.stderr)  # fmt: skip
            results[label] = {
                **measure(path, replies, floor=label == ""),
                "replies": replies,
                "twin_s": converted,
            }
            if label == "":
                base = baseline(path, args.sample)
                plain = measure(path, replies, twin=False)
            path.unlink()
            columns.discard(path)
    full = results[""]
    rate = full["replies"] / full["seconds"]
    curve = " ".join(f"us_per_reply_at_{k}={v['us_per_reply']:.2f} peak_rss_mb_at_{k}={v['rss_mb']:.0f}"
                     for k, v in results.items() if k)  # fmt: skip
    growth = f" growth_4x={results['4x']['rss_mb'] / full['rss_mb']:.2f}" if "4x" in results else ""
    print(f"analyze replies_per_s={rate:.0f} baseline_replies_per_s={base:.0f} ratio={rate / base:.1f} "
          f"peak_rss_mb={full['rss_mb']:.0f} us_per_reply={full['us_per_reply']:.2f} {curve}{growth} "
          f"slices={full['slices']:.0f} memory_limit={store.MEMORY_LIMIT} "
          f"ingest_s={full['ingest']:.1f} json_ingest_s={plain['ingest']:.1f} "
          f"json_replies_per_s={full['replies'] / plain['seconds']:.0f} "
          f"twin_us_per_reply={full['twin_s'] / full['replies'] * 1e6:.2f} "
          f"write_floor_s={full['floor']:.1f} floor_replies_per_s={full['replies'] / full['floor']:.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
