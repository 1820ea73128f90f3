"""The emulated on-path DNS injector: rules, profiles, pools, and the packets it sends.

Everything here follows [triplet-2021]; [wallbleed-2025] (sources per item below); the lab's
border process (:mod:`wallwatch.lab.border`) calls :meth:`Injector.forge` for every
UDP packet to port 53 that crosses it, in either direction (2.1.2-2.1.3).

* **Matching** (2.1.6, 2.3): the query name is *flattened* -- labels joined by
  dots, a NUL inside a label ends the name, compression pointers are not
  followed -- only its first 127 bytes are considered, and rules match
  case-insensitively with their own anchoring: ``suffix`` (label-anchored, like
  ``rsf.org``), ``prefix`` (start-anchored, not label-anchored, like
  ``shadowvpn.com``) or ``anywhere`` (like ``69.mu``). One blocklist per injector.
* **Replies** (2.2): built by :func:`wallwatch.lab.forge.forge_reply` (question
  copied, OPT dropped, AAAA for AAAA and A for every other type, 0x8180/0x8400).
* **Profiles** (Triplet Table 3; gfwrev 2009): AA bit, answer TTL, owner name
  as pointer or full name, DF, IP ID, and the IP TTL rising, random, mirroring
  the query's, or fixed; the 2009 Type 2 sends three copies.
* **Pools** (2.4): addresses by rule group, taken in order from a cyclic list per
  injector *process*, the process picked by a hash of the UDP 4-tuple (Wallbleed
  V-B; n4p#466).
"""

from __future__ import annotations

import ipaddress
import random
import re
import struct
import zlib
from dataclasses import dataclass, field
from enum import StrEnum

from wallwatch.lab.forge import NameForm, NotForgeable, build_forged, question_end


class Anchor(StrEnum):
    """How a rule's pattern must sit in the flattened name ([gfwatch-2021])."""

    #: At the end, on a label boundary: ``rsf.org`` matches ``x.rsf.org``, not ``xrsf.org``.
    SUFFIX = "suffix"
    #: At the start, not label-anchored: ``shadowvpn.com`` matches ``shadowvpn.comx``.
    PREFIX = "prefix"
    #: Anywhere: ``69.mu`` matches ``x69.mux``.
    ANYWHERE = "anywhere"


class TtlMode(StrEnum):
    """How an injector sets the IP TTL of its packets (Triplet Table 3)."""

    RISING = "rising"  # Injector 1: increments across consecutive packets
    RANDOM = "random"  # Injector 2
    MIRROR = "mirror"  # Injector 3: the query's TTL as it reached the tap
    FIXED = "fixed"


@dataclass(frozen=True, slots=True)
class Profile:
    """The header fingerprint of one injector."""

    name: str
    aa: bool = False
    answer_ttl: int = 236
    name_form: NameForm = NameForm.POINTER
    df: bool = False
    #: None = random IP ID per packet; an int = that fixed ID (Injector 3 uses 0).
    ip_id: int | None = None
    ttl_mode: TtlMode = TtlMode.FIXED
    ttl: int = 64
    #: Identical copies sent per query (2009 Type 2 sent three).
    copies: int = 1


