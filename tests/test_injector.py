"""The injector model without namespaces: matching semantics, pools, profiles, packets."""

from __future__ import annotations

import os
import socket
import struct

import dns.message
import pytest
from hypothesis import given
from hypothesis import strategies as st

from wallwatch import wire
from wallwatch.lab.border import checksum, ip_packet, udp_datagram
from wallwatch.lab.injector import PROFILES, Anchor, Injector, Rule, flatten


def query(name: str, qtype: int = 1) -> bytes:
    return wire.build_query(0x1234, name, qtype)


def injector(*rules: Rule, pool: list[str] | None = None, profile: str = "injector3") -> Injector:
    return Injector("t", PROFILES[profile], list(rules), {"": pool or ["10.9.9.9"]})


FLOW = socket.inet_aton("10.10.1.10") + socket.inet_aton("8.8.8.8") + struct.pack("!HH", 40000, 53)


@pytest.mark.parametrize(
    ("rule", "name", "hit"),
    [
        # [gfwatch-2021]; [wallbleed-2025] III-A
        (Rule("rsf.org"), "rsf.org", True),
        (Rule("rsf.org"), "x.rsf.org", True),
        (Rule("rsf.org"), "xrsf.org", False),
        (Rule("rsf.org"), "rsf.org.x", False),
        (Rule("shadowvpn.com", Anchor.PREFIX), "shadowvpn.comx", True),
        (Rule("shadowvpn.com", Anchor.PREFIX), "shadowvpn.com.x", True),
        (Rule("shadowvpn.com", Anchor.PREFIX), "xshadowvpn.com", False),
        (Rule("69.mu", Anchor.ANYWHERE), "x69.mux", True),
        (Rule("rsf.org"), "WWW.RSF.ORG", True),  # case-insensitive (REG_ICASE)
    ],
)
def test_rule_anchoring(rule: Rule, name: str, hit: bool) -> None:
    assert bool(injector(rule).forge(query(name), FLOW, 0.0)) is hit


def test_name_is_flattened_before_matching() -> None:
    # A literal dot inside a label acts as a separator (gfwrev09: \6wux.ru == \3wux\2ru).
    odd = (
        struct.pack("!H", 1)
        + bytes.fromhex("0100000100000000000006")
        + b"wux.ru\x00\x00\x01\x00\x01"
    )
    assert flatten(odd) == "wux.ru"
    assert injector(Rule("wux.ru")).forge(odd, FLOW, 0.0)
    # A NUL inside a label ends the name early.
    nul = (
        struct.pack("!H", 1)
        + bytes.fromhex("010000010000000000000a")
        + b"rsf.org\x00zz\x00\x00\x01\x00\x01"
    )
    assert flatten(nul) == "rsf.org"


def test_only_the_first_127_bytes_count() -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "rsf", "org"])  # suffix beyond byte 127
    assert not injector(Rule("rsf.org")).forge(query(long_name), FLOW, 0.0)
    assert injector(Rule("a" * 20, Anchor.ANYWHERE)).forge(query(long_name), FLOW, 0.0)


def test_replies_follow_the_published_construction() -> None:
    inj = injector(Rule("example.com"), pool=["65.49.2.178"])
    (mx,) = inj.forge(query("www.example.com", 15), FLOW, 0.0)
    reply = dns.message.from_wire(mx)
    assert reply.answer[0].rdtype == 1 and reply.answer[0][0].to_text() == "65.49.2.178"
    assert reply.edns < 0  # OPT dropped
    (aaaa,) = inj.forge(query("www.example.com", 28), FLOW, 0.0)
    assert dns.message.from_wire(aaaa).answer[0].rdtype == 28


def test_profiles() -> None:
    one = injector(Rule("google", Anchor.ANYWHERE), profile="injector1").forge(
        query("www.google.com"), FLOW, 0
    )[0]
    parsed = wire.parse_reply(one)
    assert parsed.flags is not None and parsed.flags & wire.AA
    assert parsed.answers[0].ttl == 60 and b"\xc0\x0c" not in one[-30:]  # full name, TTL 60
    assert len(injector(Rule("x"), profile="type2-2009").forge(query("x"), FLOW, 0)) == 3
    mirror = injector(Rule("x"))
    assert mirror.ip_ttl(29) == 29
    rising = injector(Rule("x"), profile="injector1")
    first = rising.ip_ttl(64)
    assert rising.ip_ttl(64) == first % 255 + 1


def test_cyclic_pool_per_process() -> None:
    pool = [f"10.0.0.{i}" for i in range(1, 8)]
    inj = injector(Rule("x"), pool=pool)
    got = [wire.parse_reply(inj.forge(query("x"), FLOW, 0)[0]).answers[0].data for _ in range(9)]
    start = pool.index(got[0])
    assert got == [pool[(start + i) % len(pool)] for i in range(9)]  # in order, wrapping


def test_activity_windows() -> None:
    inj = Injector(
        "t", PROFILES["injector3"], [Rule("com")], {"": ["65.49.2.178"]}, active=[(300.0, 1740.0)]
    )
    assert not inj.forge(query("www.example.com"), FLOW, 299.0)
    assert inj.forge(query("www.example.com"), FLOW, 300.0)
    assert not inj.forge(query("www.example.com"), FLOW, 1740.0)


