"""The evidence behind each event, as data: the JSON twin of the HTML report.

Why a checklist: "did the firewall do it?" was settled in 2014 by a short argument
anyone could re-run ([greatfire-2014]). The report makes each step of that
argument a claim with the measurements behind it, so a journalist reads the claims
and a researcher re-derives them from the store, the pcap and the dig output:

1. ``inside_lie_outside_truth``: a public resolver asked from one vantage answers with
   the target over UDP (and the genuine answer arrives after it), while the same
   resolver asked from another vantage does not -- the forgery was made in transit;
2. ``dark_destination``: a host that runs no DNS server "answers" with the target;
3. ``too_fast``: the forged replies arrive faster than half the genuine ones on the same
   path (Hold-On; the 27 ms ``dig +trace`` of 2014);
4. ``injector_fingerprint``: the injector-made replies fit a published injector profile;
5. ``one_address_or_known_pool``: the target is in a published forged pool, or one
   address answers many unrelated names;
6. ``selective_scope``: some names (a TLD) stay untouched meanwhile, which no failure of
   the root or of a resolver would explain.

Everything reads the store after :func:`wallwatch.analysis.run.analyze` has run and
the watch's ``events.json``; what is absent is listed under ``missing`` rather than
guessed.
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wallwatch import flood, store
from wallwatch.analysis import pools
from wallwatch.journal import json_lines, read_records
from wallwatch.records import Measurement
from wallwatch.render import dig
from wallwatch.store import sql_literal
from wallwatch.vocab import READING, Outcome, Reading, TargetKind

#: Measurements of the target put in the pcap, at most.
PCAP_LIMIT = 400


def measurement_files(out: Path) -> list[Path]:
    """A watch's round files, a collector's minute log, or a plain probe output."""
    files = (
        sorted((out / "measurements").glob("*.jsonl")) if (out / "measurements").is_dir() else []
    )
    if (out / "minutes").is_dir():  # a collector (wallwatch serve --data)
        files += sorted((out / "minutes").glob("m*.jsonl"))
    single = out / "measurements.jsonl"  # a plain probe output, without a watch
    return files + ([single] if single.exists() else [])


def judge_dir(out: Path) -> Path:
    """Where the detector's files are: the watch directory, or a collector's ``judge/``."""
    return out / "judge" if (out / "judge" / "events.json").exists() else out


def _minute(iso: str | None) -> int | None:
    return None if iso is None else int(datetime.fromisoformat(iso).timestamp() // 60)


def _window(event: dict[str, Any]) -> str:
    """SQL condition on ``m`` (measurements): its watch minute lies within the event."""
    start = _minute(event["onset"])
    end = _minute(event.get("over")) or 10**12
    return (
        f"TRY_CAST(m.annotations['minute'] AS BIGINT) BETWEEN {start} AND {end}"
        if start is not None
        else "true"
    )


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def checklist(db: Path, event: dict[str, Any]) -> list[dict[str, Any]]:
    target = sql_literal(event["target_address"])
    window = _window(event)
    base = f"""
        SELECT m.vantage, m.resolver_address, m.engine, m.target_kind, v.response_index,
               v.rtt, v.ip_ttl, list_contains(v.ips, {target}) AS forged,
               v.outcome, m.hostname
        FROM reply_verdicts v JOIN measurements m USING (measurement_uid)
        WHERE {window} AND v.s_has_reply
    """
    rows = store.query(db, base)
    items: list[dict[str, Any]] = []

    # 1. The same public resolver, two vantages: a lie in transit.
    per: dict[tuple[str, str], Counter[str]] = {}
    for vantage, resolver, engine, kind, _i, _rtt, _ttl, forged, outcome, _h in rows:
        if kind != "resolver" or engine != "udp":
            continue
        c = per.setdefault((resolver, vantage), Counter())
        c["replies"] += 1
        c["forged"] += int(bool(forged))
        # The analysis's verdict, not a second definition: raced by the genuine answer.
        c["forged_then_genuine"] += int(bool(forged) and outcome == Outcome.INJECTED_MULTI_REPLY)
    by_resolver: dict[str, dict[str, dict[str, int]]] = {}
    for (resolver, vantage), c in per.items():
        by_resolver.setdefault(resolver, {})[vantage] = dict(c)
    holds1 = any(
        any(c.get("forged_then_genuine", 0) for c in vs.values())
        and any(c.get("forged", 0) == 0 and c.get("replies", 0) for c in vs.values())
        for vs in by_resolver.values()
    )
    items.append({
        "id": "inside_lie_outside_truth",
        "claim": "A public resolver answers with the target when asked from one vantage (and the "
                 "genuine answer follows it), but not when asked from another: the forgery is "
                 "made in transit, not by the resolver.",
        "holds": holds1, "data": by_resolver,
        "source": "[greatfire-2014]; [holdon-2012]",
    })  # fmt: skip

    # 2. A dark destination answers.
    dark = [r for r in rows if r[3] == TargetKind.DARK]
    dark_forged = sum(1 for r in dark if r[7] and r[8] == Outcome.INJECTED_DARK)
    items.append({
        "id": "dark_destination",
        "claim": "A host that runs no DNS server answers with the target.",
        "holds": dark_forged > 0 if dark else None,
        "data": {"replies_from_dark_hosts": len(dark), "with_target": dark_forged},
        "source": "[greatfire-2014]; [triplet-2021] 2.1; [ooni-ts012]",
    })  # fmt: skip

    # 3. Too fast: forged vs genuine round-trip times on the same paths.
    forged_rtt = [r[5] for r in rows if r[7] and r[5] is not None and r[2] == "udp"]
    genuine_rtt = [r[5] for r in rows if READING.get(Outcome(r[8])) == Reading.GENUINE
                   and r[5] is not None and r[2] == "udp" and r[3] == "resolver"]  # fmt: skip
    fm, gm = _median(forged_rtt), _median(genuine_rtt)
    items.append({
        "id": "too_fast",
        "claim": "Forged replies arrive faster than half the genuine replies' time: no "
                 "resolution behind them.",
        "holds": (fm < 0.5 * gm) if fm is not None and gm is not None else None,
        "data": {"median_forged_rtt_ms": round(fm * 1000, 2) if fm is not None else None,
                 "median_genuine_rtt_ms": round(gm * 1000, 2) if gm is not None else None,
                 "forged_replies": len(forged_rtt), "genuine_replies": len(genuine_rtt)},
        "source": "[holdon-2012]; the 27 ms dig +trace of 2014 [greatfire-2014]",
    })  # fmt: skip

    # 4. Injector fingerprint.
    families = store.query(db, "SELECT profile, aa, name_form, edns, answer_ttl, replies, min_ip_ttl, "
                      "max_ip_ttl FROM injector_families ORDER BY replies DESC")  # fmt: skip
    fam = [dict(zip(("profile", "aa", "name_form", "edns", "answer_ttl", "replies", "min_ip_ttl",
                     "max_ip_ttl"), f, strict=True)) for f in families]  # fmt: skip
    items.append({
        "id": "injector_fingerprint",
        "claim": "The injector-made replies fit a published injector profile.",
        "holds": any(f["profile"] != "unknown" for f in fam) if fam else None,
        "data": {"families": fam},
        "source": "[triplet-2021] Table 3; [gfwrev-2009]",
    })  # fmt: skip

    # 5. Known pool, or one address across unrelated names.
    lists = pools.lists_of(event["target_address"])
    names_on_target = len({r[9] for r in rows if r[7]})
    items.append({
        "id": "one_address_or_known_pool",
        "claim": "The target is in a published forged pool, or one address answers many "
                 "unrelated names.",
        "holds": bool(lists) or names_on_target >= 10,
        "data": {"known_lists": lists, "names_answered_with_target": names_on_target,
                 "peak_top_share": event.get("peak_top_share")},
        "source": "[gfwatch-2021]; [wallbleed-2025]; [greatfire-2014]",
    })  # fmt: skip

    # 6. Selective scope.
    tlds: dict[str, Counter[str]] = {}
    for r in rows:
        tld = str(r[9]).rsplit(".", 1)[-1]
        c = tlds.setdefault(tld, Counter())
        c["replies"] += 1
        c["with_target"] += int(bool(r[7]))
    untouched = sorted(t for t, c in tlds.items() if c["replies"] and not c["with_target"])
    items.append({
        "id": "selective_scope",
        "claim": "Some names stay untouched during the event (a whole TLD), which a failing "
                 "root or resolver would not explain.",
        "holds": bool(untouched) and len(untouched) < len(tlds),
        "data": {"untouched_tlds": untouched, "per_tld": {t: dict(c) for t, c in tlds.items()}},
        "source": "[greatfire-2014] (.cn unaffected in 2014)",
    })  # fmt: skip
    return items


def histograms(db: Path, event: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Reply timing and IP TTL, forged (target) vs other replies, UDP only."""
    target = sql_literal(event["target_address"])
    window = _window(event)
    rows = store.query(db, f"""
        SELECT CASE WHEN list_contains(v.ips, {target}) THEN 'target' ELSE 'other' END AS kind,
               round(v.rtt * 1000 / 5) * 5 AS rtt_ms, v.ip_ttl, count(*) AS n
        FROM reply_verdicts v JOIN measurements m USING (measurement_uid)
        WHERE {window} AND v.s_has_reply AND v.engine = 'udp' AND v.rtt IS NOT NULL
        GROUP BY ALL ORDER BY ALL""")  # fmt: skip
    rtt: Counter[tuple[str, float]] = Counter()
    ttl: Counter[tuple[str, int]] = Counter()
    for kind, rtt_ms, ip_ttl, n in rows:
        rtt[(kind, float(rtt_ms))] += n
        if ip_ttl is not None:
            ttl[(kind, int(ip_ttl))] += n
    return {
        "rtt_ms": [{"reply": k, "rtt_ms": v, "replies": n} for (k, v), n in sorted(rtt.items())],
        "ip_ttl": [{"reply": k, "ip_ttl": v, "replies": n} for (k, v), n in sorted(ttl.items())],
    }


