"""``wallwatch watch``: sweep a panel every minute and raise events as they happen.

Why rounds of whole sweeps, each written to its own file: a round is the unit the
detector reads (one minute of every stream), the unit a crash can tear, and the unit
a restart resumes from. ``rounds.jsonl`` says which rounds finished; a restart replays
every round file on disk -- finished or torn -- through the detector without
re-alerting, and carries on with the next minute. Nothing measured is lost, and no
minute is counted twice: the signals count distinct names per minute
(:mod:`wallwatch.events.minute`), and a round that lands in a minute already judged
is stored but not judged again.

Each vantage is a sweep run by ``wallwatch probe`` in a child process, either on
this machine or, with ``--lab``, inside a lab namespace (``ww-lab-<node>``), so the
prober's hot loop is the same one benchmarked in ``bench/probe.py``. With ``--lab``
times are on the scenario's clock (:func:`wallwatch.lab.topology.scenario_clock`).

Alerts: one JSON line per event change on stdout (and in ``alerts.jsonl``), and,
when ``--post`` is given, the same JSON POSTed to a URL; a failing POST is reported
on stderr and does not stop the watch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timezone
from pathlib import Path

import msgspec

from wallwatch.events.detector import Detector, Event, EventChange, minute_iso
from wallwatch.events.minute import (
    Signals,
    StreamHistory,
    StreamKey,
    buckets,
    judge_round,
    signals,
)
from wallwatch.journal import read_records, recover
from wallwatch.names import QueryName, parse_lines
from wallwatch.records import Measurement


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

    # -- one round ---------------------------------------------------------------

    def _command(self, vantage: Vantage, number: int, minute: int, output: Path) -> list[str]:
        c = self.config
        args = [sys.executable, "-m", "wallwatch", "probe", "-f", str(c.names), "-o", str(output),
                "--quiet", "--rate", str(c.rate), "--window", str(c.window),
                "--timeout", str(c.timeout), "--retries", "0", "--vantage", vantage.name,
                "--stream-workers", "64",
                "-A", f"round={number}", "-A", f"minute={minute}"]  # fmt: skip
        for target in vantage.targets:
            args += ["-t", target]
        for control in vantage.controls:
            args += ["--control", control]
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
            procs.append(subprocess.Popen(self._command(vantage, number, minute, path),
                                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))  # fmt: skip
        for vantage, proc in zip(self.config.vantages, procs, strict=True):
            _, err = proc.communicate()
            if proc.returncode:
                print(f"watch: round {number}: vantage {vantage.name} failed "
                      f"({proc.returncode}): {err.decode(errors='replace').strip()[-300:]}",
                      file=sys.stderr)  # fmt: skip
        measurements = list(_measurements(files))
        record = RoundRecord(number, minute, at, real_start, time.time(),
                             [p.name for p in files], len(measurements))  # fmt: skip
        with open(self.config.out / "rounds.jsonl", "ab") as f:
            f.write(msgspec.json.encode(record) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.rounds.append(record)
        self.judge(minute, measurements, now=self.config.clock.now())
        return record

    def judge(self, minute: int, measurements: Iterable[Measurement], *, now: float,
              alert: bool = True) -> list[EventChange]:  # fmt: skip
        """Run the detector over one minute; alert on what changed."""
        if minute in self.judged:
            return []
        self.judged.add(minute)
        # One judgement: the analysis's rules judge the round, the buckets count verdicts.
        measurements = list(measurements)
        by_key = buckets(minute, measurements, judge_round(measurements, self.netinfo))
        batch: list[Signals] = []
        for key in sorted(by_key):
            history = self.history.setdefault(key, StreamHistory())
            batch.append(signals(by_key[key], history))
        for s in batch:
            self.series.append({
                "minute": s.minute, "stream": s.key.label(), "vantage": s.key.vantage,
                "resolver": s.key.resolver, "engine": s.key.engine, "kind": s.key.target_kind,
                "tld": s.key.tld, "qtype": s.key.qtype, "answered": s.answered,
                "top_address": s.top_address, "top_share": s.top_share,
                "tampered_share": s.tampered_share, "new_tampered_share": s.new_tampered_share,
                "proven_top": s.proven_top, "outside_as_share": s.outside_as_share,
            })  # fmt: skip
        changes = self.detector.step(minute, batch, now)
        if alert:
            for change in changes:
                line = json.dumps(self.alert(change))
                self.emit(line)
                with open(self.config.out / "alerts.jsonl", "a") as f:
                    f.write(line + "\n")
                if self.config.post:
                    _post(self.config.post, line)
        self.save()
        return changes

    def alert(self, change: EventChange) -> dict[str, object]:
        return {
            "type": "wallwatch.event",
            "change": change.change.value,
            "at": minute_iso(change.minute, self.config.clock.tz, "minutes"),
            "event": self.event_dict(change.event),
        }

    def event_dict(self, event: Event) -> dict[str, object]:
        resolvers = {(k.vantage, k.resolver, k.engine) for k in self.history}
        return event.as_dict(self.config.clock.tz, len(self.panel), len(resolvers))

    def save(self) -> None:
        """The detector's view, rewritten after every minute (``events.json``)."""
        tz = self.config.clock.tz
        data = {
            "panel": {"names": len(self.panel), "vantages": [v.name for v in self.config.vantages]},
            "rounds": len(self.rounds),
            "local_addresses": self.config.local,
            "minutes": [minute_iso(m, tz, "minutes") for m in self.detector.minutes],
            "events": [self.event_dict(e) for e in self.detector.events],
            "series": [
                dict(row, minute=minute_iso(int(str(row["minute"])), tz, "minutes"))
                for row in self.series
            ],  # fmt: skip
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
        """Replay what is on disk; return the next round number."""
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
        files: dict[tuple[int, int], list[Path]] = {}
        for f in sorted((self.config.out / "measurements").glob("r*-m*-*.jsonl")):
            round_text, minute_part = f.name[1:].split("-", 2)[:2]
            files.setdefault((int(round_text), int(minute_part[1:])), []).append(f)
        for (number, minute), paths in sorted(files.items()):
            record = done.get(number)
            if record is None:
                for p in paths:  # a line torn by the crash is dropped, the rest is kept
                    for at_line, reason in recover(p).dropped:
                        print(f"watch: {p}:{at_line}: dropped a torn record ({reason})",
                              file=sys.stderr)  # fmt: skip
            measurements = list(_measurements(paths))
            if record is None:
                # Torn by a crash mid-round: keep what it measured.
                record = RoundRecord(number, minute, minute * 60.0, 0.0, 0.0,
                                     [p.name for p in paths], len(measurements), partial=True)  # fmt: skip
                with open(path, "ab") as out:
                    out.write(msgspec.json.encode(record) + b"\n")
            self.rounds.append(record)
            self.judge(minute, measurements, now=record.at, alert=False)
        return max((n for n, _ in files), default=-1) + 1

    def run(self, *, stop: Callable[[], bool] = lambda: False) -> None:
        c = self.config
        number = self.resume()
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


def _measurements(paths: Iterable[Path]) -> Iterable[Measurement]:
    for path in paths:
        if not path.exists():
            continue
        try:
            for record in read_records(path):
                if isinstance(record, Measurement):
                    yield record
        except (ValueError, msgspec.DecodeError) as exc:
            print(f"watch: {path}: {exc}; records before it kept", file=sys.stderr)


def _post(url: str, line: str) -> None:
    request = urllib.request.Request(url, data=line.encode(), method="POST",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            response.read()
    except OSError as exc:
        print(f"watch: POST to {url} failed: {exc}", file=sys.stderr)
