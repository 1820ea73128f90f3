"""The prober against the loopback lab: every reply, its IP TTL, and nothing lost."""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

import dns.flags
import dns.message
import dns.rrset
import pytest

from conftest import measurements, qn, run_probe, udp_query
from wallwatch.lab.loopback import Forgery, Reply, Request, authoritative, racing_injector
from wallwatch.probe.engine import Query
from wallwatch.probe.stream import StreamServer
from wallwatch.records import Stray
from wallwatch.vocab import Engine, Failure, ParseFailure, TargetKind

ZONE = {
    "www.example.com": ["93.184.216.34", "2606:2800:220:1::1"],
    "www.google.com": ["142.250.1.1"],
}


def triplet(delay: float = 0.06) -> object:
    """Three forged replies racing the genuine one, each with its own IP TTL (Triplet 4)."""
    return racing_injector(
        authoritative(ZONE),
        lambda name: "google" in name,
        [
            Forgery("59.24.3.173", ip_ttl=99, answer_ttl=60, aa=True),
            Forgery("31.13.91.33", delay=0.002, ip_ttl=37),
            Forgery("108.160.170.45", delay=0.004, ip_ttl=200, answer_ttl=130),
        ],
        genuine_delay=delay,
        genuine_ip_ttl=52,
    )


def test_every_racing_reply_is_kept_in_arrival_order_with_its_ip_ttl(serve, tmp_path: Path) -> None:
    server = serve(triplet())
    records, stats = run_probe(tmp_path, [udp_query(server, "www.google.com")], window=0.3)
    (m,) = measurements(records)
    assert [r.ip_ttl for r in m.responses] == [99, 37, 200, 52]
    assert [a.ipv4 for r in m.responses for a in r.answers] == [
        "59.24.3.173", "31.13.91.33", "108.160.170.45", "142.250.1.1",
    ]  # fmt: skip
    assert [r.rtt for r in m.responses] == sorted(r.rtt for r in m.responses)
    assert m.responses[-1].rtt >= 0.05  # the genuine answer came after its path delay
    assert m.responses[0].flags is not None and m.responses[0].flags & dns.flags.AA
    assert not m.responses[0].edns and m.responses[-1].edns  # the injector drops OPT
    assert m.failure is None and stats.unmatched == 0 and stats.responses == 4
    assert {r.transaction_id for r in m.responses} == {m.transaction_id}


def test_raw_bytes_are_the_truth(serve, tmp_path: Path) -> None:
    server = serve(triplet())
    records, _ = run_probe(tmp_path, [udp_query(server, "www.google.com")])
    (m,) = measurements(records)
    first = dns.message.from_wire(m.responses[0].wire())
    assert first.answer[0][0].to_text() == "59.24.3.173"
    assert first.id == m.transaction_id


def test_clean_name_gets_one_reply(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.01))
    records, _ = run_probe(tmp_path, [udp_query(server, "www.example.com", 28)])
    (m,) = measurements(records)
    assert [a.ipv6 for r in m.responses for a in r.answers] == ["2606:2800:220:1::1"]
    assert m.query_type == "AAAA"


def test_outgoing_ip_ttl_is_applied_per_query(serve, tmp_path: Path) -> None:
    seen: list[int] = []
    server = serve(authoritative(ZONE))
    # A second socket with IP_RECVTTL sees the TTL the prober put on the wire.
    sniff = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sniff.setsockopt(socket.IPPROTO_IP, 12, 1)
    sniff.bind(("127.0.0.1", 0))
    sniff.settimeout(2)
    port = sniff.getsockname()[1]
    run_probe(tmp_path, [udp_query(f"127.0.0.1:{port}", "www.example.com", ip_ttl=7)], timeout=0.2)
    _, anc, _, _ = sniff.recvmsg(512, 64)
    seen += [struct.unpack("=i", data)[0] for level, kind, data in anc if kind == socket.IP_TTL]
    sniff.close()
    assert seen == [7]
    assert server.stats.queries == 0


