"""The shield against racing injectors on loopback: what it accepts, drops, caches, refuses.

Real sockets throughout: the loopback lab's injector (:func:`racing_injector`) sends
forgeries first and the genuine reply after a path delay, as the firewall's do, and
dnspython asks the shield as a user's stub would.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from wallwatch import records
from wallwatch.analysis.families import SIGNS
from wallwatch.lab.forge import NameForm
from wallwatch.lab.loopback import Forgery, Request, authoritative, racing_injector
from wallwatch.records import Measurement
from wallwatch.shield import Shield, ShieldConfig
from wallwatch.shield.cache import Cache, strip_opt, ttl_offsets
from wallwatch.shield.server import BadQuery, parse_query

GENUINE = "93.184.216.34"
ZONE = {"www.example.com": [GENUINE], "www.example.net": ["93.184.216.35"],
        "big.example.com": [f"10.0.{i}.{j}" for i in range(2) for j in range(1, 21)]}  # fmt: skip
# Injector 3 of 2014 (pointer name, answer TTL 236, no OPT), with TTL mirrored to the
# genuine reply's: the case Hold-On's TTL test alone loses ([triplet-2021] 4.3).
MIRROR = Forgery("65.49.2.178", delay=0.0)
# Forgeries at addresses in no known pool: only the header and the timing tell.
UNKNOWN_POOL = [
    Forgery("45.33.2.79", delay=0.0, answer_ttl=60, aa=True, name_form=NameForm.FULL),
    Forgery("45.33.2.80", delay=0.005, answer_ttl=180),
    Forgery("45.33.2.81", delay=0.01, ip_ttl=41),
]


@pytest.fixture
def shield_on(tmp_path: Path) -> Iterator[Callable[..., tuple[Shield, int]]]:
    started: list[tuple[Shield, asyncio.AbstractEventLoop, threading.Thread]] = []

    def start(upstream: tuple[str, int], **kw: object) -> tuple[Shield, int]:
        out = kw.pop("out", tmp_path / f"shield{len(started)}")
        config = ShieldConfig(upstream=upstream, listen=("127.0.0.1", 0), out=out, **kw)  # type: ignore[arg-type]
        shield = Shield(config)
        where: list[tuple[str, int]] = []
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        def run() -> None:
            loop.run_until_complete(shield.serve(lambda w: (where.append(w), ready.set())))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        assert ready.wait(10), "the shield did not start"
        started.append((shield, loop, thread))
        return shield, where[0][1]

    yield start
    for shield, loop, thread in started:
        loop.call_soon_threadsafe(shield.stop)
        thread.join(10)
        loop.close()


def ask(port: int, name: str, qtype: str = "A", *, edns: bool = True,
        tcp: bool = False) -> dns.message.Message:  # fmt: skip
    q = dns.message.make_query(name, qtype, use_edns=0 if edns else False)
    if tcp:
        return dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
    return dns.query.udp(q, "127.0.0.1", port=port, timeout=5, ignore_unexpected=True)


def addresses(reply: dns.message.Message) -> list[str]:
    return [r.to_text() for rrset in reply.answer for r in rrset]


def flushed(shield: Shield) -> tuple[list[Measurement], list[dict[str, object]]]:
    deadline = time.monotonic() + 10
    while shield.state()["pending"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.2)  # the loop writes its records every second
    out = shield.config.out
    assert out is not None
    ms = [r for line in (out / "measurements.jsonl").read_bytes().splitlines()
          if isinstance(r := records.decode(line), Measurement)]  # fmt: skip
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    return ms, decisions


def injector(forgeries: list[Forgery], delay: float = 0.06) -> Callable[[Request], object]:
    return racing_injector(authoritative(ZONE), lambda name: name.endswith(".com"), forgeries,
                           genuine_delay=delay)  # fmt: skip


def test_waits_out_the_2014_forgery(serve, shield_on) -> None:  # noqa: ANN001
    upstream = serve(injector([MIRROR]))
    shield, port = shield_on(upstream.address)
    # A plain stub takes the first reply: the forgery.
    plain = dns.query.udp(dns.message.make_query("www.example.com", "A", use_edns=0),
                          upstream.address[0], port=upstream.address[1], timeout=5)  # fmt: skip
    assert addresses(plain) == ["65.49.2.178"]
    reply = ask(port, "www.example.com")
    assert addresses(reply) == [GENUINE] and reply.edns >= 0
    assert addresses(ask(port, "www.example.net")) == ["93.184.216.35"]
    ms, decisions = flushed(shield)
    m = next(m for m in ms if m.hostname == "www.example.com")
    assert [a.ipv4 for r in m.responses for a in r.answers] == ["65.49.2.178", GENUINE]
    assert m.annotations["shield"] == "accepted" and m.annotations["shield_accepted"] == "1"
    dropped = m.annotations["shield_dropped"].split(":")[1].split("+")
    assert {"forged_pool", "injector_profile", "no_opt", "too_fast"} <= set(dropped)
    assert [d["decision"] for d in decisions] == ["accepted", "accepted"]
    assert all("client" not in json.dumps(d) for d in decisions)  # no user address kept


def test_forgeries_outside_any_pool_and_ttl_mirroring(serve, shield_on) -> None:  # noqa: ANN001
    upstream = serve(injector([*UNKNOWN_POOL, MIRROR]))
    shield, port = shield_on(upstream.address)
    names = [f"www.example.{tld}" for tld in ("com", "net")] * 20
    for name in names:
        assert addresses(ask(port, name)) == [ZONE[name][0]], name
        shield.cache = Cache(0)  # every lookup goes upstream
    state = shield.state()
    assert state["decisions"]["accepted"] == len(names), state  # type: ignore[index]
    drops = state["drops"]
    assert isinstance(drops, dict)
    assert drops["injector_profile"] > 0 and drops["no_opt"] > 0 and drops["too_fast"] > 0
    # The three genuine-looking-TTL forgeries of each .com lookup were all dropped.
    assert drops["no_opt"] == 20 * 4
    # Addresses raced by a reply that passed every check are learned as forged.
    assert {"45.33.2.79", "45.33.2.80", "45.33.2.81"} <= set(shield.forged.learned)


def test_no_genuine_reply_means_servfail_or_the_secure_channel(serve, shield_on, tmp_path) -> None:  # noqa: ANN001
    # A resolver whose cache holds the forgery answers it as it answers anything: with
    # OPT, at the path's RTT, with the path's TTL. Waiting cannot fix that; the pool
    # check refuses it, and only the secure channel has the genuine answer.
    poisoned = authoritative(
        {"www.example.com": ["65.49.2.178"], "www.example.net": ["93.184.216.35"]}
    )
    upstream = serve(poisoned)
    shield, port = shield_on(upstream.address)
    for _ in range(8):  # the shortest hold, for the test
        shield.path.learn(0.001, None, True)
    reply = ask(port, "www.example.com")
    assert reply.rcode() == dns.rcode.SERVFAIL and not reply.answer
    assert addresses(ask(port, "www.example.net")) == ["93.184.216.35"]
    key, cert = _certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    dot = serve(authoritative(ZONE), tls=context)
    secured, port2 = shield_on(upstream.address, secure=_dot(dot.spec))
    for _ in range(8):
        secured.path.learn(0.001, None, True)
    assert addresses(ask(port2, "www.example.com")) == [GENUINE]
    assert secured.state()["decisions"]["secure"] == 1  # type: ignore[index]
    # Racing asks the secure channel at once.
    raced, port3 = shield_on(upstream.address, secure=_dot(dot.spec), race=True)
    assert addresses(ask(port3, "www.example.com")) == [GENUINE]


def test_cache_counts_ttls_down_and_keeps_the_users_question(serve, shield_on) -> None:  # noqa: ANN001
    upstream = serve(authoritative(ZONE, ttl=300))
    shield, port = shield_on(upstream.address)
    first = ask(port, "www.example.com")
    shield.cache._entries[next(iter(shield.cache._entries))].stored -= 7  # noqa: SLF001
    second = ask(port, "WwW.ExAmPlE.cOm")
    assert (
        addresses(second) == [GENUINE] and second.question[0].name.to_text() == "WwW.ExAmPlE.cOm."
    )
    assert first.answer[0].ttl == 300 and second.answer[0].ttl == 293
    assert shield.state()["decisions"]["cached"] == 1  # type: ignore[index]
    # A user without EDNS gets no OPT, and a reply too big for 512 bytes is truncated.
    plain = ask(port, "www.example.net", edns=False)
    assert plain.edns < 0 and addresses(plain) == ["93.184.216.35"]
    big = ask(port, "big.example.com", edns=False)
    assert big.flags & dns.flags.TC and not big.answer
    assert len(addresses(ask(port, "big.example.com", tcp=True))) == 40


def test_hostile_queries_get_formerr_or_nothing(serve, shield_on, request) -> None:  # noqa: ANN001
    upstream = serve(authoritative(ZONE))
    shield, port = shield_on(upstream.address)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    request.addfinalizer(sock.close)
    sock.settimeout(1.0)
    good = dns.message.make_query("www.example.com", "A").to_wire()
    for junk in (b"", b"\x12", good[:12] + b"\x07example", good[:2] + b"\x81\x80" + good[4:],
                 b"\xff" * 5000):  # fmt: skip
        sock.sendto(junk, ("127.0.0.1", port))
    compressed = good[:12] + b"\xc0\x0c" + good[-4 - 11 : -11]
    sock.sendto(compressed, ("127.0.0.1", port))
    replies = []
    try:
        while True:
            replies.append(sock.recv(4096))
    except TimeoutError:
        pass
    # Only the two with a readable header get an answer: FORMERR, never a crash.
    assert sorted(r[3] & 0x0F for r in replies) == [1, 1]
    assert addresses(ask(port, "www.example.com")) == [GENUINE]
    assert shield.state()["decisions"]["formerr"] == 6  # type: ignore[index]
    with pytest.raises(BadQuery, match="one question"):
        parse_query(b"\x00" * 12)  # not a question at all


def test_never_an_open_resolver() -> None:
    with pytest.raises(ValueError, match="--allow"):
        Shield(ShieldConfig(upstream=("127.0.0.1", 53), listen=("0.0.0.0", 5300)))
    out = subprocess.run([sys.executable, "-m", "wallwatch", "shield", "--listen", "0.0.0.0:5300",
                          "--upstream", "127.0.0.1"], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 2 and "--allow" in out.stderr


def test_cache_walk_and_opt_strip() -> None:
    q = dns.message.make_query("www.example.com", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("www.example.com.", 120, "IN", "A", GENUINE))
    wire = r.to_wire()
    walked = ttl_offsets(wire)
    assert walked is not None and walked[1] == 120 and len(walked[0]) == 1
    stripped = dns.message.from_wire(strip_opt(wire))
    assert stripped.edns < 0 and addresses(stripped) == [GENUINE]
    assert all(not s.fits(aa=False, name_form="pointer", answer_ttl=236, edns=True) for s in SIGNS)


def _certificate(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "1", "-subj", "/CN=dns.lab.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def _dot(spec: str) -> object:
    from wallwatch.probe.stream import parse_stream_server

    return parse_stream_server(f"dot:{spec}")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "wallwatch", "shield", *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def test_bad_options_name_the_option() -> None:
    for args, where in ((["--upstream", "8.8.8.8:99999"], "--upstream"),
                        (["--upstream", "8.8.8.8", "--race"], "--race needs --secure"),
                        (["--upstream", "8.8.8.8", "--secure", "udp:8.8.8.8"], "--secure"),
                        (["--upstream", "8.8.8.8", "--allow", "10.0.0.0/33"], "--allow"),
                        (["--upstream", "8.8.8.8", "--upload", "http://x"], "--upload and --token"),
                        (["--upstream", "8.8.8.8", "--listen", "127.0.0.1:99999"], "--listen")):  # fmt: skip
        out = _cli(*args)
        assert out.returncode == 2 and where in out.stderr, (args, out.stderr)


def shield_process(upstream: tuple[str, int], out: Path, *extra: str,
                   stderr: int = subprocess.DEVNULL) -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    """``wallwatch shield`` as a command, with its cache off, once it serves; its port. A
    port another process took between the pick and the bind is picked again."""
    for _ in range(5):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        proc = subprocess.Popen(
            [sys.executable, "-m", "wallwatch", "shield", "--listen", f"127.0.0.1:{port}",
             "--upstream", f"127.0.0.1:{upstream[1]}", "--cache-size", "0", "-o", str(out),
             *extra],
            stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not (out / "shield.json").exists() and proc.poll() is None:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise AssertionError("the shield did not start within 30 s")
            time.sleep(0.05)
        if proc.poll() is None:
            return proc, port
        proc.wait()
    raise AssertionError("the shield did not start: every port picked was taken")


def test_a_kill_9_loses_no_closed_measurement(serve, tmp_path: Path) -> None:  # noqa: ANN001
    upstream = serve(injector([MIRROR]))
    out = tmp_path / "shield"
    proc, port = shield_process(upstream.address, out)
    try:
        names = [f"www.example.{t}" for t in ("com", "net")] * 15
        for name in names:
            assert addresses(ask(port, name)) == [ZONE[name][0]]
        time.sleep(0.6)  # every query's linger has ended: all are closed
        proc.send_signal(9)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = (out / "measurements.jsonl").read_bytes().splitlines()
    ms = [records.decode(line) for line in lines]
    assert len(ms) == len(names)  # every one, whole, once
    assert len((out / "decisions.jsonl").read_text().splitlines()) == len(names)
