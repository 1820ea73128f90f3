"""Inferring the injector's hop from TTL-limited probes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from wallwatch.locate import HopObservation, infer


def obs(ttl: int, *reply_ttls: int) -> HopObservation:
    return HopObservation(ttl, tuple(reply_ttls), tuple("65.49.2.178" for _ in reply_ttls))


def test_fixed_ttl_injector_is_at_the_first_answering_hop() -> None:
    found = infer([obs(1), obs(2), obs(3, 108), obs(4, 108)])
    assert (found.hop, found.first_ttl, found.mirrored) == (3, 3, False)
    assert "hop 3" in found.explain()


def test_mirroring_injector_answers_from_2n_minus_1() -> None:
    # Triplet 4.3: at n = 15 hops, only probe TTL 29 drew a reply, arriving with TTL 1.
    found = infer([obs(t) for t in range(1, 29)] + [obs(29, 1), obs(30, 2)])
    assert (found.hop, found.first_ttl, found.mirrored) == (15, 29, True)
    assert "(29 + 1) / 2 = 15" in found.explain()


def test_silence_everywhere() -> None:
    found = infer([obs(t) for t in range(1, 10)])
    assert found.hop is None and "no reply" in found.explain()


SHARED_LOGS = (
    Path(__file__).resolve().parents[1].parent / "shared/data/gfw-observations/ttl-location"
)


def observations_from_console(text: str) -> list[HopObservation]:
    """The probe TTLs sent and the one answered, from the published check-dns.py logs."""
    sent = [int(m) for m in re.findall(r"Sending DNS query with TTL=(\d+)", text)]
    answered = {int(m) for m in re.findall(r"Received DNS response with TTL=(\d+)", text)}
    return [HopObservation(t, (None,) if t in answered else (), ()) for t in sent]


@pytest.mark.skipif(not SHARED_LOGS.exists(), reason=f"{SHARED_LOGS} is not beside the project")
@pytest.mark.parametrize(("city", "hop"), [("beijing", 12), ("guangzhou", 11), ("shanghai", 9)])
def test_real_console_logs_locate_the_injector(city: str, hop: int) -> None:
    text = (SHARED_LOGS / f"{city}-dns-and-traceroute-result.txt").read_text()
    found = infer(observations_from_console(text))
    assert (found.hop, found.mirrored) == (hop, False)
