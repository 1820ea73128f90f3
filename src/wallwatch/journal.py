"""Append-only, crash-safe JSONL output, and what a resumed sweep must skip.

Why this shape: a sweep of millions of names runs for hours and must survive a
crash, a reboot or a ``kill -9`` without losing what it measured and without
measuring anything twice. So the prober only ever *appends whole lines* to a file
opened with ``O_APPEND`` (several ``--procs`` workers may share it: each
``write(2)`` lands at the end atomically). A kill in the middle of a write can
leave one torn line; :func:`recover` finds torn lines, reports them with their
line numbers, rewrites the file without them (atomically, by rename) and returns
the keys of the measurements already complete, so ``--resume`` re-measures
exactly what is missing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from wallwatch import columns, records
from wallwatch.records import InputError, Measurement, Record


class Journal:
    """Buffered appends of whole records to a file descriptor.

    ``flush_bytes`` and ``flush_seconds`` bound what a SIGKILL can cost: records in
    the buffer are simply re-measured by ``--resume``.
    """

    def __init__(self, fd: int, *, flush_bytes: int = 1 << 20, flush_seconds: float = 0.25) -> None:
        self.fd = fd
        self.flush_bytes = flush_bytes
        self.flush_seconds = flush_seconds
        self._buf = bytearray()
        # Lines the C prober loop wrote, kept as they came (older than what _buf holds):
        # appending 64 KB pieces to a bytearray that empties at each flush regrew it from
        # nothing each time, a copy of the whole buffer every ~12 % of growth.
        self._chunks: list[bytes] = []
        self._chunked = 0
        self._last = time.monotonic()
        self.records = 0
        #: Writes the Parquet twin of what is appended (``columns.Writer``), when asked.
        self.columns: columns.Writer | None = None

    @classmethod
    def open(cls, path: str | Path | None, *, twin: bool | None = None) -> Journal:
        """Append to ``path`` (created if missing), or write to stdout when None/``-``.

        ``twin`` writes the file's Parquet twin beside it (:mod:`wallwatch.columns`, so
        ingest reads columns); by default it does when DuckDB is installed.
        """
        if path is None or str(path) == "-":
            return cls(sys.stdout.fileno())
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        journal = cls(fd)
        if twin or (twin is None and columns.available()):
            journal.columns = columns.Writer(path, fd)
        return journal

    def write(self, record: Record) -> None:
        records.encode_into(record, self._buf)
        self.records += 1
        if len(self._buf) >= self.flush_bytes:
            self.flush()

    def write_lines(self, lines: bytes, count: int) -> None:
        """Append ``count`` records already encoded as JSON lines (the C prober loop's)."""
        if self._buf:
            self._chunks.append(bytes(self._buf))
            self._chunked += len(self._buf)
            self._buf.clear()
        self._chunks.append(lines)
        self._chunked += len(lines)
        self.records += count
        if self._chunked >= self.flush_bytes:
            self.flush()

    def tick(self, now: float) -> None:
        """Flush when the buffer has waited ``flush_seconds``."""
        if (self._buf or self._chunks) and now - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._chunks:
            if self._buf:
                self._chunks.append(bytes(self._buf))
                self._buf.clear()
            chunks, self._chunks, self._chunked = self._chunks, [], 0
            # One writev, no joined copy; what a short write left goes out joined.
            done = os.writev(self.fd, chunks) if len(chunks) <= 1024 else 0
            if done and self.columns is not None:
                self._twin(chunks, done)
            for chunk in chunks:
                if done >= len(chunk):
                    done -= len(chunk)
                    continue
                self._write_all(chunk[done:])
                done = 0
        if self._buf:
            self._write_all(self._buf)
            self._buf.clear()
        self._last = time.monotonic()

    def _write_all(self, data: bytes | bytearray) -> None:
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                wrote = os.write(self.fd, view[done:])
                if self.columns is not None:
                    self.columns.wrote(view[done : done + wrote], os.lseek(self.fd, 0, os.SEEK_CUR))
                done += wrote

    def _twin(self, chunks: list[bytes], done: int) -> None:
        """Tell the twin the first ``done`` bytes of ``chunks`` were appended (one writev)."""
        assert self.columns is not None
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        for chunk in chunks:
            if done <= 0:
                break
            piece = chunk[:done] if done < len(chunk) else chunk
            done -= len(piece)
            self.columns.wrote(piece, end - done)

    def close(self) -> None:
        self.flush()
        if self.columns is not None:
            self.columns.close()
        if self.fd > 2:
            os.close(self.fd)


@dataclass(slots=True)
class Recovered:
    """What an existing output file already holds."""

    #: Keys (hostname, resolver_address, query_type, engine) of complete measurements.
    done: set[tuple[str, str, str, str]] = field(default_factory=set)
    #: (source, line) of input errors already recorded.
    input_errors: set[tuple[str, int]] = field(default_factory=set)
    #: 1-based line numbers of torn or unreadable lines that were removed.
    dropped: list[tuple[int, str]] = field(default_factory=list)
    records: int = 0


def iter_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) for every line of a file, the last one possibly unterminated."""
    with open(path, "rb") as handle:
        yield from enumerate(handle, start=1)


def recover(path: str | Path) -> Recovered:
    """Scan an output file for ``--resume``; drop torn lines (atomic rewrite)."""
    out = Recovered()
    target = Path(path)
    if not target.exists():
        return out
    keep: list[bytes] = []
    for number, line in iter_lines(target):
        try:
            if not line.endswith(b"\n"):
                raise msgspec.DecodeError("line is not terminated (torn by a crash)")
            record = records.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            # A crash tears the *end* of a record, so a torn line starts like one. Any
            # other line means this is not a wallwatch output file: never rewrite it.
            if not line.startswith(b'{"record_type":'):
                raise ValueError(
                    f"{target}:{number}: not wallwatch records ({line[:40]!r}); "
                    "refusing to resume into it"
                ) from None
            out.dropped.append((number, str(exc)))
            # Another writer's whole record may follow the torn prefix on the same line.
            for piece in _salvage(line):
                keep.append(piece)
                out.records += 1
                _note(out, records.decode(piece))
            continue
        keep.append(line)
        out.records += 1
        _note(out, record)
    if out.dropped:
        tmp = target.with_name(target.name + ".resume-tmp")
        with open(tmp, "wb") as handle:
            handle.writelines(keep)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        columns.discard(target)  # every byte after the first torn line moved
    return out


def _note(out: Recovered, record: Record) -> None:
    if isinstance(record, Measurement):
        out.done.add(record.key())
    elif isinstance(record, InputError):
        out.input_errors.add((record.source, record.line))


def _salvage(line: bytes) -> list[bytes]:
    """Whole records that follow a torn prefix on one line (each ends the line)."""
    start = line.find(b'{"record_type":', 1)
    while start > 0:
        piece = line[start:]
        try:
            records.decode(piece)
        except (msgspec.DecodeError, msgspec.ValidationError):
            start = line.find(b'{"record_type":', start + 1)
            continue
        return [piece if piece.endswith(b"\n") else piece + b"\n"]
    return []


def read_records(path: str | Path) -> Iterator[Record]:
    """Every record of a JSONL file; a bad line raises ``ValueError`` naming file and line."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        try:
            yield records.decode(line)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ValueError(f"{path}:{number}: not a wallwatch record: {exc}") from None


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of an append-only log (rounds, series, alerts, deliveries).

    A missing file is an empty log, and a line torn by a crash (or anything that is not a
    JSON object) is skipped: what it recorded is re-derived or retried by its writer.
    """
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            out.append(value)
    return out
