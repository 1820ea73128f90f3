"""Passive detection from a resolver's own traffic: dnstap from a real Unbound, and the detector.

The first test runs Debian's Unbound on loopback, forwarding to a loopback authoritative
server, with its dnstap sent to ``wallwatch passive --dnstap unix:PATH``: the Frame
Streams handshake, the messages and the users' privacy, as an operator would run it. The
second feeds fourteen minutes of a resolver's answers, written as a dnstap file, whose
minutes 6-9 send every .com name to one address (the 2014 shape): the minute detector
raises the event, names the address and the scope, and the race in packets is counted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import dns.message
import dns.query
import dns.rrset
import pytest

from wallwatch import records
from wallwatch.interop import dnstap
from wallwatch.interop.capture import Capture
from wallwatch.interop.dnstap import ClientPolicy
from wallwatch.lab.loopback import LoopbackServer, authoritative
from wallwatch.passive import Passive
from wallwatch.records import Measurement

FORGED = "65.49.2.178"


def _port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _receiver(tap: Path, out: Path) -> subprocess.Popen[str]:
    """``wallwatch passive`` listening for dnstap on ``tap`` (30 s at most), once it listens."""
    listener = subprocess.Popen(
        [sys.executable, "-m", "wallwatch", "passive", "--dnstap", f"unix:{tap}", "-o", str(out),
         "--vantage", "isp", "--duration", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not tap.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert tap.exists(), "the receiver did not listen"
    return listener


def _ask(port: int, names: list[str] | dict[str, list[str]]) -> dict[str, list[str]]:
    """Each name's A records from the resolver on 127.0.0.1:``port`` (retried while it
    starts, 20 s in all)."""
    got: dict[str, list[str]] = {}
    deadline = time.monotonic() + 20
    for name in names:
        while time.monotonic() < deadline:
            try:
                reply = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port,
                                      timeout=1.0)  # fmt: skip
                got[name] = [rd.to_text() for rrset in reply.answer for rd in rrset]
                break
            except (TimeoutError, OSError, dns.exception.Timeout):
                time.sleep(0.2)
    return got


def _unbound_conf(directory: Path, port: int, upstream: tuple[str, int], tap: Path) -> Path:
    """Unbound on loopback forwarding example.com to ``upstream``, dnstap to ``tap``, and
    unbound-control on a Unix socket (its statistics, without certificates)."""
    conf = directory / "unbound.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    username: ""
    chroot: ""
    directory: "{directory}"
    pidfile: "{directory}/unbound.pid"
    use-syslog: no
    logfile: "{directory}/unbound.log"
    verbosity: 1
    num-threads: 1
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    qname-minimisation: no
    extended-statistics: yes
forward-zone:
    name: "example.com."
    forward-addr: {upstream[0]}@{upstream[1]}
dnstap:
    dnstap-enable: yes
    dnstap-bidirectional: yes
    dnstap-socket-path: "{tap}"
    dnstap-send-identity: yes
    dnstap-identity: "isp-resolver"
    dnstap-log-resolver-query-messages: yes
    dnstap-log-resolver-response-messages: yes
    dnstap-log-client-query-messages: yes
    dnstap-log-client-response-messages: yes
    dnstap-log-forwarder-query-messages: yes
    dnstap-log-forwarder-response-messages: yes
remote-control:
    control-enable: yes
    control-interface: "{directory}/unbound.ctl"
    control-use-cert: no
""")
    return conf


