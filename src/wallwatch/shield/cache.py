"""The shield's answer cache: accepted replies, their TTLs counted down, bounded.

Why keep wire bytes and not parsed records: a hit must cost little (a user's browser
asks the same names again and again), so a hit is the stored reply with the user's
ID and question put in and every TTL lowered by the time it has been cached, written
at offsets found once when the reply was stored (RFC 1035 4.1.3; RFC 2181 8). The
OPT record's "TTL" is its flags, not a TTL, and is left alone. A negative answer
lives as long as its SOA says (RFC 2308 5). The cache holds at most ``size`` entries,
the least recently used going first.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from wallwatch.fastwire import _skip_name

_RR = struct.Struct("!HHIH")
_TTL = struct.Struct("!I")
#: Longest an answer is kept, whatever it says (a day, as Unbound's cache-max-ttl).
MAX_TTL = 86400
#: How long a reply with no TTL to go by (no answer, no SOA) is kept.
NO_TTL = 30


def ttl_offsets(msg: bytes) -> tuple[list[int], int, int] | None:
    """Offsets of every RR's TTL field except OPT's, the TTL to cache the message for,
    and where the question ends; None when the message does not walk cleanly."""
    n = len(msg)
    if n < 12:
        return None
    qd, an, ns, ar = struct.unpack_from("!HHHH", msg, 4)
    if qd != 1:
        return None
    off = _skip_name(msg, n, 12)
    if off < 0 or off + 4 > n:
        return None
    question_end = off + 4
    off = question_end
    offsets: list[int] = []
    least: int | None = None
    negative: int | None = None
    for index in range(an + ns + ar):
        off = _skip_name(msg, n, off)
        if off < 0 or off + 10 > n:
            return None
        rtype, _rclass, ttl, rdlen = _RR.unpack_from(msg, off)
        if rtype != 41:
            offsets.append(off + 4)
            if index < an:
                least = ttl if least is None else min(least, ttl)
            elif index < an + ns and rtype == 6 and off + 10 + rdlen <= n:
                # RFC 2308 5: the lesser of the SOA's TTL and its MINIMUM field.
                minimum = struct.unpack_from("!I", msg, off + 10 + rdlen - 4)[0]
                negative = min(ttl, minimum)
        off += 10 + rdlen
        if off > n:
            return None
    keep = least if least is not None else (negative if negative is not None else NO_TTL)
    return offsets, min(keep, MAX_TTL), question_end


def strip_opt(msg: bytes) -> bytes:
    """The message without its OPT record, for a user whose query had none (RFC 6891
    7: a responder must not add OPT to a reply to a query without it)."""
    n = len(msg)
    if n < 12:
        return msg
    an, ns, ar = struct.unpack_from("!HHH", msg, 6)
    off = _skip_name(msg, n, 12)
    if off < 0 or not ar:
        return msg
    off += 4
    for index in range(an + ns + ar):
        start = off
        off = _skip_name(msg, n, off)
        if off < 0 or off + 10 > n:
            return msg
        rtype, _rclass, _ttl, rdlen = _RR.unpack_from(msg, off)
        off += 10 + rdlen
        if rtype == 41 and index >= an + ns:
            out = bytearray(msg[:start] + msg[off:])
            struct.pack_into("!H", out, 10, ar - 1)
            return bytes(out)
    return msg


def truncated(msg: bytes, question_end: int) -> bytes:
    """Header and question only, TC set, for a reply larger than the user can take."""
    out = bytearray(msg[:question_end])
    out[2] |= 0x02
    struct.pack_into("!HHH", out, 6, 0, 0, 0)
    return bytes(out)


@dataclass(slots=True)
class _Entry:
    wire: bytes
    offsets: list[int]
    question_end: int
    stored: float
    expires: float


class Cache:
    """(name, type, class, DO bit) to an accepted reply."""

    def __init__(self, size: int = 10000) -> None:
        self.size = size
        self._entries: OrderedDict[tuple[bytes, int, int, bool], _Entry] = OrderedDict()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: tuple[bytes, int, int, bool], wire: bytes, now: float) -> bool:
        """Keep an accepted reply (not a SERVFAIL); whether it was kept."""
        if self.size <= 0 or len(wire) < 12 or wire[3] & 0x0F not in (0, 3):
            return False
        walked = ttl_offsets(wire)
        if walked is None:
            return False
        offsets, ttl, question_end = walked
        if ttl <= 0:
            return False
        self._entries[key] = _Entry(wire, offsets, question_end, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return True

    def get(self, key: tuple[bytes, int, int, bool], txid: bytes, question: bytes,
            now: float) -> bytes | None:  # fmt: skip
        """The cached reply for a user's query (its ID, its question as it wrote it, the
        TTLs counted down), or None."""
        entry = self._entries.get(key)
        if entry is None or now >= entry.expires:
            if entry is not None:
                del self._entries[key]
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        age = int(now - entry.stored)
        out = bytearray(entry.wire)
        for off in entry.offsets:
            ttl = _TTL.unpack_from(out, off)[0]
            _TTL.pack_into(out, off, max(0, ttl - age))
        out[0:2] = txid
        if len(question) == entry.question_end - 12:
            out[12 : entry.question_end] = question
        return bytes(out)
