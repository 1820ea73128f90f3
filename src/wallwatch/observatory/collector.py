"""The collector: idempotent uploads into one store, and one judgement across every vantage.

Why the judgement lives here: GreatFire's 2014 argument needed two views of the same
minute -- 8.8.8.8 forged from inside, honest from outside -- and only a place that sees
every vantage's rounds can make it. Uploaded records are appended, per minute, to
``DATA/minutes/`` (the log a restart replays) and loaded into the DuckDB store
(``DATA/wallwatch.duckdb``: measurements keyed by their ID, so an upload sent twice is
stored once). A minute is judged by the same code as ``wallwatch watch``
(:class:`wallwatch.watch.Watch`, the analysis's own verdicts) once it is *closed*: when
data two minutes later has arrived, or when nothing new came for ``grace`` seconds. Data
for a minute already judged is stored, kept in the log and announced as late; once late
data has stopped coming for a few seconds, the whole judgement is rebuilt from the minute
log (the CUSUM sums are sequential, so a closed minute cannot be patched in place), and
every event that came out differently is announced as ``revised``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
from wallwatch.dataset import Dataset, write
from wallwatch.delivery import Deliverer
from wallwatch.events.detector import Change
from wallwatch.events.minute import FirstReply
from wallwatch.records import Measurement, Record
from wallwatch.watch import Watch, WatchConfig, alert_ids

#: Largest upload body accepted, compressed and decompressed (413 past either).
MAX_BODY = 16 * 1024 * 1024
MAX_DECOMPRESSED = 128 * 1024 * 1024


#: The judged minutes' verdicts, one row per measurement, with its axes.
JUDGEMENTS_DDL = (
    "CREATE TABLE IF NOT EXISTS judgements (measurement_uid VARCHAR, minute BIGINT, "
    "outcome VARCHAR, attribution VARCHAR, fingerprint VARCHAR, start_ts TIMESTAMP, "
    "vantage VARCHAR, resolver_address VARCHAR, hostname VARCHAR, query_type VARCHAR)"
)


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


def _tail(logs: Path, sizes: dict[str, int], marks: dict[str, int],
          out: Path) -> dict[str, int]:  # fmt: skip
    """Write to ``out`` each log file's whole lines from its mark up to its size (a line
    torn by a crash is never read); each file's new mark, for those that had any."""
    ends: dict[str, int] = {}
    with open(out, "wb") as handle:
        for name, size in sorted(sizes.items()):
            first = marks.get(name, 0)
            if size <= first:
                continue
            with open(logs / name, "rb") as log:
                log.seek(first)
                chunk = log.read(size - first)
            whole = chunk[: chunk.rfind(b"\n") + 1]
            if whole:
                ends[name] = first + len(whole)
                handle.write(whole)
    return ends


