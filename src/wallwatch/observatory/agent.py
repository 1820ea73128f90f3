"""The vantage's uploader: batches to the collector, a spool on disk while it is unreachable.

Why a spool: a vantage measures whether or not the collector answers, and what it
measured must reach the collector once it does. Every batch is first written whole to
``SPOOL/NNNNNNNNNN.jsonl.gz`` (write, fsync, rename), then sent, in order; it is deleted
only after the collector acknowledged it. A crash at any point leaves either no batch or
a whole one, which is sent again -- and the collector stores a measurement once however
often it arrives (its ID), so nothing is lost and nothing doubled. Sending runs on a
worker thread with deadlines, so it never delays a round.
"""

from __future__ import annotations

import gzip
import http.client
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlsplit

#: Records per batch: big enough to amortise a request, small enough to retry cheaply.
BATCH = 5000


class UploadRefused(Exception):
    """The collector refused a batch for good (4xx other than 408/429): not retried."""


def send(url: str, token: str, body_gz: bytes, *, timeout: float = 30.0) -> dict[str, object]:
    """POST one gzip batch to ``URL/api/v1/uploads``; the collector's metadata.

    ``url`` is ``http://host:port`` or ``unix:/path/to.sock`` (a collector on a Unix
    socket, reachable from network namespaces that share the filesystem).
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        conn: http.client.HTTPConnection = _UnixConnection(parts.path, timeout=timeout)
    elif parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout)
    else:
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.request("POST", "/api/v1/uploads", body=body_gz, headers={
            "Authorization": f"Bearer {token}", "Content-Encoding": "gzip",
            "Content-Type": "application/x-ndjson"})  # fmt: skip
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    if response.status == 200:
        metadata: dict[str, object] = json.loads(data)["metadata"]
        return metadata
    detail = data.decode(errors="replace")[:300]
    if 400 <= response.status < 500 and response.status not in (408, 429):
        raise UploadRefused(f"HTTP {response.status}: {detail}")
    raise OSError(f"HTTP {response.status}: {detail}")


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class Spool:
    """Batches on disk, sent in order by a worker; deleted once acknowledged."""

    def __init__(self, directory: Path, url: str, token: str, *,
                 warn: Callable[[str], None] = lambda text: None) -> None:  # fmt: skip
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        # A batch half-written when the agent was killed was never in the spool: its
        # records are still in the round or file they came from, spooled again from there.
        for torn in self.dir.glob("*.jsonl.gz.tmp"):
            torn.unlink(missing_ok=True)
        self.url, self.token, self.warn = url, token, warn
        self.stored = self.duplicates = 0
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def add(self, lines: Iterable[bytes]) -> int:
        """Spool records (JSONL lines) as whole batches; how many batches were written."""
        batch: list[bytes] = []
        written = 0
        for line in lines:
            if line.strip():
                batch.append(line if line.endswith(b"\n") else line + b"\n")
            if len(batch) >= BATCH:
                self._write(batch)
                written += 1
                batch = []
        if batch:
            self._write(batch)
            written += 1
        self._wake.set()
        return written

    def _write(self, batch: list[bytes]) -> None:
        name = f"{time.time_ns():020d}.jsonl.gz"
        tmp = self.dir / (name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(gzip.compress(b"".join(batch), compresslevel=5))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.dir / name)

    def pending(self) -> list[Path]:
        return sorted(self.dir.glob("*.jsonl.gz"))

    def drain(self, *, retry: bool = True, deadline: float | None = None) -> bool:
        """Send every spooled batch in order; True when the spool is empty."""
        delay = 0.5
        while True:
            batches = self.pending()
            if not batches:
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            batch = batches[0]
            try:
                result = send(self.url, self.token, batch.read_bytes())
            except UploadRefused as exc:
                bad = batch.with_suffix(".refused")
                os.replace(batch, bad)
                self.warn(f"{batch.name}: refused by the collector ({exc}); kept as {bad.name}")
                continue
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if not retry or self._stop:
                    return False
                self.warn(f"collector unreachable ({exc}); {len(batches)} batch(es) spooled")
                self._wake.wait(delay)
                self._wake.clear()
                delay = min(30.0, delay * 2)
                continue
            delay = 0.5
            self.stored += int(str(result.get("stored", 0)))
            self.duplicates += int(str(result.get("duplicates", 0)))
            batch.unlink()

    def start(self) -> Spool:
        """Send in the background; rounds only ever write to the spool."""

        def run() -> None:
            while not self._stop:
                self.drain()
                self._wake.wait(1.0)
                self._wake.clear()

        self._thread = threading.Thread(target=run, name="ww-upload", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> int:
        """Try to empty the spool within ``timeout``; the batches left (sent at the next start)."""
        if self._thread is None:
            self.drain(deadline=time.monotonic() + timeout)
        else:
            end = time.monotonic() + timeout
            while self.pending() and time.monotonic() < end:
                self._wake.set()
                time.sleep(0.1)
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
        return len(self.pending())


def files_of(paths: Iterable[Path]) -> list[Path]:
    """JSONL files given directly, or found in directories (sorted)."""
    out: list[Path] = []
    for path in paths:
        out += sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
    return out