def top_addresses(db: Path, event: dict[str, Any], limit: int = 10) -> list[dict[str, Any]]:
    window = _window(event)
    rows = store.query(db, f"""
        SELECT ip, count(DISTINCT m.hostname) AS names, count(*) AS replies
        FROM (SELECT measurement_uid, unnest(ips) AS ip FROM reply_verdicts
              WHERE response_index = 0) v
        JOIN measurements m USING (measurement_uid)
        WHERE {window} AND m.target_kind <> 'control'
        GROUP BY ALL ORDER BY names DESC, replies DESC LIMIT {limit}""")  # fmt: skip
    return [{"address": a, "names": n, "replies": r} for a, n, r in rows]


def analysis_attribution(db: Path, event: dict[str, Any]) -> dict[str, Any]:
    """What the analysis (rules, per name) concludes for the names the event touched."""
    target = sql_literal(event["target_address"])
    window = _window(event)
    rows = store.query(db, f"""
        SELECT a.attribution, count(*) AS names
        FROM attributions a
        WHERE (a.hostname, a.query_type) IN (
            SELECT m.hostname, m.query_type FROM reply_verdicts v
            JOIN measurements m USING (measurement_uid)
            WHERE {window} AND list_contains(v.ips, {target}))
        GROUP BY ALL ORDER BY names DESC""")  # fmt: skip
    counts = {str(a): int(n) for a, n in rows}
    return {"attribution": rows[0][0] if rows else None, "names_by_attribution": counts}


