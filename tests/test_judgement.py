"""One judgement: the vocabularies are closed and total, and the watch agrees with the analysis.

The minute signals are built from the analysis's own verdicts (events.minute.judge_round);
the property test checks, over random mixes of replies, that what the detector counts as
tampered and proven is exactly what ``wallwatch analyze`` says of the same first replies.
"""

from __future__ import annotations

import re
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import wallwatch as ww
from wallwatch.analysis.rules import RULES
from wallwatch.events.minute import (
    TAMPERED_READINGS,
    StreamHistory,
    buckets,
    judge_round,
    signals,
    stream_key,
)
from wallwatch.explain import WORDS
from wallwatch.records import SCHEMA_VERSION, Answer, Measurement, Response
from wallwatch.vocab import PROVEN, READING, Attribution, Engine, Outcome, TargetKind

DOCS = Path(__file__).parents[1] / "docs"
#: Outcomes no rule assigns: the fallback, and the baseline comparison of attribution.
NOT_FROM_RULES = {Outcome.UNKNOWN, Outcome.AUTHORITATIVE_CHANGED}


def test_every_outcome_has_a_reading_a_rule_and_a_description() -> None:
    outcomes_doc = (DOCS / "outcomes.md").read_text()
    assert set(READING) == set(Outcome), "an Outcome without a Reading"
    ruled = {r.outcome for r in RULES}
    assert ruled | NOT_FROM_RULES == set(Outcome), set(Outcome) - ruled - NOT_FROM_RULES
    for outcome in Outcome:
        assert f"`{outcome.value}`" in outcomes_doc, f"{outcome.value} is not in docs/outcomes.md"


def test_every_attribution_has_words_and_a_description() -> None:
    outcomes_doc = (DOCS / "outcomes.md").read_text()
    assert set(WORDS) == set(Attribution)
    for attribution in Attribution:
        assert f"`{attribution.value}`" in outcomes_doc


