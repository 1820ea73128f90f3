"""Fidelity of the namespace lab, checked from outside with real clients (dig, wallwatch probe).

Needs root; skipped with the reason otherwise. Each test brings a scenario up and
takes it down again; only ``ww-lab-`` namespaces are touched.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from conftest import assert_dask_matches, assert_same
from wallwatch import records
from wallwatch.lab import netns, scenario, topology, zones
from wallwatch.records import Measurement

REASON = netns.can_use_namespaces() or (
    None
    if all(os.path.exists(p) for p in ("/usr/sbin/named", "/usr/sbin/unbound", "/usr/bin/dig"))
    else "BIND9, Unbound and dig are needed (./scripts/setup installs them)"
)
pytestmark = [pytest.mark.root, pytest.mark.skipif(REASON is not None, reason=str(REASON))]


@pytest.fixture
def lab() -> Iterator[object]:
    def up(name: str) -> scenario.Scenario:
        loaded = scenario.load(name)
        topology.up(loaded, log=lambda _text: None)
        return loaded

    yield up
    topology.down()
    assert netns.ours() == []


def dig(node: str, server: str, name: str, *options: str) -> list[str]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name(node), "dig", f"@{server}", name, "+short",
         "+tries=1", "+time=2", *options], capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    return [line for line in out.stdout.splitlines() if line and not line.startswith(";")]


def probe(node: str, *args: str) -> list[Measurement]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m", "wallwatch", "probe",
         "--quiet", "--window", "0.6", "--timeout", "1", "--retries", "0", *args],
        capture_output=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr.decode()
    return [
        r for line in out.stdout.splitlines() if isinstance(r := records.decode(line), Measurement)
    ]


def answers(m: Measurement) -> list[str]:
    return [a.ipv4 or "" for r in m.responses for a in r.answers]


def wait_clock(seconds: float) -> None:
    path = topology.state_dir() / "border-stats.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if json.loads(path.read_text())["clock"] >= seconds:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"scenario clock never reached {seconds}")


def test_gfw_2014_01_21(lab) -> None:  # noqa: ANN001
    s = lab("gfw-2014-01-21")
    truth = {t.attribution: t for t in s.truth}
    forged = truth["on_path_injector"].answer
    start, end = (
        s.seconds(truth["on_path_injector"].start),
        s.seconds(truth["on_path_injector"].end),
    )
    genuine = zones.genuine_address("www.example.com")
    assert dig("client1", "8.8.8.8", "www.example.com") == [genuine]  # before the window
    wait_clock(start + 5)
    # The argument that proved the firewall did it: 8.8.8.8 asked from inside lies...
    assert dig("client1", "8.8.8.8", "www.example.com") == [forged]
    # ... while the same question from outside gets the genuine address.
    assert dig("outside", "8.8.8.8", "www.example.com") == [genuine]
    # Waiting longer shows both: the forgery first, the genuine answer after the path delay.
    (m,) = probe("client1", "-n", "www.example.com", "-t", "8.8.8.8")
    assert answers(m) == [forged, genuine]
    assert m.responses[0].rtt < 0.05 <= 2 * s.delay_ms / 1000 <= m.responses[1].rtt + 0.01
    # .cn names are untouched; the ISP resolver caches the forgery.
    assert dig("client1", "10.10.2.53", "www.example.cn") == [
        zones.genuine_address("www.example.cn")
    ]
    assert dig("client1", "10.10.2.53", "www.example.org") == [forged]
    # A host that runs no DNS server "answers" a query from outside.
    dark = {
        m.hostname: m
        for m in probe(
            "outside", "-n", "www.example.com", "-n", "www.example.cn", "-t", "dark:10.10.3.7"
        )
    }
    assert answers(dark["www.example.com"]) == [forged]
    assert (
        not dark["www.example.cn"].responses
        and dark["www.example.cn"].failure == "connection_refused"
    )
    # Traffic to the forged address lands on the sink host.
    subprocess.run(["ip", "netns", "exec", netns.ns_name("client1"), sys.executable, "-c",
                    f"import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('{forged}', 80))"],
                   check=True)  # fmt: skip
    # A minute before the end the ISP resolver looks the name up again (its cache keeps
    # an answer ten incident minutes, the scenario's cache_max), so it holds the forgery.
    wait_clock(end - 60)
    assert dig("client1", "10.10.2.53", "www.example.org") == [forged]
    wait_clock(end + 2)
    assert dig("client1", "8.8.8.8", "www.example.net") == [
        zones.genuine_address("www.example.net")
    ]
    # The cache tail: the honest ISP resolver still serves what it cached in the window.
    assert dig("client1", "10.10.2.53", "www.example.org") == [forged]
    time.sleep(0.6)
    sink = json.loads((topology.state_dir() / "sink-stats.json").read_text())
    assert sink.get(f"{forged}/udp", 0) >= 1


def test_gfw_steady_three_injectors(lab) -> None:  # noqa: ANN001
    lab("gfw-steady")
    by_name = {m.hostname: m for m in probe("client1", "-n", "www.google.com", "-n", "www.facebook.com",
                                            "-n", "www.example.com", "-t", "8.8.8.8")}  # fmt: skip
    google = by_name["www.google.com"]
    forged = google.responses[:-1]
    assert len(forged) >= 2  # injectors 1 and 2 (and 3, when the real blocklist is loaded)
    assert all(r.rtt < google.responses[-1].rtt for r in forged)
    aa = [r for r in forged if (r.flags or 0) & 0x0400]
    assert len(aa) == 1 and aa[0].answers[0].ttl == 60  # injector 1: AA, answer TTL 60
    assert 180 in {a.ttl for r in forged for a in r.answers}  # injector 2
    assert answers(google)[-1] == zones.genuine_address("www.google.com")
    assert len(by_name["www.facebook.com"].responses) >= 3  # injectors 2 and 3, then genuine
    assert answers(by_name["www.example.com"]) == [zones.genuine_address("www.example.com")]


def test_gfw_2012_and_hop_count(lab) -> None:  # noqa: ANN001
    s = lab("gfw-2012-11-09")
    forged = s.truth[0].answer
    assert dig("client1", "8.8.8.8", "www.google.com") == [forged]
    assert dig("client1", "8.8.8.8", "www.example.com") == [
        zones.genuine_address("www.example.com")
    ]
    hops = s.border_hops
    below = probe("client1", "-n", "www.google.com", "-t", "8.8.8.8", "--ip-ttl", str(hops - 1))[0]
    at = probe("client1", "-n", "www.google.com", "-t", "8.8.8.8", "--ip-ttl", str(hops))[0]
    assert forged not in answers(below)
    assert answers(at)[:1] == [forged]


def test_resolver_hijack(lab) -> None:  # noqa: ANN001
    s = lab("resolver-hijack")
    bad = s.truth[0].answer
    assert dig("client1", "10.10.2.53", "www.example.com") == [bad]
    assert dig("client1", "8.8.8.8", "www.example.com") == [
        zones.genuine_address("www.example.com")
    ]
    (m,) = probe("client1", "-n", "www.example.com", "-t", "10.10.2.53")
    assert answers(m) == [bad]  # one reply: nothing raced it


def test_authoritative_hijack(lab) -> None:  # noqa: ANN001
    s = lab("authoritative-hijack")
    new = s.truth[0].answer
    for node, server in (("client1", "10.10.2.53"), ("client1", "8.8.8.8"), ("outside", "8.8.8.8")):
        assert dig(node, server, "www.example.com") == [new]
    assert dig("outside", "8.8.8.8", "www.example.net") == [
        zones.genuine_address("www.example.net")
    ]


def test_down_cleans_up_after_a_crash(lab) -> None:  # noqa: ANN001
    lab("gfw-steady")
    with pytest.raises(netns.LabError, match="already up"):
        topology.up(scenario.load("gfw-steady"))
    border = netns.pids(netns.ns_name("border"))
    assert border
    for pid in border:
        os.kill(pid, signal.SIGKILL)  # a crashed border must not block clean-up
    inside = [p for ns in netns.ours() for p in netns.pids(ns)]
    removed = topology.down()
    assert len(removed) == 10 and netns.ours() == []
    assert not [p for p in inside if os.path.exists(f"/proc/{p}")]


def test_demo_watches_2014_in_the_namespace_lab(tmp_path) -> None:  # noqa: ANN001
    """The README's first command: the 2014 replay watched minute by minute, and its report."""
    import socket
    import threading
    from datetime import datetime, timedelta

    from rich.console import Console

    from wallwatch.demo_lab import run_lab_demo

    out = tmp_path / "demo"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    failure: list[BaseException] = []

    def replay() -> None:
        try:
            run_lab_demo(out, rate=2000, console=Console(quiet=True), port=port)
        except BaseException as exc:  # reported by the test below
            failure.append(exc)

    thread = threading.Thread(target=replay)
    thread.start()
    try:
        _watch_the_dashboard_live(f"http://127.0.0.1:{port}", thread)
    finally:
        thread.join(timeout=600)
        topology.down()
    assert not failure, failure
    assert netns.ours() == []
    report = json.loads((out / "report.json").read_text())
    (event,) = report["events"]
    s = scenario.load("gfw-2014-01-21")
    truth = {t.attribution: t for t in s.truth}
    start = datetime.fromisoformat(truth["on_path_injector"].start)
    end = datetime.fromisoformat(truth["on_path_injector"].end)
    two = timedelta(minutes=2)
    assert event["target_address"] == truth["on_path_injector"].answer == "65.49.2.178"
    assert abs(datetime.fromisoformat(event["onset"]) - start) <= two
    assert datetime.fromisoformat(event["detected_at"]) - start <= two
    assert abs(datetime.fromisoformat(event["end"]) - end) <= two
    assert [p["phase"] for p in event["phases"]] == ["injection", "cache_tail"]
    assert event["attribution"] == event["attribution_detector"] == "on_path_injector"
    assert event["scope"]["tlds"] == ["com", "net", "org"]  # .cn untouched
    assert "10.10.2.53/udp (resolver)" in event["scope"]["resolvers"]  # the ISP's cache
    assert all(c["holds"] for c in event["checklist"]), [
        (c["id"], c["holds"], c["data"]) for c in event["checklist"] if not c["holds"]
    ]
    assert report["pcap"]["packets"] > 100 and (out / "evidence.pcap").stat().st_size > 0
    # The ISP's operator saw it too, in its Unbound's own dnstap (wallwatch passive --lab).
    # Its users got the forgery from the first time its cache refetched the names during
    # the injection (until then it served the genuine answers it held), and it kept
    # serving it from cache after the injection stopped: the event follows both.
    (seen,) = [e for e in report["passive"]["events"] if e["target_address"] == "65.49.2.178"]
    onset = datetime.fromisoformat(seen["onset"])
    assert start <= onset <= end
    assert datetime.fromisoformat(seen["detected_at"]) - onset <= two
    assert datetime.fromisoformat(seen["over"]) > end  # the cache tail
    assert seen["scope"]["tlds"] == ["com", "net", "org"]  # .cn untouched
    # Its users' stream, and the upstream one when its own alarm went off too (it has
    # answers only at the cache's refetches: whether its CUSUM alarms depends on them).
    assert "10.10.2.53/udp (resolver)" in seen["scope"]["resolvers"]
    assert set(seen["scope"]["resolvers"]) <= {"10.10.2.53/udp (resolver)",
                                               "upstream/udp (resolver)"}  # fmt: skip
    # Its packets (a live capture of its upstream side) showed the race when its cache
    # refetched the names: the injector's answer first, the server's referral after it,
    # so the operator's event is attributed to the path, not to its own resolver -- from
    # the upstream stream, inside the event or beside it.
    passive = report["passive"]
    assert passive["raced_queries"] > 0 and start <= datetime.fromisoformat(
        passive["raced_minutes"][0]) <= end  # fmt: skip
    assert seen["attribution"] == "on_path_injector", seen["reasons"]
    proofs = seen["proven_on_other_streams"]  # the resolver's upstream streams, per TLD
    assert all(k.startswith("isp-resolver>upstream/udp .") for k in proofs), proofs
    assert proofs or "upstream/udp (resolver)" in seen["scope"]["resolvers"]
    for ex in event["examples"]:
        assert ex["dig"].startswith("; <<>> wallwatch")
    # The flood, measured at the sink: the plain users behind the ISP resolver connected
    # to 65.49.2.178; the users behind a shield reached the genuine hosts.
    flood = event["flood"]
    assert flood["address"] == "65.49.2.178" and flood["connections"] >= 100
    assert flood["peak_per_second"] >= 1 and flood["connections_elsewhere"] >= 100
    assert event["flood_series"] and not any("connection counts" in m for m in report["missing"])
    shielded = [json.loads(x) for x in (out / "users-shield.jsonl").read_text().splitlines()]
    genuine = [r for r in shielded if r["answer"] == zones.genuine_address(r["name"])]
    assert len(shielded) >= 200 and len(genuine) >= 0.999 * len(shielded)
    from conftest import check_report_in_browser

    check_report_in_browser(out / "report.html", tmp_path)


