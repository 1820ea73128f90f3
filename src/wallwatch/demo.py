"""``wallwatch demo``: the 21 January 2014 outage, replayed in the lab.

As root, the replay runs in the namespace lab (:mod:`wallwatch.lab.topology`):
real BIND9 and Unbound servers, the border with its injector, scenario
``gfw-2014-01-21`` at 20x speed, watched minute by minute from a client inside and
from the outside vantage (:mod:`wallwatch.demo_lab`): the alarm as the injection
starts, the ISP resolver joining as its cache fills, the injection's end and the
cache tail, then the evidence report (``report.html``, ``report.json``, a pcap).

Without root it says why and runs the loopback miniature below instead.

On that day every .com/.net/.org name (not .cn) was answered with 65.49.2.178
(GreatFire 2014; [greatfire-2014]). This demo stands up the loopback lab: a
resolver whose UDP path is raced by an injector that forges that address for
.com/.net/.org names, a *dark* host that runs no DNS server (so any reply from it
is injected), and a TCP channel to the same resolver that the injector cannot
touch (the control). It sweeps a list of popular names through all three, keeps
every reply, loads the records into DuckDB and Parquet, and prints the evidence:
the forged address comes first, the genuine one after it, the dark host
"answers", .cn names are untouched and the control disagrees.

Everything runs on 127.0.0.0/8: 65.49.2.178 exists only inside forged packets.
"""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from rich.console import Console
from rich.table import Table

from wallwatch import store
from wallwatch.journal import read_records
from wallwatch.lab import zones
from wallwatch.lab.loopback import Forgery, LoopbackServer, authoritative, racing_injector
from wallwatch.names import QueryName, parse_lines
from wallwatch.probe.engine import ProbeConfig
from wallwatch.probe.stream import StreamServer
from wallwatch.probe.sweep import SweepPlan, run_sweep
from wallwatch.records import Measurement
from wallwatch.render import compact, dig
from wallwatch.targets import Target
from wallwatch.vocab import Engine, TargetKind

#: The single address of the 2014 outage.
FORGED_2014 = "65.49.2.178"


def demo_names() -> list[QueryName]:
    """The demo's name list (shipped with the package)."""
    text = resources.files("wallwatch.data").joinpath("demo-names.txt").read_text()
    return [n for n in parse_lines(text.splitlines(), "demo-names.txt") if isinstance(n, QueryName)]


def matches_2014(name: str) -> bool:
    """The 2014 catch-all rule: every .com, .net and .org name; .cn untouched."""
    return name.endswith((".com", ".net", ".org")) or name in ("com", "net", "org")


def run_demo(out: Path, *, rate: float = 2000.0, console: Console | None = None) -> None:
    """Run the replay (namespace lab as root, else loopback); the results go to ``out``."""
    console = console or Console()
    from wallwatch.lab.netns import can_use_namespaces

    reason = can_use_namespaces()
    if reason is None and all(shutil.which(tool) for tool in ("named", "unbound")):
        from wallwatch.demo_lab import run_lab_demo

        run_lab_demo(out, rate=rate, console=console)
        return
    console.print(f"[yellow]namespace lab unavailable ({reason or 'BIND9/Unbound missing'}); "
                  "replaying on the loopback lab[/]")  # fmt: skip
    run_loopback_demo(out, rate=rate, console=console)


def run_loopback_demo(out: Path, *, rate: float = 2000.0, console: Console | None = None) -> Path:
    """The loopback miniature of the replay; return the JSONL file written under ``out``."""
    console = console or Console()
    names = demo_names()
    zone = {n.hostname: [zones.genuine_address(n.hostname)] for n in names}
    forgery = Forgery(FORGED_2014, delay=0.0, ip_ttl=103, answer_ttl=3600)
    genuine = authoritative(zone)
    resolver = LoopbackServer(
        racing_injector(genuine, matches_2014, [forgery], genuine_delay=0.08, genuine_ip_ttl=52),
        "127.0.0.1",
        tcp_handler=genuine,
    )
    dark = LoopbackServer(
        racing_injector(lambda _r: None, matches_2014, [forgery]), "127.0.0.2", tcp=False
    )
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    records_path = out / "measurements.jsonl"
    with resolver, dark:
        r_host, r_port = resolver.address
        d_host, d_port = dark.address
        plan = SweepPlan(
            names,
            [Target(r_host, r_port, TargetKind.RESOLVER), Target(d_host, d_port, TargetKind.DARK)],
            (1,),
            (StreamServer(Engine.TCP, r_host, r_port),),
        )
        config = ProbeConfig(rate=rate, timeout=0.5, window=0.3, retries=0, vantage="lab-inside")
        console.print(
            f"[bold]Replaying 2014-01-21 on loopback[/]: {len(names)} names x "
            f"(resolver {resolver.spec}, dark host {dark.spec}, TCP control)"
        )
        result = run_sweep(plan, config, str(records_path), warn=console.print)
    report = store.ingest([records_path], out / "wallwatch.duckdb", parquet_dir=out / "parquet")
    console.print(
        f"{result.stats.measurements} measurements, {result.stats.responses} replies, "
        f"{result.stats.unmatched} unmatched -> {records_path}, "
        f"{out / 'wallwatch.duckdb'} (+{report.responses} replies), {out / 'parquet'}/"
    )
    _summarise(out / "wallwatch.duckdb", console)
    _examples(records_path, console)
    return records_path


def _summarise(db: Path, console: Console) -> None:
    sql = f"""
        SELECT CASE WHEN hostname LIKE '%.cn' THEN '.cn' ELSE '.com/.net/.org' END AS tld,
               target_kind,
               count(*) AS queries,
               count(*) FILTER (WHERE first_ip = '{FORGED_2014}') AS first_forged,
               count(*) FILTER (WHERE n_replies > 1) AS multi_reply,
               count(*) FILTER (WHERE n_replies > 0) AS answered
        FROM (
            SELECT m.measurement_uid, m.hostname, m.target_kind, m.response_count AS n_replies,
                   (SELECT a.ipv4 FROM answers a WHERE a.measurement_uid = m.measurement_uid
                      AND a.response_index = 0 AND a.answer_type = 'A'
                    ORDER BY a.answer_index LIMIT 1) AS first_ip
            FROM measurements m)
        GROUP BY ALL ORDER BY tld, target_kind
    """
    table = Table(title="What the vantage saw (first reply forged? more than one reply?)")
    for column in ("names", "target", "queries", f"first reply {FORGED_2014}", ">1 reply",
                   "any reply"):  # fmt: skip
        table.add_column(column)
    for row in store.query(db, sql):
        table.add_row(*(str(v) for v in row))
    console.print(table)


def _examples(records_path: Path, console: Console) -> None:
    wanted = {("www.example.com", TargetKind.RESOLVER), ("www.example.com", TargetKind.CONTROL),
              ("www.gov.cn", TargetKind.RESOLVER), ("www.google.com", TargetKind.DARK)}  # fmt: skip
    for record in read_records(records_path):
        if isinstance(record, Measurement) and (record.hostname, record.target_kind) in wanted:
            if (record.hostname, record.target_kind) == ("www.example.com", TargetKind.RESOLVER):
                console.print(dig(record), highlight=False, markup=False)
            console.print(compact(record), highlight=False, markup=False)
