"""The fast codec against dnspython, the reference, and against malformed input."""

from __future__ import annotations

import base64
import socket
import struct
import time

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wallwatch import wire
from wallwatch.vocab import ParseFailure
from wallwatch.wire import parse_reply

LABEL = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_",
    min_size=1,
    max_size=20,
)
ODD_LABEL = st.binary(min_size=1, max_size=12)
NAMES = st.lists(st.one_of(LABEL.map(str.encode), ODD_LABEL), min_size=1, max_size=5).map(
    lambda labels: dns.name.Name([*labels, b""])
)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(str)


@st.composite
def rrsets(draw: st.DrawFn) -> dns.rrset.RRset:
    name = draw(NAMES)
    ttl = draw(st.integers(0, 2**31 - 1))
    kind = draw(st.sampled_from(["A", "AAAA", "CNAME", "NS", "PTR", "TXT", "MX", "RRSIG"]))
    if kind == "A":
        values = draw(st.lists(IPV4, min_size=1, max_size=3, unique=True))
    elif kind == "AAAA":
        values = draw(st.lists(IPV6, min_size=1, max_size=3, unique=True))
    elif kind in ("CNAME", "NS", "PTR"):
        values = [draw(NAMES).to_text()]
    elif kind == "TXT":
        values = ['"' + draw(LABEL) + '"']
    elif kind == "RRSIG":  # signed answers: the fast path renders them too
        signature = base64.b64encode(draw(st.binary(min_size=1, max_size=80))).decode()
        values = [f"{draw(st.sampled_from(['A', 'AAAA', 'NS', 'TYPE65534']))} "
                  f"{draw(st.integers(0, 255))} {draw(st.integers(0, 255))} "
                  f"{draw(st.integers(0, 2**32 - 1))} {draw(st.integers(0, 2**32 - 1))} "
                  f"{draw(st.integers(0, 2**32 - 1))} {draw(st.integers(0, 65535))} "
                  f"{draw(NAMES).to_text()} {signature}"]  # fmt: skip
    else:
        values = [f"{draw(st.integers(0, 65535))} {draw(NAMES).to_text()}"]
    return dns.rrset.from_text_list(name, ttl, "IN", kind, values)


@st.composite
def messages(draw: st.DrawFn) -> dns.message.Message:
    qname = draw(NAMES)
    qtype = draw(st.sampled_from([1, 28, 5, 16, 15, 65]))
    query = dns.message.make_query(qname, qtype, use_edns=draw(st.booleans()))
    query.id = draw(st.integers(0, 65535))
    reply = dns.message.make_response(query)
    reply.flags = draw(st.integers(0, 0xFFFF)) & ~0x7800 | dns.flags.QR  # opcode QUERY
    reply.set_rcode(draw(st.sampled_from([0, 1, 2, 3, 5])))
    # One RRset per (name, type): dnspython merges repeated ones (taking the lowest
    # TTL, dropping duplicates) while wallwatch keeps every record as sent.
    reply.answer = draw(
        st.lists(rrsets(), max_size=4, unique_by=lambda r: (r.name.canonicalize(), r.rdtype))
    )
    reply.authority = draw(st.lists(rrsets(), max_size=2))
    return reply


def reference(msg: bytes) -> tuple[object, ...]:
    """What dnspython reads: the fields the fast parser must agree on."""
    m = dns.message.from_wire(msg)
    answers = sorted(
        {
            (rrset.name.to_text(), int(rrset.rdtype), int(rrset.rdclass), rrset.ttl, rd.to_text())
            for rrset in m.answer
            for rd in rrset
        }
    )
    q = m.question[0]
    return (
        m.id,
        int(m.flags),
        int(m.rcode()),
        q.name.to_text(),
        int(q.rdtype),
        answers,
        m.edns >= 0,
    )


def fast(msg: bytes) -> tuple[object, ...]:
    p = wire.parse_reply(msg)
    assert p.failure is None
    answers = sorted({(a.name, a.rtype, a.rclass, a.ttl, a.data) for a in p.answers})
    return (p.id, p.flags, p.rcode, p.qname, p.qtype, answers, p.edns)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(messages(), st.booleans())
def test_fast_parser_agrees_with_dnspython(message: dns.message.Message, compress: bool) -> None:
    msg = message.to_wire() if compress else message.to_wire(max_size=65535)
    assert fast(msg) == reference(msg)