def _watch_the_dashboard_live(url: str, replay: object) -> None:
    """A browser on the collector's dashboard while the replay runs: the 2014 event appears
    without a reload, seen from the two agents' vantages."""
    if not os.path.exists("/usr/bin/chromium"):
        return
    from playwright.sync_api import sync_playwright

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/api/v1/heartbeat", timeout=1).read()
            break
        except OSError:
            time.sleep(0.2)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page()
        page.goto(url + "/")
        assert page.get_attribute("#events", "data-count") == "0"  # before the incident
        page.wait_for_selector("[data-event]", timeout=240000)  # live, no reload
        assert "65.49.2.178" in (page.get_attribute("[data-event]", "data-event") or "")
        page.wait_for_function(
            "document.querySelectorAll('[data-vantage]').length == 2", timeout=30000
        )
        # The event's flood, measured at the sink, drawn on the dashboard.
        counted = 0
        while not counted and time.monotonic() < deadline + 240:
            page.click("[data-event] a")
            page.wait_for_selector("#flood[data-connections]", timeout=30000)
            counted = int(page.get_attribute("#flood", "data-connections") or 0)
            time.sleep(1)
        assert counted > 0 and page.locator("#flood svg").count() == 1
        browser.close()


def test_steady_censorship_for_an_hour_is_not_an_outage(tmp_path) -> None:  # noqa: ANN001
    """One scenario hour of gfw-steady, watched every minute: zero events."""
    from rich.console import Console

    from wallwatch.demo_lab import run_lab_demo

    out = tmp_path / "steady"
    try:
        report = run_lab_demo(out, console=Console(quiet=True), scale=30, minutes=60,
                              scenario_name="gfw-steady")  # fmt: skip
    finally:
        topology.down()
    assert report["events"] == []
    assert report["minutes_watched"] >= 55
    # The ISP's operator, reading its own dnstap and upstream packets, sees no event
    # either: the everyday censorship of a stable blocklist is its baseline too.
    passive = report["passive"]
    assert passive["events"] == [] and passive["minutes_judged"] >= 55
    assert passive["answers"] > 0
    series = report["series"]
    # Not vacuous: the censorship was there all along, and seen.
    dark = [r for r in series if r["kind"] == "dark" and r["tld"] == "com"]
    assert len(dark) >= 55 and all((r["top_share"] or 0) > 0 for r in dark)
    tampered = [r for r in series if r["vantage"] == "client1" and r["resolver"] == "8.8.8.8"
                and r["tld"] == "com"]  # fmt: skip
    assert all((r["tampered_share"] or 0) > 0.05 for r in tampered)


