"""The collector: idempotent uploads into one store, and one judgement across every vantage.

Why the judgement lives here: GreatFire's 2014 argument needed two views of the same
minute -- 8.8.8.8 forged from inside, honest from outside -- and only a place that sees
every vantage's rounds can make it. Uploaded records are appended, per minute, to
``DATA/minutes/`` (the log a restart replays) and loaded into the DuckDB store
(``DATA/wallwatch.duckdb``: measurements keyed by their ID, so an upload sent twice is
stored once). A minute is judged by the same code as ``wallwatch watch``
(:class:`wallwatch.watch.Watch`, the analysis's own verdicts) once it is *closed*: when
data two minutes later has arrived, or when nothing new came for ``grace`` seconds. Data
for a minute already judged is stored, kept in the log and announced as late; the
detector does not re-run a closed minute (its sums are sequential).
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from wallwatch import records, store
from wallwatch.delivery import Deliverer
from wallwatch.records import Measurement, Record
from wallwatch.watch import Watch, WatchConfig

#: Largest upload body accepted, compressed and decompressed (413 past either).
MAX_BODY = 16 * 1024 * 1024
MAX_DECOMPRESSED = 128 * 1024 * 1024


class UploadError(Exception):
    """An upload refused: the HTTP status and why."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True, slots=True)
class UploadResult:
    received: int
    stored: int
    duplicates: int
    input_errors: int
    minutes: list[int]