@pytest.mark.skipif(
    not shutil.which("unbound"), reason="Debian's unbound is needed (scripts/setup)"
)
def test_unbound_dnstap_over_its_socket_becomes_private_measurements(
    serve: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    zone = {f"n{i}.example.com": [f"198.51.100.{i + 1}"] for i in range(12)}
    upstream = serve(authoritative(zone))
    tap = tmp_path / "dnstap.sock"
    out = tmp_path / "passive"
    listener = _receiver(tap, out)
    port = _port()
    conf = _unbound_conf(tmp_path, port, upstream.address[:2], tap)
    resolver = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        answered = sum(
            bool(a) for a in _ask(port, [f"n{i}.example.com" for i in range(12)]).values()
        )
        assert answered == 12
        time.sleep(1.5)  # unbound sends its dnstap queue in batches
    finally:
        resolver.terminate()
        resolver.wait(timeout=20)
    time.sleep(0.5)
    listener.terminate()  # SIGTERM: the receiver stops, judges what it has and writes it
    _, stderr = listener.communicate(timeout=60)
    assert listener.returncode == 0, stderr
    lines = [line for f in sorted((out / "measurements").glob("*.jsonl"))
             for line in f.read_bytes().splitlines()]  # fmt: skip
    ms = [r for r in map(records.decode, lines) if isinstance(r, Measurement)]
    to_users = [m for m in ms if m.annotations["dnstap"] == "client_response"]
    from_upstream = [m for m in ms if m.annotations["dnstap"] == "forwarder_response"]
    assert {m.hostname for m in to_users} == set(zone)
    assert {m.hostname for m in from_upstream} == set(zone)  # each name asked upstream once
    for m in from_upstream:
        assert m.resolver_address == f"127.0.0.1:{upstream.address[1]}"
        assert m.responses[0].answers[0].ipv4 == zone[m.hostname][0]
        assert m.responses[0].rtt >= 0 and m.annotations["identity"] == "isp-resolver"
    for m in to_users:
        assert m.vantage == "isp" and m.resolver_address == f"127.0.0.1:{port}"
        # Privacy by default: no user's address or port anywhere.
        assert "client" not in m.annotations and m.source_port == 0
    summary = json.loads((out / "passive.json").read_text())
    assert summary["answers"] == len(ms) and summary["events"] == []


def _answer(name: str, address: str, ttl: int = 300) -> bytes:
    query = dns.message.make_query(name, "A")
    reply = dns.message.make_response(query)
    reply.answer.append(dns.rrset.from_text(name + ".", ttl, "IN", "A", address))
    return reply.to_wire()


def test_passive_detector_raises_the_2014_event_from_a_dnstap_file(tmp_path: Path) -> None:
    """Fourteen minutes of a resolver's answers to its users; in minutes 6-9 every .com
    name gets 65.49.2.178, .cn names keep theirs. The event, its address and its scope."""
    minute0 = 23_330_000  # 2014-05-11, a whole minute
    names = [f"site{i}.com" for i in range(30)] + [f"site{i}.cn" for i in range(10)]
    payloads = []
    for minute in range(minute0, minute0 + 14):
        for i, name in enumerate(names):
            forged = minute0 + 6 <= minute < minute0 + 10 and name.endswith(".com")
            at = minute * 60 + 1 + i
            payloads.append(dnstap.message_bytes(
                identity=b"isp-resolver", type=6, socket_family=1, socket_protocol=1,
                query_address=socket.inet_aton(f"10.0.{i}.9"), query_port=40000 + i,
                response_address=socket.inet_aton("10.10.2.53"), response_port=53,
                query_time_sec=at, query_time_nsec=0, response_time_sec=at, response_time_nsec=5_000_000,
                response_message=_answer(name, FORGED if forged else f"198.51.100.{i + 1}")))  # fmt: skip
    tapfile = tmp_path / "resolver.dnstap"
    with open(tapfile, "wb") as handle:
        dnstap.write_frames(handle, payloads)
    assert dnstap.is_dnstap(tapfile.read_bytes()[:16])
    # From Python too: ww.read detects a dnstap file like any other source.
    import wallwatch as ww

    read = list(ww.read(tapfile))
    assert len(read) == 14 * 40 and all(isinstance(r, Measurement) for r in read)
    assert {r.annotations["dnstap"] for r in read} == {"client_response"}  # type: ignore[union-attr]
    out = tmp_path / "passive"
    done = subprocess.run([sys.executable, "-m", "wallwatch", "passive", "--dnstap", str(tapfile),
                           "-o", str(out), "--vantage", "isp", "--clients", "hash"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "passive.json").read_text())
    assert summary["answers"] == 14 * 40 and summary["minutes_judged"] == 14
    (event,) = summary["events"]
    assert event["target_address"] == FORGED
    assert event["scope"]["tlds"] == ["com"]  # .cn untouched
    onset = datetime.fromisoformat(event["onset"]).timestamp() // 60
    assert abs(onset - (minute0 + 6)) <= 2
    alerts = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert alerts and alerts[0]["change"] == "start" and alerts[0]["entity"]["code"] == FORGED
    # The evidence report reads a passive directory as it reads a watch's.
    report = subprocess.run([sys.executable, "-m", "wallwatch", "report", str(out)],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert report.returncode == 0, report.stderr
    (reported,) = json.loads((out / "report.json").read_text())["events"]
    assert reported["target_address"] == FORGED
    # --clients hash: a keyed hash per user, never the address.
    text = b"".join(f.read_bytes() for f in (out / "measurements").glob("*.jsonl"))
    assert b"10.0.3.9" not in text and b'"client":"' in text


def test_a_live_capture_keeps_the_upstream_side_over_ipv4_and_ipv6(tmp_path: Path) -> None:
    """``Capture`` on ``lo``: a server on 127.0.0.1 and ::1 answers each query twice (an
    injector's address first, the genuine one after), as a race looks on a resolver's
    upstream side. Every query is one measurement with both replies, over both families;
    the server's own side of the same packets is not kept."""
    servers = []
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        server = socket.socket(family, socket.SOCK_DGRAM)
        server.bind((host, 0))
        servers.append(server)
    port = servers[0].getsockname()[1]
    servers[1].close()  # the same port on ::1
    servers[1] = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    servers[1].bind(("::1", port))
    stop_serving: list[int] = []

    def serve(server: socket.socket) -> None:
        server.settimeout(0.2)
        while not stop_serving:
            try:
                wire, peer = server.recvfrom(512)
            except TimeoutError:
                continue
            query = dns.message.from_wire(wire)
            name = query.question[0].name.to_text().rstrip(".")
            for address in (FORGED, "198.51.100.7"):
                reply = dns.message.from_wire(_answer(name, address))
                reply.id = query.id
                server.sendto(reply.to_wire(), peer)

    threads = [threading.Thread(target=serve, args=(s,)) for s in servers]
    for thread in threads:
        thread.start()
    try:
        with _capturing(port, tmp_path / "packets") as (seen, capture):
            _ask_twice_answered(port)
    finally:
        stop_serving.append(1)
        for thread in threads:
            thread.join(timeout=5)
        for server in servers:
            server.close()
    summary = seen.close()
    assert summary["raced_queries"] == 6, summary
    ms = [records_decode(line) for f in sorted((tmp_path / "packets" / "measurements").glob("*.jsonl"))
          for line in f.read_bytes().splitlines()]  # fmt: skip
    assert sorted(m.resolver_address for m in ms) == sorted(
        [f"127.0.0.1:{port}"] * 3 + [f"[::1]:{port}"] * 3)  # fmt: skip
    for m in ms:
        assert [[a.ipv4 for a in r.answers] for r in m.responses] == [[FORGED], ["198.51.100.7"]]
        assert m.annotations["stream"] == "upstream"
    assert capture.user_side >= 12  # the server's side of the same packets: seen, not kept


def _ask_twice_answered(port: int) -> None:
    """Six queries, over ::1 and 127.0.0.1 in turn, each waiting for its two replies."""
    for i in range(6):
        host = "127.0.0.1" if i % 2 else "::1"
        query = dns.message.make_query(f"n{i}.example.com", "A")
        family = socket.AF_INET if i % 2 else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as client:
            client.settimeout(2)
            client.sendto(query.to_wire(), (host, port))
            client.recv(512), client.recv(512)  # both replies arrived
    time.sleep(0.3)


@contextlib.contextmanager
def _capturing(port: int, out: Path) -> Iterator[tuple[Passive, Capture]]:
    """``Passive.listen`` on a live capture of ``lo`` (the server's ``port``), in a thread
    until the block ends."""
    capture = Capture("lo", port=port)
    seen = Passive(out, emit=lambda line: None)
    done: list[int] = []
    reader = threading.Thread(target=seen.listen, args=(capture, lambda: bool(done)),
                              kwargs={"vantage": "isp", "clients": ClientPolicy.DROP,
                                      "hide": lambda client: None})  # fmt: skip
    reader.start()
    try:
        yield seen, capture
    finally:
        done.append(1)
        reader.join(timeout=10)
        capture.close()


def _servfail(name: str, ede: int) -> bytes:
    import dns.edns
    import dns.rcode

    query = dns.message.make_query(name, "A", use_edns=0)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.SERVFAIL)
    reply.use_edns(0, options=[dns.edns.EDEOption(ede)])
    return reply.to_wire()


def test_the_operators_own_signals_failures_dnssec_ttls_and_volume(tmp_path: Path) -> None:
    """Twenty minutes of a validating resolver's answers to its users. Minutes 6-9: the
    .com names come back with one TTL (an injector's stamp); 11-13: half the names fail
    DNSSEC validation (SERVFAIL, EDE 6 "DNSSEC Bogus"); 16-19: ten times the queries.
    Each raises its own alarm, and ends it; nothing else alarms."""
    minute0 = 23_330_000
    names = [f"site{i}.com" for i in range(30)] + [f"site{i}.org" for i in range(10)]
    payloads = []
    for minute in range(minute0, minute0 + 20):
        k = minute - minute0
        for copy in range(10 if k >= 16 else 1):
            for i, name in enumerate(names):
                if 11 <= k < 14 and i % 2:
                    message = _servfail(name, 6)
                elif 6 <= k < 10 and name.endswith(".com"):
                    message = _answer(name, f"198.51.100.{i + 1}", ttl=236)
                else:  # a cache counting its answers down: each name its own TTL
                    message = _answer(
                        name, f"198.51.100.{i + 1}", ttl=3600 - (k * 60 + i * 37) % 3000
                    )
                at = minute * 60 + 1 + i
                payloads.append(dnstap.message_bytes(
                    type=6, socket_family=1, socket_protocol=1,
                    query_address=socket.inet_aton("10.0.0.9"), query_port=40000 + i + copy * 100,
                    response_address=socket.inet_aton("10.10.2.53"), response_port=53,
                    query_time_sec=at, query_time_nsec=copy, response_time_sec=at,
                    response_time_nsec=5_000_000, response_message=message))  # fmt: skip
    tapfile = tmp_path / "resolver.dnstap"
    with open(tapfile, "wb") as handle:
        dnstap.write_frames(handle, payloads)
    out = tmp_path / "passive"
    done = subprocess.run([sys.executable, "-m", "wallwatch", "passive", "--dnstap", str(tapfile),
                           "-o", str(out), "--vantage", "isp"],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "passive.json").read_text())
    alarms = {(a["signal"], a["change"]): datetime.fromisoformat(a["at"]).timestamp() // 60 - minute0
              for a in summary["operator_alarms"]}  # fmt: skip
    assert {s for s, _ in alarms} == {"ttl_top_share", "servfail_share", "bogus_share",
                                      "volume_share"}, alarms  # fmt: skip
    assert 6 <= alarms["ttl_top_share", "start"] <= 8 and 10 <= alarms["ttl_top_share", "end"] <= 12
    for signal in ("servfail_share", "bogus_share"):
        assert 11 <= alarms[signal, "start"] <= 13 and 14 <= alarms[signal, "end"] <= 16
    assert 16 <= alarms["volume_share", "start"] <= 18
    assert all(a["stream"] == "users" for a in summary["operator_alarms"])
    rows = [json.loads(line) for line in (out / "operator.jsonl").read_text().splitlines()]
    assert len(rows) == 20 and rows[7]["ttl_top"] == 236 and rows[7]["ttl_top_share"] == 0.75
    assert rows[12]["bogus_share"] == rows[12]["servfail_share"] == 0.5
    assert rows[17]["volume"] == 400
    logged = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    assert sum(a["type"] == "wallwatch.operator" for a in logged) == len(alarms)