def test_isp_nxdomain_rewrite(lab) -> None:  # noqa: ANN001
    s = lab("isp-nxdomain-rewrite")
    ad = s.truth[0].answer
    assert dig("client1", "10.10.2.53", "no-such-name.example.com") == [ad]
    assert dig("client1", "10.10.2.53", "www.example.com") == [
        zones.genuine_address("www.example.com")
    ]
    assert dig("client1", "8.8.8.8", "no-such-name.example.com") == []  # an honest NXDOMAIN
    (m,) = probe("client1", "-n", "no-such-name.example.org", "-t", "10.10.2.53")
    assert answers(m) == [ad] and m.responses[0].ip_ttl == 64  # one reply, from the resolver


def test_root_leak_2010_collateral_damage(lab) -> None:  # noqa: ANN001
    s = lab("root-leak-2010")
    pool = set(s.pool_addresses())
    # Asked from outside, of a resolver outside: the forgery still comes back.
    (leaked,) = dig("outside", "8.8.8.8", "www.facebook.com")
    assert leaked in pool
    assert dig("outside", "8.8.8.8", "www.example.com") == [
        zones.genuine_address("www.example.com")
    ]
    assert dig("outside", "8.8.8.8", "www.example.cn") == [zones.genuine_address("www.example.cn")]


