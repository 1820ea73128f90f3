"""Alert delivery that cannot stall the monitor: a worker, deadlines, retries, a log.

Why: a receiver that answers slowly, trickles a byte at a time, or fails must not delay
the next round (a monitor that stops measuring during an incident fails when it matters
most), and an alert raised before a crash must still reach every receiver exactly once.
So alerts are queued to a worker thread; each POST has a connect deadline and a total
deadline; a network error or a 5xx is retried with exponential backoff; every outcome
is appended to a delivery log (``deliveries.jsonl``), and at start the alerts of the
alert log that were never delivered to a receiver are sent again. Each alert carries
an idempotency key (its ``id``, also sent as the ``Idempotency-Key`` header) so a
receiver can drop a repeat after a crash between sending and logging.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from wallwatch.journal import json_lines


@dataclass(frozen=True, slots=True)
class Policy:
    """Deadlines and retries of one delivery."""

    connect_timeout: float = 2.0
    #: The whole request, response included: a trickling receiver is cut off here.
    total_timeout: float = 5.0
    attempts: int = 5
    backoff: float = 0.5
    max_backoff: float = 30.0


class _Deadline(Exception):
    pass


def post(url: str, body: bytes, key: str, policy: Policy) -> int:
    """POST ``body`` to ``url`` within the policy's deadlines; the HTTP status."""
    parts = urlsplit(url)
    start = time.monotonic()
    connection_type = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    conn = connection_type(parts.hostname or "", parts.port, timeout=policy.connect_timeout)
    try:
        conn.connect()
        assert conn.sock is not None
        conn.sock.settimeout(0.25)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conn.putrequest("POST", path)
        for name, value in (("Content-Type", "application/json"), ("Idempotency-Key", key),
                            ("Content-Length", str(len(body)))):  # fmt: skip
            conn.putheader(name, value)
        conn.endheaders(body)
        # Read the status line and headers, byte by byte if need be, within the total deadline.
        while True:
            if time.monotonic() - start > policy.total_timeout:
                raise _Deadline
            try:
                response = conn.getresponse()
                break
            except TimeoutError:
                continue
        status = response.status
        while time.monotonic() - start <= policy.total_timeout:
            try:
                if not response.read(4096):
                    break
            except TimeoutError:
                continue
        return status
    finally:
        conn.close()


class Deliverer:
    """Sends alerts to receivers from a worker thread, logging every outcome.

    Deliverer(log_path, ["https://example.org/hook"]).start(pending_from=alerts_path)
    deliverer.send(alert_dict)   # returns at once
    deliverer.close(timeout=10)  # waits for the queue to drain, up to ``timeout``
    """

    def __init__(
        self,
        log: Path,
        receivers: list[str],
        *,
        policy: Policy | None = None,
        warn: Callable[[str], None] = lambda text: None,
    ) -> None:
        self.log = log
        self.receivers = receivers
        self.policy = policy or Policy()
        self.warn = warn
        self._queue: queue.Queue[tuple[str, str, bytes] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="ww-delivery", daemon=True)
        self._lock = threading.Lock()

    def delivered(self) -> set[tuple[str, str]]:
        """(receiver, alert id) pairs the log shows as delivered."""
        # A line torn by a crash is skipped: that delivery is simply retried.
        return {(str(e.get("receiver")), str(e.get("id"))) for e in json_lines(self.log)
                if e.get("outcome") == "delivered"}  # fmt: skip

    def start(self, pending_from: Path | None = None) -> Deliverer:
        """Start the worker; first queue every alert of ``pending_from`` not yet delivered."""
        if (
            self.log.exists()
            and not self.log.read_bytes().endswith(b"\n")
            and self.log.stat().st_size
        ):
            with open(self.log, "ab") as handle:  # end a line torn by a crash
                handle.write(b"\n")
        if pending_from is not None and pending_from.exists() and self.receivers:
            done = self.delivered()
            for alert in json_lines(pending_from):
                for receiver in self.receivers:
                    if "id" in alert and (receiver, str(alert["id"])) not in done:
                        self._queue.put((receiver, str(alert["id"]), json.dumps(alert).encode()))
        self._thread.start()
        return self

    def send(self, alert: dict[str, object]) -> None:
        body = json.dumps(alert).encode()
        for receiver in self.receivers:
            self._queue.put((receiver, str(alert["id"]), body))

    def close(self, timeout: float = 10.0) -> int:
        """Stop after the queue drains (or ``timeout``); the number of deliveries left."""
        deadline = time.monotonic() + timeout
        while not self._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self._queue.qsize()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()) + 0.5)
        return left

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            receiver, key, body = item
            self._deliver(receiver, key, body)

    def _deliver(self, receiver: str, key: str, body: bytes) -> None:
        p = self.policy
        error = ""
        for attempt in range(1, p.attempts + 1):
            try:
                status = post(receiver, body, key, p)
            except _Deadline:
                error = f"no complete answer within {p.total_timeout:g} s"
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                error = f"{type(exc).__name__}: {exc}"
            else:
                if status < 500:
                    outcome = "delivered" if status < 400 else "refused"
                    self._record(receiver, key, outcome, attempt, f"HTTP {status}")
                    if outcome == "refused":
                        self.warn(
                            f"alert {key}: {receiver} refused it (HTTP {status}); not retried"
                        )
                    return
                error = f"HTTP {status}"
            if attempt < p.attempts:
                time.sleep(min(p.max_backoff, p.backoff * 2 ** (attempt - 1)))
        self._record(receiver, key, "failed", p.attempts, error)
        self.warn(
            f"alert {key}: delivery to {receiver} failed after {p.attempts} attempts: {error}"
        )

    def _record(self, receiver: str, key: str, outcome: str, attempts: int, detail: str) -> None:
        line = json.dumps({"id": key, "receiver": receiver, "outcome": outcome, "attempts": attempts,
                           "detail": detail, "at": time.time()}) + "\n"  # fmt: skip
        with self._lock, open(self.log, "a") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
