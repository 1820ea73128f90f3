"""Which UDP replies the shield accepts: checks as data, and what it learns of each path.

An on-path injector cannot drop the genuine reply, only race it ([holdon-2012]): so the
shield keeps listening after the first reply and gives the user the first one that
passes every check below. Each check is a record with its :class:`~wallwatch.vocab.Drop`
reason and its source; every check that holds is recorded with the reply, as the
analysis records every rule that fired. The checks use the analysis's own definitions:
the forged pools (:mod:`wallwatch.analysis.pools`, Teredo), the injectors' signs
(:data:`wallwatch.analysis.families.SIGNS`), and Hold-On's two path tests with the
thresholds of :mod:`wallwatch.analysis.signals` (``FAST_SHARE``, ``TTL_SLACK``).

Hold-On's path tests need the path's RTT and IP TTL, learned, never fixed: a fixed
delay (``udp://8.8.8.8:53?delay=45``, "45ms delay seems to be minimal working",
[phantomsocks-96]) fits one network on one day. :class:`PathModel` learns them from
replies that passed every check and from calibration lookups of the root (a name no
blocklist holds), and relearns from calibration alone when the path changes.
"""

from __future__ import annotations

import ipaddress
import re
import statistics
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from wallwatch.analysis import pools
from wallwatch.analysis.families import SIGNS
from wallwatch.analysis.signals import FAST_SHARE, TEREDO, TTL_SLACK
from wallwatch.vocab import Drop

_TEREDO = re.compile(TEREDO)

#: Samples kept per path: enough for a stable least RTT and commonest TTL, few enough
#: that a changed path is relearned within minutes.
SAMPLES = 256
#: Below this, timing cannot tell an injector from the server: a loaded host's
#: scheduling jitter is as large, so the RTT test applies only to paths at least twice
#: as long (an injector that gains less than this over the server also wins no race).
TIMING_FLOOR = 0.005
#: The hold before any RTT is learned, and its bounds once learned (seconds). Hold-On
#: ran 5/10/15 s timers; GFWatch held every answer 364 ms inside China ([gfwatch-2021]).
#: The shield gives the first reply that passes at once, so the hold only bounds the
#: wait when none does: too short turns a slow genuine answer (a resolver recursing
#: across the border) into a failure, too long only delays a failure. So it is generous.
DEFAULT_HOLD = 2.0
MIN_HOLD = 1.0
MAX_HOLD = 5.0


@dataclass(slots=True)
class Seen:
    """One UDP reply, as the checks read it."""

    qtype: int
    question_ok: bool
    rtt: float
    ip_ttl: int | None
    edns: bool
    aa: bool
    #: ``pointer`` or ``full``: how the first answer names its owner.
    name_form: str
    answer_ttl: int | None
    addresses: tuple[str, ...]
    has_a: bool
    df: bool | None = None
    ip_id_zero: bool | None = None


@dataclass(slots=True)
class PathModel:
    """What one upstream's genuine replies look like, learned as they come.

    The figures every check reads (least RTT, commonest TTL, the hold) are computed when
    samples arrive, not per reply: at thousands of replies a second, a quantile over the
    samples per reply would cost more than the rest of the shield."""

    rtts: deque[float] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    ttls: deque[int] = field(default_factory=lambda: deque(maxlen=SAMPLES))
    #: Whether the upstream's genuine replies echo OPT (None: not known yet).
    echoes_opt: bool | None = None
    least_rtt: float | None = None
    ttl: int | None = None
    _hold: float = DEFAULT_HOLD
    _since: int = 0

    def learn(self, rtt: float, ip_ttl: int | None, edns: bool) -> None:
        self.rtts.append(rtt)
        if ip_ttl is not None:
            self.ttls.append(ip_ttl)
        self.echoes_opt = edns if self.echoes_opt is None else (self.echoes_opt or edns)
        self._since += 1
        if len(self.rtts) < 32 or self._since >= 32:
            self.refresh()

    def relearn(self) -> None:
        """Forget the path (its TTL changed): calibration teaches it again."""
        self.rtts.clear()
        self.ttls.clear()
        self.refresh()

    def refresh(self) -> None:
        """Recompute the figures: Hold-On's expected RTT is the least seen (a genuine reply
        is never faster than the path; a resolver's cache only removes its recursion); the
        TTL is the commonest, the lowest on a tie (as the analysis's baseline)."""
        self._since = 0
        self.least_rtt = min(self.rtts) if self.rtts else None
        counts = Counter(self.ttls)
        self.ttl = min(counts, key=lambda t: (-counts[t], t)) if counts else None
        if not self.rtts:
            self._hold = DEFAULT_HOLD
            return
        high = statistics.quantiles(self.rtts, n=20)[-1] if len(self.rtts) >= 20 else max(self.rtts)
        self._hold = min(MAX_HOLD, max(MIN_HOLD, 3 * high + 0.1))

    def hold(self) -> float:
        """How long to wait for a genuine reply: three times the slowest learned RTT (the
        95th percentile once there are 20) plus 100 ms, within [MIN_HOLD, MAX_HOLD];
        DEFAULT_HOLD before anything is learned."""
        return self._hold


