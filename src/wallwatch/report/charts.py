"""Vega-Lite chart specs for the report, built with Altair from the report's own data.

Why Vega-Lite: a spec is data (it is kept in the JSON twin too, so a chart can be
re-drawn and checked), and the vega-embed bundle that draws it is inlined from
vl-convert, so the page needs no network.
"""

from __future__ import annotations

import re
from typing import Any

import altair as alt

_OFFSET = re.compile(r"([+-]\d\d:\d\d|Z)$")

WIDTH = 640


def _data(rows: list[dict[str, Any]]) -> alt.Data:
    return alt.Data(values=rows)  # type: ignore[no-untyped-call]


def _local(iso: object) -> object:
    """An ISO time without its offset: the chart then shows the clock of the place
    (China time for the 2014 replay) whatever the reader's own time zone."""
    return _OFFSET.sub("", iso) if isinstance(iso, str) else iso


def _spec(chart: Any) -> dict[str, Any]:
    spec: dict[str, Any] = chart.to_dict()
    return spec


def _zone(report: dict[str, Any]) -> str:
    found = _OFFSET.search(str(report.get("first_minute") or ""))
    return f"UTC{found.group(0)}" if found and found.group(0) != "Z" else "UTC"


def affected_share(report: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Share of names on the event's address, per stream and minute, with the phases."""
    target = event["target_address"]
    streams = {str(r["stream"]) for r in report["series"] if r.get("top_address") == target}
    rows = [
        {"minute": _local(r["minute"]), "stream": r["stream"],
         "share": r["top_share"] if r.get("top_address") == target else 0.0}
        for r in report["series"] if r["stream"] in streams and r.get("top_share") is not None
    ]  # fmt: skip
    phases = [{"phase": p["phase"], "start": _local(p["start"]),
               "end": _local(p["end"] or report["last_minute"])}
              for p in event.get("phases", [])]  # fmt: skip
    bands = (
        alt.Chart(_data(phases))
        .mark_rect(opacity=0.15)
        .encode(x="start:T", x2="end:T", color=alt.Color("phase:N", title="phase"))
    )
    lines = (
        alt.Chart(_data(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("minute:T", title=f"time ({_zone(report)})", axis=alt.Axis(format="%H:%M")),
            y=alt.Y(
                "share:Q",
                title=f"share of names answered with {target}",
                scale=alt.Scale(domain=[0, 1]),
            ),  # fmt: skip
            detail="stream:N",
            tooltip=["stream:N", "minute:T", "share:Q"],
        )
    )
    chart = (bands + lines).properties(width=WIDTH, height=260, title="Affected share over time")
    return _spec(chart)


def cusum_trace(report: dict[str, Any]) -> dict[str, Any] | None:
    """The sums of the stream that raised the first event, against the threshold h."""
    traces = report.get("traces") or {}
    if not traces:
        return None
    name = next(iter(traces))
    rows = [
        {"minute": _local(s["minute"]), "sum": s[which], "which": label}
        for s in traces[name]
        for which, label in (("upper", "upward sum (onset)"), ("lower", "downward sum (end)"))
    ]  # fmt: skip
    h = report["detector"].get("edd", 2.0) * report["detector"].get("delta", 0.5) / 2
    line = (
        alt.Chart(_data(rows))
        .mark_line(point=True)
        .encode(
            x=alt.X("minute:T", title=f"time ({_zone(report)})", axis=alt.Axis(format="%H:%M")),
            y=alt.Y("sum:Q", title="CUSUM"),
            color=alt.Color("which:N", title=None, legend=alt.Legend(orient="bottom")),
        )
    )
    rule = alt.Chart(_data([{"h": h}])).mark_rule(strokeDash=[4, 4]).encode(y="h:Q")
    title = f"Detector trace: {name} (dashed: threshold h = {h:g})"
    return _spec((line + rule).properties(width=WIDTH, height=220, title=title))


def flood(report: dict[str, Any], event: dict[str, Any]) -> dict[str, Any]:
    """Connections per second the host at the event's address received, as measured."""
    rows = [{"t": _local(r["t"]), "connections": r["connections"]} for r in event["flood_series"]]
    chart = (
        alt.Chart(_data(rows))
        .mark_area(line=True, opacity=0.4)
        .encode(
            x=alt.X("t:T", title=f"time ({_zone(report)})", axis=alt.Axis(format="%H:%M")),
            y=alt.Y("connections:Q", title=f"connections to {event['target_address']}"),
            tooltip=["t:T", "connections:Q"],
        )
    )
    return _spec(chart.properties(width=WIDTH, height=160,
                                  title="The flood, measured at the host"))  # fmt: skip


def bars(rows: list[dict[str, Any]], x: str, y: str, title: str, x_title: str) -> dict[str, Any]:
    chart = (
        alt.Chart(_data(rows))
        .mark_bar()
        .encode(
            x=alt.X(f"{x}:Q", title=x_title),
            y=alt.Y(f"{y}:N", sort="-x", title=None),
            tooltip=[f"{y}:N", f"{x}:Q"],
        )
    )
    return _spec(chart.properties(width=WIDTH - 160, height=max(60, 22 * len(rows)), title=title))


def histogram(rows: list[dict[str, Any]], field: str, title: str, x_title: str) -> dict[str, Any]:
    chart = (
        alt.Chart(_data(rows))
        .mark_bar(opacity=0.75)
        .encode(
            x=alt.X(f"{field}:O", title=x_title),
            y=alt.Y("replies:Q", title="replies", stack=None),
            color=alt.Color("reply:N", title="reply"),
            tooltip=["reply:N", f"{field}:O", "replies:Q"],
        )
    )
    return _spec(chart.properties(width=WIDTH, height=200, title=title))


def for_event(report: dict[str, Any], event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(caption, spec) of every chart of one event."""
    out = [("affected_share", affected_share(report, event))]
    trace = cusum_trace(report)
    if trace:
        out.append(("cusum", trace))
    if event.get("top_addresses"):
        out.append(("top_addresses", bars(event["top_addresses"], "names", "address",
                                          "Top answer addresses during the event",
                                          "distinct names answered")))  # fmt: skip
    families = [
        {"family": f"{f['profile']} (AA={int(bool(f['aa']))}, TTL {f['answer_ttl']}, {f['name_form']})",
         "replies": f["replies"]}
        for item in event.get("checklist", []) if item["id"] == "injector_fingerprint"
        for f in item["data"]["families"]
    ]  # fmt: skip
    if families:
        out.append(("families", bars(families, "replies", "family", "Injector families",
                                     "injector-made replies")))  # fmt: skip
    if event.get("flood_series"):
        out.append(("flood", flood(report, event)))
    hist = event.get("histograms", {})
    if hist.get("rtt_ms"):
        out.append(("timing", histogram(hist["rtt_ms"], "rtt_ms", "Reply timing",
                                        "round-trip time (ms, 5 ms bins)")))  # fmt: skip
    if hist.get("ip_ttl"):
        out.append(("ip_ttl", histogram(hist["ip_ttl"], "ip_ttl", "IP TTL of replies",
                                        "IP TTL on arrival")))  # fmt: skip
    return out
