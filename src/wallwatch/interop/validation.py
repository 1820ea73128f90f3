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
from collections.abc import Callable, Iterable
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
        # OONI's dns_consistency is about the input's name, the one the control resolved;
        # names met while following redirects have no control and are not judged by it.
        judged = ("hostname IN (SELECT hostname FROM measurements WHERE target_kind = 'control') "
                  "OR NOT EXISTS (SELECT 1 FROM measurements WHERE target_kind = 'control')")  # fmt: skip
        rows = store.query(db, f"SELECT attribution FROM attributions WHERE {judged}")
        verdicts = store.query(
            db, "SELECT outcome || ' (' || query_type || ' via ' || resolver_address || ')' "
                f"FROM reply_verdicts WHERE outcome NOT LIKE 'ok.%' AND ({judged}) ORDER BY 1",
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
    "- **Envelopes**: the OONI API's envelope (`measurement_meta_*`, the measurement as a JSON",
    "  string in `body` or `raw_measurement`) is opened and judged like any measurement.",
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


_TAMPERED = {
    "on_path_injector",
    "tampering_resolver",
    "isp_nxdomain_rewrite",
    "hijacked_authoritative",
}


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


def agreement(source: str | None, attribution: str) -> str:
    if source is None:
        return "agree" if attribution in ("unknown", "no DNS queries") else ""
    ours = (
        "tampered"
        if attribution in _TAMPERED
        else "clean"
        if attribution in ("none", "no DNS queries")
        else None
    )
    return "agree" if ours == source else ""


#: Why wallwatch's verdict differs from the source's, per case (file or case name).
REASONS = {
    "yaml17_0_dns_consistency_legacy.json": "a CDN: the local resolver's Google address differs from the control resolver's; OONI's "
    "legacy test flagged it `inconsistent` too, the reference label (PTR match) says benign; "
    "with `--mmdb` the origin-AS rule calls it `ok.match_asn`",
    "manual_firefoxcom_measurement.json": "CNAME-only and AAAA answers with no IPv6 in the control: nothing to compare, so `unknown`, "
    "not `none`",
    "controlFailureWithSuccessfulHTTPSWebsite.measurement.json": "no control (the test helper failed): OONI leaves dns_consistency null, wallwatch says "
    "`unknown`; the same answer",
    "controlFailureWithSuccessfulHTTPWebsite.measurement.json": "no control (the test helper failed): the same answer as OONI's null",
    "dnsBlockingAndroidDNSCacheNoData.measurement.json": "the system resolver failed with no data (Android's EAI_NODATA): OONI infers DNS blocking "
    "from that failure pattern; wallwatch has no reply to judge and says `unknown`",
    "redirectWithConsistentDNSAndThenNXDOMAIN.measurement.json": "the input's own name resolved consistently; the NXDOMAIN is the redirect target's, which "
    "has no control: OONI reports blocking=dns for the redirect, wallwatch judges the input's name",
    "dns_victim_client_anon.pcap": "no difference in substance: the firewall *dropped* these queries (QUIC-SNI residual "
    "blocking), so there is no reply and no injection to prove; 44 timeouts, `unknown`",
    "dns_server_anon.pcap": "the server side of the same drop: the queries that arrived are there, no replies were "
    "captured; a server-side capture alone cannot show tampering, so `unknown`",
    "dns_attacker_client_anon.pcap": "the two packets to port 53 are QUIC Initials, not DNS: nothing to import",
    "satellite-timeout": "Satellite flags a resolver that timed out or failed as an anomaly; wallwatch has no "
    "address to judge and says `unknown`",
    "satellite-cdn": "the answers match the control by AS and certificate only (another edge of a CDN); "
    "wallwatch matches by AS only with an MMDB snapshot (`--mmdb`), and without one calls "
    "them tampering",
}


def _why_satellite(attribution: str, source_tampered: bool) -> str:
    if attribution == "unknown":
        return REASONS["satellite-timeout"] if source_tampered else "agree"
    if (attribution in _TAMPERED) == source_tampered:
        return "agree"
    return "UNEXPLAINED" if source_tampered else REASONS["satellite-cdn"]


def _satellite_table(folder: Path, title: str, column: str, tampered: Callable[[Measurement], bool],
                     says: Callable[[Measurement], str]) -> list[str]:  # fmt: skip
    """One row per resolver answer of a scan: Censored Planet's verdict beside wallwatch's."""
    if not folder.exists():
        return []
    rows = ["", f"## {title}", "",
            f"| resolver | domain | {column} | wallwatch | non-ok reply verdicts | why they differ |",
            "|---|---|---|---|---|---|"]  # fmt: skip
    measurements = list(satellite.read(folder))
    controls = [m for m in measurements if m.target_kind == "control"]
    for m in measurements:
        if m.target_kind == "control":
            continue
        attribution, verdicts = judge_measurements(
            [m, *[c for c in controls if c.hostname == m.hostname]]
        )
        why = _why_satellite(attribution, tampered(m))
        rows.append(f"| {m.resolver_address} | {m.hostname} | {says(m)} | **{attribution}** "
                    f"| {verdicts or '-'} | {why} |")  # fmt: skip
    return rows


def satellite_rows(shared: Path) -> list[str]:
    """Satellite v2 (2021-04-25): the ``anomaly`` flag beside wallwatch."""
    return _satellite_table(
        shared / "censoredplanet" / "e2e_test_data" / "Satellitev2_2021-04-25",
        "Censored Planet Satellite v2 (2021-04-25)",
        "Satellite anomaly (confidence)",
        lambda m: m.annotations["anomaly"] == "True",
        lambda m: f"{m.annotations['anomaly']} ({m.annotations['confidence']})",
    )


def satellite_v1_rows(shared: Path) -> list[str]:
    """Satellite v1 (2018-08-03): ``passed`` and the matched tags beside wallwatch."""
    return _satellite_table(
        shared / "censoredplanet" / "e2e_test_data" / "Satellitev1_2018-08-03",
        "Censored Planet Satellite v1 (2018-08-03)",
        "Satellite passed (matched tags)",
        lambda m: m.annotations["passed"] != "True",
        lambda m: f"{m.annotations['passed']} ({m.annotations['matched']})",
    )


def pcap_rows(shared: Path) -> list[str]:
    """The packet captures in the shared data, judged from their packets."""
    from wallwatch.interop import pcap

    rows = ["", "## Packet captures", "",
            "| capture | source's finding | wallwatch | measurements (replies) | why they differ |",
            "|---|---|---|---|---|"]  # fmt: skip
    with open(shared / "INDEX.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["path"].endswith(".pcap"):
                continue
            found = [
                r for r in pcap.read_records(shared / row["path"]) if isinstance(r, Measurement)
            ]
            replies = sum(len(m.responses) for m in found)
            attribution, _ = judge_measurements(found) if found else ("no DNS queries", "")
            name = Path(row["path"]).name
            source = row["reference_label"]
            why = REASONS.get(
                name, "agree" if attribution in ("no DNS queries", "unknown") else "UNEXPLAINED"
            )
            rows.append(
                f"| `{name}` | {source} | **{attribution}** | {len(found)} ({replies}) | {why} |"
            )
    return rows


def main() -> None:
    shared, output = Path(sys.argv[1]), Path(sys.argv[2])
    lines = [
        "# Validation against OONI's and Censored Planet's verdicts",
        "",
        "Generated by `scripts/validation` from the OONI files in `../shared/data` (provenance and",
        "licences in its `INDEX.csv`). Each file is read into wallwatch records (queries as",
        "measurements of the probe's resolver, the test helper's answer as the control) and judged",
        "by the same analysis as wallwatch's own probes. OONI keeps answers, not packets, so only the",
        "control comparison, the forged pools, the NXDOMAIN-redirect list and the bogon check can",
        "fire; the race, dark-host and fingerprint evidence needs wallwatch's own capture.",
        "",
        "| file | OONI's verdict | reference label | wallwatch | non-ok reply verdicts | why they differ |",
        "|---|---|---|---|---|---|",
    ]
    with open(shared / "INDEX.csv", newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if not row["path"].startswith("ooni/") or not row["path"].endswith(".json"):
                continue
            try:
                attribution, verdicts = judge(shared / row["path"])
            except (ValueError, KeyError) as exc:
                attribution, verdicts = "not read", str(exc)
            name = Path(row["path"]).name
            why = agreement(polarity(row["source_verdict"], row["reference_label"]), attribution)
            why = why or REASONS.get(name, "UNEXPLAINED")
            lines.append(
                f"| `{name}` | {row['source_verdict']} | {row['reference_label']} "
                f"| **{attribution}** | {verdicts or '-'} | {why} |"
            )
    lines += satellite_rows(shared)
    lines += satellite_v1_rows(shared)
    lines += pcap_rows(shared)
    lines += NOTES
    output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