def _send_frames(tap: Path, payloads: list[bytes]) -> None:
    """A dnstap writer (as Unbound is): READY, ACCEPT, START, the frames, STOP, FINISH."""

    def control(kind: int, types: list[bytes]) -> bytes:
        fields = b"".join(struct.pack("!II", 1, len(t)) + t for t in types)
        return struct.pack("!III", 0, 4 + len(fields), kind) + fields

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(str(tap))
        conn.sendall(control(4, [dnstap.CONTENT_TYPE]))
        assert conn.recv(4096)[8:12] == struct.pack("!I", 1)  # ACCEPT
        conn.sendall(control(2, [dnstap.CONTENT_TYPE]))
        for payload in payloads:
            conn.sendall(struct.pack("!I", len(payload)) + payload)
        conn.sendall(control(3, []))
        conn.settimeout(10)
        assert conn.recv(4096)[8:12] == struct.pack("!I", 5)  # FINISH


def _minutes_2014(minute0: int, minutes: range, copies: int = 1) -> list[bytes]:
    """A resolver's answers to its users, minute by minute; from minute 6 to 9 every .com
    name gets 65.49.2.178 (the 2014 shape), .cn names keep theirs."""
    names = [f"site{i}.com" for i in range(30)] + [f"site{i}.cn" for i in range(10)]
    out = []
    for minute in minutes:
        for copy in range(copies):
            for i, name in enumerate(names):
                forged = 6 <= minute < 10 and name.endswith(".com")
                at = (minute0 + minute) * 60 + 1 + i
                out.append(dnstap.message_bytes(
                    identity=b"isp-resolver", type=6, socket_family=1, socket_protocol=1,
                    query_address=socket.inet_aton(f"10.0.{i}.9"), query_port=40000 + copy,
                    response_address=socket.inet_aton("10.10.2.53"), response_port=53,
                    query_time_sec=at, query_time_nsec=copy, response_time_sec=at,
                    response_time_nsec=5_000_000,
                    response_message=_answer(name, FORGED if forged else f"198.51.100.{i + 1}")))  # fmt: skip
    return out


