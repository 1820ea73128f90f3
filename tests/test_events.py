"""The CUSUM and the event detector on per-minute signals."""

from __future__ import annotations

import random

import pytest

from wallwatch.events.cusum import Cusum
from wallwatch.events.detector import Change, Detector, Phase
from wallwatch.events.minute import Signals, StreamKey

T0 = 23171470  # 2014-01-21 07:10 UTC, in minutes since the epoch

PATH = StreamKey("inside", "8.8.8.8", "udp", "resolver", "com", "A")
ISP = StreamKey("inside", "10.10.2.53", "udp", "resolver", "com", "A")
CN = StreamKey("inside", "10.10.2.53", "udp", "resolver", "cn", "A")


def sig(key: StreamKey, minute: int, share: float, *, top: str = "65.49.2.178",
        proven: int = 0, names: int = 40) -> Signals:  # fmt: skip
    hit = round(share * names)
    return Signals(
        minute=minute, key=key, names=names, answered=names, top_address=top, top_names=hit,
        top_share=share, names_per_address=((top, hit),), tampered=hit, tampered_share=share,
        new_tampered=0, new_tampered_share=0.0, proven_top=proven, fingerprints={},
        outside_as_share=None, queries=names, replies=names,
        top_hostnames=tuple(f"n{i}.example.com" for i in range(hit)),
    )  # fmt: skip


def test_cusum_finds_a_step_at_once_and_its_end_at_once() -> None:
    c = Cusum(trace=True)
    changes = [c.update(m, x) for m, x in enumerate([0.03] * 6 + [1.0] * 10 + [0.03] * 5)]
    assert changes.index("start") == 6
    assert changes.index("end") == 16
    assert c.onset == 6
    assert [s.alarm for s in c.steps].count(True) == 10


def test_cusum_stays_quiet_on_noise_around_a_steady_level() -> None:
    rng = random.Random(7)
    c = Cusum()
    # Steady censorship: a few blocked names on a handful of forged addresses.
    assert not [m for m in range(600) if c.update(m, min(1.0, max(0.0, rng.gauss(0.2, 0.06))))]


def test_cusum_change_time_is_where_the_rise_began() -> None:
    c = Cusum(delta=0.5, edd=4)  # h = 1: a half step needs several minutes
    values = [0.0] * 5 + [0.6] * 6
    changes = [c.update(m, x) for m, x in enumerate(values)]
    assert "start" in changes and changes.index("start") > 5
    assert c.onset == 5


def test_cusum_decays_its_sums_after_a_gap() -> None:
    c = Cusum(gap=10)
    for m, x in enumerate([0.0] * 4 + [0.6]):
        c.update(m, x)
    before = c.upper
    c.update(4 + 40, 0.0)  # four gap lengths later
    assert before > 0 and c.upper == 0.0


def run(detector: Detector, timeline: dict[int, list[Signals]]) -> list[tuple[int, Change, Phase]]:
    out = []
    for minute in sorted(timeline):
        for change in detector.step(minute, timeline[minute], now=minute * 60.0 + 30):
            out.append((minute, change.change, change.event.phase))
    return out


def test_injection_then_cache_tail_then_over() -> None:
    timeline: dict[int, list[Signals]] = {}
    for i in range(40):
        m = T0 + i
        injecting = 5 <= i < 29
        timeline[m] = [
            sig(PATH, m, 1.0 if injecting else 0.03, proven=40 if injecting else 0,
                top="65.49.2.178" if injecting else "192.0.2.1"),
            sig(ISP, m, 1.0 if (8 <= i < 34) else 0.03,
                top="65.49.2.178" if (8 <= i < 34) else "192.0.2.1"),
            sig(CN, m, 0.05, top="192.0.2.9"),
        ]  # fmt: skip
    d = Detector()
    changes = run(d, timeline)
    assert [(m - T0, c) for m, c, _ in changes] == [
        (5, Change.START), (8, Change.SCOPE), (29, Change.PHASE), (34, Change.END)]  # fmt: skip
    (event,) = d.events
    assert event.onset == T0 + 5 and event.injection_end == T0 + 29 and event.end == T0 + 34
    assert [p["phase"] for p in event.phases] == ["injection", "cache_tail"]
    assert event.attribution == "on_path_injector"
    assert {k.tld for k in event.streams} == {"com"}  # .cn never joined


def test_a_silent_vantage_is_a_gap_not_the_end_of_the_injection() -> None:
    timeline: dict[int, list[Signals]] = {}
    for i in range(30):
        m = T0 + i
        injecting = 5 <= i < 20
        batch = [sig(ISP, m, 1.0 if i >= 8 else 0.03, top="65.49.2.178" if i >= 8 else "192.0.2.1")]
        if not 10 <= i < 14:  # the path vantage stops reporting for four minutes
            batch.append(sig(PATH, m, 1.0 if injecting else 0.03, proven=40 if injecting else 0,
                             top="65.49.2.178" if injecting else "192.0.2.1"))  # fmt: skip
        timeline[m] = batch
    d = Detector()
    changes = run(d, timeline)
    (event,) = d.events
    phases = [(m - T0, c, p) for m, c, p in changes if c == Change.PHASE]
    assert phases == [(20, Change.PHASE, Phase.CACHE_TAIL)]
    assert event.injection_end == T0 + 20
    assert event.gaps == [T0 + i for i in range(10, 14)]


def test_streams_that_stop_reporting_open_no_event() -> None:
    timeline = {T0 + i: [sig(PATH, T0 + i, 0.05, top="192.0.2.1")] if i < 10 else []
                for i in range(30)}  # fmt: skip
    d = Detector()
    assert run(d, timeline) == [] and d.events == []


def test_a_resolver_alone_is_not_called_the_injector() -> None:
    timeline = {T0 + i: [sig(ISP, T0 + i, 1.0 if i >= 5 else 0.03,
                             top="93.46.8.89" if i >= 5 else "192.0.2.1")] for i in range(12)}  # fmt: skip
    d = Detector()
    run(d, timeline)
    (event,) = d.events
    assert event.phase == Phase.RESOLVER and event.attribution == "tampering_resolver"


@pytest.mark.parametrize("share", [0.2, 0.3])
def test_steady_censorship_at_any_level_is_the_baseline(share: float) -> None:
    rng = random.Random(3)
    timeline = {}
    for i in range(120):
        m = T0 + i
        x = min(1.0, max(0.0, rng.gauss(share, 0.05)))
        timeline[m] = [sig(PATH, m, x, top=rng.choice(["31.13.94.37", "108.160.170.45"]),
                           proven=3)]  # fmt: skip
    d = Detector()
    assert run(d, timeline) == []
