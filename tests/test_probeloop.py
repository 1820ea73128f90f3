"""The prober's C loop (``wallwatch._probeloop``) against its twin, the Python loop.

Three checks: every line the C loop writes is the line msgspec writes for the record it
holds, and each reply in it is the reply ``parse_reply``/``make_response`` make of its raw
bytes; the C and the Python loop give the same records over the same loopback traffic
(racing injectors, malformed, truncated, mismatched, silent and stray replies); and the
reply writer alone agrees with msgspec over generated packets.
"""

from __future__ import annotations

import io
import socket
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import udp_query
from test_probe import ZONE, triplet
from wallwatch import records
from wallwatch.journal import Journal
from wallwatch.lab.loopback import Reply, Request, authoritative
from wallwatch.probe import native
from wallwatch.probe.engine import ProbeConfig, Prober, Query, Stats
from wallwatch.probe.reply import first_reply_failure, make_response, type_text
from wallwatch.records import Measurement, Stray
from wallwatch.wire import encode_name, parse_reply

pytestmark = pytest.mark.skipif(
    native.module is None, reason="the C loop is not built, or WALLWATCH_NO_NATIVE is set"
)

TYPES = tuple(msgspec.json.encode(type_text(t)) for t in native.ANSWER_TYPES)
UDP = msgspec.json.encode("udp")


