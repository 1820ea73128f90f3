"""The lab's small Internet: who lives where, and how ``lab up`` / ``lab down`` build it.

::

   inside (censored, 10.10.0.0/16)                 outside
   client1 10.10.1.10  ┐                       ┌ auth      198.41.0.4 (root), 192.5.6.30 (com, net),
   client2 10.10.1.11  │                       │           199.19.56.1 (org), 100.64.0.53 (zones)
   isp     10.10.2.53  ├─ br-in ─[ border ]─ br-out ┤ pubdns    8.8.8.8 (Unbound)
   dark    10.10.3.7   │   userspace router   │ outside   100.64.0.10 (vantage)
   cnauth  10.10.4.53  ┘   + injector tap     └ sink      65.49.2.178, ... (forged addresses)

Every node is a network namespace ``ww-lab-<node>``; the two bridges live in the
border namespace; the border forwards between them in userspace (delay, emulated
hops, injection: :mod:`wallwatch.lab.border`). Nothing connects to the machine's
own namespace.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

from wallwatch.lab import netns, zones
from wallwatch.lab.scenario import Scenario
from wallwatch.names import QueryName, parse_lines
from wallwatch.paths import shared_data

INSIDE_PREFIX = "10.10.0.0/16"
BORDER_IN = "10.10.0.1"
BORDER_OUT = "172.31.255.1"
BRIDGE_MACS = {"br-in": "02:77:77:ff:00:01", "br-out": "02:77:77:ff:00:02"}


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    side: str  # "inside" or "outside"
    addresses: tuple[str, ...]
    role: str

    @property
    def ns(self) -> str:
        return netns.ns_name(self.name)


IROOT_IP = "10.10.5.1"


def nodes(scenario: Scenario) -> list[Node]:
    sink = tuple(scenario.pool_addresses()) or ("65.49.2.178",)
    if "65.49.2.178" not in sink:
        sink = ("65.49.2.178", *sink)
    extra = []
    if scenario.public_root_inside:
        extra.append(Node("iroot", "inside", (IROOT_IP,), "a root server instance inside (BIND9)"))
    return [*extra,
        Node("client1", "inside", ("10.10.1.10",), "vantage"),
        Node("client2", "inside", ("10.10.1.11",), "vantage"),
        Node("isp", "inside", ("10.10.2.53",), "ISP recursive resolver (Unbound)"),
        Node("dark", "inside", ("10.10.3.7",), "dark host: runs no DNS server"),
        Node("cnauth", "inside", (zones.CN_IP,), "authoritative for cn (BIND9)"),
        Node("auth", "outside", (zones.ROOT_IP, zones.GTLD_IP, zones.ORG_IP, zones.HOSTING_IP),
             "authoritative root/com/net/org/zones (BIND9)"),
        Node("pubdns", "outside", ("8.8.8.8",), "public resolver (Unbound)"),
        Node("outside", "outside", ("100.64.0.10",), "outside vantage"),
        Node("sink", "outside", (*sink, *(h for h in genuine_hosts() if h not in sink)),
             "hosts at the forged and the genuine addresses (counting connections)"),
    ]  # fmt: skip


def _certificate(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed key and certificate for a lab server's TLS (the lab's own CA-less
    world: a shield checks it by pinning nothing, ``dot:8.8.8.8`` without a name)."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "tls.key", directory / "tls.pem"
    netns.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
               "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj",
               f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}"])  # fmt: skip
    return key, cert


def genuine_hosts() -> tuple[str, ...]:
    """The genuine addresses of the lab's names: the sink holds them too, so a user who
    got the genuine answer reaches a host (and is counted apart from the forged ones)."""
    names = lab_names()
    return tuple(sorted({zones.genuine_address(n) for n in
                         [*names, *(zones.registered_domain(n) for n in names)]}))  # fmt: skip


def state_dir() -> Path:
    return Path(os.environ.get("WALLWATCH_LAB_DIR", "/run/wallwatch-lab"))


def dnstap_socket() -> Path:
    """Where the ISP resolver sends its dnstap: a path, so a receiver in the root namespace
    gets it without any interface between the lab and the machine."""
    return state_dir() / "isp.dnstap.sock"


def lab_names() -> list[str]:
    """The names the lab's zones hold: the packaged list plus a few hundred from shared data."""
    from importlib import resources

    text = resources.files("wallwatch.data").joinpath("demo-names.txt").read_text()
    names = [n.hostname for n in parse_lines(text.splitlines(), "demo") if isinstance(n, QueryName)]
    names += ["www.example.cn", "www.rsf.org", "rsf.org", "shadowvpn.com", "www.69.mu.com"]
    blocklist = shared_data() / "lists/gfw-report_quic-sni_dns-blocklist_2025-01-05.txt"
    if blocklist.exists():
        lines = blocklist.read_text(encoding="utf-8", errors="replace").splitlines()
        extra = [
            n.hostname
            for n in parse_lines(lines[::300], str(blocklist))
            if isinstance(n, QueryName)
        ]
        names += [n for n in extra if n.endswith((".com", ".net", ".org", ".cn"))][:300]
    return list(dict.fromkeys(names))


