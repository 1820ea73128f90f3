"""Benchmark: the analysis over a generated store, embedded DuckDB against Dask local:1 and local:2.

The store is bench/mix.py's (per name a control, a resolver query clean or raced, a
dark host for the blocked names; three vantages, two days), ``--replies`` replies in all
(3.2 per name). The same rows are written as a partitioned dataset (``--buckets``). Then,
in this run, on this machine:

* ``duckdb``: ``wallwatch analyze`` on the embedded store (DuckDB with every core);
* ``dask1`` / ``dask2``: ``wallwatch analyze --dask local:1`` / ``local:2`` on the dataset
  (each worker runs one single-threaded DuckDB per bucket); the cluster's start is timed
  apart, as a long-lived cluster pays it once.

The outputs are checked to agree (replies and attributions counted; tests/test_scale.py
checks them row for row). Scheduling overhead is measured by a round of empty tasks, one
per bucket; the per-bucket cost of each round is its time times the workers over the
buckets. Each size also runs at 1/4 and 1/2, so the cost per reply at each shows how it
grows. The last line is machine-readable:

    scale replies=<n> duckdb_per_s=<n> dask1_per_s=<n> dask2_per_s=<n> ratio=<n>
        bucket_s=<n> task_overhead_ms=<n> startup_s=<n> ...

``ratio``: dask2 over duckdb (the target is 0.8 or more).
Usage: ``.venv/bin/python bench/scale.py [--replies 20000000] [--buckets 64]``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
# The embedded run holds its evidence tables in memory: under the default 3 GB it fails at
# 10M replies of this mix ("failed to pin block"), so it gets most of the machine here;
# the cluster's per-bucket connections stay far below any of these limits.
os.environ.setdefault("WALLWATCH_MEMORY_LIMIT", "16GB")

import mix  # noqa: E402
from wallwatch import store  # noqa: E402
from wallwatch.analysis import scale  # noqa: E402
from wallwatch.analysis.run import analyze  # noqa: E402
from wallwatch.dataset import Dataset, write  # noqa: E402

REPLIES_PER_NAME = 3.2


def _noop(i: int) -> int:
    return i


def run_size(root: Path, replies: int, buckets: int) -> dict[str, float]:
    names = max(10, int(replies / REPLIES_PER_NAME))
    db = root / "store.duckdb"
    start = time.perf_counter()
    con = store.connect(db)
    made = mix.generate(con, names)
    dataset = Dataset(str(root / "dataset"))
    write(con, dataset, buckets=buckets)
    con.close()
    prepared = time.perf_counter() - start
    start = time.perf_counter()
    embedded = analyze(db)
    duckdb_s = time.perf_counter() - start
    row: dict[str, float] = {"replies": made, "verdicts": embedded.replies,
                             "prepare_s": prepared, "duckdb_s": duckdb_s}  # fmt: skip
    for workers in (1, 2):
        start = time.perf_counter()
        with scale.client(f"local:{workers}") as dask:
            row[f"startup{workers}_s"] = time.perf_counter() - start
            start = time.perf_counter()
            dask.gather(dask.map(_noop, range(buckets), pure=False))
            row[f"overhead{workers}_s"] = time.perf_counter() - start
            start = time.perf_counter()
            result = scale.analyze_dataset(dataset, Dataset(str(root / f"out{workers}")), dask)
            row[f"dask{workers}_s"] = time.perf_counter() - start
        assert result.analysis.replies == embedded.replies
        assert result.analysis.attributions == embedded.attributions, (
            result.analysis.attributions, embedded.attributions)  # fmt: skip
        for stage, seconds in result.seconds.items():
            row[f"dask{workers}_{stage}_s"] = seconds
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replies", type=int, default=20_000_000)
    parser.add_argument("--buckets", type=int, default=64)
    args = parser.parse_args()
    results = []
    for fraction in (0.25, 0.5, 1.0):
        with tempfile.TemporaryDirectory(prefix="ww-bench-scale-") as tmp:
            row = run_size(Path(tmp), int(args.replies * fraction), args.buckets)
        results.append(row)
        print(json.dumps({k: round(v, 3) for k, v in row.items()}), file=sys.stderr, flush=True)
    full = results[-1]
    n = full["replies"]
    per_bucket = full["dask1_s"] / args.buckets  # one worker: every bucket's rounds in turn
    overhead = full["overhead2_s"] / args.buckets * 1000
    curve = " ".join(f"us_per_reply_at_{int(r['replies'])}={1e6 * r['dask2_s'] / r['replies']:.2f}"
                     f"/{1e6 * r['duckdb_s'] / r['replies']:.2f}" for r in results)  # fmt: skip
    print(f"scale replies={int(n)} duckdb_per_s={n / full['duckdb_s']:.0f} "
          f"dask1_per_s={n / full['dask1_s']:.0f} dask2_per_s={n / full['dask2_s']:.0f} "
          f"ratio={full['duckdb_s'] / full['dask2_s']:.2f} buckets={args.buckets} "
          f"bucket_s={per_bucket:.2f} task_overhead_ms={overhead:.1f} "
          f"startup_s={full['startup2_s']:.1f} "
          f"memory_limit={os.environ['WALLWATCH_MEMORY_LIMIT']} {curve}")  # fmt: skip


if __name__ == "__main__":
    main()
