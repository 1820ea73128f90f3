"""``wallwatch watch``: sweep a panel every minute and raise events as they happen.

Why rounds of whole sweeps, each written to its own file: a round is the unit the
detector reads (one minute of every stream), the unit a crash can tear, and the unit
a restart resumes from. ``rounds.jsonl`` says which rounds finished; a restart replays
the finished rounds through the detector and carries on with the next minute. A round
torn by a crash is completed from its files when every vantage finished its sweep, and
otherwise set aside (its files renamed ``*.torn``, never judged: a half-measured minute
must not read as a quiet one) and measured again at the next slot. No minute is judged
twice: the signals count distinct names per minute (:mod:`wallwatch.events.minute`).

Each vantage is a sweep run by ``wallwatch probe`` in a child process -- a vantage in a
lab namespace must be entered with ``ip netns exec``, which only a new process can do --
that dies with the watch (:mod:`wallwatch.supervise`), so a killed watch leaves no sweep
writing behind it. With ``--lab`` times are on the scenario's clock
(:func:`wallwatch.lab.topology.scenario_clock`).

Alerts are a log derived from the rounds: the order of writes is rounds.jsonl (fsync),
then each alert with its idempotency key (``id``) in ``alerts.jsonl`` (fsync), then
delivery. A restart re-derives the alerts of every finished round and raises those the
log lacks (a crash between the two writes loses nothing), once. Alerts are printed on
stdout and, with ``--post``, delivered by a worker with deadlines and retries
(:mod:`wallwatch.delivery`), exactly once per receiver across restarts.

``events.json`` is a snapshot derived from all this (rewritten when an event changes,
every ten rounds, and at exit); the per-minute series is appended to ``series.jsonl``.
"""

from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from pathlib import Path
from urllib.parse import quote

import msgspec

from wallwatch import columns
from wallwatch.delivery import Deliverer
from wallwatch.events.detector import Change, Detector, Event, EventChange, Level, minute_iso
from wallwatch.events.minute import (
    FirstReply,
    Injected,
    Signals,
    StreamHistory,
    StreamKey,
    buckets,
    judge_round,
    signals,
)
from wallwatch.journal import json_lines, read_records, recover
from wallwatch.names import QueryName, parse_lines
from wallwatch.observatory.agent import Spool
from wallwatch.records import Measurement
from wallwatch.supervise import preexec
from wallwatch.vocab import Attribution


@dataclass(frozen=True, slots=True)
class Vantage:
    """Where one sweep of each round runs, and what it asks."""

    name: str
    targets: tuple[str, ...]
    controls: tuple[str, ...] = ()
    #: A lab node whose namespace the sweep runs in; None for this machine.
    node: str | None = None

    @classmethod
    def parse(cls, spec: str, *, lab: bool) -> Vantage:
        """``NAME=TARGET[,TARGET...][,control=SPEC]``, e.g. ``client1=10.10.2.53,8.8.8.8,control=tcp:8.8.8.8``."""
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"vantage {spec!r}: expected NAME=TARGET[,TARGET...][,control=SPEC]")
        targets, controls = [], []
        for item in rest.split(","):
            item = item.strip()
            if item.startswith("control="):
                controls.append(item.removeprefix("control="))
            elif item:
                targets.append(item)
        if not targets:
            raise ValueError(f"vantage {spec!r}: no target")
        return cls(name, tuple(targets), tuple(controls), name if lab else None)


@dataclass(frozen=True, slots=True)
class Clock:
    """Real time to the time the watch reports in (the scenario's, in the lab)."""

    real0: float = 0.0
    scale: float = 1.0
    at0: float = 0.0
    tz: timezone = UTC

    def now(self) -> float:
        return self.at(time.time())

    def at(self, real: float) -> float:
        return self.at0 + (real - self.real0) * self.scale

    def real(self, when: float) -> float:
        return self.real0 + (when - self.at0) / self.scale

    def iso(self, when: float) -> str:
        return datetime.fromtimestamp(when, self.tz).isoformat(timespec="seconds")

    @classmethod
    def lab(cls) -> Clock:
        from wallwatch.lab import topology

        started, scale, clock_start = topology.scenario_clock()
        start = datetime.fromisoformat(clock_start)
        tz = start.tzinfo if isinstance(start.tzinfo, timezone) else UTC
        return cls(started, scale, start.timestamp(), tz)


class RoundRecord(msgspec.Struct, frozen=True):
    round: int
    minute: int
    at: float
    real_start: float
    real_end: float
    files: list[str]
    measurements: int
    partial: bool = False
    #: Torn and incomplete: its files were set aside (``*.torn``) and it was not judged.
    discarded: bool = False