@dataclass(frozen=True, slots=True)
class Check:
    reason: Drop
    holds: Callable[[Seen, PathModel, Callable[[str], bool]], bool]
    rationale: str


def _profile(s: Seen) -> bool:
    return any(
        sign.fits(aa=s.aa, name_form=s.name_form, answer_ttl=s.answer_ttl, edns=s.edns,
                  df=s.df, ip_id_zero=s.ip_id_zero)
        for sign in SIGNS
    )  # fmt: skip


CHECKS: tuple[Check, ...] = (
    Check(Drop.QUESTION_MISMATCH, lambda s, p, f: not s.question_ok,
          "a reply must answer the question asked, case for case ([rfc5452])"),
    Check(Drop.FORGED_POOL, lambda s, p, f: any(f(a) for a in s.addresses),
          "an answer in a published or learned forged pool, or in Teredo 2001::/32 "
          "([gfwatch-2021]; [wallbleed-2025]; [pcap-dnsproxy])"),
    Check(Drop.INJECTOR_PROFILE, lambda s, p, f: bool(s.addresses) and _profile(s),
          "the header fits a published injector ([triplet-2021] Table 3; [gfwrev-2009])"),
    Check(Drop.NO_OPT, lambda s, p, f: not s.edns and p.echoes_opt is True,
          "no OPT from an upstream that echoes it: the injectors drop it ([triplet-2021])"),
    Check(Drop.TYPE_MISMATCH, lambda s, p, f: s.has_a and s.qtype not in (1, 255),
          "an A record answering a non-A query ([gfwrev-2009])"),
    Check(Drop.IP_TTL_OFF,
          lambda s, p, f: s.ip_ttl is not None and p.ttl is not None
          and abs(s.ip_ttl - p.ttl) > TTL_SLACK,
          "an IP TTL off the path's learned one ([holdon-2012])"),
    Check(Drop.TOO_FAST,
          lambda s, p, f: p.least_rtt is not None and FAST_SHARE * p.least_rtt >= TIMING_FLOOR
          and s.rtt < FAST_SHARE * p.least_rtt,
          "faster than the path allows: sent from nearer than the server ([holdon-2012])"),
)  # fmt: skip


class ForgedPool:
    """The known forged addresses, plus those the shield learns (answers it dropped on
    other grounds, as the analysis learns raced addresses), bounded."""

    def __init__(self, learned_max: int = 65536) -> None:
        _version, known = pools.load()
        self.known = frozenset(k.address for k in known if k.kind == "forged")
        self.learned: dict[str, None] = {}
        self.learned_max = learned_max

    def __call__(self, address: str) -> bool:
        a = address.lower()
        return a in self.known or a in self.learned or bool(_TEREDO.match(a))

    def learn(self, addresses: tuple[str, ...]) -> None:
        for a in addresses:
            try:
                ip = ipaddress.ip_address(a)
            except ValueError:
                continue
            if ip.is_global:
                self.learned[a.lower()] = None
        while len(self.learned) > self.learned_max:
            self.learned.pop(next(iter(self.learned)))


def judge(seen: Seen, path: PathModel, forged: Callable[[str], bool]) -> tuple[Drop, ...]:
    """Every check that holds; an empty tuple means the reply is accepted."""
    return tuple(c.reason for c in CHECKS if c.holds(seen, path, forged))
