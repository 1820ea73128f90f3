"""Parquet twins of a JSONL output, written while it grows, so ingest reads columns.

Why: parsing JSON is most of ``wallwatch ingest``'s time, and the records were JSON only
because the prober had just encoded them (docs/performance.md). The JSONL stays the truth:
it is append-only, survives ``kill -9`` and is what ``--resume`` reads. Beside it, in
``<output>.columns/``, the writer of the JSONL (:class:`~wallwatch.journal.Journal`) leaves
*parts*: each one is the Parquet twin of one byte range of the file, converted by DuckDB
from exactly those bytes in a background thread while the prober goes on measuring.

The parts are a cache, so they are used only where they provably describe the file as it
is (:func:`plan`): a part names the file's inode, its byte range and the CRC-32 of those
bytes, and ingest checks all three against the file before trusting it (reading the file
once for the checksums costs about a tenth of parsing it; docs/performance.md). What no
part covers (a range whose conversion a kill interrupted, or a file copied elsewhere) is
read as JSON, as before. Nothing measured can be lost through the twin: at
worst ingest is as slow as without it. ``--resume``'s rewrite of a torn file moves every
later byte, so it removes the twin (:func:`discard`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import queue
import re
import shutil
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A part is cut once this many bytes of JSONL wait for conversion (and at close).
PART_BYTES = 32 << 20

_PART = re.compile(r"(\d+)-(\d+)-(\d+)-([0-9a-f]{8})\.parquet")


def directory(path: str | Path) -> Path:
    """Where the twin of the JSONL file ``path`` lives."""
    target = Path(path)
    return target.with_name(target.name + ".columns")


def range_crc(fd: int, start: int, end: int) -> int:
    """CRC-32 of bytes ``[start, end)`` of the open file ``fd`` (what a part's name carries)."""
    crc = 0
    while start < end:
        chunk = os.pread(fd, min(end - start, 8 << 20), start)
        if not chunk:
            return -1  # the file is shorter than the range
        crc = zlib.crc32(chunk, crc)
        start += len(chunk)
    return crc


def available() -> bool:
    """True when DuckDB (the ``store`` extra) is installed to write the twin. Found, not
    imported: every sweep (each ``watch`` round's too) asks at start, and the converter
    thread imports DuckDB only when it has a part to convert."""
    return importlib.util.find_spec("duckdb") is not None


@dataclass(frozen=True, slots=True)
class Plan:
    """How ingest reads one JSONL file: which parts, and which byte ranges as JSON."""

    parts: tuple[Path, ...]
    #: (start, end) ranges of the file no part covers; the whole file when no part is usable.
    gaps: tuple[tuple[int, int], ...]
    #: The file's size when planned.
    size: int


def plan(path: str | Path) -> Plan:
    """The usable parts of ``path``'s twin and the gaps between them.

    A part is used only when the file still has its inode and its bytes in the part's
    range have the CRC-32 the part was made from; parts must not overlap. Anything else
    leaves those bytes to be read as JSON. The checksums are computed in two threads
    (zlib releases the GIL).
    """
    target = Path(path)
    stat = target.stat()
    whole = Plan((), ((0, stat.st_size),), stat.st_size)
    folder = directory(target)
    if not folder.is_dir():
        return whole
    found: list[tuple[int, int, int, Path]] = []
    for entry in folder.iterdir():
        match = _PART.fullmatch(entry.name)
        if match is None:
            continue
        inode, start, end, crc = match.groups()
        if int(inode) != stat.st_ino or int(end) > stat.st_size or int(start) >= int(end):
            continue
        found.append((int(start), int(end), int(crc, 16), entry))
    found.sort()
    with open(target, "rb") as handle, ThreadPoolExecutor(2) as pool:
        sums = list(pool.map(lambda f: range_crc(handle.fileno(), f[0], f[1]), found))
    # A part whose bytes changed since is left out: they are read as JSON.
    good = [f for f, got in zip(found, sums, strict=True) if got == f[2]]
    if any(a[1] > b[0] for a, b in itertools.pairwise(good)):
        return whole  # overlapping parts that both match: not a twin wallwatch wrote
    parts: list[Path] = []
    gaps: list[tuple[int, int]] = []
    at = 0
    for start, end, _, entry in good:
        if start > at:
            gaps.append((at, start))
        parts.append(entry)
        at = end
    if not parts:
        return whole
    if at < stat.st_size:
        gaps.append((at, stat.st_size))
    return Plan(tuple(parts), tuple(gaps), stat.st_size)


def copy_range(path: str | Path, start: int, end: int, target: Path) -> None:
    """Copy bytes ``[start, end)`` of ``path`` into the file ``target`` (a gap to parse)."""
    with open(path, "rb") as src, open(target, "wb") as dst:
        src.seek(start)
        left = end - start
        while left:
            chunk = src.read(min(left, 8 << 20))
            if not chunk:
                raise ValueError(f"{path}: shorter than {end} bytes while reading it")
            dst.write(chunk)
            left -= len(chunk)


def discard(path: str | Path) -> None:
    """Remove ``path``'s twin (its byte offsets no longer describe the file)."""
    shutil.rmtree(directory(path), ignore_errors=True)


class Writer:
    """Converts ranges of a JSONL file, as they are appended, into parts.

    :meth:`wrote` is told each range the journal appended (the bytes and where they
    ended, which ``O_APPEND`` leaves as the descriptor's offset, even with other writers
    appending to the same file); contiguous ranges gather into one part of about
    :data:`PART_BYTES`. One thread converts them, one part at a time, with a one-thread
    DuckDB. The measurement comes first: a part that would bring what waits for
    conversion past ``queue_bytes`` (two parts' worth) is left out (``skipped``; ingest
    parses that range from the JSONL) rather than making the prober wait or hold its
    output in memory, unless ``wait`` is set. A conversion that
    fails (a full disk) stops the twin for this run with one message on stderr; the JSONL
    goes on.
    """

    def __init__(
        self, path: str | Path, fd: int, *, part_bytes: int = PART_BYTES, wait: bool = False
    ) -> None:
        self.path = Path(path)
        self.folder = directory(self.path)
        self.inode = os.fstat(fd).st_ino
        self.part_bytes = part_bytes
        self._pending: list[bytes] = []
        self._start = self._end = -1
        self._queue: queue.SimpleQueue[tuple[int, int, list[bytes]] | None] = queue.SimpleQueue()
        #: JSONL bytes handed to the converter and not yet converted, and their bound.
        self._queued = 0
        self.queue_bytes = 2 * part_bytes
        self._room = threading.Condition()
        self._thread: threading.Thread | None = None
        self.failed: str | None = None
        self.parts = 0
        #: Parts left out because the conversion was behind (read as JSON by ingest).
        self.skipped = 0
        #: Wait for the conversion instead of leaving parts out (a complete twin).
        self.wait = wait
        #: CPU seconds the conversions took in this thread (one-thread DuckDB runs its work
        #: here): the twin's cost, which the benchmarks report.
        self.seconds = 0.0
        self._sweep_stale(fd)

    def wrote(self, data: bytes | bytearray | memoryview, end: int) -> None:
        """``data`` now ends at offset ``end`` of the file."""
        if self.failed is not None or not data:
            return
        start = end - len(data)
        if self._pending and start != self._end:
            self._submit()  # another writer's lines came between: a part of its own
        if not self._pending:
            self._start = start
        self._pending.append(bytes(data))
        self._end = end
        if self._end - self._start >= self.part_bytes:
            self._submit()

    def close(self) -> None:
        """Convert what is pending and wait for the conversions to finish."""
        self._submit(wait=True)
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _submit(self, *, wait: bool = False) -> None:
        if not self._pending:
            return
        item = (self._start, self._end, self._pending)
        self._pending = []
        if self.failed is not None:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ww-columns", daemon=True)
            self._thread.start()
        size = item[1] - item[0]
        with self._room:
            if self._queued and self._queued + size > self.queue_bytes:
                if not (wait or self.wait):
                    self.skipped += 1
                    return
                self._room.wait_for(
                    lambda: not self._queued or self._queued + size <= self.queue_bytes
                )
            self._queued += size
        self._queue.put(item)

    def _run(self) -> None:
        # The lowest CPU priority, for this thread only (a Linux thread is a task of its
        # own): the sweep and the servers it measures come first, and the twin takes what
        # they leave (with one-thread DuckDB the work runs in this thread).
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        con: Any = None
        while (item := self._queue.get()) is not None:
            try:
                if self.failed is None:
                    began = time.thread_time()
                    if con is None:
                        con = _connect()
                    self._convert(con, *item)
                    self.parts += 1
                    self.seconds += time.thread_time() - began
            except Exception as exc:  # noqa: BLE001 - any failure only stops the cache
                self.failed = str(exc)
                print(f"wallwatch: {self.folder}: columns stopped ({exc}); "
                      f"ingest reads {self.path.name} as JSON", file=sys.stderr)  # fmt: skip
            finally:
                with self._room:
                    self._queued -= item[1] - item[0]
                    self._room.notify_all()
        if con is not None:
            con.close()

    def _convert(self, con: Any, start: int, end: int, pieces: list[bytes]) -> None:
        from wallwatch.store import read_json_sql, sql_literal

        self.folder.mkdir(exist_ok=True)
        scratch = self.folder / f".{os.getpid()}-{start}.jsonl.tmp"
        made = self.folder / f".{os.getpid()}-{start}.parquet.tmp"
        try:
            crc = 0
            with open(scratch, "wb") as handle:  # piece by piece: no joined copy in memory
                for piece in pieces:
                    crc = zlib.crc32(piece, crc)
                    handle.write(piece)
            pieces.clear()
            name = f"{self.inode}-{start:015d}-{end:015d}-{crc:08x}.parquet"
            con.execute(
                f"COPY (SELECT * FROM {read_json_sql([scratch])}) "
                f"TO {sql_literal(str(made))} (FORMAT parquet)"
            )
            os.replace(made, self.folder / name)
        finally:
            scratch.unlink(missing_ok=True)
            made.unlink(missing_ok=True)

    def _sweep_stale(self, fd: int) -> None:
        """Remove what cannot serve the file as it is now: scratch files a killed writer
        left (only those of dead processes), and parts made for another file at this path
        (another inode, or a range past the end: the file was replaced, and a new file may
        reuse the old one's inode). The size is read after the listing, so a part another
        writer of the same file has just made is never taken for one past the end."""
        if not self.folder.is_dir():
            return
        entries = list(self.folder.iterdir())
        size = os.fstat(fd).st_size
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(".tmp"):
                pid = entry.name[1:].split("-", 1)[0]
                if pid.isdigit() and not _alive(int(pid)):
                    entry.unlink(missing_ok=True)
                continue
            match = _PART.fullmatch(entry.name)
            if match is not None and (int(match[1]) != self.inode or int(match[3]) > size):
                entry.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _connect() -> Any:
    import duckdb

    con = duckdb.connect(":memory:")
    con.execute("SET enable_progress_bar = false")
    con.execute("SET threads = 1")  # the prober owns the other cores
    con.execute("SET memory_limit = '512MB'")
    return con


def gap_name(path: str | Path, start: int, end: int) -> str:
    """A gap's scratch file name (kept readable in DuckDB's errors)."""
    return f"{Path(path).name}.{start}-{end}.jsonl"
