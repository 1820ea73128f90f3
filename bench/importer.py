"""Benchmark: ``wallwatch import ooni`` on a generated multi-hundred-MB OONI JSONL file.

The file is built from the real OONI measurements in ``../shared/data`` (web
connectivity 0.0.1 to 0.5 and the legacy dns_consistency, with their HTTP bodies),
each copy given its own measurement UID and report ID, until it reaches ``--mb``
megabytes. The importer runs as the CLI does, in a child process whose peak RSS is
read from ``getrusage``; it also runs on a quarter and a half of the size, so that the
cost per MB and the peak memory show how cost grows (flat memory: the same peak).

The reference, measured in the same run on the same file: the standard library's C
JSON decoder reading every line and doing nothing else (``json.loads`` per line), the
least any JSON-based reader in Python must pay. Both run ``--repeats`` times,
alternating, and the best of each is compared.

Prints, last:

    import ooni_mb_per_s=<n> records_per_s=<n> peak_rss_mb=<n> peak_rss_quarter_mb=<n> ms_per_mb_quarter=<n> ms_per_mb_half=<n> ms_per_mb=<n> ratio_vs_json_loads=<x>

Usage: ``.venv/bin/python bench/importer.py [--mb 300] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def documents() -> list[dict[str, object]]:
    out = []
    with open(SHARED / "INDEX.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            path = row["path"]
            if path.startswith("ooni/real/") and path.endswith(".json") and "explorer" not in path:
                out.append(json.loads((SHARED / path).read_text()))
    return out


def generate(path: Path, megabytes: int) -> tuple[int, int]:
    docs = documents()
    written = lines = 0
    target = megabytes * 1_000_000
    with open(path, "w") as handle:
        while written < target:
            doc = dict(docs[lines % len(docs)])
            doc["measurement_uid"] = f"20240301000000.{lines:06d}_ZZ_webconnectivity_{lines:016x}"
            doc["report_id"] = f"bench-{lines}"
            line = json.dumps(doc, separators=(",", ":")) + "\n"
            handle.write(line)
            written += len(line)
            lines += 1
    return written, lines


def run_import(path: Path, out: Path) -> tuple[float, float]:
    """(seconds, peak RSS of the child in MB)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wallwatch", "import", "ooni", str(path), "-o", str(out)],
                   check=True, stderr=subprocess.DEVNULL)  # fmt: skip
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024


def json_loads_seconds(path: Path) -> float:
    start = time.perf_counter()
    with open(path, "rb") as handle:
        for line in handle:
            json.loads(line)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mb", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not SHARED.exists():
        sys.exit(f"{SHARED} is not beside the project")
    with tempfile.TemporaryDirectory(prefix="ww-bench-import-") as tmp:
        big = Path(tmp) / "big.jsonl"
        size, lines = generate(big, args.mb)
        print(f"generated {size / 1e6:.0f} MB, {lines} OONI measurements", file=sys.stderr)
        # How cost grows: the same import at a quarter and a half of the size, cost per
        # MB at each (a super-linear step would show), and peak memory at each.
        growth = []
        for share in (4, 2):
            part = Path(tmp) / f"part{share}.jsonl"
            part_size, _ = generate(part, max(1, args.mb // share))
            part_seconds, part_peak = run_import(part, Path(tmp) / "part.out")
            os.unlink(Path(tmp) / "part.out")
            os.unlink(part)
            growth.append((part_size, part_seconds, part_peak))
        # Best of --repeats, alternating, for both: the VM's noise (15-25 %) otherwise
        # decides the ratio more than either reader does.
        runs, references = [], []
        for _ in range(args.repeats):
            runs.append(run_import(big, Path(tmp) / "big.out"))
            with open(Path(tmp) / "big.out", "rb") as handle:
                records = sum(1 for _ in handle)
            os.unlink(Path(tmp) / "big.out")
            references.append(json_loads_seconds(big))
        seconds, peak = min(r[0] for r in runs), max(r[1] for r in runs)
        reference = min(references)
    mb_s = size / 1e6 / seconds
    print(f"wallwatch import ooni: {seconds:.2f} s for {size / 1e6:.0f} MB ({mb_s:.0f} MB/s), "
          f"{records} records")  # fmt: skip
    print(f"reference json.loads per line: {reference:.2f} s ({size / 1e6 / reference:.0f} MB/s)")
    curve = [*growth, (size, seconds, peak)]
    print("cost per MB (ms) at 1/4, 1/2, 1 of the file: "
          + ", ".join(f"{s_ / (z / 1e6) * 1000:.2f} ({z / 1e6:.0f} MB)" for z, s_, _p in curve)
          + "; peak RSS: " + ", ".join(f"{p:.0f} MB" for _z, _s, p in curve))  # fmt: skip
    print(f"import ooni_mb_per_s={mb_s:.0f} records_per_s={records / seconds:.0f} "
          f"peak_rss_mb={peak:.0f} peak_rss_quarter_mb={growth[0][2]:.0f} "
          f"ms_per_mb_quarter={growth[0][1] / (growth[0][0] / 1e6) * 1000:.2f} "
          f"ms_per_mb_half={growth[1][1] / (growth[1][0] / 1e6) * 1000:.2f} "
          f"ms_per_mb={seconds / (size / 1e6) * 1000:.2f} "
          f"ratio_vs_json_loads={reference / seconds:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
