"""The native packet readers and their pure-Python twins give the same values.

``wallwatch._native`` is what runs; ``wallwatch.fastwire.py_*`` is what runs where it
could not be built. Both read the same real messages (dnspython's, with EDNS options,
Extended DNS Errors, CNAME chains, IPv6 and odd names), every truncation of them and
random bytes, and the same pcap files (Ethernet with and without a VLAN tag, raw IP,
Linux cooked, fragments, other protocols, a file cut mid-record).
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import dns.rrset
import dpkt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wallwatch import fastwire
from wallwatch.wire import parse_reply

native = fastwire.native_module()
pytestmark = pytest.mark.skipif(native is None, reason="the extension was not built")


def _messages() -> list[bytes]:
    out = []
    for name, rtype, data in [
        ("www.Example.com", "A", ["192.0.2.1", "198.51.100.7"]),
        ("v6.example.net", "AAAA", ["2001:db8::1", "2001:db8:0:1:0:0:0:1", "::ffff:192.0.2.1"]),
        ("z.example.org", "AAAA", ["fe80::", "2001:db8:1:2:3:4:5:6", "0:0:1::", "1:0:0:2::3"]),
        ("_dmarc.example.com", "TXT", ['"v=DMARC1"']),
        ("alias.example.com", "CNAME", ["target.example.net."]),
    ]:
        query = dns.message.make_query(name, rtype, use_edns=0)
        reply = dns.message.make_response(query)
        reply.answer.append(dns.rrset.from_text(name + ".", 300, "IN", rtype, *data))
        if rtype == "CNAME":
            reply.answer.append(
                dns.rrset.from_text("target.example.net.", 60, "IN", "A", "203.0.113.9")
            )
        out.append(reply.to_wire())
    failing = dns.message.make_response(dns.message.make_query("signed.example", "A", use_edns=0))
    failing.set_rcode(dns.rcode.SERVFAIL)
    failing.use_edns(0, options=[dns.edns.EDEOption(6, "bogus"), dns.edns.EDEOption(9)])
    out.append(failing.to_wire())
    badvers = dns.message.make_response(dns.message.make_query("x.example", "A", use_edns=0))
    badvers.set_rcode(dns.rcode.BADVERS)
    out.append(badvers.to_wire())
    out.append(dns.message.make_query("plain.example.com", "A").to_wire())
    nx = dns.message.make_response(dns.message.make_query("gone.example", "A"))
    nx.set_rcode(dns.rcode.NXDOMAIN)
    out.append(nx.to_wire())
    # A name with a byte outside letters, digits, '-' and '_': declined by both.
    out.append(b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x03a b\x00\x00\x01\x00\x01")
    return out


def test_summary_twins_agree_on_real_messages_and_every_truncation() -> None:
    checked = 0
    for message in _messages():
        for end in range(len(message) + 1):
            piece = message[:end]
            assert native.summary(piece) == fastwire.py_summary(piece), (message, end)
            checked += 1
        whole = native.summary(message)
        parsed = parse_reply(message)
        if whole is not None:  # what it reads is what the full parser reads
            assert whole[3] == (parsed.qname or "").lower().rstrip(".")
            assert whole[2] == parsed.rcode and whole[0] == parsed.id
            assert list(whole[8]) == [a.data for a in parsed.answers if a.rtype in (1, 28)]
    assert checked > 700
    summaries = [native.summary(m) for m in _messages()]
    assert summaries[0][3] == "www.example.com"
    assert sorted(summaries[0][8]) == ["192.0.2.1", "198.51.100.7"]  # in the message's order
    assert summaries[1] is None  # the IPv4-mapped AAAA: the full parser's
    assert sorted(summaries[2][8]) == ["0:0:1::", "1:0:0:2::3", "2001:db8:1:2:3:4:5:6", "fe80::"]
    assert summaries[4][8] == ("203.0.113.9",) and summaries[4][9] == 60
    assert summaries[5][2] == 2 and summaries[5][10] == 6  # SERVFAIL, "DNSSEC Bogus"
    assert summaries[6][2] == 16  # BADVERS: the rcode extended by OPT
    assert summaries[-1] is None


@settings(max_examples=400, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.integers(min_value=0, max_value=11))
def test_summary_twins_agree_on_hostile_bytes(junk: bytes, which: int) -> None:
    base = _messages()[which % len(_messages())]
    for message in (
        junk,
        base[:12] + junk,
        base + junk,
        bytes(b ^ 0x40 for b in base[:20]) + base[20:],
    ):
        assert native.summary(message) == fastwire.py_summary(message)


def _pcap(linktype: int, frames: list[bytes], *, big: bool = False) -> bytes:
    order = ">" if big else "<"
    head = struct.pack(order + "IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)
    body = b"".join(struct.pack(order + "IIII", 1_390_288_500 + i, i * 1000, len(f), len(f)) + f
                    for i, f in enumerate(frames))  # fmt: skip
    return head + body


def _ip(
    payload: bytes, *, proto: int = 17, off: int = 0, df: bool = True, pad: bytes = b""
) -> bytes:
    udp = dpkt.udp.UDP(sport=53, dport=40000, data=payload)
    udp.ulen = len(udp)
    ip = dpkt.ip.IP(src=b"\x08\x08\x08\x08", dst=b"\x0a\x0a\x02\x35", p=proto, ttl=103, id=4242,
                    data=udp)  # fmt: skip
    ip.df, ip.offset = df, off * 8
    ip.len = len(ip)
    return bytes(ip) + pad


def test_scan_pcap_twins_agree_on_link_types_vlans_fragments_and_cuts() -> None:
    rng = random.Random(7)
    messages = _messages()
    ips = [_ip(m, df=rng.random() < 0.5) for m in messages]
    ips += [_ip(messages[0], off=5), _ip(messages[0], proto=6), _ip(messages[1], pad=b"\0" * 6)]
    ether = [bytes(dpkt.ethernet.Ethernet(type=0x0800, data=dpkt.ip.IP(i))) for i in ips]
    vlan = b"\x02" * 12 + b"\x81\x00\x00\x07\x08\x00" + ips[0]
    cooked = [b"\0\0\0\1\0\6" + b"\2" * 8 + b"\x08\x00" + i for i in ips]
    for linktype, frames in [(1, [*ether, vlan, b"\x02" * 12 + b"\x86\xdd" + ips[0]]), (101, ips),
                             (113, cooked)]:  # fmt: skip
        for big in (False, True):
            data = _pcap(linktype, frames, big=big)
            for end in [len(data), len(data) - 3, 24 + 10, 24]:
                args = (data[:end], 24, big, False, linktype, 1000)
                assert native.scan_pcap(*args) == fastwire.py_scan_pcap(*args), (linktype, end)
    packets, offset, seen, cut = native.scan_pcap(
        _pcap(1, [*ether, vlan]), 24, False, False, 1, 1000
    )
    assert seen == len(ether) + 1 and not cut
    # The fragment and the TCP packet are skipped; the padded one is cut to its IP length.
    assert len(packets) == len(ips) - 2 + 1
    t, src, dst, sport, dport, ttl, ip_id, df, payload, number = packets[0]
    assert (src, dst, sport, dport, ttl, ip_id) == ("8.8.8.8", "10.10.2.53", 53, 40000, 103, 4242)
    assert payload == messages[0] and t == 1_390_288_500.0 and number == 1
    assert packets[len(ips) - 3][8] == messages[1]  # Ethernet padding dropped
    # A limit reads that many and says where to go on.
    first, offset, _, _ = native.scan_pcap(_pcap(101, ips), 24, False, False, 101, 2)
    rest = native.scan_pcap(_pcap(101, ips), offset, False, False, 101, 1000)[0]
    whole = native.scan_pcap(_pcap(101, ips), 24, False, False, 101, 1000)[0]
    assert [p[:-1] for p in first + rest] == [p[:-1] for p in whole]
    assert [p[-1] for p in rest] == [p[-1] - 2 for p in whole[2:]]  # numbered from the offset
    with pytest.raises(ValueError, match="link type 9"):
        native.scan_pcap(_pcap(9, ips), 24, False, False, 9, 10)


def _frames() -> list[bytes]:
    import socket

    from wallwatch.interop import dnstap

    out = []
    for kind, message in [(6, _messages()[0]), (4, _messages()[1]), (8, _messages()[4]),
                          (5, _messages()[0]), (6, _messages()[5]), (6, b"")]:  # fmt: skip
        fields = {
            "identity": b"isp", "type": kind, "socket_family": 1, "socket_protocol": 1,
            "query_address": socket.inet_aton("10.0.0.9"), "query_port": 40000,
            "response_address": socket.inet_aton("10.10.2.53"), "response_port": 53,
            "query_time_sec": 1_390_288_500, "query_time_nsec": 123_000,
            "response_time_sec": 1_390_288_500, "response_time_nsec": 456_000,
        }  # fmt: skip
        if message:
            fields["response_message"] = message
        out.append(dnstap.message_bytes(**fields))
    # No query time: the response time dates it.
    out.append(dnstap.message_bytes(type=6, response_time_sec=1_390_288_501,
                                    response_message=_messages()[0]))  # fmt: skip
    return out


def test_dnstap_answer_twins_agree_on_real_frames_and_every_truncation() -> None:
    frames = _frames()
    for frame in frames:
        for end in range(len(frame) + 1):
            piece = frame[:end]
            assert native.dnstap_answer(piece) == fastwire.py_dnstap_answer(piece), (frame, end)
    got = [native.dnstap_answer(f) for f in frames]
    assert got[0][:6] == (
        6,
        bytes([10, 10, 2, 53]),
        53,
        1,
        bytes([10, 0, 0, 9]),
        1_390_288_500.000123,
    )
    assert got[0][9] == "www.example.com" and sorted(got[0][14]) == ["192.0.2.1", "198.51.100.7"]
    assert got[1] is None  # the IPv4-mapped AAAA: the full parser's
    assert got[3] == 1 and got[5] == 1  # a query type; a response without its message
    assert got[6][5] == 1_390_288_501.0
    assert native.dnstap_answer(b"\xff") == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=120))
def test_dnstap_answer_never_fails_on_hostile_bytes(junk: bytes) -> None:
    for frame in (junk, _frames()[0][:20] + junk):
        assert native.dnstap_answer(frame) in (0, 1, None) or isinstance(
            native.dnstap_answer(frame), tuple)  # fmt: skip


def test_dnstap_group_twins_agree_and_match_the_engine_frame_by_frame(tmp_path: Path) -> None:
    """The grouping loop (C and its twin) on one buffer: the same fresh frames, keys,
    counts and tallies; and ``Passive.read_dnstap`` writes what ``Passive.offer`` frame by
    frame writes."""
    import json as _json
    import socket

    from wallwatch.interop import dnstap
    from wallwatch.passive import Passive

    frames = []
    for k in range(600):
        i = k % 37
        message = dns.message.make_response(dns.message.make_query(f"n{i}.example.com", "A"))
        addresses = ["192.0.2.1", "192.0.2.2"][:: -1 if k % 2 else 1] if i % 5 == 0 else [
            f"198.51.100.{i}"]  # fmt: skip
        message.answer.append(dns.rrset.from_text(f"n{i}.example.com.", 300 - k % 50, "IN", "A",
                                                  *addresses))  # fmt: skip
        if k % 97 == 0:
            message.set_rcode(dns.rcode.SERVFAIL)
            message.answer = []
        frames.append(dnstap.message_bytes(
            type=6 if k % 11 else 4, socket_family=1, socket_protocol=1,
            query_address=socket.inet_aton(f"10.0.0.{k % 3}"), query_port=1000 + k,
            response_address=socket.inet_aton("10.10.2.53"), response_port=53,
            query_time_sec=1_390_288_500 + k // 4, response_time_sec=1_390_288_500 + k // 4,
            response_message=message.to_wire()))  # fmt: skip
    frames.insert(5, b"\x0a\x02xx")  # a message without its DNS message: a query
    frames.insert(9, b"\xff\xff")  # undecodable
    data = b"".join(len(f).to_bytes(4, "big") + f for f in frames) + b"\x00\x00"
    for keep in (False, True):
        results = []
        for group in (native.dnstap_group, fastwire.py_dnstap_group):
            keys: dict[int, dict[object, list[int]]] = {}
            tallies: dict[int, dict[tuple[str, int, int, int], int]] = {}
            counts = [0, 0, 0, 0, 0]
            fresh, offset, control = group(data, 0, keys, tallies, {23_171_476}, (0.0, 1.0, 0.0),
                                           True, keep, counts)  # fmt: skip
            results.append((fresh, offset, control, keys, tallies, counts))
        assert results[0] == results[1]
        fresh, offset, control, keys, tallies, counts = results[0]
        assert offset == len(data) - 2 and not control  # the cut length: read more
        assert counts[0] == 1 and counts[1] == 1 and counts[4] > 100
        assert sum(counts[4:]) + len(fresh) + counts[3] == 600
    # The engine, both ways, on one file.
    tap = tmp_path / "resolver.dnstap"
    with open(tap, "wb") as handle:
        dnstap.write_frames(handle, frames)
    outs = []
    for way in ("group", "offer"):
        engine = Passive(tmp_path / way, emit=lambda line: None)
        converter = dnstap.Converter(vantage="isp", source=str(tap))
        if way == "group":
            engine.read_dnstap(tap, converter, errors=lambda e: None)
        else:
            for payload in dnstap.read_payloads(tap, dnstap.ImportSummary(), converter):
                assert isinstance(payload, bytes)
                engine.offer(payload, converter)
        summary = engine.close()
        written = sorted(line for f in (tmp_path / way / "measurements").glob("*.jsonl")
                         for line in f.read_bytes().splitlines())  # fmt: skip
        operator = (tmp_path / way / "operator.jsonl").read_text()
        outs.append((summary["answers"], written, operator, converter.queries,
                     converter.undecodable, converter.referrals))  # fmt: skip
    assert outs[0] == outs[1]
    assert outs[0][0] == 600 and 37 <= len(outs[0][1]) < 600
    assert _json.loads(outs[0][2].splitlines()[0])["volume"] > 0


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=400), st.integers(min_value=0, max_value=40))
def test_the_grouping_loop_and_the_pcap_scan_survive_hostile_bytes(junk: bytes, cut: int) -> None:
    """Whatever a writer or a capture file holds, the C loops return (never crash, never
    read past the buffer) and agree with their twins."""
    frames = _frames()
    data = b"".join(len(f).to_bytes(4, "big") + f for f in frames)
    for buffer in (junk, data[:cut] + junk, data + junk, junk + data):
        for group in (native.dnstap_group, fastwire.py_dnstap_group):
            keys: dict[int, dict[object, list[int]]] = {}
            got = group(buffer, 0, keys, {}, set(), (0.0, 1.0, 0.0), True, False, [0] * 5)
            assert 0 <= got[1] <= len(buffer)
        assert native.dnstap_group(buffer, 0, {}, {}, set(), (0.0, 1.0, 0.0), True, False,
                                   [0] * 5) == fastwire.py_dnstap_group(
            buffer, 0, {}, {}, set(), (0.0, 1.0, 0.0), True, False, [0] * 5)  # fmt: skip
    capture = _pcap(101, [_ip(m) for m in _messages()[:3]])
    for buffer in (capture[:24] + junk, capture + junk, capture[: 24 + cut] + junk):
        for linktype in (1, 101, 113):
            args = (buffer, 24, False, False, linktype, 1000)
            assert native.scan_pcap(*args) == fastwire.py_scan_pcap(*args)


def test_the_c_readers_are_memory_safe_under_address_sanitizer(tmp_path: Path) -> None:
    """_native.c built with -fsanitize=address (and CPython's assertions on), then 20,000
    mutated dnstap frames, pcap files and DNS messages through every function."""
    from conftest import run_under_asan

    code, out, err = run_under_asan(tmp_path, "_native", "asan_mutations.py", "20000")
    assert code == 0 and out.split() == ["ok", "20000", "mix", "ok"], err[-3000:]


def _capture_mix(path: Path) -> None:
    """Four minutes of a resolver's upstream side, every case the matcher meets: races,
    repeats, timeouts, retransmissions, lone and late replies, a malformed reply, odd
    names, IPv6, other UDP."""
    import dns.rcode

    rng = random.Random(11)
    frames = []
    t = 1_390_288_500.0
    resolver4, resolver6 = b"\x0a\x0a\x02\x35", b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x35"

    def udp4(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes, ttl: int) -> bytes:
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        u.ulen = len(u)
        ip = dpkt.ip.IP(src=src, dst=dst, p=17, ttl=ttl, id=rng.randrange(65536), data=u)
        ip.len = len(ip)
        return bytes(dpkt.ethernet.Ethernet(type=0x0800, data=ip))

    def udp6(src: bytes, dst: bytes, sport: int, dport: int, payload: bytes) -> bytes:
        u = dpkt.udp.UDP(sport=sport, dport=dport, data=payload)
        u.ulen = len(u)
        ip = dpkt.ip6.IP6(src=src, dst=dst, nxt=17, hlim=60, data=u, plen=len(u))
        return bytes(dpkt.ethernet.Ethernet(type=0x86DD, data=ip))

    def reply(query: dns.message.Message, address: str | None, ttl: int = 300) -> bytes:
        r = dns.message.make_response(query)
        if address is None:
            r.set_rcode(dns.rcode.SERVFAIL)
        else:
            name = query.question[0].name
            r.answer.append(dns.rrset.from_text(name, ttl, "IN", "A", address))
        return r.to_wire()

    for k in range(2400):
        t += 0.1
        i = rng.randrange(40)
        name = f"n{i}.example.com" if k % 97 else "odd\\032name.example.com"
        server = bytes([192, 5, 6, 30 + i % 3])
        query = dns.message.make_query(name, "A")
        query.id = k % 65536
        port = 1024 + k % 5000
        six = k % 53 == 0
        if six:
            frames.append((t, udp6(resolver6, b"\x20\x01\x05\x03" + b"\x00" * 11 + b"\x30", port, 53,
                                   query.to_wire())))  # fmt: skip
        else:
            frames.append((t, udp4(resolver4, server, port, 53, query.to_wire(), 64)))
        kind = rng.random()
        if kind < 0.05:
            continue  # a timeout
        answers = [f"198.51.100.{i}"]
        if i % 7 == 0 and 600 < k < 1400:
            answers = ["65.49.2.178", f"198.51.100.{i}"]  # the injector first, then the server
        for n, address in enumerate(answers):
            wire = reply(query, address if kind > 0.1 else None, ttl=300 - k % 40)
            if kind < 0.12 and n == 0:
                wire = wire[:-3]  # malformed (cut)
            delay = 0.02 + 0.05 * n + (4.5 if 0.12 <= kind < 0.14 else 0.0)  # some come late
            if six:
                frames.append((t + delay, udp6(b"\x20\x01\x05\x03" + b"\x00" * 11 + b"\x30",
                                               resolver6, 53, port, wire)))  # fmt: skip
            else:
                frames.append(
                    (t + delay, udp4(server, resolver4, 53, port, wire, 50 + 40 * (n == 0)))
                )
        if kind > 0.97:  # a retransmission of the same query
            frames.append((t + 0.01, udp4(resolver4, server, port, 53, query.to_wire(), 64)))
        if kind < 0.01:  # other UDP
            frames.append((t, udp4(resolver4, server, 5000, 6000, b"hello", 64)))
    frames.sort(key=lambda f: f[0])
    with open(path, "wb") as handle:
        writer = dpkt.pcap.Writer(handle)
        for at, frame in frames:
            writer.writepkt(frame, at)


def test_the_native_capture_matcher_writes_what_the_python_one_writes(tmp_path: Path) -> None:
    """``Passive.read_pcap`` with the C matcher and without it, on one capture of every
    case: the same records (each with its repeat count), summary, operator rows, events."""
    from wallwatch.interop.dnstap import ClientPolicy
    from wallwatch.passive import Passive

    capture = tmp_path / "upstream.pcap"
    _capture_mix(capture)
    outs = []
    for native_side in (True, False):
        out = tmp_path / ("native" if native_side else "python")
        engine = Passive(out, emit=lambda line: None)
        engine.read_pcap(capture, vantage="isp", clients=ClientPolicy.DROP, hide=lambda c: None,
                         errors=lambda e: None, native=native_side)  # fmt: skip
        summary = engine.close()
        lines = sorted(line for f in (out / "measurements").glob("*.jsonl")
                       for line in f.read_bytes().splitlines())  # fmt: skip
        outs.append((lines, {k: v for k, v in summary.items() if k != "events"},
                     [(e["target_address"], e["onset"]) for e in summary["events"]],  # type: ignore[union-attr]
                     (out / "operator.jsonl").read_text()))  # fmt: skip
    assert outs[0][1] == outs[1][1]
    assert outs[0][0] == outs[1][0]
    assert outs[0][2:] == outs[1][2:]
    summary = outs[0][1]
    assert summary["raced_queries"] > 0 and len(outs[0][0]) < 2400
    assert any(b'"count":"' in line for line in outs[0][0])