@pytest.fixture
def sweep_and_analyze(dask_client):  # noqa: ANN001, ANN201
    """Probe, ingest, analyze (:func:`_sweep_and_analyze`); and every time the same records
    analysed on a Dask cluster as a dataset must give the embedded result row for row."""

    def run(tmp_path, names: list[str], *runs: tuple[str, ...]) -> object:  # noqa: ANN001
        db = _sweep_and_analyze(tmp_path, names, *runs)
        assert_dask_matches([tmp_path / "m.jsonl"], db, tmp_path, dask_client)
        return db

    return run


def _sweep_and_analyze(tmp_path, names: list[str], *runs: tuple[str, ...]) -> object:  # noqa: ANN001
    """Probe ``names`` once per (node, args...) run into one file, ingest, analyze; return the store."""
    from wallwatch import store
    from wallwatch.analysis.run import analyze

    listing = tmp_path / "names.txt"
    listing.write_text("\n".join(names) + "\n")
    out = tmp_path / "m.jsonl"
    for node, *args in runs:
        subprocess.run(
            ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m", "wallwatch", "probe",
             "-f", str(listing), "-o", str(out), "--quiet", "--window", "0.5", "--timeout", "1",
             "--retries", "1", "--vantage", node, *args], check=True, timeout=120,
        )  # fmt: skip
    db = tmp_path / "ww.duckdb"
    store.ingest([out], db)
    analyze(db)
    return db


def attributions(db) -> dict[str, str]:  # noqa: ANN001
    from wallwatch import store

    return dict(store.query(db, "SELECT hostname, attribution FROM attributions"))