#: Profiles from [wallbleed-2025]; [triplet-2021]; [gfwrev-2009]; "not reported" values are marked there.
PROFILES: dict[str, Profile] = {
    "injector1": Profile("injector1", aa=True, answer_ttl=60, name_form=NameForm.FULL,
                         ttl_mode=TtlMode.RISING),
    "injector2": Profile("injector2", answer_ttl=180, df=True, ttl_mode=TtlMode.RANDOM),
    "injector3": Profile("injector3", answer_ttl=236, ip_id=0, ttl_mode=TtlMode.MIRROR),
    "type1-2009": Profile("type1-2009", answer_ttl=300, ip_id=0x1234, ttl_mode=TtlMode.FIXED,
                          ttl=110),
    "type2-2009": Profile("type2-2009", answer_ttl=86400, name_form=NameForm.FULL,
                          ttl_mode=TtlMode.RISING, copies=3),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Rule:
    """One blocklist entry."""

    pattern: str
    anchor: Anchor = Anchor.SUFFIX
    #: Name of the address pool for names this rule catches ("" = the injector's default).
    pool: str = ""

    def regex(self) -> str:
        body = re.escape(self.pattern.lower().strip("."))
        if self.anchor == Anchor.SUFFIX:
            return rf"(?:^|\.){body}$"
        if self.anchor == Anchor.PREFIX:
            return rf"^{body}"
        return body


def flatten(query: bytes, limit: int = 127) -> str | None:
    """The query name as the injector sees it, or None if it would not parse it.

    Only the first ``limit`` bytes of the name are read (Wallbleed III-B); a NUL
    byte inside a label ends the name; pointers are not followed.
    """
    if len(query) < 12 or query[2] & 0x80:
        return None
    name = query[12 : 12 + limit]
    out = []
    off = 0
    while off < len(name):
        length = name[off]
        if length == 0 or length & 0xC0:
            break
        label = name[off + 1 : off + 1 + length]
        cut = label.find(b"\x00")
        if cut >= 0:
            out.append(label[:cut])
            break
        out.append(label)
        off += 1 + length
    return b".".join(out).decode("latin-1").lower()


@dataclass
class Injector:
    """One injector: a profile, a blocklist, pools, and its mutable counters."""

    id: str
    profile: Profile
    rules: list[Rule]
    pools: dict[str, list[str]]
    #: Processes per node; the 4-tuple hash picks one (Wallbleed: at least 3 seen).
    processes: int = 3
    #: Scenario-clock windows (start, end) in seconds when it is active; empty = always.
    active: list[tuple[float, float]] = field(default_factory=list)
    ipv6_pool: list[str] = field(default_factory=lambda: ["2001::1"])
    _compiled: re.Pattern[str] | None = None
    _suffixes: dict[str, str] = field(default_factory=dict)
    _groups: list[str] = field(default_factory=list)
    _cursor: dict[tuple[str, int], int] = field(default_factory=dict)
    _ttl: int = 0
    _packed: dict[str, list[bytes]] = field(default_factory=dict)
    _packed6: list[bytes] = field(default_factory=list)
    forged: int = 0

    def __post_init__(self) -> None:
        # Plain suffix rules (the bulk of a real blocklist) go into a dict probed
        # once per label boundary; only prefix/anywhere rules need the regex.
        self._suffixes = {
            r.pattern.lower().strip("."): r.pool for r in self.rules if r.anchor == Anchor.SUFFIX
        }
        others = [r for r in self.rules if r.anchor != Anchor.SUFFIX]
        if others:
            self._compiled = re.compile(
                "|".join(f"(?P<r{i}>{rule.regex()})" for i, rule in enumerate(others))
            )
            self._groups = [rule.pool for rule in others]
        self._ttl = random.randint(30, 200)
        self._packed = {
            k: [ipaddress.IPv4Address(a).packed for a in v] for k, v in self.pools.items()
        }
        self._packed6 = [ipaddress.IPv6Address(a).packed for a in self.ipv6_pool]

    def is_active(self, clock: float) -> bool:
        return not self.active or any(start <= clock < end for start, end in self.active)

    def match(self, name: str) -> str | None:
        """The pool name for ``name`` if a rule matches it, else None."""
        suffixes = self._suffixes
        if suffixes:
            tail = name
            while True:
                pool = suffixes.get(tail)
                if pool is not None:
                    return pool
                cut = tail.find(".")
                if cut < 0:
                    break
                tail = tail[cut + 1 :]
        if self._compiled is None:
            return None
        found = self._compiled.search(name)
        if found is None or found.lastgroup is None:
            return None
        return self._groups[int(found.lastgroup[1:])]

    def next_address(self, pool: str, flow: bytes, ipv6: bool) -> bytes:
        """The next address (packed) of the cyclic pool of the process ``flow`` hashes to.

        ``flow`` is the raw UDP 4-tuple (source and destination address, ports): the
        process is picked by a hash of it, not of the payload (Wallbleed V-B).
        """
        addresses = self._packed6 if ipv6 else self._packed.get(pool) or self._packed[""]
        process = zlib.crc32(flow) % self.processes
        key = (pool + ("/6" if ipv6 else ""), process)
        index = self._cursor.get(key, process * 7)  # processes start at different points
        self._cursor[key] = index + 1
        return addresses[index % len(addresses)]

    def ip_ttl(self, tap_ttl: int) -> int:
        mode = self.profile.ttl_mode
        if mode == TtlMode.MIRROR:
            return tap_ttl
        if mode == TtlMode.RANDOM:
            return random.randint(32, 255)
        if mode == TtlMode.RISING:
            self._ttl = self._ttl % 255 + 1
            return self._ttl
        return self.profile.ttl

    def forge(self, query: bytes, flow: bytes, clock: float) -> list[bytes]:
        """Forged DNS payloads for this query, or [] (not active, no match, unparseable)."""
        if self.active and not self.is_active(clock):
            return []
        name = flatten(query)
        if name is None:
            return []
        pool = self.match(name)
        if pool is None:
            return []
        try:
            end = question_end(query)
        except NotForgeable:
            return []
        qtype, qclass = struct.unpack_from("!HH", query, end - 4)
        if qclass != 1:
            return []  # since the 2023 patch QCLASS must be IN (Wallbleed)
        packed = self.next_address(pool, flow, qtype == 28)
        profile = self.profile
        payload = build_forged(
            query, end, qtype, packed, answer_ttl=profile.answer_ttl, aa=profile.aa or None,
            name_form=profile.name_form,
        )  # fmt: skip
        self.forged += profile.copies
        return [payload] * profile.copies