def test_malformed_reply_is_kept_raw_with_a_failure_code(serve, tmp_path: Path) -> None:
    def broken(request: Request) -> list[object]:
        return [request.wire[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x03www\xc0\xff",
                Reply(b"\x12", delay=0.01)]  # fmt: skip

    server = serve(broken)
    records, stats = run_probe(tmp_path, [udp_query(server, "www.example.com")])
    (m,) = measurements(records)
    assert m.responses[0].failure is ParseFailure.BAD_POINTER  # points forward
    assert m.responses[0].wire().endswith(b"\x03www\xc0\xff")
    assert m.failure is Failure.DNS_SERVER_MISBEHAVING
    assert stats.parse_failures == 2
    # The 1-byte packet carries no ID, so it matches no query: kept as a stray.
    strays = [r for r in records if isinstance(r, Stray)]
    assert [s.response.failure for s in strays] == [ParseFailure.SHORT_HEADER]


def test_question_mismatch_is_flagged_not_dropped(serve, tmp_path: Path) -> None:
    def liar(request: Request) -> dns.message.Message:
        assert request.message is not None
        other = dns.message.make_query("www.other.org", "A")
        reply = dns.message.make_response(other)
        reply.id = request.message.id
        reply.answer.append(dns.rrset.from_text("www.other.org.", 60, "IN", "A", "10.1.2.3"))
        return reply

    server = serve(liar)
    records, _ = run_probe(tmp_path, [udp_query(server, "www.example.com")])
    (m,) = measurements(records)
    assert m.responses[0].question_mismatch
    assert m.responses[0].qname == "www.other.org."


def test_silence_is_retried_then_times_out(serve, tmp_path: Path) -> None:
    server = serve(lambda request: None)
    records, stats = run_probe(
        tmp_path, [udp_query(server, "www.example.com")], timeout=0.2, retries=2
    )
    (m,) = measurements(records)
    assert m.failure is Failure.GENERIC_TIMEOUT
    assert m.attempts == 3 and server.stats.queries == 3
    assert stats.retries == 2 and stats.timeouts == 1


def test_reply_to_an_earlier_attempt_still_counts(serve, tmp_path: Path) -> None:
    count = {"n": 0}
    genuine = authoritative(ZONE)

    def slow_first(request: Request) -> object:
        count["n"] += 1
        if count["n"] == 1:
            return [Reply(genuine(request), delay=0.3)]  # type: ignore[arg-type]
        return None

    server = serve(slow_first)
    records, _ = run_probe(
        tmp_path, [udp_query(server, "www.example.com")], timeout=0.2, retries=1, window=0.5
    )
    (m,) = measurements(records)
    assert m.attempts == 2
    assert [r.attempt for r in m.responses] == [0]


def test_late_reply_becomes_a_stray_naming_its_measurement(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.5))
    records, stats = run_probe(tmp_path, [udp_query(server, "www.google.com"), udp_query(server, "www.example.com")], window=0.1, timeout=2)  # fmt: skip
    ms = {m.hostname: m for m in measurements(records)}
    strays = [r for r in records if isinstance(r, Stray)]
    assert len(ms["www.google.com"].responses) == 3  # the genuine one missed the window
    assert {s.measurement_uid for s in strays} == {ms["www.google.com"].measurement_uid}
    assert strays[0].response.ip_ttl == 52 and stats.unmatched == 0


def test_icmp_port_unreachable_is_connection_refused(tmp_path: Path) -> None:
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now: the kernel answers with ICMP
    records, stats = run_probe(tmp_path, [udp_query(f"127.0.0.1:{port}", "www.example.com", kind=TargetKind.DARK)], timeout=0.3, retries=1)  # fmt: skip
    (m,) = measurements(records)
    assert m.failure is Failure.CONNECTION_REFUSED
    assert m.icmp and (m.icmp[0].icmp_type, m.icmp[0].icmp_code) == (3, 3)
    assert m.attempts == 1  # ICMP is an answer of sorts: no retry
    assert m.target_kind is TargetKind.DARK


def test_truncated_reply_is_retried_over_tcp(serve, tmp_path: Path) -> None:
    def truncating(request: Request) -> dns.message.Message:
        assert request.message is not None
        reply = dns.message.make_response(request.message)
        reply.flags |= dns.flags.TC
        return reply

    server = serve(truncating, tcp_handler=authoritative(ZONE))
    records, _ = run_probe(tmp_path, [udp_query(server, "www.example.com")])
    (m,) = measurements(records)
    assert [r.engine for r in m.responses] == [Engine.UDP, Engine.TCP]
    assert m.responses[1].answers[0].ipv4 == "93.184.216.34"
    assert m.responses[1].ip_ttl is None
    assert server.stats.tcp_queries == 1


