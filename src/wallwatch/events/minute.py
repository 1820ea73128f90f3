"""Per-minute signals of one monitored stream: what a mass redirection moves.

A *stream* is what one vantage asks one target over one transport, split by the
name's TLD and the query type ([gfwatch-2021]: per-TLD shares catch a ".com/.net/.org
but not .cn" event). A *bucket* is one minute of one stream. Each bucket keeps, per
name, only the addresses of the *first* reply (what a stub resolver would have used),
so repeated queries of a name in one minute, or a round measured twice after a
restart, cannot inflate a share: every signal counts distinct names.

Signals ([gfwatch-2021]):

* ``top_share``: the share of the names asked whose first reply holds the single most
  common address -- unrelated names on one address is what 2014 looked like;
* ``names_per_address``: the heavy hitters behind it;
* ``tampered_share`` and ``new_tampered_share``: names whose first reply the analysis
  judged tampered (an outcome that reads as the path's, a false answer or a rewrite),
  and those of them this stream had never seen tampered before;
* ``proven``: names whose first reply the injector demonstrably made (the analysis's
  :data:`~wallwatch.vocab.PROVEN` outcomes: a dark host answered, or the genuine answer
  raced it);
* ``fingerprints``: counts of those injected replies per fingerprint, the family key of
  :mod:`wallwatch.analysis.families` (all six features);
* ``outside_as_share``: tampered names whose answer's origin AS is none of the control's.

There is one judgement: :func:`judge_round` runs the analysis itself
(:mod:`wallwatch.analysis.run`, the same rules as ``wallwatch analyze``) over the
round's measurements, and the buckets only count its verdicts on each first reply.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from wallwatch import store  # noqa: F401 - DuckDB, which every judgement needs, loaded with it
from wallwatch.records import Measurement, Response
from wallwatch.vocab import PROVEN, READING, Attribution, Outcome, Reading, TargetKind, outcomes

if TYPE_CHECKING:
    from wallwatch.analysis.netinfo import Netinfo

#: Readings that count a name as tampered, and those that count it as judged at all.
TAMPERED_READINGS = frozenset({Reading.PATH, Reading.FALSE_ANSWER, Reading.REWRITE})
JUDGED_READINGS = TAMPERED_READINGS | {Reading.GENUINE}

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


@dataclass(frozen=True, slots=True)
class FirstReply:
    """The analysis's verdict on a measurement's first parsed reply."""

    outcome: Outcome
    #: The injector fingerprint (family key) when the reply is the injector's own packet.
    fingerprint: str | None
    #: The answer's origin AS is known, and whether it is among the control's.
    asn_known: bool
    asn_match: bool
    #: Who tampered with the name, from this vantage, in this minute (window attribution,
    #: with the monitor's memory of earlier injections: a cache tail reads as the path's);
    #: None where the analysis attributes nothing (a control's own measurement).
    attribution: Attribution | None = None


#: What a running monitor remembers between rounds: when each (name, type) was first
#: seen injected on the path (epoch seconds), so the analysis can tell a poisoned
#: cache from a lying resolver ([greatfire-2014]'s hours-long tail).
Injected = dict[tuple[str, str], int]


def judge_round(
    measurements: Iterable[Measurement],
    netinfo: Netinfo | None = None,
    injected: Injected | None = None,
    *,
    encoded: bytes | None = None,
) -> dict[str, FirstReply]:
    """Verdicts of the analysis on each measurement's first parsed reply (one judgement).

    ``injected`` is read as the memory of earlier rounds and updated with this one's;
    ``encoded``, the same measurements as JSON lines, spares encoding them again.
    """
    from wallwatch import _api
    from wallwatch.analysis.attribution import sql_set
    from wallwatch.analysis.families import FINGERPRINT_SQL
    from wallwatch.analysis.run import analyze_connection

    records = list(measurements)
    if not records:
        return {}
    # Everything remembered was seen in an earlier round: before any window of this one.
    before = [(h, q, 0) for h, q in (injected or {})]
    con = _api.load_records(records) if encoded is None else _api.load_encoded(encoded)
    try:
        # One window per vantage and round: a round is judged as one piece of evidence.
        analyze_connection(con, netinfo=netinfo, window=86400, injected_before=before)
        rows = con.execute(f"""
            SELECT v.measurement_uid, v.outcome, f.fingerprint, len(v.answer_asns) > 0,
                   v.s_asn_match, w.attribution
            FROM reply_verdicts v
            LEFT JOIN ({FINGERPRINT_SQL}) f USING (measurement_uid, response_index)
            LEFT JOIN window_attributions w
              ON w.hostname = v.hostname AND w.query_type = v.query_type
             AND w.vantage = v.vantage
            WHERE v.response_index IS NOT NULL AND v.parse_failure IS NULL
            QUALIFY row_number() OVER (PARTITION BY v.measurement_uid
                                       ORDER BY v.response_index, w.window_start DESC) = 1""").fetchall()  # fmt: skip
        if injected is not None:
            path = sql_set(outcomes(Reading.PATH))
            for hostname, qtype, first in con.execute(f"""
                    SELECT v.hostname, v.query_type,
                           min(epoch(CAST(m.measurement_start_time AS TIMESTAMP)))::BIGINT
                    FROM reply_verdicts v JOIN measurements m USING (measurement_uid)
                    WHERE v.outcome IN {path} GROUP BY ALL""").fetchall():  # fmt: skip
                injected[(hostname, qtype)] = min(
                    int(first), injected.get((hostname, qtype), int(first))
                )
    finally:
        con.close()
    return {uid: FirstReply(Outcome(o), fp, bool(known), bool(match),
                            Attribution(a) if a else None)
            for uid, o, fp, known, match, a in rows}  # fmt: skip


@dataclass(slots=True)
class Bucket:
    """One minute of one stream."""

    minute: int
    key: StreamKey
    first: dict[str, tuple[str, ...]] = field(default_factory=dict)
    verdict: dict[str, FirstReply] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)
    proven: set[str] = field(default_factory=set)
    fingerprints: Counter[str] = field(default_factory=Counter)
    queries: int = 0
    replies: int = 0

    def add(self, m: Measurement, verdict: FirstReply | None) -> None:
        self.queries += 1
        self.names.add(m.hostname)
        self.replies += len(m.responses)
        if m.hostname in self.first or verdict is None:
            return
        replies = [r for r in m.responses if r.failure is None]
        first = addresses(replies[0]) if replies else ()
        if not first:
            return
        self.first[m.hostname] = first
        self.verdict[m.hostname] = verdict
        if verdict.outcome in PROVEN:
            self.proven.add(m.hostname)
            self.fingerprints[verdict.fingerprint or "unknown"] += 1


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


def signals(bucket: Bucket, history: StreamHistory) -> Signals:
    """Compute a bucket's signals; updates ``history`` (call once per bucket, in order)."""
    by_address: Counter[str] = Counter()
    for addrs in bucket.first.values():
        by_address.update(set(addrs))
    answered = len(bucket.first)
    common = by_address.most_common(1)
    top, top_names = common[0] if common else (None, 0)
    judged = tampered = new = 0
    outside = as_judged = 0
    newly: set[str] = set()
    for name, verdict in bucket.verdict.items():
        reading = READING[verdict.outcome]
        if reading not in JUDGED_READINGS:
            continue
        judged += 1
        if reading not in TAMPERED_READINGS:
            continue
        tampered += 1
        if name not in history.tampered_ever:
            new += 1
            newly.add(name)
        if verdict.asn_known:
            as_judged += 1
            outside += int(not verdict.asn_match)
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


