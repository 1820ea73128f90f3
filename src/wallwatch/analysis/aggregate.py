"""Measurement counts by one or two axes per time grain, over a store and its analysis.

The API's ``/api/v1/aggregation`` asks the collector's live store; this asks an analysed
store: the embedded DuckDB (``wallwatch aggregate --db``) or a dataset and the tables
``analyze --dask`` wrote beside it (``wallwatch aggregate --dask``, each bucket counted by
its worker and the counts summed: a measurement, with its replies and answers, is in one
bucket, so the sums are exact). One query, :func:`aggregate_sql`, serves both; the axes
are the API's (:class:`wallwatch.vocab.Axis`, :func:`axis_sql`).

A measurement is counted at its start time, once (once per address with ``answer``).
``verdict`` is the analysis's outcome for its first reply (or for the measurement when
it drew none); ``attribution`` the window attribution of its name, vantage and time
window (``--window``, as the analysis ran). With either, only judged measurements count:
the controls are not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from wallwatch.store import sql_literal
from wallwatch.vocab import Axis

Grain = Literal["minute", "hour", "day"]

_PLAIN = {
    Axis.VANTAGE: "m.vantage", Axis.TARGET: "m.resolver_address", Axis.QTYPE: "m.query_type",
    Axis.HOSTNAME: "m.hostname", Axis.TLD: "regexp_extract(m.hostname, '[^.]+$')",
    Axis.ANSWER: "coalesce(a.ipv4, a.ipv6)",
}  # fmt: skip


def axis_sql(axis: Axis, *, judged: str = "v", attributed: str | None = None) -> str:
    """An axis as SQL over measurements ``m``, answers ``a``, and the judgement: its
    outcome on ``judged``, its attribution on ``attributed`` (default: ``judged``)."""
    if axis == Axis.VERDICT:
        return f"{judged}.outcome"
    if axis == Axis.ATTRIBUTION:
        return f"{attributed or judged}.attribution"
    return _PLAIN[axis]


def check_axes(axes: Sequence[Axis]) -> list[Axis]:
    """One or two distinct axes, in order (ValueError otherwise)."""
    chosen = list(dict.fromkeys(axes or [Axis.VANTAGE]))
    if not 1 <= len(chosen) <= 2:
        raise ValueError("aggregation: one or two distinct axes")
    return chosen


def aggregate_sql(axes: Sequence[Axis], grain: Grain = "hour", *, since: str | None = None,
                  until: str | None = None, vantage: str | None = None,
                  window: int = 60) -> str:  # fmt: skip
    """The counts as one query over the store's ``measurements`` and ``answers`` and the
    analysis's ``reply_verdicts`` and ``window_attributions``; rows (t, axes...,
    measurements, replies)."""
    chosen = check_axes(axes)
    if grain not in ("minute", "hour", "day"):
        raise ValueError(f"grain {grain!r}: minute, hour or day")
    window = max(1, int(window))
    joins = ""
    if {Axis.VERDICT, Axis.ATTRIBUTION} & set(chosen):
        joins += (" JOIN reply_verdicts v ON v.measurement_uid = m.measurement_uid "
                  "AND coalesce(v.response_index, 0) = 0")  # fmt: skip
    if Axis.ATTRIBUTION in chosen:
        # The window as the analysis cut it (analysis/attribution.py, WINDOW_ATTRIBUTION_SQL).
        joins += (" LEFT JOIN window_attributions w ON w.hostname = m.hostname "
                  "AND w.query_type = m.query_type AND w.vantage = m.vantage "
                  "AND w.window_start = make_timestamp(CAST(floor((epoch(m.start_ts) + m.t0) "
                  f"/ {window}) * {window} AS BIGINT) * 1000000)")  # fmt: skip
    if Axis.ANSWER in chosen:
        joins += (" JOIN answers a ON a.measurement_uid = m.measurement_uid "
                  "AND a.response_index = 0 AND coalesce(a.ipv4, a.ipv6) IS NOT NULL")  # fmt: skip
    where = ["true"]
    for clause, value in (("m.start_ts >= TRY_CAST({} AS TIMESTAMP)", since),
                          ("m.start_ts < TRY_CAST({} AS TIMESTAMP)", until),
                          ("m.vantage = {}", vantage)):  # fmt: skip
        if value is not None:
            where.append(clause.format(sql_literal(value)))
    selected = ", ".join(f"{axis_sql(a, attributed='w')} AS {a.value}" for a in chosen)
    counted = "count(DISTINCT m.measurement_uid)" if Axis.ANSWER in chosen else "count(*)"
    return (
        f"SELECT date_trunc('{grain}', m.start_ts) AS t, {selected}, {counted} AS measurements, "
        "sum(m.response_count) AS replies "
        "FROM (SELECT *, TRY_CAST(measurement_start_time AS TIMESTAMP) AS start_ts "
        f"FROM measurements) m{joins} WHERE {' AND '.join(where)} GROUP BY ALL ORDER BY ALL"
    )