def test_tcp_engine_and_control_are_not_raced(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.01), tcp_handler=authoritative(ZONE))
    host, port = server.address
    control = Query(qn("www.google.com"), 1, engine=Engine.TCP,
                    stream=StreamServer(Engine.TCP, host, port), kind=TargetKind.CONTROL)  # fmt: skip
    records, _ = run_probe(tmp_path, [control, udp_query(server, "www.google.com")])
    by_kind = {m.target_kind: m for m in measurements(records)}
    ctrl = by_kind[TargetKind.CONTROL]
    assert ctrl.engine is Engine.TCP
    assert [a.ipv4 for r in ctrl.responses for a in r.answers] == ["142.250.1.1"]
    assert len(by_kind[TargetKind.RESOLVER].responses) == 4


def test_stream_failure_is_recorded(tmp_path: Path) -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    query = Query(qn("www.example.com"), 1, engine=Engine.TCP,
                  stream=StreamServer(Engine.TCP, "127.0.0.1", port), kind=TargetKind.CONTROL)  # fmt: skip
    records, _ = run_probe(tmp_path, [query])
    (m,) = measurements(records)
    assert m.failure is Failure.CONNECTION_REFUSED and not m.responses


def test_ipv6_targets(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.01), "::1")
    records, _ = run_probe(tmp_path, [udp_query(server, "www.google.com")])
    (m,) = measurements(records)
    assert m.resolver_address.startswith("[::1]:")
    assert [r.ip_ttl for r in m.responses] == [99, 37, 200, 52]


def test_many_queries_none_lost(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.005))
    names = [f"n{i}.www.google.com" if i % 3 == 0 else f"n{i}.example.com" for i in range(600)]
    queries = [udp_query(server, n) for n in names]
    records, stats = run_probe(tmp_path, queries, rate=5000, window=0.2, timeout=1.0, retries=2)
    ms = measurements(records)
    assert sorted(m.hostname for m in ms) == sorted(names)
    assert stats.unmatched == 0 and stats.kernel_drops == 0
    forged = [m for m in ms if "google" in m.hostname]
    assert all(len(m.responses) == 4 for m in forged)  # 3 forged + the genuine NXDOMAIN
    assert all(m.responses[-1].rcode == 3 for m in forged)


@pytest.mark.skipif(os.geteuid() != 0, reason="a packet socket needs root")
def test_raw_capture_adds_ip_id_and_df(serve, tmp_path: Path) -> None:
    server = serve(triplet(delay=0.01))
    records, _ = run_probe(tmp_path, [udp_query(server, "www.google.com")], raw_capture=True)
    (m,) = measurements(records)
    assert len(m.responses) == 4
    assert all(r.ip_id is not None and r.df is not None for r in m.responses), [
        (r.ip_ttl, r.ip_id, r.df, r.rtt) for r in m.responses
    ]
    plain, _ = run_probe(tmp_path, [udp_query(server, "www.google.com")])
    assert all(r.ip_id is None and r.df is None for r in measurements(plain)[0].responses)


def test_a_flood_of_crafted_unsolicited_replies_neither_slows_nor_loses_a_measurement(
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Each query draws its answer plus five unsolicited 64 KB pointer-chain replies (wrong
    transaction ID). Every query is still answered; the flood is counted, and only what
    fits the source's byte budget is parsed and kept as strays."""
    from test_wire import _pointer_chain_reply

    crafted = _pointer_chain_reply()
    genuine = authoritative({f"n{i}.example.com": ["192.0.2.1"] for i in range(200)})

    def handle(request: Request) -> list[Reply]:
        flood = [Reply(struct.pack("!H", (request.message.id + 1 + k) & 0xFFFF) + crafted[2:])  # type: ignore[union-attr]
                 for k in range(5)]  # fmt: skip
        return [*flood, Reply(genuine(request), 0.001)]  # type: ignore[arg-type]

    server = serve(handle, tcp=False)
    queries = [udp_query(server, f"n{i}.example.com") for i in range(200)]
    records, stats = run_probe(tmp_path, queries, window=0.05)
    ms = measurements(records)
    assert len(ms) == 200 and all(m.responses and m.responses[0].answers for m in ms)
    kept = [r for r in records if isinstance(r, Stray)]
    # Every datagram is accounted for: read, or counted by the kernel as dropped when 20 MB
    # of flood outran the socket's buffer between two reads (a crafted ID may by chance
    # match another open query). No measurement lost its answer (above).
    assert stats.responses + stats.kernel_drops == 1200
    assert stats.strays == len(kept) + stats.strays_unkept >= 990 - stats.kernel_drops
    assert stats.strays_unkept > 900 - stats.kernel_drops  # 256 KB of 64 KB replies: a handful kept
