"""A resolver operator's own minute signals: failures, DNSSEC, answer TTLs and volume.

Why: the detector of :mod:`wallwatch.events.detector` looks for one address answering
many unrelated names. An operator watching its resolver also needs the signals it can
only read in its own traffic, each a known face of tampering or of its side effects:

* ``servfail_share``: answers that are SERVFAIL. A forged answer that fails DNSSEC
  validation becomes SERVFAIL at a validating resolver, so injection against signed
  zones shows as failures, not as redirection ([rfc8914]);
* ``bogus_share``: SERVFAIL answers whose Extended DNS Error names a DNSSEC failure
  (codes 6-10 and 12: bogus, signature expired or not yet valid, DNSKEY, RRSIGs or
  NSEC missing, [rfc8914]); Unbound adds them with ``ede: yes``;
* ``ttl_top_share``: the share of answered names whose answer TTL is the minute's
  most common one. Genuine answers carry each zone's TTL, and a cache counts them
  down, so they spread; an injector stamps one TTL on every forgery ([triplet-2021]
  lists the answer TTL among each injector's fingerprints);
* ``volume``: answers in the minute, and ``volume_share``, that count against the
  median of the stream's earlier minutes (``v / (v + median)``: 0.5 as usual, 0.91
  for ten times more), so one CUSUM reads it like the shares.

Each runs in the same streaming CUSUM as the detector (:class:`~wallwatch.events.cusum.Cusum`,
its baseline learnt, so a resolver's usual failure rate *is* the baseline), per stream
(the answers to its users, the upstream answers). A minute with fewer than
``min_answers`` answers is not judged: a share of three answers is noise.
"""

from __future__ import annotations

import base64
import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from enum import StrEnum

import dns.edns
import dns.exception
import dns.message

from wallwatch.events.cusum import Cusum
from wallwatch.records import Measurement


class OperatorSignal(StrEnum):
    """The operator's signals, by the name their rows and alerts carry."""

    SERVFAIL = "servfail_share"
    BOGUS = "bogus_share"
    TTL_COLLAPSE = "ttl_top_share"
    VOLUME = "volume_share"


#: Extended DNS Error codes that name a DNSSEC validation failure ([rfc8914] 4.7-4.13).
DNSSEC_EDE = frozenset({6, 7, 8, 9, 10, 12})

_SERVFAIL = 2


def stream_of(m: Measurement) -> str:
    """``upstream`` for what the resolver was told, ``users`` for what it told them."""
    return "upstream" if m.annotations.get("stream") == "upstream" else "users"


def dnssec_failure(raw: str) -> bool:
    """Whether a SERVFAIL reply's (base64) first Extended DNS Error is a DNSSEC one."""
    try:
        wire = base64.b64decode(raw)
        if len(wire) < 12 or wire[10:12] == b"\0\0":
            return False  # no additional records, so no OPT: not worth a full parse
        message = dns.message.from_wire(wire, ignore_trailing=True)
    except (dns.exception.DNSException, ValueError):
        return False
    codes = [int(o.code) for o in message.options if isinstance(o, dns.edns.EDEOption)]
    return bool(codes) and codes[0] in DNSSEC_EDE  # the first, as the native reader reads


@dataclass(slots=True)
class _Minute:
    answers: int = 0
    servfail: int = 0
    bogus: int = 0
    ttls: Counter[int] = field(default_factory=Counter)


@dataclass
class Operator:
    """The operator's signals, minute by minute, per stream: answers are observed one by
    one (repeats included: they are the volume), a minute is closed once."""

    min_answers: int = 20
    #: Minutes of volume the median is taken over.
    volume_history: int = 30
    cusums: dict[tuple[str, OperatorSignal], Cusum] = field(default_factory=dict)
    volumes: dict[str, deque[int]] = field(default_factory=dict)
    #: (stream, signal) pairs in alarm now.
    alarmed: set[tuple[str, OperatorSignal]] = field(default_factory=set)
    minutes: dict[int, dict[str, _Minute]] = field(default_factory=dict)

    def observe(self, minute: int, stream: str, rcode: int, ttl: int, ede: int,
                n: int = 1) -> None:  # fmt: skip
        """``n`` answers alike: their RCODE, least address TTL (-1: none), first EDE (-1)."""
        one = self.minutes.setdefault(minute, {}).get(stream)
        if one is None:
            one = self.minutes[minute][stream] = _Minute()
        one.answers += n
        if rcode == _SERVFAIL:
            one.servfail += n
            if ede in DNSSEC_EDE:
                one.bogus += n
        if ttl >= 0:
            one.ttls[ttl] += n

    def observe_measurement(self, minute: int, m: Measurement, n: int = 1) -> None:
        """A measurement's first parsed reply (``n`` answers alike), read as
        :meth:`observe` reads a summary."""
        replies = [r for r in m.responses if r.failure is None]
        if not replies:
            return
        first = replies[0]
        ttls = [a.ttl for a in first.answers if a.answer_type in ("A", "AAAA")]
        ede = -1
        if first.rcode == _SERVFAIL and dnssec_failure(first.raw_response):
            ede = 6
        self.observe(minute, stream_of(m), first.rcode or 0, min(ttls) if ttls else -1, ede, n)

    def close(self, minute: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
        """One minute: the rows (one per stream) and the changes (alarm start or end)."""
        minutes = self.minutes.pop(minute, {})
        rows: list[dict[str, object]] = []
        changes: list[dict[str, object]] = []
        for stream in sorted(minutes):
            one = minutes[stream]
            history = self.volumes.setdefault(stream, deque(maxlen=self.volume_history))
            usual = statistics.median(history) if history else None
            history.append(one.answers)
            answered = sum(one.ttls.values())
            ttl, ttl_n = one.ttls.most_common(1)[0] if one.ttls else (None, 0)
            values: dict[OperatorSignal, float | None] = {
                OperatorSignal.SERVFAIL: one.servfail / one.answers,
                OperatorSignal.BOGUS: one.bogus / one.answers,
                OperatorSignal.TTL_COLLAPSE: ttl_n / answered if answered else None,
                OperatorSignal.VOLUME: one.answers / (one.answers + usual) if usual else None,
            }
            row: dict[str, object] = {"minute": minute, "stream": stream, "volume": one.answers,
                                      "ttl_top": ttl}  # fmt: skip
            row.update({s.value: None if v is None else round(v, 4) for s, v in values.items()})
            rows.append(row)
            if one.answers < self.min_answers:
                continue
            for signal, x in values.items():
                if x is None:
                    continue
                cusum = self.cusums.setdefault((stream, signal), Cusum(delta=0.3, edd=3.0))
                baseline = cusum.mu0
                change = cusum.update(minute, x)
                if change is None:
                    continue
                if change == "start":
                    self.alarmed.add((stream, signal))
                else:
                    self.alarmed.discard((stream, signal))
                changes.append({"minute": minute, "stream": stream, "signal": signal.value,
                                "change": change, "value": round(x, 4),
                                "history_value": None if baseline is None else round(baseline, 4),
                                "ttl_top": ttl if signal == OperatorSignal.TTL_COLLAPSE else None,
                                "condition": f"cusum({signal.value}) > h={cusum.h:.3g}"})  # fmt: skip
        return rows, changes