@settings(max_examples=200)
@given(messages())
def test_common_replies_take_the_fast_path(message: dns.message.Message) -> None:
    message.answer = [r for r in message.answer if r.rdtype in (1, 28, 5, 2, 12)]
    assert not wire.parse_reply(message.to_wire()).slow_path


@settings(max_examples=300)
@given(
    st.lists(LABEL, min_size=1, max_size=5).map(lambda ls: dns.name.from_text(".".join(ls))),
    st.sampled_from([1, 28, 16, 255]),
    st.booleans(),
    st.integers(0, 65535),
)
def test_built_queries_parse_as_dnspython_builds_them(
    name: dns.name.Name, qtype: int, rd: bool, txid: int
) -> None:
    text = name.to_text()
    ours = wire.build_query(txid, text, qtype, rd=rd, edns_payload=1232)
    theirs = dns.message.make_query(text, qtype, use_edns=0, payload=1232)
    theirs.id = txid
    if not rd:
        theirs.flags &= ~dns.flags.RD
    assert ours == theirs.to_wire()


@settings(max_examples=500)
@given(messages(), st.data())
def test_mangled_replies_never_raise_and_are_classified(
    message: dns.message.Message, data: st.DataObject
) -> None:
    msg = bytearray(message.to_wire())
    cut = data.draw(st.integers(0, len(msg)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, len(msg) - 1), st.integers(0, 255)), max_size=4)
    )
    for pos, value in flips:
        msg[pos] = value
    mangled = bytes(msg[:cut]) + data.draw(st.binary(max_size=8))
    parsed = wire.parse_reply(mangled)
    try:
        expected = reference(mangled)
    except Exception:
        return  # dnspython refuses it; ours must only not raise (it did not)
    if parsed.failure is None and not parsed.slow_path:
        assert fast(mangled) == expected


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"\x12\x34\x81", ParseFailure.SHORT_HEADER),
        (bytes.fromhex("1234818000010000000000000377777703"), ParseFailure.NAME_TRUNCATED),
        (bytes.fromhex("123481800001000000000000c00c00010001"), ParseFailure.BAD_POINTER),
        (
            bytes.fromhex("1234818000010000000000004177777700") + b"\x00\x01\x00\x01",
            ParseFailure.BAD_LABEL,
        ),
        (
            bytes.fromhex("123481800001000100000000037777770000010001c00c0001"),
            ParseFailure.SECTION_TRUNCATED,
        ),
        (
            bytes.fromhex(
                "123481800001000100000000037777770000010001c00c000100010000003c000501020304ff"
            ),
            ParseFailure.BAD_RDATA,
        ),
        (
            bytes.fromhex(
                "123481800001000100000000037777770000010001c00c000100010000003c000401020304ff"
            ),
            ParseFailure.TRAILING_DATA,
        ),
    ],
)
def test_malformed_replies_get_a_failure_code(data: bytes, code: ParseFailure) -> None:
    parsed = wire.parse_reply(data)
    assert parsed.failure is code
    with pytest.raises(Exception):  # noqa: B017 - dnspython refuses them too
        dns.message.from_wire(data)


def test_trailing_data_keeps_what_parsed() -> None:
    data = bytes.fromhex(
        "123481800001000100000000037777770000010001c00c000100010000003c000401020304ff"
    )
    parsed = wire.parse_reply(data)
    assert [a.data for a in parsed.answers] == ["1.2.3.4"]
    assert parsed.id == 0x1234


def test_encode_name_refuses_what_dns_cannot_carry() -> None:
    with pytest.raises(wire.NameError_):
        wire.encode_name("a" * 64 + ".com")
    with pytest.raises(wire.NameError_):
        wire.encode_name("a..b")
    with pytest.raises(wire.NameError_):
        wire.encode_name(".".join(["a" * 60] * 5))
    assert wire.encode_name(".") == b"\x00"


def test_qtype_names() -> None:
    assert wire.qtype_value("aaaa") == 28
    assert wire.qtype_text(65) == "HTTPS"
    with pytest.raises(ValueError):
        wire.qtype_value("NOPE")


