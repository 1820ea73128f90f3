"""Benchmark: the collector's uploads and its API, against DuckDB doing the same work directly.

Starts ``wallwatch serve`` on loopback; ``--agents`` vantages (4), each with its own token,
upload generated rounds at once (gzip batches of 5,000 measurements, one minute each, sent
in order per agent, judged as they close): ``uploads_per_s`` counts acknowledged
measurements, ``stored_per_s`` until a read sees them all. Then it times the API:
a page of a day's ``measurements``, an ``aggregation`` by vantage per hour and one by
vantage and verdict. The references, in the same run: the same batches loaded with
``store.ingest_into`` on a fresh store (no HTTP, no judgement), and the same two queries
run directly in DuckDB on the collector's store. ``--stored N`` first puts N measurements
(30 days) straight into the store, for the API's latency at scale.

The last line is machine-readable:

    serve uploads_per_s=<n> stored_per_s=<n> ingest_reference_per_s=<n> measurements_p99_ms=<n>
        measurements_direct_p99_ms=<n> aggregation_p99_ms=<n> aggregation_direct_p99_ms=<n>
        aggregation_by_verdict_p99_ms=<n> stored=<n> in_store=<n>

Usage: ``.venv/bin/python bench/serve.py [--measurements 200000] [--stored 10000000]``
"""

from __future__ import annotations

import argparse
import gzip
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from wallwatch import records, store
from wallwatch.observatory.agent import send
from wallwatch.observatory.collector import JUDGEMENTS_DDL
from wallwatch.records import SCHEMA_VERSION, Answer, Measurement, Response
from wallwatch.vocab import Attribution, Engine, Outcome, TargetKind

BATCH = 5000


def batch(number: int, vantage: str) -> bytes:
    out = bytearray()
    for i in range(BATCH):
        reply = Response(t=0.01, rtt=0.01, src="192.0.2.53", sport=53, ip_ttl=60, raw_response="",
                         rcode=0, ancount=1, answers=(Answer("A", 60, "", f"198.51.{i % 250}.{i // 250 % 250}"),))  # fmt: skip
        records.encode_into(Measurement(
            schema_version=SCHEMA_VERSION, measurement_uid=f"{vantage}-{number}-{i}", report_id="r",
            measurement_start_time=f"2026-12-01 {number % 24:02d}:{number % 60:02d}:00",
            vantage=vantage, hostname=f"n{i}.example.com", query_type="A", engine=Engine.UDP,
            resolver_address="192.0.2.53:53", target_kind=TargetKind.RESOLVER, transaction_id=i,
            source_port=40000, t0=0.0, t=0.1, responses=(reply,),
            annotations={"minute": str(29000000 + number)},
        ), out)  # fmt: skip
    return gzip.compress(bytes(out), compresslevel=5)


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) >= 2 else samples[0]


def timed(url: str, runs: int = 40) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        with urllib.request.urlopen(url, timeout=60) as r:
            r.read()
        out.append((time.perf_counter() - start) * 1000)
    return out


