"""From per-minute signals to events: onset, phases, scope, reach, attribution.

Each stream (:class:`~wallwatch.events.minute.StreamKey`) runs two CUSUMs
(:mod:`wallwatch.events.cusum`): one on ``top_share`` (unrelated names on one
address) and one on ``new_tampered_share`` (names never tampered before, the 2014
signature). Alarms that point at the same address are one event: in 2014 a dozen
streams -- 8.8.8.8 asked from inside, the ISP resolver, a dark host, per TLD -- all
pointed at 65.49.2.178.

Phases ([greatfire-2014]; [gfwatch-2021]):

* ``injection``: some alarmed stream shows the injector at work this minute -- a dark
  host answered with the target, or the genuine answer raced it;
* ``cache_tail``: the injector is quiet but resolvers still serve the target from
  their caches; the injection's ``end`` is the minute it fell quiet;
* the event ends when no stream is in alarm.

A stream that sends nothing in a minute is a gap: it neither opens nor closes an
event, and the phase is not changed on the strength of a silent vantage.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from enum import StrEnum

from wallwatch.events.cusum import Cusum, CusumStep
from wallwatch.events.minute import Signals, StreamKey
from wallwatch.vocab import Attribution


class Phase(StrEnum):
    INJECTION = "injection"
    CACHE_TAIL = "cache_tail"
    RESOLVER = "resolver"  # resolvers only, and no injector ever seen: a tampering resolver
    OVER = "over"


class Change(StrEnum):
    START = "start"
    PHASE = "phase"
    SCOPE = "scope"
    END = "end"
    #: Late data re-judged the event's minutes and the event is not what was announced
    #: (a collector only: a watch judges its own rounds in order).
    REVISED = "revised"


class Level(StrEnum):
    """An alert's severity, in IODA's words."""

    #: The injector's own replies were seen: proven on-path tampering.
    CRITICAL = "critical"
    #: Resolvers serve the address; nothing proves the path yet.
    WARNING = "warning"
    #: The event is over.
    NORMAL = "normal"


#: The signals a CUSUM runs on, by name.
SIGNALS = ("top_share", "new_tampered_share")


def minute_iso(minute: int, tz: timezone = UTC, timespec: str = "auto") -> str:
    """A minute since the epoch as ISO 8601 in ``tz``."""
    return datetime.fromtimestamp(minute * 60, tz).isoformat(timespec=timespec)


@dataclass(slots=True)
class Event:
    """One outage, as known so far."""

    event_id: str
    target_address: str
    onset: int
    detected_at: float
    phase: Phase
    phases: list[dict[str, int | str | None]] = field(default_factory=list)
    injection_end: int | None = None
    end: int | None = None
    streams: set[StreamKey] = field(default_factory=set)
    affected_names: set[str] = field(default_factory=set)
    proven: int = 0
    fingerprints: dict[str, int] = field(default_factory=dict)
    peak_share: float = 0.0
    peak_traffic_share: float = 0.0
    queries_to_target: int = 0
    last_on_path: int | None = None
    #: Streams in which the injector's own replies were seen.
    path_streams: set[StreamKey] = field(default_factory=set)
    #: The injector's own replies carrying the address on streams outside the event (a
    #: resolver's upstream side, where it raced the server's referral), from two minutes
    #: before the onset on: the path proven where the users' stream cannot show it.
    proven_elsewhere: dict[StreamKey, int] = field(default_factory=dict)
    gaps: list[int] = field(default_factory=list)

    @property
    def attribution(self) -> Attribution:
        """Provisional: the analysis's :data:`~wallwatch.vocab.PROVEN` verdicts were seen, or not."""
        proven = self.proven or self.proven_elsewhere
        return Attribution.ON_PATH_INJECTOR if proven else Attribution.TAMPERING_RESOLVER

    @property
    def reasons(self) -> list[str]:
        if self.proven:
            return ["dark_destination, raced_by_genuine or raced_by_referral: the injector's own replies carry "
                    f"{self.target_address} ({self.proven} seen)"]  # fmt: skip
        if self.proven_elsewhere:
            where = ", ".join(sorted(k.label() for k in self.proven_elsewhere))
            return [f"the injector's own replies carry {self.target_address} on other streams "
                    f"({sum(self.proven_elsewhere.values())} seen: {where}); the streams in the "
                    "event show only resolvers serving it"]  # fmt: skip
        return ["only resolvers serve the address; no reply proven to be the injector's"]

    def scope(self) -> dict[str, list[str]]:
        keys = self.streams
        return {
            "tlds": sorted({k.tld for k in keys}),
            "qtypes": sorted({k.qtype for k in keys}),
            "vantages": sorted({k.vantage for k in keys}),
            "resolvers": sorted({f"{k.resolver}/{k.engine} ({k.target_kind})" for k in keys}),
        }

    def as_dict(self, tz: timezone = UTC, panel_names: int = 0,
                panel_resolvers: int = 0) -> dict[str, object]:  # fmt: skip
        resolvers = {(k.vantage, k.resolver, k.engine) for k in self.streams}
        return {
            "event_id": self.event_id,
            "target_address": self.target_address,
            "onset": minute_iso(self.onset, tz),
            "detected_at": datetime.fromtimestamp(self.detected_at, tz).isoformat(timespec="seconds"),
            "end": minute_iso(self.injection_end, tz) if self.injection_end is not None else None,
            "over": minute_iso(self.end, tz) if self.end is not None else None,
            "phase": self.phase.value,
            "phases": [
                {"phase": p["phase"],
                 "start": minute_iso(int(p["start"] or 0), tz),
                 "end": minute_iso(int(p["end"]), tz) if p["end"] is not None else None}
                for p in self.phases
            ],  # fmt: skip
            "scope": self.scope(),
            "affected_names": len(self.affected_names),
            "affected_name_share": round(len(self.affected_names) / panel_names, 4)
            if panel_names else None,
            "affected_resolvers": len(resolvers),
            "affected_resolver_share": round(len(resolvers) / panel_resolvers, 4)
            if panel_resolvers else None,
            "peak_top_share": round(self.peak_share, 4),
            "traffic_share_estimate": round(self.peak_traffic_share, 4),
            "queries_answered_with_target": self.queries_to_target,
            "injector_fingerprints": self.fingerprints,
            "attribution": self.attribution.value,
            "reasons": self.reasons,
            "proven_on_other_streams": {k.label(): n for k, n in sorted(
                self.proven_elsewhere.items(), key=lambda kv: kv[0].label())},
            "gaps": [minute_iso(g, tz) for g in self.gaps],
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class EventChange:
    change: Change
    event: Event
    minute: int


@dataclass(slots=True)
class Detector:
    """Feed it one minute of signals at a time, in order."""

    delta: float = 0.5
    edd: float = 2.0
    warmup: int = 3
    trace: bool = False
    #: Zipf weights of the panel's names (1/rank), for the traffic estimate.
    weights: dict[str, float] = field(default_factory=dict)
    cusums: dict[tuple[StreamKey, str], Cusum] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    open: dict[str, Event] = field(default_factory=dict)
    #: The address each alarmed (stream, signal) points at.
    pointing: dict[tuple[StreamKey, str], str] = field(default_factory=dict)
    minutes: list[int] = field(default_factory=list)
    #: Per address, (minute, stream, replies) where the injector's own replies carried it.
    proofs: dict[str, list[tuple[int, StreamKey, int]]] = field(default_factory=dict)

    def _cusum(self, key: StreamKey, signal: str) -> Cusum:
        found = self.cusums.get((key, signal))
        if found is None:
            found = self.cusums[(key, signal)] = Cusum(
                delta=self.delta, edd=self.edd, warmup=self.warmup, trace=self.trace
            )
        return found

    def step(self, minute: int, batch: list[Signals], now: float) -> list[EventChange]:
        """Process one minute's buckets (all streams); return what changed."""
        self.minutes.append(minute)
        changes: list[EventChange] = []
        for s in batch:
            if s.proven_top and s.top_address:
                proofs = self.proofs.setdefault(s.top_address, [])
                proofs.append((minute, s.key, s.proven_top))
                if len(proofs) > 256:  # an event reads back to its onset; a day is plenty
                    proofs[:] = [p for p in proofs if p[0] > minute - 1440]
            for signal in SIGNALS:
                x = getattr(s, signal)
                if x is None:
                    continue
                cusum = self._cusum(s.key, signal)
                change = cusum.update(minute, x)
                if change == "start" and s.top_address:
                    self.pointing[(s.key, signal)] = s.top_address
                    onset = cusum.onset if cusum.onset is not None else minute
                    event = self.open.get(s.top_address)
                    if event is None:
                        event = Event(
                            event_id=f"ww-{minute_iso(onset)[:16]}-{s.top_address}",
                            target_address=s.top_address,
                            onset=onset,
                            detected_at=now,
                            phase=Phase.RESOLVER,
                        )
                        self.open[s.top_address] = event
                        self.events.append(event)
                        changes.append(EventChange(Change.START, event, minute))
                    event.onset = min(event.onset, onset)
                    if s.key not in event.streams:
                        event.streams.add(s.key)
                        if not any(c.event is event for c in changes):
                            changes.append(EventChange(Change.SCOPE, event, minute))
                elif change == "end":
                    self.pointing.pop((s.key, signal), None)
        for event in list(self.open.values()):
            changes += self._update(event, minute, batch)
        return changes

    def _update(self, event: Event, minute: int, batch: list[Signals]) -> Iterator[EventChange]:
        alarmed = {k for (k, _sig), a in self.pointing.items() if a == event.target_address}
        serving = [s for s in batch if s.top_address == event.target_address and s.key in alarmed]
        on_path = [s for s in serving if s.proven_top > 0]
        for s in serving:
            event.affected_names.update(s.top_hostnames)
            event.queries_to_target += s.top_names
            event.peak_share = max(event.peak_share, s.top_share or 0.0)
            for fp, n in s.fingerprints.items():
                event.fingerprints[fp] = event.fingerprints.get(fp, 0) + n
        event.proven += sum(s.proven_top for s in serving)
        elsewhere: dict[StreamKey, int] = {}
        for at, key, n in self.proofs.get(event.target_address, ()):
            if at >= event.onset - 2 and key not in event.streams:
                elsewhere[key] = elsewhere.get(key, 0) + n
        event.proven_elsewhere = elsewhere
        if self.weights:
            hit = {n for s in serving for n in s.top_hostnames}
            total = sum(self.weights.values())
            share = sum(self.weights.get(n, 0.0) for n in hit) / total
            event.peak_traffic_share = max(event.peak_traffic_share, share)
        event.path_streams.update(s.key for s in on_path)
        # Did the streams that showed the injector report this minute at all?
        reported = {s.key for s in batch}
        silent = bool(event.path_streams) and not (event.path_streams & reported)
        if silent:
            event.gaps.append(minute)
        if on_path:
            event.last_on_path = minute
            new_phase = Phase.INJECTION
        elif silent:
            new_phase = event.phase
        elif event.last_on_path is not None:
            new_phase = Phase.CACHE_TAIL
        else:
            new_phase = Phase.RESOLVER
        if not alarmed:
            new_phase = Phase.OVER
        first = not event.phases
        if not first and new_phase == event.phase:
            return
        if not first:
            event.phases[-1]["end"] = minute
        if new_phase == Phase.CACHE_TAIL and event.injection_end is None:
            event.injection_end = minute
        event.phase = new_phase
        if new_phase == Phase.OVER:
            event.end = minute
            if event.injection_end is None and event.last_on_path is not None:
                event.injection_end = minute
            del self.open[event.target_address]
            yield EventChange(Change.END, event, minute)
            return
        event.phases.append({"phase": new_phase.value, "start": event.onset if first else minute,
                             "end": None})  # fmt: skip
        if not first:
            yield EventChange(Change.PHASE, event, minute)

    def traces(self) -> dict[str, list[CusumStep]]:
        return {f"{k.label()} {sig}": c.steps for (k, sig), c in self.cusums.items() if c.steps}