def _save_marks(path: Path, marks: dict[str, int]) -> None:
    """Bytes read of each log file, replaced whole (a crash leaves the old or the new)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(marks))
    tmp.replace(path)


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
    #: The collector's public URL: alerts carry permalinks to the event's page there.
    public_url: str | None = None
    #: Seconds without late data before the judgement is rebuilt with it.
    settle: float = 5.0
    #: A partitioned dataset the minute log is also written to (docs/scale-out.md: the
    #: system of record of a deployment that analyses on a cluster), and the seconds
    #: between its writes (each write is one commit, so not one per upload).
    dataset: Dataset | None = None
    export_every: float = 10.0

    def __post_init__(self) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        (self.data / "minutes").mkdir(exist_ok=True)
        self.db = self.data / "wallwatch.duckdb"
        #: The store, the pending minutes, the vantages and the messages (short holds).
        self.lock = threading.RLock()
        #: The detector and its events (held while a minute is judged, read by the API).
        self.judge_lock = threading.RLock()
        #: One judging at a time (a rebuild runs outside ``judge_lock``: readers still see
        #: the old view until the new one is swapped in).
        self.work_lock = threading.RLock()
        self._wake = threading.Event()
        self._stopping = False
        self.con = store.connect(self.db)
        self._tables: set[str] = set()
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
        #: Judged minutes that late data arrived for, and when the last of it came.
        self.late: set[int] = set()
        #: Times the judgement was rebuilt for late data (shown by the heartbeat).
        self.rebuilds = 0
        self._argument: tuple[str, list[dict[str, Any]]] = ("", [])
        self.last_late = 0.0
        deliverer = None
        if self.webhooks:
            deliverer = Deliverer(
                self.data / "deliveries.jsonl", self.webhooks,
                warn=lambda text: self.publish("delivery", {"warning": text}),
            )  # fmt: skip
        self.watch = self._new_watch(deliverer)
        self.con.execute(JUDGEMENTS_DDL)
        # The store is loaded from the log: catch up with what a crash left unloaded.
        self.unloaded: set[str] = set()
        #: Uploads logged but not yet in the store: (sequence, their measurement IDs).
        self.inflight: list[tuple[int, list[str]]] = []
        #: Log files written since the last load (at start: every file is looked at).
        self.dirty: set[str] = set()
        self._scan_all = True
        self._ts_column = False
        self._mend_logs()
        self.logged_seq = self.loaded_seq = 0
        self.loaded = threading.Condition()
        self._load_lock = threading.Lock()
        self._load_wake = threading.Event()
        mark = self.data / "loaded.json"
        self.watermark: dict[str, int] = json.loads(mark.read_text()) if mark.exists() else {}
        #: Bytes of each log file written to the dataset (saved after the write's commit).
        exported = self.data / "exported.json"
        self.exported: dict[str, int] = (json.loads(exported.read_text())
                                         if exported.exists() else {})  # fmt: skip
        self._exported_at = 0.0
        self._export_lock = threading.Lock()
        self.load_pending()
        self._timestamps(self.con)
        self._replay()
        if self.watch.deliverer is not None:
            self.watch.deliverer.start(pending_from=judge_dir / "alerts.jsonl")
        # Uploads are acknowledged once stored; minutes are judged by this worker, so a
        # slow judgement never holds an agent's upload (or its next round).
        self._judge_thread = threading.Thread(target=self._judge_loop, name="ww-judge", daemon=True)
        self._judge_thread.start()
        self._load_thread = threading.Thread(target=self._load_loop, name="ww-load", daemon=True)
        self._load_thread.start()

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
        """Validate one batch of JSONL records sent as ``vantage``, log it, acknowledge it.

        The batch is acknowledged once it is in the minute log (fsync): the log is the
        system of record, which a restart replays. The store is loaded from the log by a
        worker in larger pieces (:meth:`_load_loop`), and every read that starts after an
        acknowledgement waits until the store holds what was acknowledged
        (:meth:`caught_up`), so a reader never misses an acknowledged measurement.
        """
        parsed: list[Record] = []
        raw: dict[int, bytes] = {}  # id(record) -> its line as sent: stored without re-encoding
        for number, line in enumerate(body.splitlines(), start=1):
            if not line or line.isspace():
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
        others = [raw[id(r)] for r in parsed if not isinstance(r, Measurement)]
        with self.lock:
            uids = [m.measurement_uid for m in measurements]
            known = self._known(uids) | (self.unloaded & set(uids))
            fresh = list({m.measurement_uid: m for m in measurements
                          if m.measurement_uid not in known}.values())  # fmt: skip
            by_minute: dict[int, list[Measurement]] = {}
            for m in fresh:
                by_minute.setdefault(minute_of(m), []).append(m)
            minutes = sorted(by_minute)
            for minute, ms in by_minute.items():
                self._log(f"m{minute}.jsonl", [raw[id(m)] for m in ms])
            if others:  # input errors and strays: the store keeps them once (content IDs)
                self._log("other.jsonl", others)
            if fresh or others:
                self.logged_seq += 1
                self.unloaded.update(m.measurement_uid for m in fresh)
                self.inflight.append((self.logged_seq, [m.measurement_uid for m in fresh]))
                self.dirty.update([f"m{minute}.jsonl" for minute in minutes]
                                  + (["other.jsonl"] if others else []))  # fmt: skip
            for minute, ms in by_minute.items():
                if minute in self.watch.judged:
                    self._late(minute, len(ms), vantage)
                else:
                    self.pending.setdefault(minute, []).extend(ms)
            stored = len(fresh)
            seen = self.vantages.setdefault(vantage, {"measurements": 0, "uploads": 0})
            seen["measurements"] += stored
            seen["uploads"] += 1
            seen["last_seen"] = time.time()
            if fresh:
                seen["last_minute"] = max(minutes)
                self.last_data = time.monotonic()
            self.publish("upload", {"vantage": vantage, "stored": stored, "minutes": minutes})
        self._wake.set()
        self._load_wake.set()
        return UploadResult(len(measurements), stored, len(measurements) - stored,
                            sum(1 for r in parsed if isinstance(r, records.InputError)), minutes)  # fmt: skip

    # -- the store, loaded from the log ---------------------------------------------

    def caught_up(self, timeout: float = 60.0) -> bool:
        """Wait until the store holds every batch acknowledged before this call."""
        with self.loaded:
            wanted = self.logged_seq
            return self.loaded.wait_for(lambda: self.loaded_seq >= wanted, timeout)

    def _load_loop(self) -> None:
        while not self._stopping or self.loaded_seq < self.logged_seq:
            self._load_wake.wait(1.0)
            self._load_wake.clear()
            try:
                self.load_pending()
                self.export()
            except Exception as exc:  # shown; the log keeps the data, retried next wake
                self.publish("error", {"load": f"{type(exc).__name__}: {exc}"})
                time.sleep(1.0)

    def load_pending(self) -> int:
        """Load what the log holds beyond the store's watermark; measurements loaded.

        The watermark (``loaded.json``: bytes of each log file in the store) is written
        after the store committed, so a crash between the two loads those lines again,
        and the store keeps each measurement once (its ID) and each other record once
        (its content ID).
        """
        with self._load_lock:
            with self.lock:
                seq = self.logged_seq
                names = ([p.name for p in (self.data / "minutes").glob("*.jsonl")]
                         if self._scan_all else sorted(self.dirty))  # fmt: skip
                self.dirty, self._scan_all = set(), False
                sizes = {name: (self.data / "minutes" / name).stat().st_size for name in names}
                done = [uids for at, uids in self.inflight if at <= seq]
                self.inflight = [(at, uids) for at, uids in self.inflight if at > seq]
            loaded = 0
            if any(size > self.watermark.get(name, 0) for name, size in sizes.items()):
                with tempfile.TemporaryDirectory(prefix="ww-load-") as tmp:
                    path = Path(tmp) / "batch.jsonl"
                    ends = _tail(self.data / "minutes", sizes, self.watermark, path)
                    if ends:
                        cursor = self.con.cursor()
                        try:
                            loaded = store.ingest_into(cursor, [path]).measurements
                            self._timestamps(cursor)
                        finally:
                            cursor.close()
                self.watermark.update(ends)
                _save_marks(self.data / "loaded.json", self.watermark)
            with self.lock:
                for uids in done:
                    self.unloaded.difference_update(uids)
            with self.loaded:
                self.loaded_seq = max(self.loaded_seq, seq)
                self.loaded.notify_all()
            return loaded

    def export(self, *, force: bool = False) -> int:
        """Write the minute log beyond the dataset's watermark to the dataset (at most
        every ``export_every`` seconds unless ``force``); measurements added.

        The watermark (``exported.json``) is saved after the write's commit: a crash
        between the two writes those lines again, and the dataset keeps each measurement
        once (by its ID, :func:`wallwatch.dataset.write`); a line torn by a crash is never
        written (only whole lines are)."""
        if self.dataset is None:
            return 0
        with self._export_lock:
            if not force and time.monotonic() - self._exported_at < self.export_every:
                return 0
            self._exported_at = time.monotonic()
            sizes = {p.name: p.stat().st_size for p in (self.data / "minutes").glob("*.jsonl")}
            with tempfile.TemporaryDirectory(prefix="ww-export-") as tmp:
                path = Path(tmp) / "batch.jsonl"
                ends = _tail(self.data / "minutes", sizes, self.exported, path)
                if not ends:
                    return 0
                con = store.connect()
                try:
                    store.ingest_into(con, [path])
                    added = write(con, self.dataset).get("measurements", 0)
                finally:
                    con.close()
            self.exported.update(ends)
            _save_marks(self.data / "exported.json", self.exported)
            return added

    def _known(self, uids: list[str]) -> set[str]:
        if not uids or not self.has("measurements"):
            return set()
        rows = self.con.execute(
            "SELECT measurement_uid FROM measurements WHERE measurement_uid IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [uids],
        ).fetchall()
        return {str(r[0]) for r in rows}

    def has(self, table: str) -> bool:
        """The store has ``table`` (remembered once true: tables are never dropped)."""
        if table in self._tables:
            return True
        found = bool(self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0])  # fmt: skip
        if found:
            self._tables.add(table)
        return found

    def _timestamps(self, con: Any) -> None:
        """``measurements.start_ts``: the start time as a TIMESTAMP, filled for new rows.

        Why a column of the collector's own: the API's time series group ten million rows
        by hour, and casting the record's text time on every row at every request costs
        more than twice the grouping itself (docs/performance.md)."""
        if not self._ts_column:  # once: a catalog change conflicts with concurrent readers
            if not con.execute("SELECT count(*) FROM duckdb_tables() "
                               "WHERE table_name = 'measurements'").fetchone()[0]:  # fmt: skip
                return
            con.execute("ALTER TABLE measurements ADD COLUMN IF NOT EXISTS start_ts TIMESTAMP")
            self._ts_column = True
        con.execute(
            "UPDATE measurements SET start_ts = TRY_CAST(measurement_start_time AS TIMESTAMP) "
            "WHERE start_ts IS NULL"
        )

    def _mend_logs(self) -> None:
        """Cut a line torn by a crash off the end of each log file: it was never
        acknowledged (the log is fsynced before the answer), so its agent sends it again."""
        for path in (self.data / "minutes").glob("*.jsonl"):
            with open(path, "rb+") as handle:
                size = handle.seek(0, os.SEEK_END)
                if not size:
                    continue
                handle.seek(size - 1)
                if handle.read(1) == b"\n":
                    continue
                handle.seek(max(0, size - (1 << 20)))
                tail = handle.read()
                cut = tail.rfind(b"\n")
                handle.truncate(
                    size - len(tail) + cut + 1 if cut >= 0 else max(0, size - len(tail))
                )

    def _log(self, name: str, lines: Iterable[bytes]) -> None:
        """Append to the log (fsync: an acknowledged batch survives the machine, too)."""
        with open(self.data / "minutes" / name, "ab") as handle:
            handle.write(b"".join(line + b"\n" for line in lines))
            handle.flush()
            os.fsync(handle.fileno())

    # -- judgement -------------------------------------------------------------------

    def _new_watch(self, deliverer: Deliverer | None) -> Watch:
        judge_dir = self.data / "judge"
        watch = Watch(WatchConfig(names=judge_dir / "panel.txt", out=judge_dir, vantages=[],
                                  local=self.local), emit=self._alert)  # fmt: skip
        watch.deliverer = deliverer
        watch.on_verdicts = self._keep_verdicts
        watch.permalink_base = self.public_url
        # Alerts already in the log are raised once, however often the minutes are judged.
        watch.raised = alert_ids(judge_dir / "alerts.jsonl")
        return watch

    def _late(self, minute: int, count: int, vantage: str | None = None) -> None:
        """Data for a judged minute: kept, announced, and re-judged once it settles."""
        self.late.add(minute)
        self.last_late = time.monotonic()
        self.publish("late", {"minute": minute, "measurements": count,
                              **({"vantage": vantage} if vantage else {})})  # fmt: skip

    def _keep_verdicts(self, minute: int, measurements: list[Measurement],
                       verdicts: dict[str, FirstReply]) -> None:  # fmt: skip
        """Store a judged minute's verdicts (the API filters and counts by them); a minute
        judged again replaces its rows, so they are never doubled.

        Each row repeats its measurement's axes (vantage, target, name, type, time): counts
        by verdict then read this table alone, not a join with every stored measurement.
        """
        judged = [(m, verdicts[m.measurement_uid]) for m in measurements
                  if m.measurement_uid in verdicts]  # fmt: skip
        columns = [
            [m.measurement_uid for m, _ in judged],
            [v.outcome.value for _, v in judged],
            [v.attribution.value if v.attribution else None for _, v in judged],
            [v.fingerprint for _, v in judged],
            [m.measurement_start_time for m, _ in judged],
            [m.vantage for m, _ in judged],
            [m.resolver_address for m, _ in judged],
            [m.hostname for m, _ in judged],
            [m.query_type for m, _ in judged],
        ]
        with self.lock:
            self.con.execute("BEGIN")
            self.con.execute("DELETE FROM judgements WHERE minute = ?", [minute])
            if judged:  # bound as lists: one statement, nothing parsed per row
                self.con.execute(
                    "INSERT INTO judgements SELECT unnest($1::VARCHAR[]), $10, "
                    "unnest($2::VARCHAR[]), unnest($3::VARCHAR[]), unnest($4::VARCHAR[]), "
                    "TRY_CAST(unnest($5::VARCHAR[]) AS TIMESTAMP), unnest($6::VARCHAR[]), "
                    "unnest($7::VARCHAR[]), unnest($8::VARCHAR[]), unnest($9::VARCHAR[])",
                    [*columns, minute],
                )
            self.con.execute("COMMIT")

    def close_minutes(self, *, force: bool = False) -> list[int]:
        """Judge the pending minutes that are closed (``force``: all of them), in order."""
        with self.work_lock, self.judge_lock:
            with self.lock:
                if not self.pending:
                    return []
                # Closed: every vantage heard from within the grace period has sent data two
                # minutes later (an agent sends its rounds in order), so a slower vantage's
                # round is judged with the others' rather than arriving late. A vantage that
                # went silent stops holding minutes after the grace period.
                now = time.time()
                reached = [int(v["last_minute"]) for v in self.vantages.values()
                           if "last_minute" in v and now - float(v.get("last_seen", 0)) < self.grace]  # fmt: skip
                horizon = min(reached) if reached else max(self.pending)
                quiet = time.monotonic() - self.last_data >= self.grace
                ready = sorted(m for m in self.pending if force or quiet or m <= horizon - 2)
                batches = [(m, self.pending.pop(m)) for m in ready]
            for minute, measurements in batches:
                if self.watch.judged and minute < max(self.watch.judged):
                    # Older than a judged minute: the sums have moved on; re-judged below.
                    with self.lock:
                        self._late(minute, len(measurements))
                    continue
                changes = self.watch.judge(minute, measurements, now=minute * 60.0 + 60.0)
                self.publish("minute", {"minute": minute, "measurements": len(measurements),
                                        "changes": [c.change.value for c in changes]})  # fmt: skip
            return ready

    def rejudge(self, *, force: bool = False) -> list[str]:
        """Rebuild the judgement from the minute log once late data has settled (``force``:
        now); announce every event that came out differently. Returns the revised ids.

        Why from the start: each minute's CUSUM step depends on every step before it, so
        a minute that gained data changes everything after it. The cost is one replay of
        the log (docs/observatory.md).
        """
        with self.work_lock:
            with self.lock:
                if not self.late or (not force and time.monotonic() - self.last_late < self.settle):
                    return []
                late, self.late = sorted(self.late), set()
            old = self.watch
            before = {e.event_id: old.event_dict(e) for e in old.detector.events}
            fresh = self._new_watch(old.deliverer)
            added: list[str] = []
            fresh.held = added  # raised below, once the new view is in place
            for minute in sorted(old.judged | set(late)):
                fresh.judge(minute, self._read_minute(minute), now=minute * 60.0 + 60.0, live=False)
            after = {e.event_id: fresh.event_dict(e) for e in fresh.detector.events}
            revised = sorted(
                i for i in before.keys() | after.keys() if before.get(i) != after.get(i)
            )
            last = max(fresh.judged)
            for event_id in revised:
                event = next((e for e in fresh.detector.events if e.event_id == event_id), None)
                if event is None:  # withdrawn: the late data shows no such event
                    event = next(e for e in old.detector.events if e.event_id == event_id)
                    record = old.alert(event, last, Change.REVISED, "")
                    record["event"] = dict(before[event_id], withdrawn=True)
                else:
                    record = fresh.alert(event, last, Change.REVISED, "")
                record["id"] = f"{event_id}:revised:{last}:" + hashlib.sha256(
                    json.dumps(record["event"], sort_keys=True).encode()).hexdigest()[:12]  # fmt: skip
                record["late_minutes"] = late
                if record["id"] not in fresh.raised:
                    fresh.raised.add(str(record["id"]))
                    added.append(json.dumps(record))
            fresh.held = None
            with self.judge_lock:
                fresh.write_series()
                fresh.save()
                self.watch = fresh
                fresh.raise_alerts(added)
            self.rebuilds += 1
            self.publish("rejudged", {"late_minutes": late, "revised": revised})
            return revised

    def _read_minute(self, minute: int) -> list[Measurement]:
        """One minute of the log, each measurement once (a torn line is skipped: its
        measurement was never acknowledged, so the agent sends it again)."""
        path = self.data / "minutes" / f"m{minute}.jsonl"
        out: dict[str, Measurement] = {}
        if path.exists():
            for line in path.read_bytes().splitlines():
                try:
                    record = records.decode(line)
                except (msgspec.DecodeError, msgspec.ValidationError):
                    continue
                if isinstance(record, Measurement):
                    out.setdefault(record.measurement_uid, record)
        return list(out.values())

    def _judge_loop(self) -> None:
        while not self._stopping:
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self.close_minutes()
                self.rejudge()
            except Exception as exc:  # the collector keeps serving; the failure is shown
                self.publish("error", {"judge": f"{type(exc).__name__}: {exc}"})

    def _replay(self) -> None:
        """Rebuild the detector from the minute log (a restart loses no judgement)."""
        files = sorted((self.data / "minutes").glob("m*.jsonl"), key=lambda p: int(p.stem[1:]))
        for path in files:
            minute = int(path.stem[1:])
            measurements = self._read_minute(minute)
            for m in measurements:
                seen = self.vantages.setdefault(m.vantage, {"measurements": 0, "uploads": 0})
                seen["measurements"] += 1
            self.pending[minute] = measurements
        if files:
            newest = max(self.pending)
            for minute in sorted(self.pending):
                if minute <= newest - 2:
                    self.watch.judge(minute, self.pending.pop(minute), now=minute * 60.0 + 60.0,
                                     live=False)  # fmt: skip
            self.watch.write_series()

    def argument(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The report's checklist for one event ([greatfire-2014]'s argument, step by step:
        inside and outside, the dark host, the race, the fingerprint, the pool, the
        scope), from the event's minutes analysed on their own. Cached per revision."""
        from wallwatch.analysis.run import analyze
        from wallwatch.report.evidence import checklist

        onset = int(datetime.fromisoformat(str(event["onset"])).timestamp() // 60)
        over = event.get("over")
        last = int(datetime.fromisoformat(str(over)).timestamp() // 60) if over else 10**12
        key = json.dumps(event, sort_keys=True)
        if self._argument[0] == key:
            return self._argument[1]
        paths = [p for p in (self.data / "minutes").glob("m*.jsonl")
                 if onset <= int(p.stem[1:]) <= last]  # fmt: skip
        if not paths:
            return []
        with tempfile.TemporaryDirectory(prefix="ww-argument-") as tmp:
            db = Path(tmp) / "event.duckdb"
            store.ingest(sorted(paths), db)
            analyze(db, netinfo=self.watch.netinfo)
            items = checklist(db, event)
        self._argument = (key, items)
        return items

    def logged(self, first: int, last: int) -> list[Measurement]:
        """Measurements of the minute log from minute ``first`` to ``last``."""
        minutes = sorted(int(p.stem[1:]) for p in (self.data / "minutes").glob("m*.jsonl"))
        return [
            m for minute in minutes if first <= minute <= last for m in self._read_minute(minute)
        ]

    def close(self) -> None:
        """Judge what is pending (the data will not get more complete), save, stop."""
        self._stopping = True
        self._wake.set()
        self._load_wake.set()
        self._judge_thread.join(10.0)
        self._load_thread.join(60.0)
        self.load_pending()
        try:
            self.export(force=True)
        except Exception as exc:  # the log keeps it: the next start writes it
            self.publish("error", {"dataset": f"{type(exc).__name__}: {exc}"})
        self.close_minutes(force=True)
        self.rejudge(force=True)
        with self.judge_lock, self.lock:
            self.watch.save()
            if self.watch.deliverer is not None:
                self.watch.deliverer.close(timeout=5.0)
            self.con.close()
