"""The collector's HTTP side: uploads, the read API under /api/v1, the live stream, the dashboard.

Why FastAPI: typed parameters become validation (422) and the OpenAPI document
(``/openapi.json``, ``/docs``) for free, and its server-sent events push rounds, event
changes and alerts to the dashboard without polling. Every JSON answer carries
``metadata`` with the rows read and the milliseconds taken (also as ``X-Rows-Read`` and
``X-Elapsed-Ms`` headers, on CSV too), as OONI's API does.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import ipaddress
import json
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from wallwatch import __version__, flood
from wallwatch.analysis.aggregate import axis_sql
from wallwatch.escape import json_for_html
from wallwatch.events.detector import minute_iso
from wallwatch.journal import json_lines
from wallwatch.observatory.collector import MAX_BODY, MAX_DECOMPRESSED, Collector, UploadError
from wallwatch.observatory.tokens import Tokens
from wallwatch.store import sql_literal
from wallwatch.vocab import Attribution, Axis, Outcome

_FILTERS = {"vantage": "vantage", "hostname": "hostname", "target": "resolver_address",
            "qtype": "query_type"}  # fmt: skip


def _answer(rows: list[dict[str, Any]], started: float, read: int, **extra: Any) -> JSONResponse:
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    body = {"metadata": {"rows_read": read, "elapsed_ms": elapsed, "count": len(rows), **extra},
            "results": rows}  # fmt: skip
    return JSONResponse(body, headers={"X-Rows-Read": str(read), "X-Elapsed-Ms": str(elapsed)})


def _csv(rows: list[dict[str, Any]], columns: list[str], started: float) -> Response:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([json.dumps(v) if isinstance(v, list | dict) else v for v in row.values()])
    elapsed = round((time.perf_counter() - started) * 1000, 2)
    return Response(out.getvalue(), media_type="text/csv",
                    headers={"X-Rows-Read": str(len(rows)), "X-Elapsed-Ms": str(elapsed),
                             "Content-Disposition": "attachment; filename=wallwatch.csv"})  # fmt: skip


class Budget:
    """Server time each client may use per minute (OONI's API limits by cost, not count).

    Why server time: one aggregation over ten million rows costs what thousands of small
    requests do; counting requests would either starve honest dashboards or let a single
    heavy query through. A client is its token, or its address when it sends none.
    """

    def __init__(self, seconds_per_minute: float) -> None:
        self.rate = seconds_per_minute / 60.0
        self.cap = seconds_per_minute
        self.spent: dict[str, tuple[float, float]] = {}

    def wait(self, key: str) -> float:
        """Seconds until ``key`` may be served again (0: now)."""
        level, at = self.spent.get(key, (0.0, time.monotonic()))
        level = max(0.0, level - (time.monotonic() - at) * self.rate)
        self.spent[key] = (level, time.monotonic())
        return 0.0 if level < self.cap else (level - self.cap) / self.rate + 1.0

    def charge(self, key: str, seconds: float) -> None:
        level, at = self.spent.get(key, (0.0, time.monotonic()))
        self.spent[key] = (level + seconds, at)


def create_app(collector: Collector, tokens: Tokens, *, private: bool = False,
               budget: float = 60.0, connections: Path | None = None) -> FastAPI:  # fmt: skip
    """The ASGI app of one collector; ``budget``: server seconds per client per minute;
    ``connections``: the hosts' connection counts (:mod:`wallwatch.flood`), if any."""
    app = FastAPI(title="wallwatch observatory", version=__version__,
                  description="Uploads from vantages, the judgement across them, events and alerts.")  # fmt: skip
    limits = Budget(budget)

    @app.middleware("http")
    async def limit(request: Request, call_next: Any) -> Response:
        auth = request.headers.get("authorization")
        key = ("token:" + hashlib.sha256(auth.encode()).hexdigest()[:16] if auth
               else "address:" + (request.client.host if request.client else "unix"))  # fmt: skip
        wait = limits.wait(key)
        if wait > 0:
            return JSONResponse({"detail": f"rate limit: too much server time used; retry in {wait:.0f} s"},
                                status_code=429, headers={"Retry-After": str(int(wait) + 1)})  # fmt: skip
        started = time.perf_counter()
        response: Response = await call_next(request)
        if request.url.path != "/api/v1/stream":  # a long-lived stream costs no work while idle
            limits.charge(key, time.perf_counter() - started)
        return response

    def vantage_of(authorization: str | None) -> str:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise HTTPException(401, "an upload token is needed (Authorization: Bearer TOKEN)")
        vantage = tokens.vantage_of(authorization.split(None, 1)[1].strip())
        if vantage is None:
            raise HTTPException(401, "unknown or revoked token")
        return vantage

    def reader(authorization: str | None) -> None:
        if private:
            vantage_of(authorization)

    @app.post("/api/v1/uploads", status_code=200)
    async def upload(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        content_encoding: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Store a batch of wallwatch JSONL records (gzip with ``Content-Encoding: gzip``)
        as the token's vantage. Idempotent: a measurement already stored is acknowledged
        and not stored again."""
        started = time.perf_counter()
        vantage = vantage_of(authorization)
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_BODY:
            raise HTTPException(413, f"body over {MAX_BODY} bytes")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise HTTPException(413, f"body over {MAX_BODY} bytes")
        data = bytes(body)
        if (content_encoding or "").lower() == "gzip":
            try:
                inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
                data = inflater.decompress(data, MAX_DECOMPRESSED)
                if inflater.unconsumed_tail:
                    raise HTTPException(413, f"body over {MAX_DECOMPRESSED} bytes decompressed")
            except zlib.error as exc:
                raise HTTPException(422, f"not gzip: {exc}") from None
        try:
            result = await asyncio.to_thread(collector.upload, vantage, data)
        except UploadError as exc:
            raise HTTPException(exc.status, exc.detail) from None
        return _answer([], started, result.received, vantage=vantage, received=result.received,
                       stored=result.stored, duplicates=result.duplicates,
                       input_errors=result.input_errors, minutes=result.minutes)  # fmt: skip

    def query(sql: str, params: list[Any] | None = None) -> list[dict[str, Any]]:
        # Read your writes: every batch acknowledged before this request is in the store.
        collector.caught_up()
        with collector.lock:
            if not collector.has("measurements"):
                return []
            cursor = collector.con.execute(sql, params or [])
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    @app.get("/api/v1/measurements", response_model=None)
    def measurements(
        authorization: Annotated[str | None, Header()] = None,
        since: str | None = None,
        until: str | None = None,
        vantage: str | None = None,
        hostname: str | None = None,
        target: str | None = None,
        qtype: str | None = None,
        verdict: Annotated[
            Outcome | None, Query(description="the analysis's outcome for the first reply")
        ] = None,
        attribution: Attribution | None = None,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
        after: Annotated[
            str | None, Query(description="the last row's cursor: keyset pagination")
        ] = None,
        format: Literal["json", "csv", "parquet"] = "json",
    ) -> Response:
        """Measurements, newest last, filtered; ``after`` pages by (start time, uid).

        ``verdict`` and ``attribution`` are the collector's judgement of the measurement's
        minute (empty until that minute is judged)."""
        reader(authorization)
        started = time.perf_counter()
        where, params = ["true"], []
        given = {"vantage": vantage, "hostname": hostname, "target": target, "qtype": qtype}
        for name, column in _FILTERS.items():
            if given[name] is not None:
                where.append(f"{column} = ?")
                params.append(given[name])
        for column, wanted in (("outcome", verdict), ("attribution", attribution)):
            if wanted is not None:
                where.append(f"measurement_uid IN (SELECT measurement_uid FROM judgements "
                             f"WHERE {column} = ?)")  # fmt: skip
                params.append(wanted.value)
        if since:
            where.append("measurement_start_time >= ?")
            params.append(since)
        if until:
            where.append("measurement_start_time < ?")
            params.append(until)
        if after:
            at, _, uid = after.partition("|")
            where.append("(measurement_start_time, measurement_uid) > (?, ?)")
            params += [at, uid]
        # The page first, then its verdicts: the join touches only the rows returned.
        sql = ("SELECT p.*, j.outcome AS verdict, j.attribution FROM ("
               "SELECT measurement_uid, measurement_start_time, vantage, hostname, query_type, "
               "resolver_address, target_kind, engine, failure, response_count FROM measurements "
               f"WHERE {' AND '.join(where)} ORDER BY measurement_start_time, measurement_uid "
               f"LIMIT {int(limit)}) p LEFT JOIN judgements j USING (measurement_uid) "
               "ORDER BY p.measurement_start_time, p.measurement_uid")  # fmt: skip
        rows = query(sql, params)
        cursor = (
            f"{rows[-1]['measurement_start_time']}|{rows[-1]['measurement_uid']}" if rows else None
        )
        if format == "csv":
            columns = list(rows[0]) if rows else ["measurement_uid"]
            return _csv(rows, columns, started)
        if format == "parquet":
            with collector.lock, tempfile.TemporaryDirectory() as tmp:
                target_path = Path(tmp) / "m.parquet"
                collector.con.execute(f"COPY ({sql}) TO {sql_literal(str(target_path))} (FORMAT parquet)",
                                      params)  # fmt: skip
                return Response(
                    target_path.read_bytes(), media_type="application/vnd.apache.parquet"
                )
        return _answer(rows, started, len(rows), next_cursor=cursor)

    @app.get("/api/v1/aggregation", response_model=None)
    def aggregation(
        authorization: Annotated[str | None, Header()] = None,
        axis: Annotated[
            list[Axis] | None, Query(description="one or two axes (repeat the parameter); vantage")
        ] = None,
        grain: Literal["minute", "hour", "day"] = "hour",
        since: str | None = None,
        until: str | None = None,
        vantage: str | None = None,
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """Measurement counts by one or two axes per time grain.

        With ``verdict`` or ``attribution``, only judged measurements are counted (the
        collector's judgement of their minute; ``replies`` is then null); ``answer`` counts
        a measurement once per address of its first reply."""
        reader(authorization)
        started = time.perf_counter()
        axes = list(dict.fromkeys(axis or [Axis.VANTAGE]))
        if not 1 <= len(axes) <= 2:
            raise HTTPException(422, "aggregation: one or two distinct axes")
        joins = ""
        source = "measurements m"
        if {Axis.VERDICT, Axis.ATTRIBUTION} & set(axes):
            source = "judgements m"  # judged measurements only, from the judgements alone
        if Axis.ANSWER in axes:
            joins += (" JOIN answers a ON a.measurement_uid = m.measurement_uid "
                      "AND a.response_index = 0 AND coalesce(a.ipv4, a.ipv6) IS NOT NULL")  # fmt: skip
        where, params = ["true"], []
        for clause, value in (("m.start_ts >= TRY_CAST(? AS TIMESTAMP)", since),
                              ("m.start_ts < TRY_CAST(? AS TIMESTAMP)", until),
                              ("m.vantage = ?", vantage)):  # fmt: skip
            if value is not None:
                where.append(clause)
                params.append(value)
        # The collector's judgements carry the verdict and attribution of their minute.
        selected = ", ".join(f"{axis_sql(a, judged='m')} AS {a.value}" for a in axes)
        # A measurement is one row unless joined to its answers (then once per address).
        counted = "count(DISTINCT m.measurement_uid)" if Axis.ANSWER in axes else "count(*)"
        replies = "sum(m.response_count)" if source.startswith("measurements") else "NULL"
        rows = query(
            f"SELECT date_trunc('{grain}', m.start_ts) AS t, "
            f"{selected}, {counted} AS measurements, "
            f"{replies} AS replies FROM {source}{joins} "
            f"WHERE {' AND '.join(where)} GROUP BY ALL ORDER BY ALL",
            params,
        )
        for row in rows:
            row["t"] = str(row["t"])
            row["replies"] = None if row["replies"] is None else int(row["replies"])
        columns = ["t", *(a.value for a in axes), "measurements", "replies"]
        if format == "csv":
            return _csv(rows, columns, started)
        return _answer(rows, started, sum(int(r["measurements"]) for r in rows))

    @app.get("/api/v1/events")
    def events(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Events the judgement across vantages raised (open and over)."""
        reader(authorization)
        started = time.perf_counter()
        with collector.judge_lock:
            rows = [collector.watch.event_dict(e) for e in collector.watch.detector.events]
        return _answer(rows, started, len(rows))

    @app.get("/api/v1/events/{event_id}")
    async def event(
        event_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> JSONResponse:
        reader(authorization)
        started = time.perf_counter()
        with collector.judge_lock:
            found = [collector.watch.event_dict(e) for e in collector.watch.detector.events
                     if e.event_id == event_id]  # fmt: skip
        if not found:
            raise HTTPException(404, "no such event")
        # The argument as the report makes it, from the event's minutes (no lock held:
        # the analysis reads the minute log, not the live store).
        found[0]["argument"] = await asyncio.to_thread(collector.argument, found[0])
        return _answer(found, started, 1)

    @app.get("/api/v1/events/{event_id}/evidence.pcap")
    def event_pcap(
        event_id: str, authorization: Annotated[str | None, Header()] = None
    ) -> Response:
        """The packets of the event's minutes that carry its target address (pcap)."""
        reader(authorization)
        from wallwatch.report import pcap

        with collector.judge_lock:
            found = [e for e in collector.watch.detector.events if e.event_id == event_id]
        if not found:
            raise HTTPException(404, "no such event")
        ev = found[0]
        last = ev.end if ev.end is not None else 10**12
        chosen = [m for m in collector.logged(ev.onset, last)
                  if ev.target_address in {a.ipv4 or a.ipv6 for r in m.responses for a in r.answers}]  # fmt: skip
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "evidence.pcap"
            pcap.write(path, chosen, {})
            return Response(path.read_bytes(), media_type="application/vnd.tcpdump.pcap",
                            headers={"X-Rows-Read": str(len(chosen)),
                                     "Content-Disposition": f"attachment; filename={_slug(event_id)}.pcap"})  # fmt: skip

    @app.get("/api/v1/series", response_model=None)
    def series(
        authorization: Annotated[str | None, Header()] = None,
        by: Literal["vantage", "resolver", "tld"] = "vantage",
        signal: Literal[
            "tampered_share", "top_share", "outside_as_share", "answered"
        ] = "tampered_share",
        format: Literal["json", "csv"] = "json",
    ) -> Response:
        """The detector's per-minute signals (docs/methodology.md) per vantage, resolver or
        TLD, on the judged minutes' clock: the largest value among the streams of each
        group (``answered``: their sum). The dashboard's live charts."""
        reader(authorization)
        started = time.perf_counter()
        with collector.judge_lock:
            rows = list(collector.watch.series)
            tz = collector.watch.config.clock.tz
        groups: dict[tuple[int, str], float] = {}
        for row in rows:
            value = row.get(signal)
            if value is None:
                continue
            key = (int(str(row["minute"])), str(row[by]))
            number = float(str(value))
            groups[key] = (
                groups.get(key, 0.0) + number
                if signal == "answered"
                else max(groups.get(key, 0.0), number)
            )
        out = [{"minute": minute_iso(m, tz, "minutes"), by: g, signal: round(v, 4)}
               for (m, g), v in sorted(groups.items())]  # fmt: skip
        if format == "csv":
            return _csv(out, ["minute", by, signal], started)
        return _answer(out, started, len(rows))

    @app.get("/static/vega.js")
    def vega_bundle() -> Response:
        """vega, vega-lite and vega-embed as one script (from vl-convert: no network)."""
        from wallwatch.report.html import vega_bundle as bundle

        return Response(bundle(), media_type="text/javascript",
                        headers={"Cache-Control": "public, max-age=86400"})  # fmt: skip

    @app.get("/api/v1/changepoints")
    def changepoints(authorization: Annotated[str | None, Header()] = None,
                     stream: str | None = None) -> JSONResponse:  # fmt: skip
        """The detector's CUSUM traces per (stream, signal): the sums against the threshold."""
        reader(authorization)
        started = time.perf_counter()
        rows = []
        with collector.judge_lock:
            for name, steps in collector.watch.detector.traces().items():
                if stream is not None and stream not in name:
                    continue
                rows += [{"trace": name, "minute": s.bucket, "x": s.x, "mu0": s.mu0, "upper": s.upper,
                          "lower": s.lower, "alarm": s.alarm} for s in steps]  # fmt: skip
        return _answer(rows, started, len(rows))

    @app.get("/api/v1/feeds/events.json")
    def feed_json(request: Request) -> JSONResponse:
        """The events as a JSON Feed (1.1): one item per event change."""
        base = str(request.base_url).rstrip("/")
        items = [{"id": a.get("id"), "title": f"{a.get('change')}: {a.get('event', {}).get('target_address')}",
                  "url": f"{base}/?event={a.get('event', {}).get('event_id')}",
                  "date_published": a.get("at"), "content_text": json.dumps(a.get("event"))}
                 for a in json_lines(collector.data / "judge" / "alerts.jsonl")]  # fmt: skip
        return JSONResponse({"version": "https://jsonfeed.org/version/1.1",
                             "title": "wallwatch events", "home_page_url": base + "/",
                             "feed_url": base + "/api/v1/feeds/events.json", "items": items[::-1]})  # fmt: skip

    @app.get("/api/v1/feeds/events.atom")
    def feed_atom(request: Request) -> Response:
        """The events as an Atom feed: one entry per event change."""
        from xml.sax.saxutils import escape

        base = str(request.base_url).rstrip("/")
        alerts = json_lines(collector.data / "judge" / "alerts.jsonl")[::-1]
        updated = alerts[0].get("at") if alerts else "1970-01-01T00:00:00+00:00"
        entries = "".join(
            f"<entry><id>urn:wallwatch:{escape(str(a.get('id')))}</id>"
            f"<title>{escape(str(a.get('change')))}: {escape(str(a.get('event', {}).get('target_address')))}</title>"
            f"<updated>{escape(str(a.get('at')))}</updated>"
            f'<link href="{escape(base)}/?event={escape(str(a.get("event", {}).get("event_id")))}"/>'
            f'<content type="text">{escape(json.dumps(a.get("event")))}</content></entry>'
            for a in alerts
        )
        xml = ('<?xml version="1.0" encoding="utf-8"?><feed xmlns="http://www.w3.org/2005/Atom">'
               f"<title>wallwatch events</title><id>urn:wallwatch:{escape(base)}</id>"
               f"<updated>{escape(str(updated))}</updated>{entries}</feed>")  # fmt: skip
        return Response(xml, media_type="application/atom+xml")

    @app.get("/api/v1/alerts")
    def alerts(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Every alert raised, with the delivery log of each webhook."""
        reader(authorization)
        started = time.perf_counter()
        rows = json_lines(collector.data / "judge" / "alerts.jsonl")
        deliveries = json_lines(collector.data / "deliveries.jsonl")
        for row in rows:
            row["deliveries"] = [d for d in deliveries if d.get("id") == row.get("id")]
        return _answer(rows, started, len(rows))

    @app.get("/api/v1/connections")
    def connections_of(
        address: Annotated[str, Query(max_length=64)],
        authorization: Annotated[str | None, Header()] = None,
    ) -> JSONResponse:
        """Connections the hosts at ``address`` received per second, as they counted them
        (the flood measured; empty when no host counts)."""
        reader(authorization)
        started = time.perf_counter()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise HTTPException(422, "address: not an IP address") from None
        rows: list[dict[str, Any]] = []
        if connections is not None and connections.exists():
            try:
                rows = flood.series(flood.load(connections), address)
            except flood.FloodError as exc:
                raise HTTPException(503, f"the connections file is unreadable: {exc}") from None
        return _answer(rows, started, len(rows))

    @app.get("/api/v1/vantages")
    def vantages(authorization: Annotated[str | None, Header()] = None) -> JSONResponse:
        """Each vantage: measurements stored, uploads, last seen, the last minute it sent."""
        reader(authorization)
        started = time.perf_counter()
        with collector.lock:
            rows = [{"vantage": v, **info} for v, info in sorted(collector.vantages.items())]
        return _answer(rows, started, len(rows))

    @app.get("/api/v1/heartbeat")
    def heartbeat() -> JSONResponse:
        """Alive, with the newest minute judged: a silent monitor and a broken one differ."""
        started = time.perf_counter()
        with collector.judge_lock:
            judged = max(collector.watch.judged) if collector.watch.judged else None
            row = {"time": time.time(), "last_minute_judged": judged, "pending_minutes": len(collector.pending),
                   "late_minutes": len(collector.late), "rebuilds": collector.rebuilds,
                   "events_open": sum(1 for e in collector.watch.detector.events if e.end is None)}  # fmt: skip
        return _answer([row], started, 0)

    @app.get("/api/v1/stream", response_class=EventSourceResponse)
    async def stream(request: Request, authorization: Annotated[str | None, Header()] = None,
                     since: int = 0) -> AsyncIterator[ServerSentEvent]:  # fmt: skip
        """Server-sent events: rounds judged (``minute``), uploads, alerts, late data."""
        reader(authorization)
        seq = since
        while not await request.is_disconnected():
            for message in collector.since(seq):
                seq = message.seq
                yield ServerSentEvent(data=message.data, event=message.kind, id=str(message.seq))
            await asyncio.sleep(0.25)

    @app.get("/", response_class=HTMLResponse)
    def dashboard() -> HTMLResponse:
        """The dashboard: open events, vantages, the live stream (no network needed)."""
        page = resources.files("wallwatch.observatory").joinpath("dashboard.html").read_text()
        config = json_for_html({"version": __version__, "private": private})
        return HTMLResponse(page.replace("/*CONFIG*/null", config))

    return app


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:80]
