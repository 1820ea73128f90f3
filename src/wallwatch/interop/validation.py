"""Judge the shared OONI files with wallwatch's analysis and tabulate both verdicts.

``python -m wallwatch.interop.validation SHARED_DATA OUT.md`` reads every OONI file
listed in ``SHARED_DATA/INDEX.csv``, turns it into wallwatch records
(:mod:`.ooni`), runs the same analysis as for wallwatch's own probes, and writes a
Markdown table: the source's verdict, the reference label, wallwatch's attribution and
the verdicts behind it.
"""

from __future__ import annotations

import csv
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from wallwatch import store
from wallwatch.analysis.run import analyze
from wallwatch.interop import ooni, satellite
from wallwatch.journal import Journal
from wallwatch.records import Measurement

_ORDER = ["on_path_injector", "tampering_resolver", "isp_nxdomain_rewrite", "hijacked_authoritative",
          "unknown", "none"]  # fmt: skip


def judge(path: Path) -> tuple[str, str]:
    """(wallwatch's attribution for the file's name, the reply verdicts behind it)."""
    return judge_measurements(ooni.read(path))


def judge_measurements(measurements: Iterable[Measurement]) -> tuple[str, str]:
    """Analyse measurements in a scratch store; return the worst attribution and the verdicts."""
    with tempfile.TemporaryDirectory(prefix="ww-validate-") as tmp:
        out = Path(tmp) / "m.jsonl"
        journal = Journal.open(out)
        count = 0
        for measurement in measurements:
            journal.write(measurement)
            count += 1
        journal.close()
        if not count:
            return "no DNS queries", ""
        db = Path(tmp) / "ww.duckdb"
        store.ingest([out], db)
        analyze(db)
        rows = store.query(db, "SELECT attribution FROM attributions")
        verdicts = store.query(
            db, "SELECT outcome || ' (' || query_type || ' via ' || resolver_address || ')' "
                "FROM reply_verdicts WHERE outcome NOT LIKE 'ok.%' ORDER BY 1",
        )  # fmt: skip
    attributions = sorted({r[0] for r in rows}, key=_ORDER.index)
    return (attributions[0] if attributions else "none"), "; ".join(v[0] for v in verdicts)


NOTES = [
    "",
    "## Why the verdicts differ where they do",
    "",
    "- **Iran, 10.10.34.36** (`web_connectivity_ir_fp`): OONI confirms blocking by a curated",
    "  fingerprint of Iran's blockpage address; wallwatch, which has no such list, calls the",
    "  answer a bogon the control disowns and attributes it to the resolver path. From answers",
    "  alone (no packets, no dark host, no second reply) it cannot tell an on-path injector from",
    "  a lying resolver, and says `tampering_resolver` rather than claim more.",
    "- **`unknown` where OONI says consistent**: the replies in question carry no address",
    "  wallwatch can compare (CNAME-only answers, or AAAA answers the control has no IPv6 for).",
    "  wallwatch does not call those genuine without evidence; OONI's consistency is per lookup",
    "  set and ASN-aware.",
    "- **No control** (`controlFailure*`, the legacy `dns_consistency` format): OONI leaves",
    "  `dns_consistency` null; wallwatch says `unknown`. The same answer.",
    "- **Not read**: the OONI API's envelope (`measurement_meta_*`, body as a JSON string) is",
    "  the importer's job; this minimal reader refuses it with the reason.",
    "- **Satellite**: its `anomaly` flag (deprecated by Censored Planet because users misread",
    "  it) is set for a timeout (SERVFAIL after two timeouts) and for an answer that matched the",
    "  control on nothing; wallwatch calls the timeout `unknown` (nothing to judge) and the",
    "  answer whose address is the resolver's own (`109.235.61.172` for custhelp.com) a",
    "  tampering resolver. Where Satellite's tags matched the control by AS only, wallwatch",
    "  needs `--mmdb` to agree.",
    "- **DNS blocking by NXDOMAIN, bogons, or redirects in the QA corpus**: wallwatch calls",
    "  them tampering (`tampering_resolver` or `isp_nxdomain_rewrite`), as OONI calls them",
    "  `blocking=dns`; the attribution is never `on_path_injector`, because answers without",
    "  packets carry no evidence of the path.",
]


def satellite_rows(shared: Path) -> list[str]:
    """One row per Satellite v2 result: Censored Planet's anomaly flag beside wallwatch."""
    folder = shared / "censoredplanet" / "e2e_test_data" / "Satellitev2_2021-04-25"
    if not folder.exists():
        return []
    rows = ["", "## Censored Planet Satellite v2 (2021-04-25)", "",
            "| resolver | domain | Satellite anomaly (confidence) | wallwatch | non-ok reply verdicts |",
            "|---|---|---|---|---|"]  # fmt: skip
    measurements = list(satellite.read(folder))
    controls = [m for m in measurements if m.target_kind == "control"]
    for m in measurements:
        if m.target_kind == "control":
            continue
        attribution, verdicts = judge_measurements(
            [m, *[c for c in controls if c.hostname == m.hostname]]
        )
        rows.append(f"| {m.resolver_address} | {m.hostname} | {m.annotations['anomaly']} "
                    f"({m.annotations['confidence']}) | **{attribution}** | {verdicts or '-'} |")  # fmt: skip
    return rows


def main() -> None:
    shared, output = Path(sys.argv[1]), Path(sys.argv[2])
    lines = [
        "# Validation against OONI's verdicts",
        "",
        "Generated by `scripts/validation` from the OONI files in `../shared/data` (provenance and",
        "licences in its `INDEX.csv`). Each file is read into wallwatch records (queries as",
        "measurements of the probe's resolver, the test helper's answer as the control) and judged",
        "by the same analysis as wallwatch's own probes. OONI keeps answers, not packets, so only the",
        "control comparison, the forged pools, the NXDOMAIN-redirect list and the bogon check can",
        "fire; the race, dark-host and fingerprint evidence needs wallwatch's own capture.",
        "",
        "| file | OONI's verdict | reference label | wallwatch | non-ok reply verdicts |",
        "|---|---|---|---|---|",
    ]
    with open(shared / "INDEX.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["path"].startswith("ooni/") or not row["path"].endswith(".json"):
                continue
            try:
                attribution, verdicts = judge(shared / row["path"])
            except (ValueError, KeyError) as exc:
                attribution, verdicts = "not read", str(exc)
            lines.append(
                f"| `{Path(row['path']).name}` | {row['source_verdict']} | {row['reference_label']} "
                f"| **{attribution}** | {verdicts or '-'} |"
            )
    lines += satellite_rows(shared)
    lines += NOTES
    output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