def test_a_kill_9_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    """``wallwatch passive`` on a dnstap socket is killed (SIGKILL) with minutes 0-8 sent,
    of which 7 and 8 are still open; a new one on the same directory gets minutes 9-13.
    Every answer is counted once, each minute's records are written once, the open
    minutes' answers (and their repeats) come back from the journal, and the event is
    raised once, with the detector's sums replayed rather than learnt again."""
    import os
    import signal as signals

    minute0 = 23_330_000
    tap = tmp_path / "dnstap.sock"
    out = tmp_path / "passive"
    first = _receiver(tap, out)
    _send_frames(tap, _minutes_2014(minute0, range(9), copies=3))
    time.sleep(1.5)  # the journal is written within a second, even when idle
    os.kill(first.pid, signals.SIGKILL)
    first.communicate(timeout=30)
    assert sorted((out / "pending").glob("m*.jsonl"))  # open minutes, journaled
    tap.unlink()  # the killed receiver's socket (the new one replaces it; wait for that)
    second = _receiver(tap, out)
    _send_frames(tap, _minutes_2014(minute0, range(9, 14), copies=3))
    time.sleep(0.5)
    second.terminate()
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "passive: resumed: 7 judged minutes replayed, 240 answers of 2 open minutes" in err
    summary = json.loads((out / "passive.json").read_text())
    assert summary["answers"] == 14 * 40 * 3 and summary["minutes_judged"] == 14
    records = [records_decode(line) for f in sorted((out / "measurements").glob("passive-m*.jsonl"))
               for line in f.read_bytes().splitlines()]  # fmt: skip
    assert len(records) == 14 * 40  # one record per name and minute, each written once
    assert sum(int(r.annotations.get("count", "1")) for r in records) == 14 * 40 * 3
    assert len({r.measurement_uid for r in records}) == len(records)
    assert not list((out / "pending").glob("m*"))
    (event,) = summary["events"]
    assert event["target_address"] == FORGED and event["over"] is not None
    alerts = [json.loads(line) for line in (out / "alerts.jsonl").read_text().splitlines()]
    starts = [a for a in alerts if a.get("change") == "start"]
    assert len(starts) == 1 and len({a["id"] for a in alerts}) == len(alerts)


