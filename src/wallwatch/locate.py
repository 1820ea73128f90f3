"""Locate the injector: send the same query with rising IP TTLs and find the first hop that answers.

A query whose TTL runs out before the injector's tap draws nothing; from the tap on,
forged replies come back ([triplet-2021]; [ccr-2012]; Triplet 4.3; FOCI'14; CCR'12's HopQuery).
One correction is needed: Injector 3 sends its reply with the TTL the query had at
the tap, so its reply survives the way back only when the probe's TTL is at least
2n-1, and then arrives with IP TTL 1. So when the first reply arrives with TTL 1 the
injector is at hop n = (t + 1) / 2, otherwise at hop t ([triplet-2021]; [ccr-2012]).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from wallwatch.journal import Journal, read_records
from wallwatch.names import QueryName
from wallwatch.probe.engine import ProbeConfig, Prober, Query
from wallwatch.records import Measurement
from wallwatch.targets import Target


@dataclass(frozen=True, slots=True)
class HopObservation:
    """What one probe TTL drew: the IP TTLs and first answers of its replies."""

    probe_ttl: int
    reply_ttls: tuple[int | None, ...]
    answers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Location:
    """Where injection starts on the path to a target."""

    #: The hop of the injector, or None if nothing answered.
    hop: int | None
    #: The lowest probe TTL that drew a reply.
    first_ttl: int | None
    #: True when the first reply came back with IP TTL 1 (a TTL-mirroring injector).
    mirrored: bool
    observations: list[HopObservation] = field(default_factory=list)

    def explain(self) -> str:
        if self.hop is None or self.first_ttl is None:
            return "no reply at any TTL: no injector on this path (or the target is silent)"
        if self.mirrored:
            return (
                f"first reply at probe TTL {self.first_ttl}, arriving with IP TTL 1: a TTL-mirroring "
                f"injector (Injector 3) at hop ({self.first_ttl} + 1) / 2 = {self.hop}"
            )
        return f"first reply at probe TTL {self.first_ttl}: injection starts at hop {self.hop}"


def infer(observations: list[HopObservation]) -> Location:
    """The injector's hop from per-TTL observations (see the module docstring)."""
    answered = sorted((o for o in observations if o.reply_ttls), key=lambda o: o.probe_ttl)
    if not answered:
        return Location(None, None, False, observations)
    first = answered[0]
    mirrored = 1 in first.reply_ttls
    hop = (first.probe_ttl + 1) // 2 if mirrored else first.probe_ttl
    return Location(hop, first.probe_ttl, mirrored, observations)


def locate(
    name: QueryName,
    target: Target,
    *,
    qtype: int = 1,
    max_ttl: int = 32,
    source_port: int | None = None,
    window: float = 0.5,
    timeout: float = 1.0,
    output: str | Path | None = None,
) -> Location:
    """Probe ``name`` at ``target`` with IP TTLs 1..``max_ttl`` and infer the injector's hop.

    Every probe is recorded (to ``output`` when given) like any other measurement.
    """
    queries = [
        Query(name, qtype, target, kind=target.kind, ip_ttl=ttl, source_port=source_port)
        for ttl in range(1, max_ttl + 1)
    ]
    config = ProbeConfig(rate=50.0, timeout=timeout, window=window, retries=0, vantage="locate")
    with tempfile.TemporaryDirectory(prefix="ww-locate-") as tmp:
        path = Path(output) if output else Path(tmp) / "locate.jsonl"
        journal = Journal.open(path)
        Prober(config, journal).run(queries)
        journal.close()
        found: dict[int, HopObservation] = {}
        for record in read_records(path):
            if isinstance(record, Measurement) and record.ip_ttl is not None:
                found[record.ip_ttl] = HopObservation(
                    record.ip_ttl,
                    tuple(r.ip_ttl for r in record.responses),
                    tuple(a.ipv4 or a.ipv6 or "" for r in record.responses for a in r.answers[:1]),
                )
    return infer([found[t] for t in sorted(found)])