def mixed(request: Request) -> object:
    """A server whose answer depends on the name: every shape of reply in one place."""
    assert request.message is not None
    q = request.message
    name = q.question[0].name.to_text()
    reply = dns.message.make_response(q)
    if name.startswith("txt."):  # an answer type the C writer declines
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "TXT", '"v=spf1 -all"'))
    elif name.startswith("cname."):
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "target.example.net."))
        reply.answer.append(dns.rrset.from_text("target.example.net.", 30, "IN", "A", "10.9.8.7"))
    elif name.startswith("six."):
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "AAAA", "2001:db8::1"))
    elif name.startswith("nx."):
        reply.set_rcode(dns.rcode.NXDOMAIN)
    elif name.startswith("refused."):
        reply.set_rcode(dns.rcode.REFUSED)
    elif name.startswith("empty."):
        pass
    elif name.startswith("esc."):  # a name with a byte the text escapes
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "CNAME", "a\\(b.example."))
    elif name.startswith("bad."):  # malformed: a pointer forward
        return [request.wire[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x03www\xc0\xff"]
    elif name.startswith("trunc."):
        reply.flags |= dns.flags.TC
    elif name.startswith("silent."):
        return None
    elif name.startswith("twice."):  # a duplicate, and a 1-byte stray
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", "10.0.0.2"))
        return [reply.to_wire(), Reply(reply.to_wire(), delay=0.01), Reply(b"\x12", delay=0.02)]
    elif name.startswith("other."):  # a reply to another question
        other = dns.message.make_response(dns.message.make_query("www.other.org", "A"))
        other.id = q.id
        return other
    else:
        reply.answer.append(dns.rrset.from_text(name, 300, "IN", "A", "10.0.0.1"))
    return reply


PREFIXES = ["txt", "cname", "six", "nx", "refused", "empty", "esc", "bad", "trunc", "silent",
            "twice", "other", "plain", "Plain-Case"]  # fmt: skip


def sweep(
    tmp_path: Path, queries: list[Query], *, use_native: bool
) -> tuple[bytes, Stats, dict[str, int]]:
    saved = native.module
    if not use_native:
        native.module = None
    try:
        out = tmp_path / ("native.jsonl" if use_native else "python.jsonl")
        journal = Journal.open(out)
        config = ProbeConfig(rate=None, timeout=0.3, window=1.0, retries=1, vantage="t",
                             annotations={"run": "x\"y"})  # fmt: skip
        prober = Prober(config, journal)
        stats = prober.run(queries)
        journal.close()
        counts = prober._core.counts() if prober._core is not None else {}
    finally:
        native.module = saved
    return out.read_bytes(), stats, counts


def check_line(line: bytes) -> records.Record:
    """The line is msgspec's bytes for its record, and each reply is its raw bytes' parse."""
    record = records.decode(line)
    assert records.encode(record) == line + b"\n"
    if isinstance(record, Measurement):
        for r in record.responses:
            if r.engine != "udp":
                continue
            again = make_response(r.wire(), parse_reply(r.wire()), src=r.src, sport=r.sport,
                                  ip_ttl=r.ip_ttl, t=r.t, rtt=r.rtt, attempt=r.attempt,
                                  mismatch=r.question_mismatch)  # fmt: skip
            assert again == r
        assert record.failure == first_reply_failure(record.responses, record.icmp)
    return record


def shape(record: records.Record) -> Any:
    """What must not depend on the loop: all but IDs, ports, times and raw bytes."""
    if isinstance(record, Stray):
        return (
            "stray",
            record.response.src,
            record.measurement_uid is None,
            record.response.failure,
        )
    assert isinstance(record, Measurement)
    replies = tuple(
        (r.src, r.engine, r.attempt, r.failure, r.flags, r.rcode, r.qname, r.qtype, r.edns,
         r.ancount, r.nscount, r.arcount, r.answers, r.question_mismatch, r.ip_ttl)
        for r in record.responses
    )  # fmt: skip
    return (record.hostname, record.query_type, record.engine, record.resolver_address,
            record.target_kind, record.failure, record.attempts, record.rd, record.edns_payload,
            record.input, replies, tuple((i.src, i.icmp_type, i.icmp_code) for i in record.icmp),
            record.annotations)  # fmt: skip


def test_the_c_loop_writes_msgspecs_bytes_and_the_python_loops_records(
    serve, tmp_path: Path
) -> None:
    server = serve(mixed, tcp_handler=authoritative({"trunc.example.com": ["10.7.7.7"]}))
    racing = serve(triplet(delay=0.02))
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    refused_port = closed.getsockname()[1]
    closed.close()
    queries = [udp_query(server, f"{p}.example.com") for p in PREFIXES]
    queries += [udp_query(server, f"{p}.example.com", qtype=28) for p in ("six", "plain")]
    queries += [udp_query(racing, name) for name in ZONE]
    queries += [udp_query(f"127.0.0.1:{refused_port}", "icmp.example.com")]
    queries += [udp_query(server, f"n{i}.bulk.example.com") for i in range(300)]
    # a host name whose JSON escapes bytes (the C loop asks msgspec for it); no reply,
    # so the C loop writes its record
    queries += [udp_query(server, 'silent.q"uo\\te.example.com')]

    native_out, native_stats, counts = sweep(tmp_path, queries, use_native=True)
    python_out, python_stats, _ = sweep(tmp_path, queries, use_native=False)

    native_records = [check_line(line) for line in native_out.splitlines()]
    python_records = [check_line(line) for line in python_out.splitlines()]
    # Both loops took the traffic; the C one wrote most records itself, and handed the
    # rest (declined replies, ICMP, the TCP retry) to Python.
    assert counts["native_records"] >= 300
    assert counts["measurements"] - counts["native_records"] >= 5
    assert len({m.measurement_uid for m in native_records if isinstance(m, Measurement)}) == len(
        queries
    )
    assert sorted(map(repr, map(shape, native_records))) == sorted(
        map(repr, map(shape, python_records))
    )
    for name in ("sent", "responses", "measurements", "timeouts", "retries", "strays", "unmatched",
                 "parse_failures", "icmp"):  # fmt: skip
        assert getattr(native_stats, name) == getattr(python_stats, name), name
    by_name = {m.hostname: m for m in native_records if isinstance(m, Measurement)}
    assert [r.engine for r in by_name["trunc.example.com"].responses] == ["udp", "tcp"]
    assert by_name["silent.example.com"].attempts == 2
    assert by_name["icmp.example.com"].failure == "connection_refused"
    assert by_name["www.google.com"].responses[-1].ip_ttl == 52


def _renders(rrset: dns.rrset.RRset) -> bool:
    try:
        rrset.to_wire(io.BytesIO())
    except Exception:
        return False
    return True


def reply_packets() -> st.SearchStrategy[bytes]:
    label = st.text(alphabet='abcXYZ019-_().\\" @$', min_size=1, max_size=8)
    name = st.lists(label, min_size=1, max_size=4).map(lambda ls: ".".join(ls) + ".")

    def build(
        qname: str, answers: list[tuple[str, str, str]], rcode: int, edns: bool, tc: bool
    ) -> bytes:
        try:
            q = dns.message.make_query(qname, "A", use_edns=0 if edns else None)
        except Exception:
            q = dns.message.make_query("x.example.", "A")
        r = dns.message.make_response(q)
        r.set_rcode(rcode)
        if tc:
            r.flags |= dns.flags.TC
        for owner, rtype, data in answers:
            try:
                r.answer.append(dns.rrset.from_text(owner, 60, "IN", rtype, data))
                r.to_wire()
            except Exception:  # not every generated text is a valid record: leave it out
                r.answer = (
                    r.answer[:-1] if r.answer and r.answer[-1].name.to_text() == owner else r.answer
                )
                r.answer = [rr for rr in r.answer if _renders(rr)]
        return r.to_wire()

    answer = st.tuples(
        name,
        st.sampled_from(["A", "AAAA", "CNAME", "NS", "PTR", "DNAME", "TXT", "MX"]),
        st.sampled_from(
            ["10.1.2.3", "2001:db8::7", "::ffff:1.2.3.4", "t.example.", "10 mx.example.", '"x"']
        ),
    )
    whole = st.builds(build, name, st.lists(answer, max_size=4), st.sampled_from([0, 2, 3, 5, 4000]),
                      st.booleans(), st.booleans())  # fmt: skip

    def mutate(wire: bytes, cuts: list[tuple[int, int]]) -> bytes:
        data = bytearray(wire)
        for at, value in cuts:
            if data:
                data[at % len(data)] = value
        return bytes(data)

    mutated = st.builds(
        mutate, whole, st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), max_size=3)
    )
    return st.one_of(whole, mutated, whole.map(lambda w: w[: len(w) // 2]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    wire=reply_packets(),
    t=st.integers(0, 10**16),
    rtt=st.integers(-(10**9), 10**11),
    ttl=st.integers(-1, 255),
)
def test_the_c_reply_writer_is_msgspecs(wire: bytes, t: int, rtt: int, ttl: int) -> None:
    qwire = encode_name("x.example").lower()
    got = native.module.encode_response(wire, "127.0.0.9", 53, ttl, t, rtt, 1, 1, qwire, UDP, TYPES)
    if got is None:  # declined: Python writes it
        return
    parsed = parse_reply(wire)
    assert parsed.failure is None and not parsed.slow_path
    mismatch = parsed.qtype != 1 or parsed.qname_wire is None or parsed.qname_wire.lower() != qwire
    expected = make_response(wire, parsed, src="127.0.0.9", sport=53, ip_ttl=ttl if ttl >= 0 else None,
                             t=t / 1e9, rtt=rtt / 1e9, attempt=1, mismatch=mismatch)  # fmt: skip
    assert got == msgspec.json.encode(expected)


def test_the_c_reply_writer_takes_the_common_replies() -> None:
    """A writer that declined everything would pass the test above: it must not."""
    q = dns.message.make_query("x.example", "A", use_edns=0)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text("x.example.", 60, "IN", "CNAME", "y.example."))
    r.answer.append(dns.rrset.from_text("y.example.", 60, "IN", "A", "10.0.0.1"))
    wire = r.to_wire()
    got = native.module.encode_response(wire, "127.0.0.9", 53, 64, 500_000_000, 250_000_000, 0, 1,
                                        encode_name("x.example").lower(), UDP, TYPES)  # fmt: skip
    assert got == msgspec.json.encode(make_response(wire, parse_reply(wire), src="127.0.0.9", sport=53,
                                                    ip_ttl=64, t=0.5, rtt=0.25))  # fmt: skip


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_floats_are_written_as_msgspec_writes_them(x: float) -> None:
    assert native.module.format_float(x) == msgspec.json.encode(x)


@given(st.one_of(st.integers(-(10**16), 10**16), st.integers(-(2**63) + 1, 2**63 - 1),
                 st.integers(0, 10**6).map(lambda n: n * 10**9 + 10**5)))  # fmt: skip
def test_times_are_written_as_msgspec_writes_them(ns: int) -> None:
    """Nanoseconds written straight as decimals are the floats' shortest forms."""
    assert native.module.format_ns(ns) == msgspec.json.encode(ns / 1e9)


def test_a_uid_is_unique_across_both_loops(serve, tmp_path: Path) -> None:
    server = serve(authoritative(ZONE))
    v6 = serve(authoritative(ZONE), host="::1")
    queries = [udp_query(server, "www.example.com"), udp_query(v6, "www.example.com"),
               udp_query(server, "www.google.com", ip_ttl=9)]  # fmt: skip
    out, _, counts = sweep(tmp_path, queries * 3, use_native=True)
    uids = [check_line(line).measurement_uid for line in out.splitlines()]  # type: ignore[union-attr]
    assert len(uids) == len(set(uids)) == 9
    assert counts["native_records"] == 3  # the IPv6 and fixed-TTL queries ran in Python


def test_the_c_loop_is_memory_safe_under_address_sanitizer(tmp_path: Path) -> None:
    """_probeloop.c built with -fsanitize=address: 20,000 mutated replies through the
    writer, then a sweep of 3,000 queries answered with mutated, repeated and stray replies."""
    from conftest import run_under_asan

    code, out, err = run_under_asan(tmp_path, "_probeloop", "asan_probeloop.py", "20000")
    words = out.split()
    assert code == 0 and words[:3] == ["ok", "20000", "sweep"] and words[-1] == "ok", err[-3000:]


@pytest.mark.parametrize(
    "config", [{"ports": native.MAX_SOCKETS + 1}, {"retries": native.MAX_ATTEMPTS}]
)
def test_a_sweep_the_c_loop_cannot_hold_runs_in_python(
    serve, tmp_path: Path, config: dict[str, int]
) -> None:
    server = serve(authoritative(ZONE))
    journal = Journal.open(tmp_path / "out.jsonl")
    settings_ = {"rate": None, "timeout": 0.3, "window": 0.05, "vantage": "t", **config}
    prober = Prober(ProbeConfig(**settings_), journal)  # type: ignore[arg-type]
    stats = prober.run([udp_query(server, name) for name in ZONE])
    journal.close()
    assert prober._core is None and stats.measurements == len(ZONE)
    assert all(check_line(line) for line in (tmp_path / "out.jsonl").read_bytes().splitlines())