@dataclass
class WatchConfig:
    names: Path
    out: Path
    vantages: list[Vantage]
    every: float = 60.0
    rounds: int | None = None
    until: float | None = None
    rate: float = 2000.0
    timeout: float = 0.6
    window: float = 0.3
    post: str | None = None
    clock: Clock = field(default_factory=Clock)
    delta: float = 0.5
    edd: float = 2.0
    warmup: int = 3
    trace: bool = True
    #: Each vantage's own address, for the pcap (the records do not hold it).
    local: dict[str, str] = field(default_factory=dict)
    #: A collector to ship each round to as it closes (``http(s)://`` or ``unix:PATH``) and
    #: the vantage token; batches are spooled in ``OUT/spool`` while it is unreachable.
    upload: str | None = None
    upload_token: str | None = None
    #: Dated MMDB snapshots (a directory or a file): the share of answers outside the
    #: control's AS (:mod:`wallwatch.analysis.netinfo`).
    mmdb: Path | None = None


class Watch:
    """The monitor's state: detector, per-stream history and the control's answers."""

    def __init__(self, config: WatchConfig, *, emit: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.emit = emit or (lambda line: print(line, flush=True))
        # The names as the prober reads them (IDN, URLs), so the weights match its records.
        lines = config.names.read_text().splitlines()
        self.panel = [n.hostname for n in parse_lines(lines, str(config.names))
                      if isinstance(n, QueryName)]  # fmt: skip
        weights = {n: 1.0 / rank for rank, n in enumerate(self.panel, start=1)}
        self.detector = Detector(delta=config.delta, edd=config.edd, warmup=config.warmup,
                                 trace=config.trace, weights=weights)  # fmt: skip
        self.history: dict[StreamKey, StreamHistory] = {}
        from wallwatch.analysis.run import open_netinfo

        # Loaded once: every round's judgement looks its answers up here.
        self.netinfo = open_netinfo(config.mmdb)
        self.judged: set[int] = set()
        self.rounds: list[RoundRecord] = []
        self.series: list[dict[str, object]] = []
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "measurements").mkdir(exist_ok=True)
        #: Alert ids already in the log (``alerts.jsonl``): raised exactly once.
        self.raised: set[str] = set()
        self._seen_keys: dict[str, int] = {}
        self._unsaved = 0
        self.deliverer: Deliverer | None = None
        self.spool: Spool | None = None
        #: Names seen injected so far (a poisoned cache later reads as the path's tail).
        self.injected: Injected = {}
        #: Alerts held back instead of raised (a collector rebuilding its judgement
        #: raises them once the rebuilt view is in place).
        self.held: list[str] | None = None
        #: Where an event's page lives (``serve``'s public URL), for alerts' permalinks.
        self.permalink_base: str | None = None
        #: Called with each judged minute's verdicts (the collector stores them).
        self.on_verdicts: Callable[[int, list[Measurement], dict[str, FirstReply]], None] | None = (
            None
        )

    # -- one round ---------------------------------------------------------------

    def _command(self, vantage: Vantage, number: int, minute: int, output: Path) -> list[str]:
        """The child that sweeps ``vantage``: the library's entry point with a JSON spec."""
        from wallwatch.probe.child import SweepSpec

        c = self.config
        spec = SweepSpec(
            names=str(c.names), output=str(output), targets=list(vantage.targets),
            controls=list(vantage.controls), vantage=vantage.name, rate=c.rate or None,
            timeout=c.timeout, window=c.window,
            annotations={"round": str(number), "minute": str(minute)},
        )  # fmt: skip
        spec_path = output.with_name(output.name.removesuffix(".jsonl") + ".spec.json")
        spec_path.write_bytes(msgspec.json.encode(spec))
        args = [sys.executable, "-m", "wallwatch.probe.child", str(spec_path)]
        if vantage.node is not None:
            from wallwatch.lab import netns

            args = ["ip", "netns", "exec", netns.ns_name(vantage.node), *args]
        return args

    def run_round(self, number: int, at: float) -> RoundRecord:
        """Sweep the panel from every vantage at once; return when all are done."""
        minute = int(at // 60)
        real_start = time.time()
        files, procs = [], []
        for vantage in self.config.vantages:
            path = (
                self.config.out / "measurements" / f"r{number:06d}-m{minute}-{vantage.name}.jsonl"
            )
            files.append(path)
            parent = os.getpid()
            procs.append(subprocess.Popen(self._command(vantage, number, minute, path),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                          preexec_fn=functools.partial(preexec, parent)))  # fmt: skip
        for vantage, proc in zip(self.config.vantages, procs, strict=True):
            _, err = proc.communicate()
            if proc.returncode:
                print(f"watch: round {number}: vantage {vantage.name} failed "
                      f"({proc.returncode}): {err.decode(errors='replace').strip()[-300:]}",
                      file=sys.stderr)  # fmt: skip
        measurements = list(read_measurements(files))
        record = RoundRecord(number, minute, at, real_start, time.time(),
                             [p.name for p in files], len(measurements))  # fmt: skip
        _append_lines(self.config.out / "rounds.jsonl", [msgspec.json.encode(record).decode()])
        self.rounds.append(record)
        if self.spool is not None:
            # Spooled whole before the round is judged; sent by a worker, never waited for.
            for path in files:
                if path.exists():
                    with open(path, "rb") as handle:
                        self.spool.add(handle)
        self.judge(minute, measurements, now=self.config.clock.now())
        return record

    def judge(self, minute: int, measurements: Iterable[Measurement], *, now: float,
              live: bool = True, encoded: bytes | None = None) -> list[EventChange]:  # fmt: skip
        """Run the detector over one minute; raise the alerts the log does not hold yet.

        ``live`` is false when replaying rounds already on disk: their series is rewritten
        whole after the replay and the snapshot saved once, not per minute. ``encoded``:
        the measurements as JSON lines already (the caller wrote them), not encoded again.
        """
        if minute in self.judged:
            return []
        self.judged.add(minute)
        # One judgement: the analysis's rules judge the round, the buckets count verdicts.
        measurements = list(measurements)
        verdicts = judge_round(measurements, self.netinfo, self.injected, encoded=encoded)
        if self.on_verdicts is not None:
            self.on_verdicts(minute, measurements, verdicts)
        by_key = buckets(minute, measurements, verdicts)
        batch: list[Signals] = []
        for key in sorted(by_key):
            history = self.history.setdefault(key, StreamHistory())
            batch.append(signals(by_key[key], history))
        rows = []
        tz = self.config.clock.tz
        for s in batch:
            row = {
                "minute": s.minute, "stream": s.key.label(), "vantage": s.key.vantage,
                "resolver": s.key.resolver, "engine": s.key.engine, "kind": s.key.target_kind,
                "tld": s.key.tld, "qtype": s.key.qtype, "answered": s.answered,
                "top_address": s.top_address, "top_share": s.top_share,
                "tampered_share": s.tampered_share, "new_tampered_share": s.new_tampered_share,
                "proven_top": s.proven_top, "outside_as_share": s.outside_as_share,
            }  # fmt: skip
            self.series.append(row)
            rows.append(dict(row, minute=minute_iso(minute, tz, "minutes")))
        if live:
            _append_lines(self.config.out / "series.jsonl", [json.dumps(r) for r in rows])
        changes = self.detector.step(minute, batch, now)
        fresh = []
        for change in changes:
            alert_key = f"{change.event.event_id}:{change.change.value}:{change.minute}"
            n = self._seen_keys.get(alert_key, 0)
            self._seen_keys[alert_key] = n + 1
            alert_id = f"{alert_key}:{n}" if n else alert_key
            if alert_id in self.raised:
                continue
            self.raised.add(alert_id)
            fresh.append(
                json.dumps(self.alert(change.event, change.minute, change.change, alert_id))
            )
        self.raise_alerts(fresh)
        self._unsaved += 1
        if live and (changes or self._unsaved >= 10):
            self.save()
        return changes

    def raise_alerts(self, lines: list[str]) -> None:
        """Log (fsync) first, then show and send: the log is what a restart trusts."""
        if not lines:
            return
        if self.held is not None:
            self.held.extend(lines)
            return
        _append_lines(self.config.out / "alerts.jsonl", lines)
        for line in lines:
            self.emit(line)
            if self.deliverer is not None:
                self.deliverer.send(json.loads(line))

    def alert(self, event: Event, minute: int, kind: Change, alert_id: str) -> dict[str, object]:
        """One alert record, shaped like IODA's ([ioda]: time, level, method, condition, value,
        history value, entity, datasource) with the event and its permalink.

        ``value`` is the largest ``top_share`` (the share of names answered with the
        event's address) among the event's streams that minute, ``history_value`` the
        median of their CUSUM baselines: what the detector compared.
        """
        value: float | None = None
        baselines: list[float] = []
        h = None
        for (key, signal), cusum in self.detector.cusums.items():
            if key not in event.streams or signal != "top_share":
                continue
            h = cusum.h
            baselines += [cusum.mu0] if cusum.mu0 is not None else []
            at = [s.x for s in cusum.steps if s.bucket == minute] if cusum.steps else []
            if at:
                value = max(value or 0.0, at[-1])
        if value is None:
            value = event.peak_share
        if kind == Change.END:
            level = Level.NORMAL
        elif event.attribution == Attribution.ON_PATH_INJECTOR:
            level = Level.CRITICAL
        else:
            level = Level.WARNING
        scope = event.scope()
        return {
            "type": "wallwatch.event",
            "id": alert_id,
            "change": kind.value,
            "at": minute_iso(minute, self.config.clock.tz, "minutes"),
            "time": minute * 60,
            "level": level.value,
            "method": "cusum",
            "condition": f"cusum(top_share) > h={h:.3g}" if h is not None else "cusum(top_share)",
            "value": round(value, 4),
            "history_value": round(statistics.median(baselines), 4) if baselines else None,
            "entity": {"type": "answer_address", "code": event.target_address,
                       "name": f"{event.target_address} answering {', '.join('.' + t for t in scope['tlds'])}"},
            "datasource": "wallwatch:" + ",".join(scope["vantages"]),
            "permalink": (f"{self.permalink_base.rstrip('/')}/?event={quote(event.event_id)}"
                          if self.permalink_base else None),
            "event": self.event_dict(event),
        }  # fmt: skip

    def event_dict(self, event: Event) -> dict[str, object]:
        resolvers = {(k.vantage, k.resolver, k.engine) for k in self.history}
        return event.as_dict(self.config.clock.tz, len(self.panel), len(resolvers))

    def save(self) -> None:
        """The detector's view as a snapshot (``events.json``; series in ``series.jsonl``)."""
        self._unsaved = 0
        tz = self.config.clock.tz
        data = {
            "panel": {"names": len(self.panel), "vantages": [v.name for v in self.config.vantages]},
            "rounds": len(self.rounds),
            "local_addresses": self.config.local,
            "minutes": [minute_iso(m, tz, "minutes") for m in self.detector.minutes],
            "events": [self.event_dict(e) for e in self.detector.events],
            "traces": {
                name: [
                    {
                        "minute": minute_iso(s.bucket, tz, "minutes"),
                        "x": s.x,
                        "mu0": s.mu0,
                        "upper": s.upper,
                        "lower": s.lower,
                        "alarm": s.alarm,
                    }
                    for s in steps
                ]
                for name, steps in self.detector.traces().items()
            },  # fmt: skip
            "detector": {
                "delta": self.config.delta,
                "edd": self.config.edd,
                "warmup": self.config.warmup,
            },  # fmt: skip
        }
        tmp = self.config.out / "events.json.tmp"
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.config.out / "events.json")

    # -- resume and the loop ----------------------------------------------------------

    def resume(self) -> int:
        """Replay what is on disk; raise what the alert log lacks; return the next round."""
        done: dict[int, RoundRecord] = {}
        path = self.config.out / "rounds.jsonl"
        if path.exists():
            for number, line in enumerate(path.read_bytes().splitlines(), start=1):
                try:
                    r = msgspec.json.decode(line, type=RoundRecord)
                except msgspec.DecodeError:
                    print(f"watch: {path}:{number}: torn round record, ignored", file=sys.stderr)
                    continue
                done[r.round] = r
        self.raised = alert_ids(self.config.out / "alerts.jsonl")
        files: dict[tuple[int, int], list[Path]] = {}
        for f in sorted((self.config.out / "measurements").glob("r*-m*-*.jsonl")):
            round_text, minute_part = f.name[1:].split("-", 2)[:2]
            files.setdefault((int(round_text), int(minute_part[1:])), []).append(f)
        for number, finished in sorted(done.items()):
            if finished.discarded and (number, finished.minute) not in files:
                self.rounds.append(finished)
        for (number, minute), paths in sorted(files.items()):
            record = done.get(number)
            if record is None:
                for p in paths:  # a line torn by the crash is dropped, the rest is kept
                    for at_line, reason in recover(p).dropped:
                        print(f"watch: {p}:{at_line}: dropped a torn record ({reason})",
                              file=sys.stderr)  # fmt: skip
            measurements = list(read_measurements(paths))
            if record is None:
                complete = self._complete(paths, measurements)
                record = RoundRecord(number, minute, minute * 60.0, 0.0, 0.0,
                                     [p.name for p in paths], len(measurements), partial=True,
                                     discarded=not complete)  # fmt: skip
                if not complete:
                    # Half a sweep is not a quiet minute: set aside, measured again.
                    for p in paths:
                        p.replace(p.with_name(p.name + ".torn"))
                        columns.discard(p)  # its twin is a cache of what is set aside
                    print(f"watch: round {number} (minute {minute}) was torn by a crash with "
                          f"{len(measurements)} measurements; set aside as *.torn, not judged",
                          file=sys.stderr)  # fmt: skip
                _append_lines(path, [msgspec.json.encode(record).decode()])
            self.rounds.append(record)
            if not record.discarded:
                self.judge(minute, measurements, now=record.at, live=False)
        self.write_series()
        self.save()
        return max((n for n, _ in files), default=-1) + 1

    def write_series(self) -> None:
        """The series is derived from the rounds: rewritten whole after a replay."""
        tz = self.config.clock.tz
        rows = [json.dumps(dict(r, minute=minute_iso(int(str(r["minute"])), tz, "minutes")))
                for r in self.series]  # fmt: skip
        tmp = self.config.out / "series.jsonl.tmp"
        tmp.write_text("".join(r + "\n" for r in rows))
        tmp.replace(self.config.out / "series.jsonl")

    def _complete(self, paths: list[Path], measurements: list[Measurement]) -> bool:
        """Every vantage's sweep of this round is on disk (the round can be judged)."""
        per: dict[str, int] = {}
        for m in measurements:
            per[m.vantage] = per.get(m.vantage, 0) + 1
        for vantage in self.config.vantages:
            expected = len(self.panel) * (len(vantage.targets) + len(vantage.controls))
            if per.get(vantage.name, 0) < expected:
                return False
        return True

    def run(self, *, stop: Callable[[], bool] = lambda: False) -> None:
        c = self.config
        if c.post:
            self.deliverer = Deliverer(
                c.out / "deliveries.jsonl", [c.post],
                warn=lambda text: print(f"watch: {text}", file=sys.stderr),
            )  # fmt: skip
        number = self.resume()
        if c.upload and c.upload_token:
            self.spool = Spool(c.out / "spool", c.upload, c.upload_token,
                               warn=lambda text: print(f"watch: upload: {text}", file=sys.stderr)).start()  # fmt: skip
        if self.deliverer is not None:
            # Alerts logged before a crash but never delivered go out first, once.
            self.deliverer.start(pending_from=c.out / "alerts.jsonl")
        try:
            self._loop(number, stop)
        finally:
            self.save()
            if self.spool is not None:
                left = self.spool.close(timeout=15.0)
                if left:
                    print(f"watch: {left} upload batch(es) spooled in {c.out / 'spool'}; sent at "
                          "the next start", file=sys.stderr)  # fmt: skip
            if self.deliverer is not None:
                left = self.deliverer.close(timeout=15.0)
                if left:
                    print(f"watch: {left} alert deliveries still pending; they are sent at "
                          "the next start", file=sys.stderr)  # fmt: skip

    def _loop(self, number: int, stop: Callable[[], bool]) -> None:
        c = self.config
        now = c.clock.now()
        # The first round starts now (its slot is the current one); after a restart,
        # at the next slot, so that no minute is measured twice.
        at = now if number == 0 else _next_slot(now, c.every)
        while not stop():
            if c.rounds is not None and number >= c.rounds:
                break
            if c.until is not None and at > c.until:
                break
            wait = c.clock.real(at) - time.time()
            if wait > 0:
                time.sleep(wait)
            self.run_round(number, at)
            number += 1
            at += c.every
            now = c.clock.now()
            if now > at:  # overran: skip the missed slots (they show as gaps)
                at = _next_slot(now, c.every)


def _next_slot(now: float, every: float) -> float:
    return (now // every + 1) * every


def read_measurements(paths: Iterable[Path]) -> Iterable[Measurement]:
    for path in paths:
        if not path.exists():
            continue
        try:
            for record in read_records(path):
                if isinstance(record, Measurement):
                    yield record
        except (ValueError, msgspec.DecodeError) as exc:
            print(f"watch: {path}: {exc}; records before it kept", file=sys.stderr)


def _append_lines(path: Path, lines: list[str]) -> None:
    """Append whole lines and fsync: what is logged survives a crash right after."""
    if not lines:
        return
    with open(path, "ab+") as handle:
        head = b""
        if handle.tell():
            handle.seek(-1, os.SEEK_END)
            if handle.read(1) != b"\n":
                head = b"\n"  # end a line torn by a crash; it stays unreadable, alone
        handle.write(head + "".join(line + "\n" for line in lines).encode())
        handle.flush()
        os.fsync(handle.fileno())


def alert_ids(path: Path) -> set[str]:
    """Ids of the alerts in the log (a line torn by a crash is not an alert)."""
    return {str(alert["id"]) for alert in json_lines(path) if "id" in alert}