def test_analysis_attributes_the_resolver_hijack(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    s = lab("resolver-hijack")
    names = ["www.example.com", "www.example.net", "www.python.org", "www.debian.org"]
    db = sweep_and_analyze(
        tmp_path,
        names,
        ("client1", "-t", "10.10.2.53", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8"),
    )
    got = attributions(db)
    assert {n: got[n] for n in names} == {
        n: ("tampering_resolver" if n in s.resolver_hijack else "none") for n in names
    }


def test_analysis_attributes_the_nxdomain_rewrite(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    lab("isp-nxdomain-rewrite")
    names = ["www.example.com", "no-such-name.example.com", "nothing-here.example.org"]
    db = sweep_and_analyze(
        tmp_path, names, ("client1", "-t", "10.10.2.53", "--control", "tcp:8.8.8.8")
    )
    got = attributions(db)
    assert got["www.example.com"] == "none"
    assert (
        got["no-such-name.example.com"] == got["nothing-here.example.org"] == "isp_nxdomain_rewrite"
    )


def test_analysis_tells_forged_from_genuine_in_gfw_steady(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    from wallwatch import store

    lab("gfw-steady")
    names = topology.lab_names()[:200]
    db = sweep_and_analyze(
        tmp_path, names,
        ("client1", "-t", "8.8.8.8", "-t", "10.10.2.53", "--control", "tcp:8.8.8.8"),
        ("outside", "-t", "dark:10.10.3.7"),
    )  # fmt: skip
    rows = store.query(db, "SELECT hostname, ips, outcome FROM reply_verdicts WHERE len(ips) > 0")
    # A resolver serving a forgery from its cache is named by the injector only if this
    # dataset caught the injector using that address elsewhere (a dark host's or a raced
    # reply); injector1's pool is in no shipped list, and 200 names hold 3 of its names.
    caught = {ip for _, ips, outcome in rows if outcome in
              ("injected.dark_destination", "injected.multi_reply") for ip in ips}  # fmt: skip
    judged = wrong = 0
    for hostname, ips, outcome in rows:
        forged = ips != [zones.genuine_address(hostname)]
        judged += 1
        if forged and not caught.intersection(ips) and outcome == "resolver.tampered":
            continue
        if forged != outcome.startswith("injected."):
            wrong += 1
            print("misjudged", hostname, ips, outcome)
    assert judged > 300 and wrong / judged <= 0.001, (wrong, judged)
    got = attributions(db)
    tampered = {n for n, a in got.items() if a != "none"}
    forged_names = {h for h, ips, _ in rows if ips != [zones.genuine_address(h)]}
    assert tampered == forged_names  # no clean name is called tampered, none is missed
    assert {got[n] for n in tampered} == {"on_path_injector"}


def test_locate_finds_the_border(lab) -> None:  # noqa: ANN001
    s = lab("gfw-2012-11-09")
    out = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name("client1"), sys.executable, "-m", "wallwatch", "locate",
         "-n", "www.google.com", "-t", "8.8.8.8", "--max-ttl", "8", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found = json.loads(out.stdout)
    assert (found["hop"], found["mirrored"]) == (s.border_hops, False)


def test_locate_corrects_for_a_mirroring_injector(lab) -> None:  # noqa: ANN001
    s = lab("gfw-2014-01-21")
    wait_clock(s.seconds(s.truth[0].start) + 5)
    out = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name("outside"), sys.executable, "-m", "wallwatch", "locate",
         "-n", "www.example.com", "-t", "dark:10.10.3.7", "--max-ttl", "8", "--json"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    found = json.loads(out.stdout)
    assert found["mirrored"] and found["first_ttl"] == 2 * s.border_hops - 1
    assert found["hop"] == s.border_hops


def test_injector_families_in_gfw_steady(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    from wallwatch import store

    lab("gfw-steady")
    names = ["www.google.com", "www.facebook.com", "twitter.com", "www.youtube.com", "www.dropbox.com",
             "www.example.com"] + [f"n{i}.google.com" for i in range(30)]  # fmt: skip
    db = sweep_and_analyze(tmp_path, names,
                           ("client1", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8", "--raw-capture"),
                           ("outside", "-t", "dark:10.10.3.7", "--raw-capture"))  # fmt: skip
    families = store.query(db, "SELECT profile, df, ip_id_zero FROM injector_families")
    profiles = {p for p, _, _ in families}
    # On failure, every family with its features (a family no profile fits is the lead).
    shown = store.query(db, "SELECT * FROM injector_families ORDER BY family")
    assert {"injector1", "injector2", "injector3"} <= profiles, shown
    assert "unknown" not in profiles, shown
    # With the IP header captured: injector 2 sets DF, injector 3 sends IP ID 0 (Triplet Table 3).
    assert {df for p, df, _ in families if p == "injector2"} == {True}
    assert {zero for p, _, zero in families if p == "injector3"} == {True}


def test_analysis_attributes_the_root_leak(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    lab("root-leak-2010")
    names = ["www.facebook.com", "twitter.com", "www.example.com", "www.python.org"]
    # From abroad only: the public resolver's answers, its TCP answers, and a dark host.
    db = sweep_and_analyze(tmp_path, names, ("outside", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8"),
                           ("outside", "-t", "dark:10.10.3.7"))  # fmt: skip
    got = attributions(db)
    assert got["www.facebook.com"] == got["twitter.com"] == "on_path_injector"
    assert got["www.example.com"] == got["www.python.org"] == "none"


def test_analysis_attributes_a_changed_authoritative_with_a_baseline(
    lab, tmp_path, sweep_and_analyze, dask_client
) -> None:  # noqa: ANN001
    from wallwatch.analysis.run import analyze

    names = ["www.example.com", "www.example.org", "www.example.net", "www.python.org"]
    runs = (("client1", "-t", "10.10.2.53", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8"),
            ("outside", "-t", "8.8.8.8"))  # fmt: skip
    lab("clean")
    (tmp_path / "before").mkdir()
    before = sweep_and_analyze(tmp_path / "before", names, *runs)
    assert set(attributions(before).values()) == {"none"}
    topology.down()
    s = lab("authoritative-hijack")
    (tmp_path / "after").mkdir()
    after = sweep_and_analyze(tmp_path / "after", names, *runs)
    assert set(attributions(after).values()) == {"none"}  # without history it looks genuine
    analyze(after, baseline=before)
    got = attributions(after)
    assert {n: got[n] for n in names} == {
        n: ("hijacked_authoritative" if n in s.authoritative_override else "none") for n in names
    }
    # The same with the baseline on the cluster: the embedded result, row for row.
    from wallwatch.analysis import scale
    from wallwatch.dataset import Dataset

    out = Dataset(str(tmp_path / "after" / "with-baseline"))
    scale.analyze_dataset(Dataset(str(tmp_path / "after" / "dataset")), out, dask_client,
                          baseline=before)  # fmt: skip
    assert_same(after, out)


def test_analysis_attributes_the_2012_google_poisoning(lab, tmp_path, sweep_and_analyze) -> None:  # noqa: ANN001
    lab("gfw-2012-11-09")
    names = ["www.google.com", "mail.google.com", "www.example.com"]
    db = sweep_and_analyze(
        tmp_path,
        names,
        ("client1", "-t", "8.8.8.8", "-t", "10.10.2.53", "--control", "tcp:8.8.8.8"),
    )
    got = attributions(db)
    assert got["www.google.com"] == got["mail.google.com"] == "on_path_injector"
    assert got["www.example.com"] == "none"


def test_lab_commands(lab) -> None:  # noqa: ANN001
    wallwatch = [sys.executable, "-m", "wallwatch", "lab"]
    up = subprocess.run([*wallwatch, "up", "clean"], capture_output=True, text=True, timeout=60)
    assert up.returncode == 0, up.stderr
    assert "lab 'clean' is up" in up.stderr
    status = json.loads(
        subprocess.run([*wallwatch, "status"], capture_output=True, text=True, check=True).stdout
    )
    assert set(status["namespaces"]) == {netns.ns_name(n.name) for n in topology.nodes(scenario.load("clean"))} | {
        netns.ns_name("border")}  # fmt: skip
    assert status["state"]["scenario"] == "clean"
    out = subprocess.run([*wallwatch, "exec", "client1", "--", "dig", "@8.8.8.8", "www.example.com", "+short"],
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.stdout.split() == [zones.genuine_address("www.example.com")]
    assert status["healthy"] and not status["dead"]
    border = next(p for p in status["state"]["processes"] if "wallwatch.lab.border" in p["program"])
    os.kill(border["pid"], signal.SIGKILL)
    time.sleep(0.5)
    sick = subprocess.run([*wallwatch, "status"], capture_output=True, text=True)
    assert (
        sick.returncode == 1
        and "lab unhealthy" in sick.stderr
        and "wallwatch.lab.border" in sick.stderr
    )
    assert json.loads(sick.stdout)["healthy"] is False
    missing = subprocess.run(
        [*wallwatch, "exec", "nowhere", "--", "true"], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "no lab node 'nowhere'" in missing.stderr
    again = subprocess.run([*wallwatch, "up", "clean"], capture_output=True, text=True, timeout=60)
    assert again.returncode != 0 and "already up" in again.stderr
    down = subprocess.run([*wallwatch, "down"], capture_output=True, text=True, timeout=60)
    assert "removed 10 namespaces" in down.stderr and netns.ours() == []


@pytest.mark.parametrize("name", ["clean", "authoritative-hijack", "gfw-2014-01-21"])
def test_the_other_scenarios_on_the_cluster_too(lab, tmp_path, sweep_and_analyze, name) -> None:  # noqa: ANN001
    """The scenarios no analysis test above sweeps, swept from inside and outside (2014
    inside its injection window) and analysed both ways: the same tables, row for row."""
    s = lab(name)
    truth = {t.attribution: t for t in s.truth}
    if "on_path_injector" in truth:
        wait_clock(s.seconds(truth["on_path_injector"].start) + 5)
    names = ["www.example.com", "www.example.net", "www.example.org", "www.example.cn"]
    db = sweep_and_analyze(
        tmp_path, names,
        ("client1", "-t", "10.10.2.53", "-t", "8.8.8.8", "--control", "tcp:8.8.8.8"),
        ("outside", "-t", "8.8.8.8", "-t", "dark:10.10.3.7"),
    )  # fmt: skip
    got = attributions(db)
    assert set(got) == set(names)
    if name == "gfw-2014-01-21":
        assert got["www.example.com"] == "on_path_injector"
        assert got["www.example.cn"] == "none"


def _spawn(node: str, log: object, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m", *args],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # type: ignore[arg-type]
    )  # fmt: skip


def _shield(node: str, out: object, port: int, *args: str) -> subprocess.Popen[bytes]:
    from pathlib import Path

    folder = Path(str(out))
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "shield.log", "wb") as log:  # the child keeps its own descriptor
        proc = _spawn(node, log, "wallwatch", "shield", "--listen", f"127.0.0.1:{port}",
                      "-o", str(folder), *args)  # fmt: skip
    deadline = time.monotonic() + 30
    while not (folder / "shield.json").exists():
        assert proc.poll() is None and time.monotonic() < deadline, (
            folder / "shield.log"
        ).read_text()
        time.sleep(0.1)
    return proc


def _users(node: str, out: object, *args: str) -> list[dict[str, object]]:
    from pathlib import Path

    path = Path(str(out))
    done = subprocess.run(
        ["ip", "netns", "exec", netns.ns_name(node), sys.executable, "-m", "wallwatch.lab.users",
         "--out", str(path), *args], capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in path.read_text().splitlines()]


def _genuine_share(lookups: list[dict[str, object]]) -> float:
    return sum(1 for r in lookups if r["answer"] == zones.genuine_address(str(r["name"]))) / max(
        1, len(lookups)
    )


def test_shield_in_the_2014_replay(lab, tmp_path) -> None:  # noqa: ANN001
    s = lab("gfw-2014-01-21")
    truth = {t.attribution: t for t in s.truth}
    forged = truth["on_path_injector"].answer
    start = s.seconds(truth["on_path_injector"].start)
    shields = [
        _shield("client1", tmp_path / "shield", 5353, "--upstream", "8.8.8.8"),
        _shield("client1", tmp_path / "isp", 5355, "--upstream", "10.10.2.53"),
        _shield("client1", tmp_path / "isp-dot", 5354, "--upstream", "10.10.2.53",
                "--secure", "dot:8.8.8.8"),
    ]  # fmt: skip
    try:
        wait_clock(start + 60)
        # The issue's own check: through the shield the genuine address, plain the forgery.
        assert dig("client1", "127.0.0.1", "www.example.com", "-p", "5353") == [
            zones.genuine_address("www.example.com")
        ]
        assert dig("client1", "8.8.8.8", "www.example.com") == [forged]
        # The same users, with and without the shield, in the injection window.
        common = ("--users", "40", "--think", "0.1", "--duration", "8", "--tlds", "com,net,org")
        with_shield: list[dict[str, object]] = []
        plain: list[dict[str, object]] = []
        runners = [
            threading.Thread(target=lambda: with_shield.extend(_users(
                "client1", tmp_path / "users-shield.jsonl", "--resolver", "127.0.0.1:5353", *common))),
            threading.Thread(target=lambda: plain.extend(_users(
                "client2", tmp_path / "users-plain.jsonl", "--resolver", "8.8.8.8", *common))),
        ]  # fmt: skip
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        assert wait_clock_now() < s.seconds(truth["on_path_injector"].end)
        assert len(with_shield) >= 500 and len(plain) >= 500
        assert _genuine_share(with_shield) >= 0.999, _genuine_share(with_shield)
        assert _genuine_share(plain) <= 0.01
        assert all(r["connected"] for r in with_shield)
        # The flood, measured at the sink: the plain users' connections to the forged host.
        time.sleep(1.0)
        sink = json.loads((topology.state_dir() / "sink-connections.json").read_text())
        to_forged = sum(c.get(forged, 0) for c in sink.values())
        to_genuine = sum(n for c in sink.values() for a, n in c.items() if a != forged)
        assert to_forged >= 0.99 * len(plain)
        assert to_genuine >= len(with_shield)
        # The ISP's poisoned cache: waiting cannot fix it (SERVFAIL, never the forgery);
        # the secure channel can.
        assert dig("client1", "10.10.2.53", "www.example.org") == [forged]
        assert dig("client1", "127.0.0.1", "www.example.org", "-p", "5355", "+time=4") == []
        assert dig("client1", "127.0.0.1", "www.example.org", "-p", "5354", "+time=4") == [
            zones.genuine_address("www.example.org")
        ]
    finally:
        for proc in shields:
            proc.terminate()
            proc.wait(timeout=30)
    state = json.loads((tmp_path / "isp-dot" / "shield.json").read_text())
    assert state["decisions"]["secure"] >= 1 and state["drops"]["forged_pool"] >= 1
    state = json.loads((tmp_path / "shield" / "shield.json").read_text())
    assert state["decisions"]["accepted"] >= 1 and state["path"]["echoes_opt"] is True


def wait_clock_now() -> float:
    return float(json.loads((topology.state_dir() / "border-stats.json").read_text())["clock"])


def test_shield_against_three_injectors(lab, tmp_path) -> None:  # noqa: ANN001
    lab("gfw-steady")
    shield = _shield("client1", tmp_path / "shield", 5353, "--upstream", "8.8.8.8",
                     "--cache-size", "0")  # fmt: skip
    try:
        lookups = _users("client1", tmp_path / "load.jsonl", "--resolver", "127.0.0.1:5353",
                         "--users", "250", "--think", "0", "--duration", "12", "--zipf", "0.3",
                         "--no-connect")  # fmt: skip
    finally:
        shield.terminate()
        shield.wait(timeout=30)
    assert len(lookups) >= 10_000, len(lookups)
    forged = [
        r
        for r in lookups
        if r["answer"] is not None and r["answer"] != zones.genuine_address(str(r["name"]))
    ]
    assert forged == []  # 0 forged accepted
    measured = [r for line in (tmp_path / "shield" / "measurements.jsonl").read_bytes().splitlines()
                if isinstance(r := records.decode(line), Measurement)]  # fmt: skip
    # A lookup left unanswered is one whose resolver itself serves the forgery: 8.8.8.8
    # recursing to the .cn servers inside crosses the border and caches the injector's
    # answer (collateral damage, [ccr-2012]). Waiting cannot fix that (docs/shield.md).
    poisoned = {m.hostname for m in measured if m.annotations["shield"] == "failed"
                and any(r.edns and "forged_pool" in part
                        for r, part in zip(m.responses, _reasons(m), strict=True))}  # fmt: skip
    failed = {str(r["name"]) for r in lookups if r["answer"] is None}
    assert failed <= poisoned and all(n.endswith(".cn") for n in poisoned)
    assert len([r for r in lookups if r["answer"] is None]) <= 0.01 * len(lookups)
    censored = [m for m in measured if "shield_dropped" in m.annotations]
    assert len(censored) >= 1000
    genuine_dropped = 0
    for m in measured:
        genuine = zones.genuine_address(m.hostname)
        for part in m.annotations.get("shield_dropped", "").split(";"):
            if part:
                index = int(part.split(":")[0])
                genuine_dropped += any(a.ipv4 == genuine for a in m.responses[index].answers)
    assert genuine_dropped == 0
    # Uncensored names: the shield answers when the genuine reply comes, so what it adds
    # to the upstream's round trip is its own work, far below one round trip.
    by_uid = {m.measurement_uid: m for m in measured}
    added = [d["added_ms"] - 1000 * by_uid[d["measurement_uid"]].responses[0].rtt
             for d in map(json.loads, (tmp_path / "shield" / "decisions.jsonl").read_text().splitlines())
             if d["decision"] == "accepted" and d.get("measurement_uid") in by_uid
             and "shield_dropped" not in by_uid[d["measurement_uid"]].annotations]  # fmt: skip
    state = json.loads((tmp_path / "shield" / "shield.json").read_text())
    rtt_ms = state["path"]["least_rtt_ms"]  # the upstream's round trip, 160 ms here
    assert rtt_ms > 100 and len(added) >= 1000 and statistics.median(added) <= rtt_ms
    # Every injector was there: pointer forgeries with and without AA, no OPT throughout.
    assert state["drops"]["no_opt"] >= len(censored) and state["drops"]["injector_profile"] >= 1


def _reasons(m: Measurement) -> list[str]:
    """Each response's drop reasons ('' for the accepted one)."""
    out = [""] * len(m.responses)
    for part in m.annotations.get("shield_dropped", "").split(";"):
        if part:
            index, _, why = part.partition(":")
            out[int(index)] = why
    return out