@dataclass
class LabState:
    scenario: str
    started: float
    nodes: list[dict[str, Any]] = field(default_factory=list)
    names: int = 0
    #: Scenario seconds per real second, and the scenario time at ``started``.
    scale: float = 1.0
    clock_start: str = ""
    #: The long-running processes the lab started: namespace, program, pid.
    processes: list[dict[str, Any]] = field(default_factory=list)

    def save(self) -> None:
        path = state_dir() / "state.json"
        path.write_text(json.dumps(asdict(self), indent=2))


def _mac(index: int) -> str:
    return f"02:77:77:00:00:{index:02x}"


def up(scenario: Scenario, *, log: Any = print) -> LabState:
    """Build the lab for ``scenario``; refuse when a lab already exists or isolation fails."""
    reason = netns.can_use_namespaces()
    if reason:
        raise netns.LabError(reason)
    if netns.ours():
        raise netns.LabError(
            f"a lab is already up ({', '.join(netns.ours())}); run 'wallwatch lab down'"
        )
    directory = state_dir()
    directory.mkdir(parents=True, exist_ok=True)
    before = netns.root_links()
    all_nodes = nodes(scenario)
    try:
        border = netns.add_namespace("border")
        for bridge, mac in BRIDGE_MACS.items():
            netns.ip(border, "link", "add", bridge, "address", mac, "type", "bridge")
            netns.ip(border, "link", "set", bridge, "up")
        netns.ip(border, "addr", "add", f"{BORDER_IN}/16", "dev", "br-in")
        netns.ip(border, "addr", "add", f"{BORDER_OUT}/16", "dev", "br-out")
        netns.run(["ip", "netns", "exec", border, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
        macs: dict[str, str] = {}
        for index, node in enumerate(all_nodes, start=1):
            ns = netns.add_namespace(node.name)
            port = ("v-" if node.side == "inside" else "o-") + node.name[:10]
            netns.add_veth(ns, "eth0", border, port, a_mac=_mac(index))
            # Veths leave UDP/TCP checksums to "hardware"; the border re-sends frames it
            # read from a packet socket, so the sender must fill them in itself.
            netns.run(["ip", "netns", "exec", ns, "ethtool", "-K", "eth0", "tx", "off"])
            netns.ip(
                border,
                "link",
                "set",
                port,
                "master",
                "br-in" if node.side == "inside" else "br-out",
            )
            prefix = "/16" if node.side == "inside" else "/32"
            batch = "".join(f"addr add {a}{prefix} dev eth0\n" for a in node.addresses)
            netns.run_input(["ip", "-n", ns, "-batch", "-"], batch)
            macs.update(dict.fromkeys(node.addresses, _mac(index)))
            if node.side == "inside":
                netns.ip(ns, "route", "add", "default", "via", BORDER_IN)
            else:
                netns.ip(
                    ns, "route", "add", INSIDE_PREFIX, "via", BORDER_OUT, "dev", "eth0", "onlink"
                )
                netns.ip(ns, "route", "add", "default", "dev", "eth0")
        netns.assert_isolated(before, netns.ours())
        state = LabState(scenario.name, time.time(), [asdict(n) for n in all_nodes])
        (directory / "clock.json").unlink(missing_ok=True)
        first = len(netns.spawned())
        _start_processes(scenario, all_nodes, macs, state, directory, log)
        state.processes = []
        for child in netns.spawned()[first:]:
            args = [str(a) for a in cast(list[str], child.args)]  # ip netns exec NS PROGRAM...
            state.processes.append(
                {"ns": args[3], "program": " ".join(args[4:7]), "pid": child.pid}
            )
        state.started = time.time()
        state.scale = scenario.time_scale
        state.clock_start = scenario.clock_start.isoformat()
        clock = {"start_real": state.started, "start_scenario": 0.0, "scale": scenario.time_scale}
        tmp = directory / "clock.tmp"
        tmp.write_text(json.dumps(clock))
        tmp.replace(directory / "clock.json")
        state.save()
        return state
    except BaseException:
        netns.teardown()
        raise


def _start_processes(
    scenario: Scenario, all_nodes: list[Node], macs: dict[str, str], state: LabState,
    directory: Path, log: Any,
) -> None:  # fmt: skip
    names = lab_names()
    state.names = len(names)
    (directory / "names.txt").write_text("\n".join(names) + "\n")
    zone_data = zones.build_zones(names, scenario.authoritative_override)
    by_name = {n.name: n for n in all_nodes}
    python = sys.executable
    config = {
        "inside": {
            "ifname": "br-in",
            "mac": BRIDGE_MACS["br-in"],
            "ip": BORDER_IN,
            "prefix": INSIDE_PREFIX,
        },
        "outside": {"ifname": "br-out", "mac": BRIDGE_MACS["br-out"], "ip": BORDER_OUT},
        "macs": macs,
        "delay_ms": scenario.delay_ms,
        "hops": scenario.border_hops,
        # The scenario clock starts when every server answers (clock.json, written
        # last): a slow start must not eat the minutes before an incident.
        "clock": {"file": str(directory / "clock.json"), "scale": scenario.time_scale},
        "injectors": scenario.border_injectors(),
        "stats": str(directory / "border-stats.json"),
    }
    (directory / "border.json").write_text(json.dumps(config, indent=1))
    netns.spawn(netns.ns_name("border"), [python, "-m", "wallwatch.lab.border", str(directory / "border.json")],
                str(directory / "border.log"))  # fmt: skip
    netns.spawn(by_name["sink"].ns, [python, "-m", "wallwatch.lab.sink", str(directory / "sink-stats.json")],
                str(directory / "sink.log"))  # fmt: skip
    servers: list[tuple[str, list[str], dict[str, tuple[str, str]]]] = [
        ("auth", list(by_name["auth"].addresses), zone_data), ("cnauth", [zones.CN_IP], zone_data),
    ]  # fmt: skip
    if "iroot" in by_name:
        # An anycast instance answers for the root's own name with its own address, so
        # a resolver primed through it keeps using it.
        local_root = zone_data["."][1].replace(f"IN A {zones.ROOT_IP}", f"IN A {IROOT_IP}")
        servers.append(("iroot", [IROOT_IP], {".": (IROOT_IP, local_root)}))
    for node, addresses, served in servers:
        conf = directory / f"{node}.named.conf"
        conf.write_text(zones.named_conf(directory / node, served, addresses))
        netns.spawn(by_name[node].ns, ["named", "-g", "-u", "root", "-c", str(conf)],
                    str(directory / f"{node}.log"))  # fmt: skip
    # Resolvers start only once the servers they need answer: an Unbound that
    # meets a silent root backs off for minutes.
    _wait_ready([("client1", zones.ROOT_IP, "com", "NS"), ("client1", zones.CN_IP, "www.example.cn", "A"),
                 ("outside", zones.HOSTING_IP, "www.example.com", "A")], log)  # fmt: skip
    resolvers = [
        ("isp", "10.10.2.53", scenario.resolver_hijack, zones.ROOT_IP),
        ("pubdns", "8.8.8.8", {}, IROOT_IP if "iroot" in by_name else zones.ROOT_IP),
    ]
    for node, address, hijack, root in resolvers:
        conf = directory / f"{node}.unbound.conf"
        port = 53
        if node == "isp" and scenario.nxdomain_rewrite:
            # The rewriting front owns port 53; Unbound answers it on loopback.
            port = 5353
            front = [
                python,
                "-m",
                "wallwatch.lab.rewriter",
                address,
                str(port),
                scenario.nxdomain_rewrite,
            ]
            netns.spawn(by_name[node].ns, front, str(directory / "rewriter.log"))
            address = "127.0.0.1"
        cache_max = None
        if node == "isp" and scenario.resolver_cache_max is not None:
            cache_max = max(1, round(scenario.resolver_cache_max / scenario.time_scale))
        # The ISP's resolver logs dnstap for its operator (``wallwatch passive --lab``).
        tap = dnstap_socket() if node == "isp" else None
        tls = _certificate(directory / node, "dns.google") if node == "pubdns" else None
        conf.write_text(zones.unbound_conf(directory / node, address, hijack, port=port, root=root,
                                           cache_max_ttl=cache_max, dnstap=tap, tls=tls))  # fmt: skip
        netns.spawn(
            by_name[node].ns, ["unbound", "-d", "-c", str(conf)], str(directory / f"{node}.log")
        )
    # .cn names only: a probe must not leave a com/net/org delegation in a cache.
    _wait_ready([("client1", "10.10.2.53", "www.example.cn", "A"),
                 ("outside", "8.8.8.8", "www.example.cn", "A")], log)  # fmt: skip


def _wait_ready(probes: list[tuple[str, str, str, str]], log: Any, timeout: float = 30.0) -> None:
    """Wait until each (node, server, name, type) lookup gets an answer."""
    deadline = time.monotonic() + timeout
    pending = list(probes)
    while pending and time.monotonic() < deadline:
        node, server, name, qtype = pending[0]
        out = subprocess.run(
            ["ip", "netns", "exec", netns.ns_name(node), "dig", f"@{server}", name, qtype,
             "+tries=1", "+time=1"], capture_output=True, text=True,
        )  # fmt: skip
        if out.returncode == 0 and "status: NOERROR" in out.stdout:
            pending.pop(0)
        else:
            time.sleep(0.2)
    if pending:
        raise netns.LabError(
            f"lab did not come up: {pending[0]} unanswered; see {state_dir()}/*.log"
        )
    log(f"answering: {', '.join(f'{s} (from {n})' for n, s, _, _ in probes)}")


def scenario_clock() -> tuple[float, float, str]:
    """(real time the scenario clock started, its scale, the scenario time then).

    Lets a monitor outside the lab date what it measures on the incident's clock.
    """
    state = json.loads((state_dir() / "state.json").read_text())
    return (
        float(state["started"]),
        float(state.get("scale", 1.0)),
        str(state.get("clock_start", "")),
    )


def down() -> list[str]:
    """Remove every lab namespace and everything running in it."""
    removed = netns.teardown()
    state = state_dir() / "state.json"
    if state.exists():
        state.unlink()
    return removed


def status() -> dict[str, Any]:
    """What is up: namespaces, each process the lab started and whether it still runs,
    border and sink counters; ``healthy`` only when every process runs."""
    directory = state_dir()
    out: dict[str, Any] = {"namespaces": {ns: netns.pids(ns) for ns in netns.ours()}}
    for name in ("state", "border-stats", "sink-stats"):
        path = directory / f"{name}.json"
        if path.exists():
            try:
                out[name] = json.loads(path.read_text())
            except ValueError:
                out[name] = "unreadable"
    state = out.get("state")
    processes = state.get("processes", []) if isinstance(state, dict) else []
    dead = []
    for proc in processes:
        proc["running"] = _running(int(proc["pid"]))
        if not proc["running"]:
            dead.append(f"{proc['program']} in {proc['ns']} (pid {proc['pid']})")
    out["healthy"] = bool(out["namespaces"]) and bool(processes) and not dead
    out["dead"] = dead
    return out


def _running(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z"
