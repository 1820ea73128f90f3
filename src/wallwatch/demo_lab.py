"""The 2014 replay in the namespace lab: ``watch`` through the incident, then the report.

Kept apart from :mod:`wallwatch.demo` because it drives the lab (root only). It
starts a collector (``wallwatch serve``, its dashboard on http://127.0.0.1:8040/),
brings up ``gfw-2014-01-21`` (time-compressed: one scenario minute every
``60 / scale`` seconds), and runs one agent per vantage that watches a panel of popular
names every scenario minute from 15:10 to 16:00 China time and uploads each round --
a client inside (its ISP resolver, 8.8.8.8 over UDP, 8.8.8.8 over TCP as the control)
and the outside vantage (8.8.8.8, and the inside dark host). The collector judges both
together and prints each event change as it happens; at the end the lab is torn down
and the collector's directory gives ``report.html`` and ``report.json``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from wallwatch import flood
from wallwatch import report as report_module
from wallwatch.lab import netns, scenario, topology, zones
from wallwatch.observatory.tokens import Tokens
from wallwatch.watch import Clock, Vantage

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
    port: int = 8040,
) -> dict[str, Any]:
    """Watch the replay in the namespace lab through the observatory; return the report's data.

    A collector (``wallwatch serve``) runs on loopback; each vantage is its own agent
    process (``wallwatch watch --lab --upload``) whose sweeps run in its lab node and
    whose rounds go to the collector as they close. The collector judges both vantages
    together; its dashboard shows the event as it happens, and its directory gives the
    static report at the end.
    """
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
    collector_dir = out / "collector"
    tokens = Tokens(collector_dir)
    port = _free(port)
    url = f"http://127.0.0.1:{port}"
    serve_args = [sys.executable, "-m", "wallwatch", "serve", "--data", str(collector_dir),
                  "--listen", f"127.0.0.1:{port}", "--grace", "5", "--panel", str(names),
                  "--connections", str(out / "connections.json")]  # fmt: skip
    for name, address in local_addresses(s).items():
        serve_args += ["--local", f"{name}={address}"]
    agents: list[subprocess.Popen[bytes]] = []
    users: list[subprocess.Popen[bytes]] = []
    operator: subprocess.Popen[bytes] | None = None
    with open(out / "serve.log", "ab") as log:
        server = subprocess.Popen(serve_args, stdout=log, stderr=log, start_new_session=True)
    try:
        _wait_up(url)
        console.print(
            f"[bold]dashboard:[/] {url}/  (the event appears there live)", highlight=False
        )
        topology.up(s, log=lambda text: console.print(text, highlight=False))
        clock = Clock.lab()
        users = _start_users(out, minutes * 60 / scale)
        # The ISP's operator: its Unbound's own dnstap, read by wallwatch passive.
        with open(out / "passive.log", "ab") as log:
            operator = subprocess.Popen(
                [sys.executable, "-m", "wallwatch", "passive", "--lab", "--vantage", "isp-resolver",
                 "-o", str(out / "passive")],
                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
            )  # fmt: skip
        until = (s.clock_start + timedelta(minutes=minutes)).timestamp()
        console.print(f"watching {len(demo_names())} names every scenario minute until "
                      f"{clock.iso(until)} ({minutes * 60 / scale:.0f} s), one agent per vantage; "
                      "alerts of the collector:")  # fmt: skip
        for v in vantages():
            spec = ",".join([*v.targets, *(f"control={c}" for c in v.controls)])
            with open(out / f"agent-{v.name}.log", "ab") as log:
                agents.append(subprocess.Popen(
                    [sys.executable, "-m", "wallwatch", "watch", "--lab", "-f", str(names),
                     "-o", str(out / f"agent-{v.name}"), "-V", f"{v.name}={spec}",
                     "--rate", str(rate), "--until", clock.iso(until),
                     "--upload", url, "--token", tokens.new(v.name)],
                    stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                ))  # fmt: skip
        shown = 0
        alerts = collector_dir / "judge" / "alerts.jsonl"
        while any(a.poll() is None for a in agents):
            shown = _show_alerts(alerts, shown, console)
            _export_connections(clock, out / "connections.json")
            time.sleep(0.5)
        _export_connections(clock, out / "connections.json")
        failed = [a.returncode for a in agents if a.returncode]
        if failed:
            raise RuntimeError(f"an agent failed ({failed}); see {out}/agent-*.log")
        operator.terminate()  # judges what it has and writes passive.json
        if operator.wait(timeout=120):
            raise RuntimeError(f"wallwatch passive failed; see {out}/passive.log")
        try:
            sink = json.loads((topology.state_dir() / "sink-stats.json").read_text())
        except (OSError, ValueError):
            sink = {}
    finally:
        topology.down()
        for agent in [*agents, *users, *([operator] if operator is not None else [])]:
            if agent.poll() is None:
                agent.terminate()
                agent.wait(timeout=30)
        server.terminate()  # the collector judges what is pending, saves, and stops
        server.wait(timeout=60)
    _show_alerts(collector_dir / "judge" / "alerts.jsonl", shown, console)
    console.print("writing the report ...")
    try:
        connections = flood.load(out / "connections.json")
    except flood.FloodError as exc:
        console.print(f"no connection counts from the sink ({exc})", highlight=False)
        connections = None
    data = report_module.write(collector_dir, html_path=out / "report.html",
                               json_path=out / "report.json", connections=connections)  # fmt: skip
    if (collector_dir / "evidence.pcap").exists():
        shutil.copyfile(collector_dir / "evidence.pcap", out / "evidence.pcap")
    data["lab_sink"] = sink
    passive = out / "passive" / "passive.json"
    data["passive"] = json.loads(passive.read_text()) if passive.exists() else None
    (out / "report.json").write_text(json.dumps(data, indent=1, default=str))
    for event in data["events"]:
        console.print(
            f"event {event['target_address']}: onset {event['onset']}, detected "
            f"{event['detected_at']}, injection end {event['end']}, over {event['over']}; "
            f"{event['affected_names']} names; attribution {event['attribution']}",
            highlight=False,
        )
    for event in data["events"]:
        if event.get("flood"):
            f = event["flood"]
            console.print(f"the flood, measured at the sink: {f['connections']} connections to "
                          f"{f['address']} (at most {f['peak_per_second']} a second), "
                          f"{f['connections_elsewhere']} to the genuine hosts", highlight=False)  # fmt: skip
    shielded = out / "users-shield.jsonl"
    if shielded.exists():
        rows = [json.loads(x) for x in shielded.read_text().splitlines()]
        genuine = sum(1 for r in rows if r.get("answer") == zones.genuine_address(r["name"]))
        console.print(f"users behind a shield (wallwatch shield, 8.8.8.8 over UDP): {genuine} of "
                      f"{len(rows)} lookups got the genuine address", highlight=False)  # fmt: skip
    for event in (data["passive"] or {}).get("events", []):
        console.print(
            f"the ISP resolver's own dnstap (wallwatch passive): {event['target_address']} from "
            f"{event['onset']}, detected {event['detected_at']}, scope {','.join(event['scope']['tlds'])}",
            highlight=False,
        )
    console.print(f"[bold]report:[/] {out / 'report.html'} (and report.json, evidence.pcap)")
    return data


def _start_users(out: Path, seconds: float) -> list[subprocess.Popen[bytes]]:
    """Emulated users for the whole replay: plain ones behind the ISP resolver (client2),
    as most users were in 2014, and as many behind a shield in client1 that asks 8.8.8.8
    over UDP. Both connect to the address they get; the sink counts the connections."""
    procs: list[subprocess.Popen[bytes]] = []
    with open(out / "shield.log", "ab") as log:
        procs.append(subprocess.Popen(
            ["ip", "netns", "exec", netns.ns_name("client1"), sys.executable, "-m", "wallwatch",
             "shield", "--listen", "127.0.0.1:5353", "--upstream", "8.8.8.8",
             "-o", str(out / "shield")],
            stdout=log, stderr=log, start_new_session=True))  # fmt: skip
    deadline = time.monotonic() + 15
    while not (out / "shield" / "shield.json").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for node, resolver, name in (("client2", "10.10.2.53", "plain"),
                                 ("client1", "127.0.0.1:5353", "shield")):  # fmt: skip
        with open(out / f"users-{name}.log", "ab") as log:
            procs.append(subprocess.Popen(
                ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m",
                 "wallwatch.lab.users", "--resolver", resolver, "--users", "20", "--think", "1",
                 "--duration", f"{seconds:.0f}", "--out", str(out / f"users-{name}.jsonl")],
                stdout=log, stderr=log, start_new_session=True))  # fmt: skip
    return procs


def _export_connections(clock: Clock, path: Path) -> None:
    """The sink's counts (real seconds) on the scenario's clock, for the collector and
    the report; a count the sink is still writing is read next time."""
    try:
        counted = flood.load(topology.state_dir() / "sink-connections.json")
    except flood.FloodError:
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({str(k): v for k, v in flood.retime(counted, clock.at).items()}))
    tmp.replace(path)


def _free(port: int) -> int:
    """``port`` when it is free on loopback, else any free one."""
    for candidate in (port, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise RuntimeError("no free port on 127.0.0.1")


def _wait_up(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/api/v1/heartbeat", timeout=1) as response:
                response.read()
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the collector did not start on {url}")


def _show_alerts(path: Path, shown: int, console: Console) -> int:
    """Print the collector's alerts past the first ``shown``; how many are shown now."""
    if not path.exists():
        return shown
    lines = [x for x in path.read_text().splitlines() if x.endswith("}")]
    for line in lines[shown:]:
        console.print(_alert_line(line), highlight=False)
    return max(shown, len(lines))


def _alert_line(line: str) -> str:
    alert = json.loads(line)
    event = alert["event"]
    return (f"  {alert['at']} {alert['change']:>5}: {event['target_address']} "
            f"phase={event['phase']} names={event['affected_names']} "
            f"scope={','.join(event['scope']['tlds'])} attribution={event['attribution']}")  # fmt: skip