def example_uids(db: Path, event: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, measurement_uid): one measurement for each kind of evidence."""
    target = sql_literal(event["target_address"])
    window = _window(event)
    end = _minute(event.get("end"))
    with_target = f"SELECT measurement_uid FROM reply_verdicts WHERE list_contains(ips, {target})"
    # Each pick is found within the event's minutes, but the cache tail, which lies after them.
    picks = [
        ("Forged reply raced by the genuine one (asked over UDP)",
         f"{window} AND list_contains(v.ips, {target}) AND v.s_later_genuine"),
        ("A host that runs no DNS server answers",
         f"{window} AND list_contains(v.ips, {target}) AND v.s_dark"),
        ("The same question to the same resolver from another vantage",
         f"{window} AND v.s_has_answer AND m.measurement_uid NOT IN ({with_target}) "
         "AND m.target_kind = 'resolver' AND m.engine = 'udp' "
         "AND EXISTS (SELECT 1 FROM reply_verdicts v2 JOIN measurements m2 USING (measurement_uid) "
         f"WHERE v2.s_later_genuine AND list_contains(v2.ips, {target}) AND m2.vantage <> m.vantage "
         "AND m2.resolver_address = m.resolver_address AND m2.hostname = m.hostname)"),
        ("The trusted control (TCP)",
         f"{window} AND m.target_kind = 'control' AND m.hostname NOT LIKE '%.cn'"),
    ]  # fmt: skip
    if end is not None:
        picks.append(("After the injection: a resolver still serving the target (cache tail)",
                      f"list_contains(v.ips, {target}) AND m.target_kind = 'resolver' AND NOT "
                      f"v.s_later_genuine AND TRY_CAST(m.annotations['minute'] AS BIGINT) > {end}"))  # fmt: skip
    out = []
    for label, cond in picks:
        found = store.query(db, f"""
            SELECT m.measurement_uid FROM measurements m
            LEFT JOIN reply_verdicts v USING (measurement_uid)
            WHERE {cond}
            ORDER BY m.hostname = 'www.example.com' DESC, m.measurement_uid LIMIT 1""")  # fmt: skip
        if found:
            out.append((label, str(found[0][0])))
    return out


def find_measurements(files: list[Path], uids: set[str]) -> Iterator[Measurement]:
    for path in files:
        for record in read_records(path):
            if isinstance(record, Measurement) and record.measurement_uid in uids:
                yield record


def target_uids(db: Path, event: dict[str, Any], limit: int = PCAP_LIMIT) -> list[str]:
    target = sql_literal(event["target_address"])
    window = _window(event)
    rows = store.query(db, f"""
        SELECT DISTINCT m.measurement_uid FROM reply_verdicts v
        JOIN measurements m USING (measurement_uid)
        WHERE {window} AND list_contains(v.ips, {target}) ORDER BY 1 LIMIT {limit}""")  # fmt: skip
    return [str(r[0]) for r in rows]


def build(out: Path, *, db: Path | None = None,
          connections: flood.PerSecond | None = None) -> dict[str, Any]:  # fmt: skip
    """Gather everything the report shows; write nothing but the store and the pcap.

    ``connections``: what the hosts counted per second (:mod:`wallwatch.flood`, on the
    events' clock): an event's reach is then measured, not only estimated."""
    from wallwatch.analysis.run import analyze
    from wallwatch.report import pcap

    missing: list[str] = []
    files = measurement_files(out)
    # A collector's own store is open while it serves: the report builds its own.
    db = db or out / ("report.duckdb" if judge_dir(out) != out else "wallwatch.duckdb")
    watch_path = judge_dir(out) / "events.json"
    watch: dict[str, Any] = json.loads(watch_path.read_text()) if watch_path.exists() else {}
    if not watch:
        missing.append(f"no {watch_path.name}: no watch ran here, so there is no event timeline")
    if not files:
        missing.append("no measurement files: nothing was measured")
    report: dict[str, Any] = {
        "generated_by": "wallwatch report",
        "panel": watch.get("panel", {}),
        "minutes_watched": len(watch.get("minutes", [])),
        "first_minute": (watch.get("minutes") or [None])[0],
        "last_minute": (watch.get("minutes") or [None])[-1],
        "detector": watch.get("detector", {}),
        "events": [],
        "series": _series(judge_dir(out), watch),
        "traces": {},
        "missing": missing,
    }
    rounds = _rounds(out)
    kept = [r for r in rounds if r.get("partial") and not r.get("discarded")]
    if kept:
        missing.append(f"{len(kept)} round(s) were torn by a crash after every vantage "
                       "finished: completed from their files")  # fmt: skip
    discarded = [r for r in rounds if r.get("discarded")]
    if discarded:
        missing.append(f"{len(discarded)} round(s) were torn by a crash mid-sweep: their "
                       "records are kept as measurements/*.torn, not judged, and the minute "
                       "was measured again")  # fmt: skip
    if connections is None:
        missing.append("no connection counts from the hosts: each event's reach is an "
                       "estimate from which names were hit, weighted by popularity")  # fmt: skip
    if not files:
        return report
    try:
        store.ingest(files, db)
    except ValueError:
        # Name each unreadable file (file and line) and load the others.
        readable = []
        for path in files:
            try:
                store.validate([path])
            except ValueError as exc:
                missing.append(f"skipped an unreadable file: {exc}")
                continue
            readable.append(path)
        files = readable
        if not files:
            return report
        store.ingest(files, db)
    summary = analyze(db)
    report["measurements"] = store.query(db, "SELECT count(*) FROM measurements")[0][0]
    report["replies_judged"] = summary.replies
    report["rules_version"] = summary.rules_version
    report["pools_version"] = summary.pools_version
    report["netinfo_version"] = "; ".join(summary.netinfo_versions) or "none"
    local = watch.get("local_addresses", {})
    pcap_uids: set[str] = set()
    for event in watch.get("events", []):
        ev = dict(event)
        found = analysis_attribution(db, ev)
        ev["attribution_detector"] = ev.get("attribution")
        if found["attribution"]:
            ev["attribution"] = found["attribution"]
        ev["attribution_analysis"] = found
        who = pools.owner(ev["target_address"])
        ev["target_owner"] = {"name": who[0], "source": who[1]} if who else None
        ev["checklist"] = checklist(db, ev)
        ev["histograms"] = histograms(db, ev)
        ev["top_addresses"] = top_addresses(db, ev)
        ev["examples"] = example_uids(db, ev)
        ev["flood"], ev["flood_series"] = _flood(connections, ev)
        pcap_uids |= {u for _l, u in ev["examples"]} | set(target_uids(db, ev))
        report["events"].append(ev)
    # One pass over the records for every event's examples and the pcap.
    records = {m.measurement_uid: m for m in find_measurements(files, pcap_uids)}
    for ev in report["events"]:
        ev["examples"] = [{"label": label, "measurement_uid": uid, "dig": dig(records[uid])}
                          for label, uid in ev["examples"] if uid in records]  # fmt: skip
    if report["events"]:
        measured = sorted(records.values(), key=lambda m: m.measurement_uid)
        packets = pcap.write(out / "evidence.pcap", measured, local)
        report["pcap"] = {"file": "evidence.pcap", "packets": packets,
                          "measurements": len(measured),
                          "local_addresses": local or {"*": pcap.UNKNOWN_LOCAL}}  # fmt: skip
    else:
        missing.append("no event was detected, so there is no evidence to show")
    # Traces of the streams behind the first event (the ones that raised it).
    lead = {s for e in report["events"][:1] for s in _event_streams(report, e)}
    traces = {k: v for k, v in watch.get("traces", {}).items()
              if any(k.startswith(s) for s in lead) and k.endswith("top_share")}  # fmt: skip

    def first_alarm(item: tuple[str, list[dict[str, Any]]]) -> tuple[str, str]:
        alarms = [str(s["minute"]) for s in item[1] if s["alarm"]]
        return (alarms[0] if alarms else "~", item[0])

    # The stream that raised the alarm first leads (its trace is the one drawn).
    report["traces"] = dict(sorted(traces.items(), key=first_alarm)[:4])
    return report


def _flood(connections: flood.PerSecond | None,
           event: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:  # fmt: skip
    """The event's measured flood and its series (five minutes either side), or None."""
    if not connections:
        return None, []
    onset = datetime.fromisoformat(event["onset"])
    tz = onset.tzinfo or UTC
    start = onset.timestamp()
    over = event.get("over") or event.get("end")
    end = datetime.fromisoformat(over).timestamp() + 60 if over else None
    near = {s: c for s, c in connections.items()
            if s >= start - 300 and (end is None or s <= end + 300)}  # fmt: skip
    return flood.for_event(connections, event["target_address"], start, end, tz), flood.series(
        near, event["target_address"], tz
    )


def _event_streams(report: dict[str, Any], event: dict[str, Any]) -> set[str]:
    target = event["target_address"]
    return {str(row["stream"]) for row in report["series"] if row.get("top_address") == target
            and (row.get("top_share") or 0) >= 0.5}  # fmt: skip


def _series(out: Path, watch: dict[str, Any]) -> list[dict[str, Any]]:
    """The watch's per-minute series: ``series.jsonl`` (older watches kept it in events.json)."""
    path = out / "series.jsonl"
    return json_lines(path) if path.exists() else list(watch.get("series", []))


def _rounds(out: Path) -> list[dict[str, Any]]:
    return json_lines(out / "rounds.jsonl")