def records_decode(line: bytes) -> Measurement:
    record = records.decode(line)
    assert isinstance(record, Measurement)
    return record


def test_a_cut_or_foreign_stream_is_named_and_what_came_before_is_kept(tmp_path: Path) -> None:
    payloads = [dnstap.message_bytes(type=4, socket_family=1, socket_protocol=1,
                                     response_address=socket.inet_aton("192.0.2.53"), response_port=53,
                                     query_time_sec=1_400_000_000 + i, response_time_sec=1_400_000_000 + i,
                                     response_message=_answer(f"n{i}.example.com", "192.0.2.1"))
                for i in range(5)]  # fmt: skip
    whole = tmp_path / "whole.dnstap"
    with open(whole, "wb") as handle:
        dnstap.write_frames(handle, payloads)
    cut = tmp_path / "cut.dnstap"
    cut.write_bytes(whole.read_bytes()[:-30])  # ends inside the last data frame
    got = list(dnstap.read_records(cut))
    assert [type(r).__name__ for r in got] == ["Measurement"] * 4 + ["InputError"]
    assert "ends inside a frame" in got[-1].error  # type: ignore[union-attr]
    foreign = tmp_path / "foreign.fstrm"
    fields = struct.pack("!II", 1, 9) + b"text/junk"
    foreign.write_bytes(struct.pack("!III", 0, 4 + len(fields), 2) + fields)
    (error,) = list(dnstap.read_records(foreign))
    assert "content type" in error.error  # type: ignore[union-attr]
    huge = tmp_path / "huge.dnstap"
    start = 12 + 8 + len(dnstap.CONTENT_TYPE)  # the START frame
    huge.write_bytes(whole.read_bytes()[:start] + struct.pack("!I", 1 << 30) + b"x" * 10)
    assert "not dnstap" in list(dnstap.read_records(huge))[-1].error  # type: ignore[union-attr]