def _pointer_chain_reply(size: int = 65000) -> bytes:
    """A reply built to cost quadratic work: while offsets fit a pointer (14 bits), each
    answer is named by a pointer to the previous answer's name (a chain that only goes
    backwards); every later answer is named by the chain's end, so each one walks it all."""
    question = b"\x03www\x07example\x03com\x00" + struct.pack("!HH", 1, 1)
    out = bytearray(struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0) + question)
    previous, count = 12, 0
    while len(out) + 16 <= size:
        here = len(out)
        out += (
            struct.pack("!H", 0xC000 | previous)
            + struct.pack("!HHIH", 1, 1, 60, 4)
            + b"\x01\x02\x03\x04"
        )
        if here < 0x3FF0:
            previous = here
        count += 1
    struct.pack_into("!H", out, 6, count)
    return bytes(out)


def test_a_pointer_chain_reply_costs_linear_work() -> None:
    packet = _pointer_chain_reply()
    assert len(packet) > 60000
    parsed = parse_reply(packet)
    # A valid message: every name is decoded once per pointer target (0.54 s before).
    assert parsed.failure is None and len(parsed.answers) == parsed.ancount > 3000
    # As cheap as an ordinary reply with as many answers (each name a pointer to the
    # question), timed side by side so that a loaded machine slows both alike.
    ordinary = bytearray(packet[:12]) + b"\x01a\x00\x00\x01\x00\x01"
    for _ in range(parsed.ancount):
        ordinary += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + b"\x01\x02\x03\x04"
    struct.pack_into("!HH", ordinary, 4, 1, parsed.ancount)

    def best(message: bytes) -> float:
        times = []
        for _ in range(5):
            start = time.perf_counter()
            parse_reply(message)
            times.append(time.perf_counter() - start)
        return min(times)

    assert parse_reply(bytes(ordinary)).failure is None
    chain, plain = best(packet), best(bytes(ordinary))
    assert chain < 6 * plain + 0.002, (chain, plain)
    # Past the work budget (one step per byte), a message is malformed, never slow.
    with pytest.raises(wire._Malformed):
        wire._read_name(b"\x01a" * 40 + b"\x00", 0, 81, [10])
    # A genuine message with many compressed names stays within the budget.
    many = dns.message.make_response(dns.message.make_query("example.com", "NS"))
    many.answer.append(dns.rrset.from_text_list("example.com.", 60, "IN", "NS",
                                                [f"ns{i}.example.com." for i in range(400)]))  # fmt: skip
    parsed = parse_reply(many.to_wire())
    assert parsed.failure is None and len(parsed.answers) == 400


@pytest.mark.parametrize("rdclass", [4, 257])
@pytest.mark.parametrize(("rdtype", "size"), [(1, 4), (28, 16)])
def test_an_address_record_outside_the_internet_class_is_no_address(
    rdclass: int, rdtype: int, size: int
) -> None:
    """Found by the mangling test above: an A record of class 257 was read as an address,
    where dnspython (and a resolver) reads generic data. Every reader now agrees."""
    from wallwatch import fastwire
    from wallwatch.probe.reply import make_response

    query = wire.build_query(7, "www.example.com", rdtype, edns_payload=None)
    reply = bytearray(query)
    reply[2] |= 0x80
    reply[7] = 1  # one answer
    rdata = bytes(range(1, size + 1))
    reply += b"\xc0\x0c" + struct.pack("!HHIH", rdtype, rdclass, 60, size) + rdata
    data = bytes(reply)
    parsed = parse_reply(data)
    expected = dns.message.from_wire(data).answer[0]
    assert [(a.rtype, a.rclass, a.data) for a in parsed.answers] == [
        (rdtype, rdclass, expected[0].to_text())
    ]
    assert [a.address for a in parsed.answers] == [None]
    (answer,) = make_response(data, parsed, src="192.0.2.1", sport=53, ip_ttl=60, t=0.0,
                              rtt=0.0).answers  # fmt: skip
    assert (answer.ipv4, answer.ipv6, answer.rdata) == (None, None, expected[0].to_text())
    assert fastwire.py_summary(data) is None  # declined: the full parser reads it
    native = fastwire.native_module()
    if native is not None:
        assert native.summary(data) is None
    # In the Internet class the same record is an address, read by every path.
    reply[-(size + 8) : -(size + 6)] = b"\x00\x01"
    inside = parse_reply(bytes(reply))
    family = socket.AF_INET if rdtype == 1 else socket.AF_INET6
    assert [a.address for a in inside.answers] == [socket.inet_ntop(family, rdata)]
    assert fastwire.py_summary(bytes(reply)) is not None