def test_outcome_strings_are_never_spelled_by_hand() -> None:
    """Outside vocab.py, an outcome or attribution value appears in code only through the enums."""
    src = Path(ww.__file__).parent
    values = [o.value for o in Outcome if "." in o.value] + [
        a.value for a in Attribution if "_" in a.value
    ]
    pattern = re.compile("|".join(re.escape(f"'{v}'") + "|" + re.escape(f'"{v}"') for v in values))
    offenders = []
    for path in src.rglob("*.py"):
        if path.name == "vocab.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if pattern.search(line):
                offenders.append(f"{path.relative_to(src)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# -- the watch and the analysis give the same verdict -------------------------------

GENUINE = ["93.184.215.14", "142.250.72.4"]
FORGED = ["65.49.2.178", "31.13.92.35", "10.10.34.36", "203.0.113.77"]
NAMES = [f"n{i}.example.com" for i in range(8)]


def _reply(addresses: list[str], index: int, rcode: int = 0) -> Response:
    answers = tuple(Answer("A", 60, "", a) for a in addresses)
    return Response(t=0.01 * (index + 1), rtt=0.01 * (index + 1), src="192.0.2.53", sport=53,
                    ip_ttl=50 + index, raw_response="", rcode=rcode, ancount=len(answers),
                    answers=answers, attempt=0)  # fmt: skip


@st.composite
def rounds(draw: st.DrawFn) -> list[Measurement]:
    out: list[Measurement] = []
    uid = 0
    for name in draw(st.lists(st.sampled_from(NAMES), min_size=5, max_size=12, unique=True)):
        truth = draw(st.sampled_from(GENUINE))
        if draw(st.booleans()):  # a control for this name
            uid += 1
            out.append(_m(uid, name, TargetKind.CONTROL, [_reply([truth], 0)], Engine.TCP))
        for kind in draw(st.lists(st.sampled_from([TargetKind.RESOLVER, TargetKind.DARK]),
                                  min_size=1, max_size=3)):  # fmt: skip
            plan = draw(st.lists(st.sampled_from(["forged", "genuine"]), max_size=3))
            replies = [_reply([draw(st.sampled_from(FORGED))] if p == "forged" else [truth], i)
                       for i, p in enumerate(plan)]  # fmt: skip
            uid += 1
            out.append(_m(uid, name, kind, replies, Engine.UDP))
    return out


def _m(
    uid: int, name: str, kind: TargetKind, replies: list[Response], engine: Engine
) -> Measurement:
    resolver = {"resolver": "192.0.2.53:53", "dark": "192.0.2.7:53"}.get(kind.value, "192.0.2.9:53")
    return Measurement(
        schema_version=SCHEMA_VERSION, measurement_uid=f"m{uid:04d}", report_id="r",
        measurement_start_time="2014-01-21 07:15:00", vantage="v", hostname=name,
        query_type="A", engine=engine, resolver_address=resolver, target_kind=kind,
        transaction_id=uid, source_port=40000, t0=0.0, t=0.5, responses=tuple(replies),
    )  # fmt: skip


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds())
def test_the_watch_counts_exactly_what_the_analysis_judged(ms: list[Measurement]) -> None:
    verdicts = judge_round(ms)
    by_key = buckets(0, ms, verdicts)
    with ww.analyze(ms) as result:
        first = {}
        for v in result.verdict_rows():
            if v.response_index is not None and v.measurement_uid not in first:
                first[v.measurement_uid] = v
    expect_tampered: dict[object, set[str]] = {}
    expect_proven: dict[object, set[str]] = {}
    seen: set[tuple[object, str]] = set()
    for m in ms:
        if m.target_kind == TargetKind.CONTROL or not m.responses:
            continue
        key = stream_key(m)
        if (key, m.hostname) in seen:
            continue
        seen.add((key, m.hostname))
        verdict = first[m.measurement_uid]
        if READING[verdict.outcome] in TAMPERED_READINGS:
            expect_tampered.setdefault(key, set()).add(m.hostname)
        if verdict.outcome in PROVEN:
            expect_proven.setdefault(key, set()).add(m.hostname)
    for key, bucket in by_key.items():
        s = signals(bucket, StreamHistory())
        assert s.tampered == len(expect_tampered.get(key, set())), key
        assert bucket.proven == expect_proven.get(key, set()), key
        assert sum(s.fingerprints.values()) == len(bucket.proven)


def test_every_rule_is_documented_with_its_verdict() -> None:
    rows = [
        line for line in (DOCS / "outcomes.md").read_text().splitlines() if line.startswith("| `")
    ]
    for rule in RULES:
        row = next((r for r in rows if r.startswith(f"| `{rule.rule_id}` |")), None)
        assert row is not None, f"rule {rule.rule_id} is not in docs/outcomes.md"
        assert f"`{rule.outcome.value}`" in row and f"| {rule.evidence.value} |" in row, row


def test_every_cited_source_key_is_in_the_bibliography() -> None:
    """Code, docs and the report cite ``[key]``s that docs/sources.md defines."""
    defined = set(re.findall(r"^\| `\[([a-z0-9-]+)\]` \|", (DOCS / "sources.md").read_text(), re.M))
    root = Path(__file__).parents[1]
    files = [*(root / "src").rglob("*.py"), *(root / "src").rglob("*.toml"), *(root / "docs").glob("*.md"),
             root / "README.md"]  # fmt: skip
    cited: dict[str, str] = {}
    for path in files:
        for key in re.findall(r"\[([a-z]+(?:-[a-z0-9]+)*-(?:\d{4}|docs|analysis|data|backend|probe-cli|"
                              r"fingerprints|ts\d{3}|df\d{3}|list|db|dnsproxy))\]", path.read_text()):  # fmt: skip
            cited.setdefault(key, str(path))
    missing = {k: v for k, v in cited.items() if k not in defined}
    assert not missing, missing
    assert {"greatfire-2014", "holdon-2012", "triplet-2021", "ip-location-db"} <= set(cited)
