"""The loopback lab itself: forged replies as published, and loopback only."""

from __future__ import annotations

import dns.message
import pytest

from wallwatch.lab.forge import NameForm, NotForgeable, forge_reply
from wallwatch.lab.loopback import LoopbackServer, authoritative

# [wallbleed-2025] Fig. 1: rsf.org -> 31.13.91.33, answer TTL 236.
QUERY = (
    bytes.fromhex("123401000001000000000001")
    + b"\x03rsf\x03org\x00"
    + bytes.fromhex("000100010000291000000000000000")
)
PUBLISHED = bytes.fromhex(
    "1234 8180 0001 0001 0000 0000 03727366036f726700 0001 0001 c00c 0001 0001 000000ec 0004 1f0d5b21".replace(
        " ", ""
    )
)


def test_forged_reply_matches_the_published_bytes() -> None:
    assert forge_reply(QUERY, "31.13.91.33", answer_ttl=236) == PUBLISHED


def test_forged_reply_variants() -> None:
    no_rd = bytearray(QUERY)
    no_rd[2] &= ~0x01
    assert forge_reply(bytes(no_rd), "31.13.91.33")[2:4] == b"\x84\x00"
    mx = QUERY.replace(b"\x00\x01\x00\x01\x00\x00\x29", b"\x00\x0f\x00\x01\x00\x00\x29")
    reply = dns.message.from_wire(forge_reply(mx, "31.13.91.33"))
    assert reply.answer[0].rdtype == 1  # every non-AAAA query gets an A record
    aaaa = QUERY.replace(b"\x00\x01\x00\x01\x00\x00\x29", b"\x00\x1c\x00\x01\x00\x00\x29")
    full = forge_reply(aaaa, "2001::1", name_form=NameForm.FULL, aa=True)
    assert b"\xc0\x0c" not in full and dns.message.from_wire(full).answer[0].rdtype == 28
    with pytest.raises(NotForgeable):
        forge_reply(PUBLISHED, "1.2.3.4")  # a response (QR=1) is never forged


def test_lab_binds_loopback_only() -> None:
    with pytest.raises(ValueError, match="loopback"):
        LoopbackServer(authoritative({}), "8.8.8.8")


def test_lab_up_without_root_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from wallwatch.cli import main

    monkeypatch.setattr("os.geteuid", lambda: 1000)
    result = CliRunner().invoke(main, ["lab", "up", "gfw-2014-01-21"])
    assert (
        result.exit_code != 0 and "need root" in result.output and "loopback lab" in result.output
    )


def test_unknown_scenario_lists_the_shipped_ones() -> None:
    from wallwatch.lab import scenario

    with pytest.raises(ValueError, match="gfw-2014-01-21"):
        scenario.load("no-such-scenario")
    assert {"gfw-steady", "gfw-2014-01-21", "clean"} <= set(scenario.available())
