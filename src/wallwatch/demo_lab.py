"""The 2014 replay in the namespace lab: ``watch`` through the incident, then the report.

Kept apart from :mod:`wallwatch.demo` because it drives the lab (root only). It
brings up ``gfw-2014-01-21`` (time-compressed: one scenario minute every
``60 / scale`` seconds), watches a panel of popular names every scenario minute from
15:10 to 16:00 China time -- from a client inside (its ISP resolver, 8.8.8.8 over UDP,
8.8.8.8 over TCP as the control) and from the outside vantage (8.8.8.8, and the
inside dark host) -- prints each event change as it happens, tears the lab down and
writes ``report.html`` and ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from wallwatch import report as report_module
from wallwatch.lab import netns, scenario, topology
from wallwatch.watch import Clock, Vantage, Watch, WatchConfig

#: Scenario seconds per real second: a 3-second round for every incident minute.
SCALE = 20.0
#: How long to watch after the scenario clock starts (15:10 -> 16:00).
WATCH_MINUTES = 50


def vantages() -> list[Vantage]:
    return [
        Vantage("client1", ("10.10.2.53", "8.8.8.8"), ("tcp:8.8.8.8",), node="client1"),
        Vantage("outside", ("8.8.8.8", "dark:10.10.3.7"), (), node="outside"),
    ]


def local_addresses(s: scenario.Scenario) -> dict[str, str]:
    return {n.name: n.addresses[0] for n in topology.nodes(s) if n.name in ("client1", "outside")}


def run_lab_demo(
    out: Path,
    *,
    rate: float = 2000.0,
    console: Console,
    scale: float = SCALE,
    minutes: int = WATCH_MINUTES,
    scenario_name: str = "gfw-2014-01-21",
) -> dict[str, Any]:
    """Watch the replay in the namespace lab; return the report's data."""
    from wallwatch.demo import demo_names

    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    names = out / "names.txt"
    names.write_text("\n".join(n.hostname for n in demo_names()) + "\n")
    s = dataclasses.replace(scenario.load(scenario_name), time_scale=scale)
    if netns.ours():
        topology.down()
    console.print(
        f"[bold]Replaying {s.name}[/] in the namespace lab ({s.time_scale:g}x): {s.summary}"
    )
    topology.up(s, log=lambda text: console.print(text, highlight=False))
    try:
        clock = Clock.lab()
        until = (s.clock_start + timedelta(minutes=minutes)).timestamp()
        config = WatchConfig(names=names, out=out, vantages=vantages(), rate=rate,
                             clock=clock, until=until, local=local_addresses(s))  # fmt: skip
        console.print(f"watching {len(demo_names())} names every scenario minute until "
                      f"{clock.iso(until)} ({minutes * 60 / scale:.0f} s); alerts:")  # fmt: skip
        watch = Watch(config, emit=lambda line: console.print(_alert_line(line), highlight=False))
        watch.run()
        try:
            sink = json.loads((topology.state_dir() / "sink-stats.json").read_text())
        except (OSError, ValueError):
            sink = {}
    finally:
        topology.down()
    console.print("writing the report ...")
    data = report_module.write(out)
    data["lab_sink"] = sink
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    for event in data["events"]:
        console.print(
            f"event {event['target_address']}: onset {event['onset']}, detected "
            f"{event['detected_at']}, injection end {event['end']}, over {event['over']}; "
            f"{event['affected_names']} names; attribution {event['attribution']}",
            highlight=False,
        )
    console.print(f"[bold]report:[/] {out / 'report.html'} (and report.json, evidence.pcap)")
    return data


def _alert_line(line: str) -> str:
    alert = json.loads(line)
    event = alert["event"]
    return (f"  {alert['at']} {alert['change']:>5}: {event['target_address']} "
            f"phase={event['phase']} names={event['affected_names']} "
            f"scope={','.join(event['scope']['tlds'])} attribution={event['attribution']}")  # fmt: skip