def preload(data: Path, tmp: Path, count: int) -> None:
    """``count`` measurements straight into the collector's store (30 days of them, one
    vantage "old"): copies of one generated batch, made by DuckDB, so ten million take
    seconds rather than the uploads' minutes."""
    data.mkdir(parents=True)
    seed = tmp / "seed.jsonl"
    seed.write_bytes(gzip.decompress(batch(10**6, "old")))
    con = store.connect(data / "wallwatch.duckdb")
    store.ingest_into(con, [seed])
    copies = max(1, count // BATCH)
    for table in ("measurements", "responses", "answers"):
        shifted = ("strftime(TIMESTAMP '2026-11-02' + to_seconds(r * 2592000 // "
                   f"{copies}), '%Y-%m-%d %H:%M:%S')")  # fmt: skip
        replace = "measurement_uid || '-' || r AS measurement_uid"
        if table == "measurements":
            replace += f", {shifted} AS measurement_start_time"
        con.execute(f"INSERT INTO {table} SELECT x.* REPLACE ({replace}) "
                    f"FROM {table} x, range(1, {copies}) t(r)")  # fmt: skip
    # ... judged, as the collector would have judged them (half genuine, half forged).
    con.execute(JUDGEMENTS_DDL)
    con.execute(
        "INSERT INTO judgements SELECT measurement_uid, "
        "TRY_CAST(annotations['minute'] AS BIGINT), "
        f"CASE WHEN hash(measurement_uid) % 2 = 0 THEN '{Outcome.OK_MATCH_IP}' "
        f"ELSE '{Outcome.INJECTED_DARK}' END, "
        f"CASE WHEN hash(measurement_uid) % 2 = 0 THEN '{Attribution.NONE}' "
        f"ELSE '{Attribution.ON_PATH_INJECTOR}' END, NULL, "
        "CAST(measurement_start_time AS TIMESTAMP), vantage, resolver_address, hostname, query_type "
        "FROM measurements"
    )
    con.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--measurements", type=int, default=200_000, help="uploaded")
    parser.add_argument("--stored", type=int, default=0,
                        help="measurements already in the store before the uploads (API latency at scale)")  # fmt: skip
    parser.add_argument("--agents", type=int, default=4, help="vantages uploading at once")
    args = parser.parse_args()
    vantages = [f"v{k}" for k in range(args.agents)]
    per_agent = max(1, args.measurements // BATCH // args.agents)
    batches = {v: [batch(n, v) for n in range(per_agent)] for v in vantages}
    with tempfile.TemporaryDirectory(prefix="ww-bench-serve-") as tmp:
        data = Path(tmp) / "collector"
        if args.stored:
            preload(data, Path(tmp), args.stored)
        tokens = {v: subprocess.run([sys.executable, "-m", "wallwatch", "token", "new", v, "--data", str(data)],
                                    capture_output=True, text=True, check=True).stdout.split()[-1]
                  for v in vantages}  # fmt: skip
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = subprocess.Popen([sys.executable, "-m", "wallwatch", "serve", "--data", str(data),
                                   "--listen", f"127.0.0.1:{port}"], stderr=subprocess.DEVNULL)  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(200):
                try:
                    urllib.request.urlopen(url + "/api/v1/heartbeat", timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.05)
            start = time.perf_counter()

            def agent(v: str) -> int:  # each agent sends its batches in order, as a spool does
                return sum(int(str(send(url, tokens[v], b)["stored"])) for b in batches[v])

            with ThreadPoolExecutor(len(vantages)) as pool:
                stored = sum(pool.map(agent, vantages))
            uploads = stored / (time.perf_counter() - start)
            # Stored: until a read sees them all (reads wait for the store to catch up).
            counted = json.loads(urllib.request.urlopen(
                url + "/api/v1/aggregation?axis=vantage&grain=day", timeout=300).read())["results"]  # fmt: skip
            in_store = stored / (time.perf_counter() - start)
            assert sum(r["measurements"] for r in counted) >= stored + args.stored - BATCH
            # The API's latency is timed once the judgement has caught up with the uploads.
            for _ in range(600):
                beat = json.loads(urllib.request.urlopen(url + "/api/v1/heartbeat").read())
                if not beat["results"][0]["pending_minutes"]:
                    break
                time.sleep(0.5)
            page = timed(url + "/api/v1/measurements?since=2026-12-01&until=2026-12-02&limit=1000")
            agg = timed(url + "/api/v1/aggregation?axis=vantage&grain=hour")
            agg2 = timed(url + "/api/v1/aggregation?axis=vantage&axis=verdict&grain=hour")
        finally:
            server.terminate()
            server.wait(timeout=30)
        # References: the same batches straight into a store; the same queries straight in DuckDB.
        con = store.connect(Path(tmp) / "ref.duckdb")
        start = time.perf_counter()
        for n, b in enumerate(b for v in vantages for b in batches[v]):
            path = Path(tmp) / f"b{n}.jsonl"
            path.write_bytes(gzip.decompress(b))
            store.ingest_into(con, [path])
        reference = stored / (time.perf_counter() - start)
        con.close()
        # The direct queries on the collector's own store, as the API left it.
        con = store.connect(data / "wallwatch.duckdb", read_only=True)
        direct_page, direct_agg = [], []
        for _ in range(40):
            t = time.perf_counter()
            con.execute("SELECT * FROM measurements WHERE measurement_start_time >= '2026-12-01' AND "
                        "measurement_start_time < '2026-12-02' ORDER BY measurement_start_time, "
                        "measurement_uid LIMIT 1000").fetchall()  # fmt: skip
            direct_page.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            con.execute("SELECT date_trunc('hour', start_ts), vantage, count(*), "
                        "sum(response_count) FROM measurements GROUP BY ALL ORDER BY ALL").fetchall()  # fmt: skip
            direct_agg.append((time.perf_counter() - t) * 1000)
        con.close()
    print(json.dumps({"agents": args.agents, "batches_per_agent": per_agent, "batch": BATCH,
                      "preloaded": args.stored}))  # fmt: skip
    print(f"serve uploads_per_s={uploads:.0f} stored_per_s={in_store:.0f} "
          f"ingest_reference_per_s={reference:.0f} "
          f"measurements_p99_ms={p99(page):.1f} measurements_direct_p99_ms={p99(direct_page):.1f} "
          f"aggregation_p99_ms={p99(agg):.1f} aggregation_direct_p99_ms={p99(direct_agg):.1f} "
          f"aggregation_by_verdict_p99_ms={p99(agg2):.1f} stored={stored} "
          f"in_store={stored + args.stored}")  # fmt: skip


if __name__ == "__main__":
    main()