def test_packets_on_the_upstream_side_show_the_race(tmp_path: Path) -> None:
    """Two replies to one upstream query in a capture: the injector's first (its IP TTL),
    the server's after it. dnstap would log only the first; the packets count the race."""
    import dpkt

    capture = tmp_path / "upstream.pcap"
    resolver, server = socket.inet_aton("10.10.2.53"), socket.inet_aton("8.8.8.8")

    def packet(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int) -> bytes:
        udp = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        udp.ulen = len(udp)
        ip = dpkt.ip.IP(src=src, dst=dst, p=dpkt.ip.IP_PROTO_UDP, ttl=ttl, data=udp)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(type=dpkt.ethernet.ETH_TYPE_IP, data=ip))

    with open(capture, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        t = 1_390_300_000.0
        for i in range(6):
            name = f"site{i}.com"
            query = dns.message.make_query(name, "A")
            query.id = 100 + i
            writer.writepkt(packet(resolver, server, 40000 + i, 53, query.to_wire(), 64), t)
            forged = dns.message.from_wire(_answer(name, FORGED))
            forged.id = query.id
            genuine = dns.message.from_wire(_answer(name, f"198.51.100.{i + 1}"))
            genuine.id = query.id
            writer.writepkt(
                packet(server, resolver, 53, 40000 + i, forged.to_wire(), 103), t + 0.02
            )
            writer.writepkt(
                packet(server, resolver, 53, 40000 + i, genuine.to_wire(), 47), t + 0.19
            )
            t += 1.0
    out = tmp_path / "passive"
    done = subprocess.run([sys.executable, "-m", "wallwatch", "passive", "--pcap", str(capture),
                           "-o", str(out), "--vantage", "isp"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "passive.json").read_text())
    assert summary["raced_queries"] == 6 and summary["first_reply_ip_ttls"] == {"103": 6}
    text = b"".join(f.read_bytes() for f in (out / "measurements").glob("*.jsonl"))
    assert b'"vantage":"isp"' in text and b"pcap:10.10.2.53" not in text


@pytest.mark.skipif(
    not shutil.which("unbound"), reason="Debian's unbound is needed (scripts/setup)"
)
def test_when_the_genuine_reply_loses_the_race_dnstap_and_unbound_see_only_the_forgery(
    serve: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """Measured, not assumed: an injector answers before the genuine server (100 ms later)
    on Unbound's upstream path. Unbound takes the first reply and closes its port; dnstap
    logs the forgery only, and the genuine reply is not counted as unwanted either. A live
    capture of Unbound's upstream side (``lo``, the server's port) sees both replies."""
    from wallwatch.lab.loopback import Forgery, racing_injector

    zone = {f"n{i}.example.com": [f"198.51.100.{i + 1}"] for i in range(8)}
    upstream = serve(racing_injector(authoritative(zone), lambda name: True,
                                     [Forgery(FORGED, delay=0.0)], genuine_delay=0.1))  # fmt: skip
    tap = tmp_path / "dnstap.sock"
    out = tmp_path / "passive"
    listener = _receiver(tap, out)
    with _capturing(upstream.address[1], tmp_path / "packets") as (seen, _):
        port = _port()
        conf = _unbound_conf(tmp_path, port, upstream.address[:2], tap)
        resolver = subprocess.Popen(["unbound", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            got = _ask(port, zone)
            time.sleep(1.0)  # every genuine reply has arrived (100 ms after its forgery)
            stats = subprocess.run(["unbound-control", "-c", str(conf), "stats_noreset"],
                                   capture_output=True, text=True, timeout=20)  # fmt: skip
            assert stats.returncode == 0, stats.stderr
            time.sleep(1.0)
        finally:
            resolver.terminate()
            resolver.wait(timeout=20)
    listener.terminate()
    listener.communicate(timeout=60)
    assert got == {name: [FORGED] for name in zone}  # the users got the forgery
    counters = dict(line.split("=", 1) for line in stats.stdout.split())
    ms = [r for f in sorted((out / "measurements").glob("*.jsonl"))
          for r in map(records.decode, f.read_bytes().splitlines()) if isinstance(r, Measurement)]  # fmt: skip
    upstream_answers = [m for m in ms if m.annotations["dnstap"] == "forwarder_response"]
    assert sorted(m.hostname for m in upstream_answers) == sorted(zone)  # one per query
    assert {a.ipv4 for m in upstream_answers for a in m.responses[0].answers} == {FORGED}
    # The genuine replies reached a port Unbound had closed: not counted as unwanted.
    assert counters["total.num.queries"] == str(len(zone))
    assert counters["unwanted.replies"] == "0"
    # The packets on Unbound's upstream side hold both: one query per name, the forgery
    # first and the genuine answer 100 ms after it.
    summary = seen.close()
    assert summary["raced_queries"] == len(zone), summary
    raced = [r for f in sorted((tmp_path / "packets" / "measurements").glob("*.jsonl"))
             for r in map(records.decode, f.read_bytes().splitlines())]  # fmt: skip
    assert sorted(m.hostname for m in raced if isinstance(m, Measurement)) == sorted(zone)
    for m in raced:
        assert isinstance(m, Measurement) and m.annotations["stream"] == "upstream"
        first, second = ([a.ipv4 for a in r.answers] for r in m.responses)
        assert first == [FORGED] and second == zone[m.hostname]
        assert 0.05 < m.responses[1].rtt - m.responses[0].rtt < 0.5


@pytest.mark.skipif(not shutil.which("named"), reason="Debian's bind9 is needed (scripts/setup)")
def test_bind_writes_dnstap_to_the_socket_and_passive_reads_it(
    serve: Callable[..., LoopbackServer], tmp_path: Path
) -> None:
    """BIND 9 (Debian's, built with dnstap) as a forwarding resolver on loopback, its
    ``dnstap-output unix`` pointed at ``wallwatch passive``: the answers its users got and
    those its forwarder gave it, as docs/passive.md wires it."""
    zone = {f"n{i}.example.com": [f"198.51.100.{i + 1}"] for i in range(6)}
    upstream = serve(authoritative(zone))
    tap = tmp_path / "dnstap.sock"
    out = tmp_path / "passive"
    listener = _receiver(tap, out)
    port = _port()
    conf = tmp_path / "named.conf"
    conf.write_text(f"""options {{
    directory "{tmp_path}";
    pid-file "{tmp_path}/named.pid";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    forward only;
    forwarders {{ {upstream.address[0]} port {upstream.address[1]}; }};
    dnssec-validation no;
    dnstap {{ client response; forwarder response; resolver response; }};
    dnstap-output unix "{tap}";
    dnstap-identity "bind-resolver";
}};
""")
    named = subprocess.Popen(["named", "-g", "-u", "root", "-c", str(conf)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        got = _ask(port, zone)
        time.sleep(1.0)
    finally:
        named.terminate()  # BIND flushes its dnstap queue as it stops
        _, err = named.communicate(timeout=30)
    time.sleep(0.5)
    listener.terminate()
    listener.communicate(timeout=60)
    assert got == zone, err.decode(errors="replace")[-2000:]
    ms = [records_decode(line) for f in sorted((out / "measurements").glob("*.jsonl"))
          for line in f.read_bytes().splitlines()]  # fmt: skip
    kinds = {m.annotations["dnstap"] for m in ms}
    # BIND logs its forwarder's answers as resolver responses (measured: not forwarder).
    assert kinds == {"client_response", "resolver_response"}, kinds
    users = [m for m in ms if m.annotations["dnstap"] == "client_response"]
    assert sorted(m.hostname for m in users) == sorted(zone)
    assert {m.annotations["identity"] for m in ms} == {"bind-resolver"}
    for m in users:
        assert [a.ipv4 for a in m.responses[0].answers] == zone[m.hostname]