def test_forwarded_ttl_keeps_the_checksum_valid() -> None:
    from wallwatch.lab.border import Border

    packet = ip_packet(socket.inet_aton("1.2.3.4"), socket.inet_aton("10.10.1.10"), 17,
                       udp_datagram(53, 40000, b"y"), ttl=64, ip_id=7, df=False)  # fmt: skip

    class Side:
        mac = b"\x02" * 6
        sock = None

    border = Border.__new__(Border)
    border.macs = {packet[16:20]: b"\x04" * 6}
    border.sides = {"inside": Side()}  # type: ignore[dict-item]
    border.queue, border.seq, border.delay = [], 0, 0.0
    border.stats = {"forwarded": 0, "expired": 0, "no_route": 0}
    border.forward("inside", packet, 61)
    frame = border.queue[0][3]
    assert frame[14 + 8] == 61 and checksum(frame[14:34]) == 0


def test_packets_have_valid_checksums() -> None:
    src, dst = socket.inet_aton("8.8.8.8"), socket.inet_aton("10.10.1.10")
    packet = ip_packet(src, dst, 17, udp_datagram(53, 40000, b"x" * 10), ttl=60, ip_id=0, df=True)
    assert checksum(packet[:20]) == 0
    assert packet[8] == 60 and struct.unpack("!H", packet[6:8])[0] == 0x4000


try:
    from wallwatch import _border  # type: ignore[attr-defined]
except ImportError:  # not built: the Python border runs, and these tests skip
    _border = None
if os.environ.get("WALLWATCH_NO_NATIVE"):
    _border = None
needs_router = pytest.mark.skipif(_border is None, reason="the C router is not built or not wanted")

INSIDE_MAC, OUTSIDE_MAC, HOST_MAC, CLIENT_MAC = b"\x02" * 6, b"\x03" * 6, b"\x04" * 6, b"\x05" * 6


@needs_router
@given(
    payload=st.binary(max_size=300), ttl=st.integers(0, 255), ip_id=st.integers(0, 0xFFFF),
    df=st.booleans(), sport=st.integers(0, 0xFFFF),
)  # fmt: skip
def test_the_c_router_frames_forged_replies_as_ip_packet_does(
    payload: bytes, ttl: int, ip_id: int, df: bool, sport: int
) -> None:
    src, dst = socket.inet_aton("8.8.8.8"), socket.inet_aton("10.10.1.10")
    expected = (
        CLIENT_MAC
        + INSIDE_MAC
        + b"\x08\x00"
        + ip_packet(src, dst, 17, udp_datagram(53, sport, payload), ttl=ttl, ip_id=ip_id, df=df)
    )
    assert (
        _border.frame(CLIENT_MAC, INSIDE_MAC, src, dst, 53, sport, payload, ttl, ip_id, df)
        == expected
    )


@needs_router
def test_the_c_router_forwards_queries_and_hands_them_over_as_the_python_border() -> None:
    """Frames go through a Router over datagram socket pairs (packet sockets need a
    namespace): it forwards as Border.forward does, hands DNS queries over, drops the rest."""
    from wallwatch.lab.border import Border

    inside_lab, inside_router = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    outside_lab, outside_router = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with inside_lab, inside_router, outside_lab, outside_router:
        server = socket.inet_aton("8.8.8.8")
        router = _border.Router(
            inside_router.fileno(), outside_router.fileno(), INSIDE_MAC, OUTSIDE_MAC,
            socket.inet_aton("10.10.1.1"), socket.inet_aton("10.20.0.1"),
            int.from_bytes(socket.inet_aton("10.10.0.0"), "big"), 0xFFFF0000, 3, 0.0,
            {server: HOST_MAC},
        )  # fmt: skip
        q = query("www.example.com")
        packet = ip_packet(socket.inet_aton("10.10.1.10"), server, 17, udp_datagram(40000, 53, q),
                           ttl=64, ip_id=7, df=False)  # fmt: skip
        others = [
            ip_packet(socket.inet_aton("10.10.1.10"), server, 17, udp_datagram(1, 2, b"x"), ttl=2,
                      ip_id=1, df=False),  # expires before the tap
            ip_packet(socket.inet_aton("10.10.1.10"), socket.inet_aton("9.9.9.9"), 17,
                      udp_datagram(1, 2, b"x"), ttl=64, ip_id=1, df=False),  # no route
        ]  # fmt: skip
        inside_lab.send(INSIDE_MAC + CLIENT_MAC + b"\x08\x00" + packet)
        inside_lab.send(OUTSIDE_MAC + CLIENT_MAC + b"\x08\x00" + packet)  # not addressed to it
        for other in others:
            inside_lab.send(INSIDE_MAC + CLIENT_MAC + b"\x08\x00" + other)
        handed = router.pump()
        assert handed == [(0, CLIENT_MAC, packet, 20, 40000, 62)]
        assert router.flush() == -1  # sent at once: the delay is 0
        forwarded = outside_lab.recv(65535)

        border = Border.__new__(Border)
        border.macs = {server: HOST_MAC}

        class Side:
            mac = OUTSIDE_MAC
            sock = None

        border.sides = {"outside": Side()}  # type: ignore[dict-item]
        border.queue, border.seq, border.delay = [], 0, 0.0
        border.stats = {"forwarded": 0, "expired": 0, "no_route": 0}
        border.forward("outside", packet, 61)
        assert forwarded == border.queue[0][3]
        counts = router.counts()
        assert (counts["forwarded"], counts["expired"], counts["no_route"]) == (1, 1, 1)
        router.send_forged(0, CLIENT_MAC, packet[12:16], packet[16:20], 40000,
                           [(b"reply", 60, 0, False)])  # fmt: skip
        router.flush()
        assert inside_lab.recv(65535) == _border.frame(
            CLIENT_MAC, INSIDE_MAC, server, packet[12:16], 53, 40000, b"reply", 60, 0, False
        )