_KEYS: dict[tuple[str, str, str, str, str, str], StreamKey] = {}


def stream_key(m: Measurement) -> StreamKey:
    """The stream a measurement belongs to. ``annotations['stream']`` names the resolver
    side when it is not one server: a resolver's upstream answers come from the root, a
    TLD's and the domain's servers in turn, and only together do they have a history
    (``wallwatch passive`` sets it to ``upstream``). The few keys are made once each (a
    minute of a busy resolver asks for hundreds of thousands)."""
    parts = (m.vantage,
             m.annotations.get("stream") or m.resolver_address.rsplit(":", 1)[0].strip("[]"),
             m.engine.value, m.target_kind.value,
             m.hostname.rstrip(".").rsplit(".", 1)[-1].lower(), m.query_type)  # fmt: skip
    key = _KEYS.get(parts)
    if key is None:
        if len(_KEYS) > 1 << 16:
            _KEYS.clear()
        key = _KEYS[parts] = StreamKey(*parts)
    return key


def buckets(
    minute: int, measurements: Iterable[Measurement], verdicts: dict[str, FirstReply]
) -> dict[StreamKey, Bucket]:
    """One round's measurements as buckets, each name with the analysis's verdict."""
    out: dict[StreamKey, Bucket] = {}
    for m in measurements:
        if m.target_kind == TargetKind.CONTROL:
            continue
        key = stream_key(m)
        bucket = out.get(key)
        if bucket is None:
            bucket = out[key] = Bucket(minute, key)
        bucket.add(m, verdicts.get(m.measurement_uid))
    return out
