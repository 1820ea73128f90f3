"""The 2014 replay in the namespace lab: three sweeps around the injection window.

Kept apart from :mod:`wallwatch.demo` because it drives the lab (root only): it
brings up ``gfw-2014-01-21``, sweeps the demo names from the inside client (ISP
resolver, 8.8.8.8 over UDP, 8.8.8.8 over TCP as the control) and from the outside
vantage (8.8.8.8, and the inside dark host) before, during and after the window,
then loads everything into DuckDB and prints what each vantage saw.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wallwatch import store
from wallwatch.journal import read_records
from wallwatch.lab import netns, scenario, topology
from wallwatch.records import Measurement
from wallwatch.render import compact, dig

FORGED = "65.49.2.178"


def _clock() -> float:
    path = topology.state_dir() / "border-stats.json"
    try:
        return float(json.loads(path.read_text())["clock"])
    except (OSError, ValueError, KeyError):
        return 0.0


def _wait_clock(seconds: float, console: Console, what: str) -> None:
    console.print(f"waiting for the scenario clock to reach {what} ...")
    deadline = time.monotonic() + 180
    while _clock() < seconds and time.monotonic() < deadline:
        time.sleep(0.2)


def _sweep(node: str, names: Path, out: Path, phase: str, rate: float, *targets: str) -> None:
    args = [sys.executable, "-m", "wallwatch", "probe", "-f", str(names), "-o", str(out), "--quiet",
            "--rate", str(rate), "--window", "0.4", "--timeout", "1", "--retries", "1",
            "--vantage", node, "-A", f"phase={phase}", *targets]  # fmt: skip
    done = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name(node), *args], capture_output=True, text=True
    )
    if done.returncode:
        raise RuntimeError(f"probe from {node} failed: {done.stderr.strip()}")


def run_lab_demo(out: Path, *, rate: float = 2000.0, console: Console) -> Path:
    """Run the replay in the namespace lab; return the JSONL file."""
    from wallwatch.demo import demo_names

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = out / "names.txt"
    names.write_text("\n".join(n.hostname for n in demo_names()) + "\n")
    path = out / "measurements.jsonl"
    s = scenario.load("gfw-2014-01-21")
    start, end = (s.seconds(t) for t in (s.truth[0].start, s.truth[0].end))
    if netns.ours():
        topology.down()
    console.print(
        f"[bold]Replaying {s.name}[/] in the namespace lab ({s.time_scale:g}x): {s.summary}"
    )
    topology.up(s, log=lambda text: console.print(text, highlight=False))
    try:
        inside = ("-t", "10.10.2.53", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8")
        outside = ("-t", "8.8.8.8", "-t", "dark:10.10.3.7")
        # The ISP resolver is left alone before the window: its cache would hold the
        # genuine answers longer than the scaled window lasts.
        console.print("sweep 1: before the injection (15:10-15:15 China time)")
        _sweep("client1", names, path, "1-before", rate, "-t", "8.8.8.8")
        _wait_clock(start + 60, console, "15:16, inside the window")
        console.print("sweep 2: during the injection")
        _sweep("client1", names, path, "2-during", rate, *inside)
        _sweep("outside", names, path, "2-during", rate, *outside)
        _wait_clock(end + 30, console, "15:40, after the window")
        console.print("sweep 3: after the injection (the cache tail)")
        _sweep("client1", names, path, "3-after", rate, "-t", "10.10.2.53", "-t", "8.8.8.8")
        sink = json.loads((topology.state_dir() / "border-stats.json").read_text())
    finally:
        topology.down()
    db = out / "wallwatch.duckdb"
    report = store.ingest([path], db, parquet_dir=out / "parquet")
    console.print(f"{report.measurements} measurements, {report.responses} replies -> {path}, {db}, "
                  f"{out / 'parquet'}/; the border forged {sink['forged']} replies")  # fmt: skip
    _summarise(db, console)
    _examples(path, console)
    _attribute(db, console)
    return path


def _attribute(db: Path, console: Console) -> None:
    """Run the analysis and say who did it, per name, with the reasons."""
    from wallwatch.analysis.run import analyze

    # Ten-second windows: ten minutes of the incident at the replay's 60x speed.
    summary = analyze(db, window=10)
    console.print(f"analysis (rules v{summary.rules_version}): " + ", ".join(
        f"{n} names {a}" for a, n in sorted(summary.attributions.items())))  # fmt: skip
    rows = store.query(db, "SELECT hostname, attribution, confidence, reasons FROM attributions "
                           "WHERE hostname IN ('www.example.com', 'www.gov.cn') ORDER BY 1")  # fmt: skip
    for hostname, attribution, confidence, reasons in rows:
        console.print(f"  {hostname}: {attribution} ({confidence}) because {', '.join(reasons)}",
                      highlight=False)  # fmt: skip
    (tail,) = store.query(
        db, "SELECT count(DISTINCT hostname) FROM window_attributions WHERE cache_tail"
    )[0]
    console.print(f"  cache tail: {tail} names still answered with the forged address by the ISP "
                  "resolver after the injection stopped", highlight=False)  # fmt: skip


def _summarise(db: Path, console: Console) -> None:
    sql = f"""
        SELECT annotations['phase'] AS phase, vantage,
               replace(resolver_address, ':53', '') || ' ' || m.engine,
               CASE WHEN hostname LIKE '%.cn' THEN '.cn' ELSE '.com/.net/.org' END AS names,
               count(*),
               count(*) FILTER (WHERE first_ip = '{FORGED}'),
               count(*) FILTER (WHERE response_count > 1)
        FROM (SELECT m.*, (SELECT a.ipv4 FROM answers a WHERE a.measurement_uid = m.measurement_uid
                           AND a.response_index = 0 AND a.answer_type = 'A' LIMIT 1) AS first_ip
              FROM measurements m) m
        GROUP BY ALL ORDER BY ALL
    """
    table = Table(title=f"Who saw {FORGED}, and when")
    for column in ("phase", "vantage", "asked", "names", "queries", "forged first", ">1 reply"):
        table.add_column(column, overflow="fold")
    for row in store.query(db, sql):
        table.add_row(*(str(v) for v in row))
    console.print(table)


def _examples(path: Path, console: Console) -> None:
    for record in read_records(path):
        if (
            isinstance(record, Measurement)
            and record.hostname == "www.example.com"
            and record.annotations.get("phase") == "2-during"
            and record.vantage == "client1"
            and record.resolver_address == "8.8.8.8:53"
            and record.engine == "udp"
        ):
            console.print(dig(record), highlight=False, markup=False)
    for record in read_records(path):
        if isinstance(record, Measurement) and record.hostname == "www.example.com":
            console.print(f"{record.annotations.get('phase')} {record.vantage}: {compact(record)}",
                          highlight=False, markup=False)  # fmt: skip
