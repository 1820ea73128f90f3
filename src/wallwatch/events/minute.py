"""Per-minute signals of one monitored stream: what a mass redirection moves.

A *stream* is what one vantage asks one target over one transport, split by the
name's TLD and the query type (gfw-dns.md 3.9: per-TLD shares catch a ".com/.net/.org
but not .cn" event). A *bucket* is one minute of one stream. Each bucket keeps, per
name, only the addresses of the *first* reply (what a stub resolver would have used),
so repeated queries of a name in one minute, or a round measured twice after a
restart, cannot inflate a share: every signal counts distinct names.

Signals (gfw-dns.md 3.9; style-and-ecosystem.md B3.9):

* ``top_share``: the share of the names asked whose first reply holds the single most
  common address -- unrelated names on one address is what 2014 looked like;
* ``names_per_address``: the heavy hitters behind it;
* ``tampered_share`` and ``new_tampered_share``: names whose first reply the trusted
  control disowns, and those of them this stream had never seen tampered before;
* ``proven``: names whose first reply the injector demonstrably made (a dark host
  answered, or a later reply to the same query raced it: the ``dark_destination`` and
  ``raced_by_genuine`` rules of the analysis);
* ``fingerprints``: counts of those injected replies per header fingerprint (AA bit,
  answer TTL, OPT), the per-injector-family count;
* ``outside_as_share``: names whose answer's origin AS is none of the control's (with an
  MMDB snapshot; ``None`` without one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING

from wallwatch.records import Measurement, Response
from wallwatch.vocab import TargetKind

if TYPE_CHECKING:
    from wallwatch.analysis.netinfo import NetinfoDB

#: A share over fewer answered names than this is noise, not a signal.
MIN_NAMES = 5


@dataclass(frozen=True, slots=True, order=True)
class StreamKey:
    vantage: str
    resolver: str
    engine: str
    target_kind: str
    tld: str
    qtype: str

    def label(self) -> str:
        return f"{self.vantage}>{self.resolver}/{self.engine} .{self.tld} {self.qtype}"


def addresses(response: Response) -> tuple[str, ...]:
    return tuple(sorted({ip for a in response.answers if (ip := a.ipv4 or a.ipv6)}))


def fingerprint(response: Response) -> str:
    """The header features that tell injector families apart (gfw-dns.md 3.3)."""
    aa = int(bool((response.flags or 0) & 0x0400))
    ttl = response.answers[0].ttl if response.answers else None
    return f"aa={aa} ttl={ttl} opt={int(response.edns)}"


@dataclass(slots=True)
class Bucket:
    """One minute of one stream."""

    minute: int
    key: StreamKey
    first: dict[str, tuple[str, ...]] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    proven: set[str] = field(default_factory=set)
    fingerprints: Counter[str] = field(default_factory=Counter)
    queries: int = 0
    replies: int = 0

    def add(self, m: Measurement) -> None:
        self.queries += 1
        self.names.add(m.hostname)
        self.replies += len(m.responses)
        if m.hostname in self.first:
            return
        replies = [r for r in m.responses if r.failure is None]
        if not replies:
            return
        first = addresses(replies[0])
        if not first:
            return
        self.first[m.hostname] = first
        raced = any(addresses(later) and not set(addresses(later)) & set(first)
                    for later in replies[1:])  # fmt: skip
        if m.target_kind == TargetKind.DARK or raced:
            self.proven.add(m.hostname)
            self.fingerprints[fingerprint(replies[0])] += 1


@dataclass(frozen=True, slots=True)
class Signals:
    """What the detector reads for one bucket."""

    minute: int
    key: StreamKey
    names: int
    answered: int
    top_address: str | None
    top_names: int
    top_share: float | None
    names_per_address: tuple[tuple[str, int], ...]
    tampered: int
    tampered_share: float | None
    new_tampered: int
    new_tampered_share: float | None
    proven_top: int
    fingerprints: dict[str, int]
    outside_as_share: float | None
    queries: int
    replies: int
    #: Names answered with the top address (for scope and traffic estimates).
    top_hostnames: tuple[str, ...]


@dataclass(slots=True)
class StreamHistory:
    """What earlier minutes taught about one stream."""

    tampered_ever: set[str] = field(default_factory=set)


def signals(
    bucket: Bucket,
    control: dict[tuple[str, str], set[str]],
    history: StreamHistory,
    *,
    netinfo: NetinfoDB | None = None,
    day: date | None = None,
) -> Signals:
    """Compute a bucket's signals; updates ``history`` (call once per bucket, in order)."""
    by_address: Counter[str] = Counter()
    for addrs in bucket.first.values():
        by_address.update(set(addrs))
    answered = len(bucket.first)
    common = by_address.most_common(1)
    top, top_names = common[0] if common else (None, 0)
    judged = tampered = new = 0
    outside = as_judged = 0
    qtype = bucket.key.qtype
    newly: set[str] = set()
    for name, addrs in bucket.first.items():
        genuine = control.get((name, qtype))
        if not genuine:
            continue
        judged += 1
        if set(addrs) & genuine:
            if netinfo is not None and day is not None:
                as_judged += 1
            continue
        tampered += 1
        if name not in history.tampered_ever:
            new += 1
            newly.add(name)
        if netinfo is not None and day is not None:
            as_judged += 1
            theirs = {netinfo.lookup(day, a)[0] for a in addrs} - {None}
            ours = {netinfo.lookup(day, a)[0] for a in genuine} - {None}
            outside += int(bool(theirs) and bool(ours) and not theirs & ours)
    history.tampered_ever |= newly
    # Over names *asked*: a dark host that normally answers nothing has a share of 0,
    # not an undefined one, and a resolver that times out on half the panel cannot
    # double the share of the half it answered.
    enough = len(bucket.names) >= MIN_NAMES
    top_hostnames = tuple(sorted(n for n, a in bucket.first.items() if top in a)) if top else ()
    return Signals(
        minute=bucket.minute,
        key=bucket.key,
        names=len(bucket.names),
        answered=answered,
        top_address=top,
        top_names=top_names,
        top_share=top_names / len(bucket.names) if enough else None,
        names_per_address=tuple(by_address.most_common(5)),
        tampered=tampered,
        tampered_share=tampered / judged if judged >= MIN_NAMES else None,
        new_tampered=new,
        new_tampered_share=new / judged if judged >= MIN_NAMES else None,
        proven_top=sum(1 for n in bucket.proven if top in bucket.first.get(n, ())),
        fingerprints=dict(bucket.fingerprints),
        outside_as_share=outside / as_judged if as_judged >= MIN_NAMES else None,
        queries=bucket.queries,
        replies=bucket.replies,
        top_hostnames=top_hostnames,
    )


def stream_key(m: Measurement) -> StreamKey:
    return StreamKey(
        vantage=m.vantage,
        resolver=m.resolver_address.rsplit(":", 1)[0].strip("[]"),
        engine=m.engine.value,
        target_kind=m.target_kind.value,
        tld=m.hostname.rstrip(".").rsplit(".", 1)[-1].lower(),
        qtype=m.query_type,
    )


def buckets(minute: int, measurements: Iterable[Measurement]) -> tuple[
    dict[StreamKey, Bucket], dict[tuple[str, str], set[str]]
]:  # fmt: skip
    """One round's measurements as buckets, plus the control's addresses it saw."""
    out: dict[StreamKey, Bucket] = {}
    control: dict[tuple[str, str], set[str]] = {}
    for m in measurements:
        if m.target_kind == TargetKind.CONTROL:
            for r in m.responses:
                if r.failure is None:
                    control.setdefault((m.hostname, m.query_type), set()).update(addresses(r))
            continue
        key = stream_key(m)
        bucket = out.get(key)
        if bucket is None:
            bucket = out[key] = Bucket(minute, key)
        bucket.add(m)
    return out, control