def minute_of(m: Measurement) -> int:
    """The minute a measurement belongs to: the watch's own (``annotations['minute']``, on
    the scenario clock in the lab), else its start time's."""
    noted = m.annotations.get("minute")
    if noted is not None and noted.lstrip("-").isdigit():
        return int(noted)
    start = datetime.fromisoformat(m.measurement_start_time).replace(tzinfo=UTC)
    return int(start.timestamp() // 60)


@dataclass
class Message:
    seq: int
    kind: str
    data: dict[str, Any]


@dataclass
class Collector:
    data: Path
    webhooks: list[str] = field(default_factory=list)
    #: Seconds without new data after which every pending minute is judged.
    grace: float = 90.0
    #: The panel of names the vantages ask (weights and shares of events), if known.
    panel: Path | None = None
    #: Each vantage's own address, for the evidence pcap.
    local: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "minutes").mkdir(exist_ok=True)
        self.db = self.data / "wallwatch.duckdb"
        #: The store, the pending minutes, the vantages and the messages (short holds).
        self.lock = threading.RLock()
        #: The detector and its events (held while a minute is judged).
        self.judge_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = False
        self.con = store.connect(self.db)
        self.messages: deque[Message] = deque(maxlen=2000)
        self.seq = 0
        self.vantages: dict[str, dict[str, Any]] = {}
        self.pending: dict[int, list[Measurement]] = {}
        self.last_data = time.monotonic()
        judge_dir = self.data / "judge"
        judge_dir.mkdir(exist_ok=True)
        panel = judge_dir / "panel.txt"
        if self.panel is not None:
            panel.write_bytes(self.panel.read_bytes())
        panel.touch()
        self.watch = Watch(WatchConfig(names=panel, out=judge_dir, vantages=[], local=self.local),
                           emit=self._alert)  # fmt: skip
        if self.webhooks:
            self.watch.deliverer = Deliverer(
                self.data / "deliveries.jsonl", self.webhooks,
                warn=lambda text: self.publish("delivery", {"warning": text}),
            )  # fmt: skip
        self._replay()
        if self.watch.deliverer is not None:
            self.watch.deliverer.start(pending_from=judge_dir / "alerts.jsonl")
        # Uploads are acknowledged once stored; minutes are judged by this worker, so a
        # slow judgement never holds an agent's upload (or its next round).
        self._judge_thread = threading.Thread(target=self._judge_loop, name="ww-judge", daemon=True)
        self._judge_thread.start()

    # -- messages for the live stream ------------------------------------------------

    def publish(self, kind: str, data: dict[str, Any]) -> None:
        with self.lock:
            self.seq += 1
            self.messages.append(Message(self.seq, kind, data))

    def since(self, seq: int) -> list[Message]:
        with self.lock:
            return [m for m in self.messages if m.seq > seq]

    def _alert(self, line: str) -> None:
        self.publish("alert", json.loads(line))

    # -- uploads ---------------------------------------------------------------------

    def upload(self, vantage: str, body: bytes) -> UploadResult:
        """Validate and store one batch of JSONL records sent as ``vantage``."""
        parsed: list[Record] = []
        raw: dict[int, bytes] = {}  # id(record) -> its line as sent: stored without re-encoding
        for number, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = records.decode(line)
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise UploadError(422, f"line {number}: not a wallwatch record: {exc}") from None
            if isinstance(record, Measurement) and record.vantage != vantage:
                raise UploadError(403, f"line {number}: measurement of vantage "
                                       f"{record.vantage!r}, but the token uploads as {vantage!r}")  # fmt: skip
            parsed.append(record)
            raw[id(record)] = line
        measurements = [r for r in parsed if isinstance(r, Measurement)]
        with self.lock:
            known = self._known([m.measurement_uid for m in measurements])
            fresh = list(
                {
                    m.measurement_uid: m for m in measurements if m.measurement_uid not in known
                }.values()
            )
            minutes = sorted({minute_of(m) for m in fresh})
            by_minute: dict[int, list[Measurement]] = {}
            for m in fresh:
                by_minute.setdefault(minute_of(m), []).append(m)
            # The minute log first, then the store: a crash between them leaves the batch
            # unacknowledged, the agent sends it again, and the store still takes it once.
            for minute, ms in by_minute.items():
                self._log(minute, [raw[id(m)] for m in ms])
            stored = self._ingest([raw[id(r)] for r in parsed]) if parsed else 0
            for minute, ms in by_minute.items():
                if minute in self.watch.judged:
                    self.publish(
                        "late", {"minute": minute, "vantage": vantage, "measurements": len(ms)}
                    )
                else:
                    self.pending.setdefault(minute, []).extend(ms)
            seen = self.vantages.setdefault(vantage, {"measurements": 0, "uploads": 0})
            seen["measurements"] += stored
            seen["uploads"] += 1
            seen["last_seen"] = time.time()
            if fresh:
                seen["last_minute"] = max(minutes)
                self.last_data = time.monotonic()
            self.publish("upload", {"vantage": vantage, "stored": stored, "minutes": minutes})
        self._wake.set()
        return UploadResult(len(measurements), stored, len(measurements) - stored,
                            sum(1 for r in parsed if isinstance(r, records.InputError)), minutes)  # fmt: skip

    def _known(self, uids: list[str]) -> set[str]:
        if not uids or not self._has("measurements"):
            return set()
        rows = self.con.execute(
            "SELECT measurement_uid FROM measurements WHERE measurement_uid IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [uids],
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _has(self, table: str) -> bool:
        return bool(self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0])  # fmt: skip

    def _ingest(self, lines: list[bytes]) -> int:
        with tempfile.TemporaryDirectory(prefix="ww-upload-") as tmp:
            path = Path(tmp) / "batch.jsonl"
            path.write_bytes(b"\n".join(lines) + b"\n")
            report = store.ingest_into(self.con, [path])
        return report.measurements

    def _log(self, minute: int, lines: Iterable[bytes]) -> None:
        with open(self.data / "minutes" / f"m{minute}.jsonl", "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))

    # -- judgement -------------------------------------------------------------------

    def close_minutes(self, *, force: bool = False) -> list[int]:
        """Judge the pending minutes that are closed (``force``: all of them), in order."""
        with self.judge_lock:
            with self.lock:
                if not self.pending:
                    return []
                newest = max(self.pending)
                quiet = time.monotonic() - self.last_data >= self.grace
                ready = sorted(m for m in self.pending if force or quiet or m <= newest - 2)
                batches = [(m, self.pending.pop(m)) for m in ready]
            for minute, measurements in batches:
                if self.watch.judged and minute < max(self.watch.judged):
                    # Older than a judged minute: the sums have moved on; keep, announce.
                    self.publish("late", {"minute": minute, "measurements": len(measurements)})
                    continue
                changes = self.watch.judge(minute, measurements, now=minute * 60.0 + 60.0)
                self.publish("minute", {"minute": minute, "measurements": len(measurements),
                                        "changes": [c.change.value for c in changes]})  # fmt: skip
            return ready

    def _judge_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.close_minutes()
            except Exception as exc:  # the collector keeps serving; the failure is shown
                self.publish("error", {"judge": f"{type(exc).__name__}: {exc}"})

    def _replay(self) -> None:
        """Rebuild the detector from the minute log (a restart loses no judgement)."""
        files = sorted((self.data / "minutes").glob("m*.jsonl"), key=lambda p: int(p.stem[1:]))
        for path in files:
            measurements = []
            uids: set[str] = set()
            for line in path.read_bytes().splitlines():
                try:
                    record = records.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue  # a line torn by a crash: its measurement is re-sent by the agent
                if isinstance(record, Measurement) and record.measurement_uid not in uids:
                    uids.add(record.measurement_uid)
                    measurements.append(record)
                    seen = self.vantages.setdefault(
                        record.vantage, {"measurements": 0, "uploads": 0}
                    )
                    seen["measurements"] += 1
            self.pending[int(path.stem[1:])] = measurements
        if files:
            newest = max(self.pending)
            for minute in sorted(self.pending):
                if minute <= newest - 2:
                    self.watch.judge(minute, self.pending.pop(minute), now=minute * 60.0 + 60.0,
                                     live=False)  # fmt: skip

    def logged(self, first: int, last: int) -> list[Measurement]:
        """Measurements of the minute log from minute ``first`` to ``last``."""
        out: list[Measurement] = []
        for path in sorted((self.data / "minutes").glob("m*.jsonl")):
            if not first <= int(path.stem[1:]) <= last:
                continue
            for line in path.read_bytes().splitlines():
                try:
                    record = records.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if isinstance(record, Measurement):
                    out.append(record)
        return out

    def close(self) -> None:
        """Judge what is pending (the data will not get more complete), save, stop."""
        self._stopping = True
        self._wake.set()
        self._judge_thread.join(10.0)
        self.close_minutes(force=True)
        with self.judge_lock, self.lock:
            self.watch.save()
            if self.watch.deliverer is not None:
                self.watch.deliverer.close(timeout=5.0)
            self.con.close()
