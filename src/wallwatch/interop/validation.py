"""wallwatch's verdicts beside the sources' own, on every real third-party file: a regression test.

``python -m wallwatch.interop.validation SHARED_DATA OUT.md [BASELINE.json]`` reads every
OONI file, Satellite scan and packet capture listed in ``SHARED_DATA/INDEX.csv``, turns
each into wallwatch records, judges them with the same analysis as wallwatch's own
probes (in memory, through the Python API), and writes a Markdown table: the source's
verdict, the reference label, wallwatch's attribution, the reply verdicts behind it, and
why the two differ where they do; then precision and recall per class. The rows are
data (:class:`Row`), so ``tests/test_validation.py`` fails when a row gets worse than
the recorded baseline.

A row whose tampered verdict rests only on list membership (a forged pool, an
NXDOMAIN-redirect list, a platform's AS) is marked: such a list proves only that the
address was seen before, and judging a list-derived label by the same list is circular.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from wallwatch.analysis.attribution import TAMPERED
from wallwatch.interop import ooni, satellite
from wallwatch.records import Measurement
from wallwatch.vocab import Attribution, Outcome, Reading, outcomes

NO_QUERIES = "no DNS queries"
_ORDER = [Attribution.ON_PATH_INJECTOR, Attribution.TAMPERING_RESOLVER,
          Attribution.ISP_NXDOMAIN_REWRITE, Attribution.HIJACKED_AUTHORITATIVE,
          Attribution.UNKNOWN, Attribution.NONE]  # fmt: skip
#: Rules that only say "this address is on a list".
LIST_RULES = frozenset({"forged_pool", "nxdomain_redirect_address", "unrelated_platform"})


@dataclass(frozen=True, slots=True)
class Judged:
    attribution: str
    verdicts: str
    #: Every rule behind a non-genuine verdict is a list-membership rule.
    on_list: bool


def judge(path: Path) -> tuple[str, str]:
    """(wallwatch's attribution for the file's name, the reply verdicts behind it)."""
    found = judge_measurements(ooni.read(path))
    return found.attribution, found.verdicts


def judge_measurements(measurements: Iterable[Measurement]) -> Judged:
    """Analyse measurements in memory; the worst attribution, its verdicts, and whether it
    rests on a list only."""
    from wallwatch import _api

    records = list(measurements)
    if not records:
        return Judged(NO_QUERIES, "", False)
    genuine = "(" + ", ".join(f"'{o.value}'" for o in outcomes(Reading.GENUINE)) + ")"
    with _api.analyze(records) as result:
        # OONI's dns_consistency is about the input's name, the one the control resolved;
        # names met while following redirects have no control and are not judged by it.
        judged = ("(hostname IN (SELECT hostname FROM measurements WHERE target_kind = 'control') "
                  "OR NOT EXISTS (SELECT 1 FROM measurements WHERE target_kind = 'control'))")  # fmt: skip
        rows = result.con.execute(f"SELECT attribution FROM attributions WHERE {judged}").fetchall()
        bad = result.con.execute(
            "SELECT outcome || ' (' || query_type || ' via ' || resolver_address || ')', rule_id "
            f"FROM reply_verdicts WHERE outcome NOT IN {genuine} AND {judged} ORDER BY 1"
        ).fetchall()
    attributions = sorted({Attribution(r[0]) for r in rows}, key=_ORDER.index)
    worst = attributions[0] if attributions else Attribution.NONE
    tampering = [rule for text, rule in bad if not text.startswith((Outcome.DNS_TIMEOUT.value,
                                                                    Outcome.UNKNOWN.value))]  # fmt: skip
    on_list = worst in TAMPERED and bool(tampering) and set(tampering) <= LIST_RULES
    return Judged(worst.value, "; ".join(text for text, _ in bad), on_list)


def polarity(source_verdict: str, reference: str) -> str | None:
    """``tampered``, ``clean`` or None: what the source (or its reference label) says of DNS."""
    ref = reference.upper()
    if ref.startswith("POSITIVE"):
        return "tampered"
    if ref.startswith("NEGATIVE"):
        return "clean"
    verdict = source_verdict.lower()
    if "inconsistent" in verdict or "blocking=dns" in verdict:
        return "tampered"
    if "consistent" in verdict:
        return "clean"
    return None


def ours(attribution: str) -> str | None:
    """wallwatch's verdict as a class: ``tampered``, ``clean``, or None (no claim)."""
    if attribution in {a.value for a in TAMPERED}:
        return "tampered"
    if attribution in (Attribution.NONE.value, NO_QUERIES):
        return "clean"
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One case: a file, a Satellite answer or a capture."""

    section: str
    case: str
    source_verdict: str
    reference: str
    #: What the truth is taken to be: ``tampered``, ``clean``, or None (no ground truth).
    expected: str | None
    attribution: str
    verdicts: str
    on_list: bool
    why: str = ""

    @property
    def got(self) -> str | None:
        return ours(self.attribution)

    @property
    def agrees(self) -> bool:
        return self.got == self.expected


#: Why wallwatch's verdict differs from the source's, per case; every disagreement has one.
REASONS = {
    "manual_firefoxcom_measurement.json": "CNAME-only and AAAA answers with no IPv6 in the control: nothing to compare, so `unknown`, "
    "not `none`",
    "controlFailureWithSuccessfulHTTPSWebsite.measurement.json": "no control (the test helper failed): OONI leaves dns_consistency null, wallwatch says "
    "`unknown`; the same answer",
    "controlFailureWithSuccessfulHTTPWebsite.measurement.json": "no control (the test helper failed): the same answer as OONI's null",
    "dnsBlockingAndroidDNSCacheNoData.measurement.json": "the system resolver failed with no data (Android's EAI_NODATA): OONI infers DNS blocking "
    "from that failure pattern; wallwatch has no reply to judge and says `unknown`",
    "redirectWithConsistentDNSAndThenNXDOMAIN.measurement.json": "the input's own name resolved consistently; the NXDOMAIN is the redirect target's, which "
    "has no control: OONI reports blocking=dns for the redirect, wallwatch judges the input's name",
    "dns_victim_client_anon.pcap": "the firewall *dropped* these queries (QUIC-SNI residual blocking): no reply, no "
    "injection to prove; 44 timeouts, `unknown` (a drop is not DNS tampering)",
    "dns_server_anon.pcap": "the server side of the same drop: the queries that arrived are there, no replies were "
    "captured; a server-side capture alone cannot show tampering, so `unknown`",
    "dns_attacker_client_anon.pcap": "the two packets to port 53 are QUIC Initials, not DNS: nothing to import",
    "satellite-timeout": "Satellite flags a resolver that timed out or failed as an anomaly; wallwatch has no "
    "address to judge and says `unknown`",
}


def ooni_rows(shared: Path) -> list[Row]:
    rows = []
    for entry in _index(shared):
        if not entry["path"].startswith("ooni/") or not entry["path"].endswith(".json"):
            continue
        try:
            found = judge_measurements(ooni.read(shared / entry["path"]))
        except (ValueError, KeyError) as exc:
            found = Judged("not read", str(exc), False)
        name = Path(entry["path"]).name
        expected = polarity(entry["source_verdict"], entry["reference_label"])
        rows.append(Row("OONI", name, entry["source_verdict"], entry["reference_label"], expected,
                        found.attribution, found.verdicts, found.on_list, REASONS.get(name, "")))  # fmt: skip
    return rows


def _satellite(folder: Path, section: str, tampered: Callable[[Measurement], bool | None],
               says: Callable[[Measurement], str]) -> list[Row]:  # fmt: skip
    """One row per resolver answer of a scan: Censored Planet's verdict beside wallwatch's."""
    if not folder.exists():
        return []
    measurements = list(satellite.read(folder))
    controls = [m for m in measurements if m.target_kind == "control"]
    rows = []
    for m in measurements:
        if m.target_kind == "control":
            continue
        found = judge_measurements([m, *[c for c in controls if c.hostname == m.hostname]])
        flag = tampered(m)
        expected = None if flag is None else ("tampered" if flag else "clean")
        why = REASONS["satellite-timeout"] if not m.responses or m.failure else ""
        rows.append(Row(section, f"{m.resolver_address} {m.hostname}", says(m), "Satellite's own",
                        expected, found.attribution, found.verdicts, found.on_list, why))  # fmt: skip
    return rows


def satellite_rows(shared: Path) -> list[Row]:
    base = shared / "censoredplanet" / "e2e_test_data"

    def v2(m: Measurement) -> bool | None:
        # Satellite sets anomaly for a failed or silent resolver too: that is no DNS verdict.
        if not m.responses or m.failure:
            return None
        return m.annotations["anomaly"] == "True"

    return _satellite(
        base / "Satellitev2_2021-04-25", "Censored Planet Satellite v2.1 (2021-04-25)", v2,
        lambda m: f"anomaly={m.annotations['anomaly']} (confidence {m.annotations['confidence']})",
    ) + _satellite(
        base / "Satellitev1_2018-08-03", "Censored Planet Satellite v1 (2018-08-03)",
        lambda m: m.annotations["passed"] != "True",
        lambda m: f"passed={m.annotations['passed']} (matched tags {m.annotations['matched']})",
    )  # fmt: skip


def pcap_rows(shared: Path) -> list[Row]:
    """The packet captures in the shared data, judged from their packets."""
    from wallwatch.interop import pcap

    rows = []
    for entry in _index(shared):
        if not entry["path"].endswith(".pcap"):
            continue
        found = [r for r in pcap.read_records(shared / entry["path"]) if isinstance(r, Measurement)]
        judged = judge_measurements(found)
        replies = sum(len(m.responses) for m in found)
        name = Path(entry["path"]).name
        # These captures show a drop (no injection): the truth is "no DNS tampering".
        rows.append(Row("Packet captures", name, f"{len(found)} queries, {replies} replies",
                        entry["reference_label"], None, judged.attribution, judged.verdicts,
                        judged.on_list, REASONS.get(name, "")))  # fmt: skip
    return rows


def _index(shared: Path) -> list[dict[str, str]]:
    with open(shared / "INDEX.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def all_rows(shared: Path) -> list[Row]:
    return ooni_rows(shared) + satellite_rows(shared) + pcap_rows(shared)


def scores(rows: Iterable[Row]) -> dict[str, dict[str, float | int]]:
    """Precision and recall per class over the rows with a ground truth; ``unknown`` is no
    claim (it lowers recall, never precision)."""
    out: dict[str, dict[str, float | int]] = {}
    judged = [r for r in rows if r.expected is not None]
    for cls in ("tampered", "clean"):
        tp = sum(1 for r in judged if r.expected == cls and r.got == cls)
        fp = sum(1 for r in judged if r.expected != cls and r.got == cls)
        fn = sum(1 for r in judged if r.expected == cls and r.got != cls)
        out[cls] = {
            "cases": tp + fn, "tp": tp, "fp": fp, "fn": fn,
            "precision": round(tp / (tp + fp), 3) if tp + fp else 1.0,
            "recall": round(tp / (tp + fn), 3) if tp + fn else 1.0,
        }  # fmt: skip
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ") or "-"


def markdown(rows: list[Row]) -> str:
    lines = [
        "# Validation: wallwatch beside the sources' own verdicts",
        "",
        "Generated by `scripts/validation` from every OONI file, Censored Planet Satellite scan",
        "and packet capture of the shared third-party data set (provenance, commits and licences",
        "in `docs/sources.md`). Each is read into wallwatch records and judged by the same",
        "analysis as wallwatch's own probes, with the bundled IP-to-AS table and no option. OONI",
        "and Satellite keep answers, not packets: only the control comparison, origin ASes, the",
        "sources' own TLS and tag checks, the lists and the bogon check can fire; the race,",
        "dark-host and fingerprint evidence needs wallwatch's own capture. `tests/test_validation.py`",
        "fails when a row gets worse than `tests/data/validation-baseline.json`.",
        "",
        "**On a list** marks a tampered verdict that rests only on list membership (a forged",
        "pool, an NXDOMAIN-redirect list, a platform's AS): circular for a label taken from",
        "the same list.",
    ]
    section = None
    for row in rows:
        if row.section != section:
            section = row.section
            lines += ["", f"## {section}", "",
                      "| case | source's verdict | reference | wallwatch | on a list | reply verdicts (not genuine) | agrees | why they differ |",
                      "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        agrees = "yes" if row.agrees else ("no truth" if row.expected is None else "**no**")
        lines.append(
            f"| `{_cell(row.case)}` | {_cell(row.source_verdict)} | {_cell(row.reference)} "
            f"| **{row.attribution}** | {'yes' if row.on_list else ''} | {_cell(row.verdicts)} "
            f"| {agrees} | {_cell(row.why) if not row.agrees or row.why else ''} |"
        )
    lines += ["", "## Precision and recall", "",
              "Over the rows with a ground truth (the reference label, else the source's own",
              "verdict); `unknown` is no claim: it lowers recall, never precision.", "",
              "| class | cases | true positives | false positives | false negatives | precision | recall |",
              "|---|---|---|---|---|---|---|"]  # fmt: skip
    for cls, s in scores(rows).items():
        lines.append(f"| {cls} | {s['cases']} | {s['tp']} | {s['fp']} | {s['fn']} "
                     f"| {s['precision']} | {s['recall']} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def baseline(rows: list[Row]) -> dict[str, object]:
    """What the regression test compares against: each row's verdict, and the scores."""
    return {"rows": {f"{r.section}|{r.case}": asdict(r) for r in rows}, "scores": scores(rows)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    shared, output = Path(args[0]), Path(args[1])
    rows = all_rows(shared)
    output.write_text(markdown(rows))
    if len(args) > 2:
        Path(args[2]).write_text(json.dumps(baseline(rows), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
