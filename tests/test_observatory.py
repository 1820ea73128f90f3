"""The observatory as users meet it: `wallwatch serve` on loopback, tokens, uploads, the API.

Real HTTP against uvicorn in a child process; uploads through the CLI and the agent's
spool; the judgement across vantages on the 2014 loopback lab.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from test_watch import loopback_2014  # noqa: F401  (the 2014 loopback lab fixture)
from wallwatch import store
from wallwatch.journal import Journal
from wallwatch.lab.loopback import LoopbackServer, authoritative
from wallwatch.observatory.agent import Spool, send
from wallwatch.records import SCHEMA_VERSION, Answer, Measurement, Response
from wallwatch.vocab import Engine, TargetKind


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "wallwatch", *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr
    return done


class Server:
    def __init__(self, data: Path, *extra: str) -> None:
        self.data = data
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        with open(self.data.parent / f"serve-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "wallwatch", "serve", "--data", str(self.data),
                 "--listen", f"127.0.0.1:{self.port}", *self.extra],
                stdout=log, stderr=log, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.url + "/api/v1/heartbeat", timeout=1).read()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(
            "serve did not start: " + (self.data.parent / f"serve-{self.port}.log").read_text()
        )

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # never leave a collector behind a test
                self.proc.kill()
                self.proc.wait(timeout=10)

    def get(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                return r.status, r.read(), dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, e.read(), dict(e.headers)

    def post(self, body: bytes, token: str | None, **headers: str) -> tuple[int, dict[str, object]]:
        request = urllib.request.Request(self.url + "/api/v1/uploads", data=body, method="POST",
                                         headers={**({"Authorization": f"Bearer {token}"} if token else {}), **headers})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=20) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")


def _events(s: Server, within: float) -> list[dict[str, object]]:
    """The collector's events, once it has any (or ``within`` seconds have passed)."""
    deadline = time.monotonic() + within
    events: list[dict[str, object]] = []
    while time.monotonic() < deadline and not events:
        events = json.loads(s.get("/api/v1/events")[1])["results"]
        time.sleep(0.3)
    return events


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(*extra: str, data: Path | None = None) -> Server:
        s = Server(data or tmp_path / "collector", *extra).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


def _measurements(path: Path, vantage: str, count: int, minute0: int = 29000000,
                  per_minute: int = 50) -> Path:  # fmt: skip
    journal = Journal.open(path)
    for i in range(count):
        reply = Response(t=0.01, rtt=0.01, src="192.0.2.53", sport=53, ip_ttl=60, raw_response="",
                         rcode=0, ancount=1, answers=(Answer("A", 60, "", "192.0.2.1"),))  # fmt: skip
        journal.write(Measurement(
            schema_version=SCHEMA_VERSION, measurement_uid=f"{vantage}-{i:05d}", report_id="r",
            measurement_start_time="2026-12-01 10:00:00", vantage=vantage,
            hostname=f"n{i % 50}.example.com", query_type="A", engine=Engine.UDP,
            resolver_address="192.0.2.53:53", target_kind=TargetKind.RESOLVER, transaction_id=i,
            source_port=40000, t0=0.0, t=0.1, responses=(reply,),
            annotations={"minute": str(minute0 + i // per_minute)},
        ))  # fmt: skip
    journal.close()
    return path


def test_serve_tokens_upload_api_and_csv(server, tmp_path: Path) -> None:  # noqa: ANN001
    s = server()
    token = _cli("token", "new", "here", "--data", str(s.data)).stdout.strip().splitlines()[-1]
    other = _cli("token", "new", "there", "--data", str(s.data)).stdout.strip().splitlines()[-1]
    records = _measurements(tmp_path / "m.jsonl", "here", 300)
    done = _cli("upload", "--to", s.url, "--token", token, str(records))
    assert "300 measurements stored, 0 already there" in done.stderr
    again = _cli("upload", "--to", s.url, "--token", token, str(records))
    assert "0 measurements stored, 300 already there" in again.stderr
    # Who may do what.
    body = records.read_bytes()
    assert s.post(body, None)[0] == 401
    assert s.post(body, "not-a-token")[0] == 401
    assert s.post(body, other)[0] == 403  # "there" may not upload as "here"
    assert s.post(b"{not json\n", token)[0] == 422
    assert s.post(b"garbage", token, **{"Content-Encoding": "gzip"})[0] == 422
    bomb = gzip.compress(b"\n" * (200 * 1024 * 1024))
    assert s.post(bomb, token, **{"Content-Encoding": "gzip"})[0] == 413
    revoked = _cli("token", "new", "gone", "--data", str(s.data)).stdout.strip().splitlines()[-1]
    ident = [line.split("\t")[0] for line in _cli("token", "list", "--data", str(s.data)).stdout.splitlines()
             if "\tgone\t" in line][0]  # fmt: skip
    _cli("token", "revoke", ident, "--data", str(s.data))
    assert s.post(b"", revoked)[0] == 401
    # The read API.
    status, csv_body, headers = s.get("/api/v1/measurements?format=csv&limit=1000")
    lines = csv_body.decode().splitlines()
    assert status == 200 and lines[0].startswith("measurement_uid,") and len(lines) == 301
    assert "x-rows-read" in {k.lower() for k in headers} and "x-elapsed-ms" in {
        k.lower() for k in headers
    }
    status, page, _ = s.get("/api/v1/measurements?limit=120")
    first = json.loads(page)
    assert len(first["results"]) == 120 and first["metadata"]["elapsed_ms"] >= 0
    cursor = urllib.request.quote(first["metadata"]["next_cursor"])
    second = json.loads(s.get(f"/api/v1/measurements?limit=1000&after={cursor}")[1])["results"]
    uids = [r["measurement_uid"] for r in first["results"] + second]
    assert len(uids) == len(set(uids)) == 300  # keyset pages: no row twice, none missed
    agg = json.loads(s.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"]
    assert agg == [
        {"t": "2026-12-01 00:00:00", "vantage": "here", "measurements": 300, "replies": 300}
    ]
    for path in ("/api/v1/events", "/api/v1/alerts", "/api/v1/vantages", "/openapi.json", "/"):
        assert s.get(path)[0] == 200, path
    assert s.get("/api/v1/measurements?limit=0")[0] == 422
    assert s.get("/api/v1/events/nope")[0] == 404
    page = s.get("/")[1].decode()
    assert "http://" not in page and "https://" not in page
    assert re.findall(r'<script src="([^"]*)"', page) == ["/static/vega.js"]  # served here
    status, bundle, _ = s.get("/static/vega.js")
    assert status == 200 and b"vegaEmbed" in bundle


def test_an_upload_survives_a_kill_9_of_the_collector_and_the_spool_drains(
    server,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    data = tmp_path / "collector"
    s = server(data=data)
    token = _cli("token", "new", "here", "--data", str(data)).stdout.strip().splitlines()[-1]
    records = _measurements(tmp_path / "m.jsonl", "here", 12000, per_minute=3000)
    spool = Spool(tmp_path / "spool", s.url, token)
    spool.add(records.read_bytes().splitlines(keepends=True))
    assert len(spool.pending()) == 3
    assert send(s.url, token, spool.pending()[0].read_bytes())["stored"] == 5000
    s.stop(signal.SIGKILL)  # the collector dies; the agent keeps its spool
    assert not spool.drain(retry=False) and len(spool.pending()) == 3
    s2 = server(data=data)
    spool.url = s2.url  # the collector came back (on another port here)
    assert spool.drain(retry=False) and not spool.pending()
    assert (
        spool.stored == 7000 and spool.duplicates == 5000
    )  # the first batch was never acknowledged
    body = json.loads(s2.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"]
    assert body[0]["measurements"] == 12000


def test_the_store_is_loaded_from_the_log_once_whatever_a_crash_left(tmp_path: Path) -> None:
    """Acknowledged means logged: the store is loaded from the log behind the uploads. A
    crash before the watermark was saved loads lines again (stored once); a line torn
    mid-write is cut off (its batch was never acknowledged) and the log goes on cleanly."""
    from wallwatch.observatory.collector import Collector

    data = tmp_path / "collector"
    body = _measurements(tmp_path / "m.jsonl", "here", 300).read_bytes()
    c = Collector(data, grace=3600)
    assert c.upload("here", body).stored == 300
    c.close()
    log = sorted((data / "minutes").glob("m*.jsonl"))[-1]
    with open(log, "ab") as handle:
        handle.write(
            b'{"record_type": "measurement", "measurement_uid": "torn-'
        )  # killed mid-write
    (data / "loaded.json").unlink()  # ... and before the watermark was saved
    c = Collector(data, grace=3600)
    count = c.con.execute("SELECT count(*), count(DISTINCT measurement_uid) FROM measurements")
    assert count.fetchone() == (300, 300)
    assert log.read_bytes().endswith(b"\n") and b"torn-" not in log.read_bytes()
    more = _measurements(tmp_path / "n.jsonl", "here", 320).read_bytes()
    result = c.upload("here", more)
    assert (result.stored, result.duplicates) == (20, 300)
    assert c.caught_up(30)
    assert c.con.execute("SELECT count(*) FROM measurements").fetchone()[0] == 320
    c.close()


def test_the_collector_writes_its_log_to_a_dataset_once_whatever_a_crash_left(
    tmp_path: Path,
) -> None:
    """``serve --dataset``: the minute log also goes to a partitioned dataset, behind its
    own watermark. A crash after a write's commit but before the watermark was saved
    writes those lines again, and the dataset keeps each measurement once."""
    from wallwatch.dataset import Dataset, parquet_sql
    from wallwatch.observatory.collector import Collector

    data, root = tmp_path / "collector", Dataset(str(tmp_path / "dataset"))

    def stored() -> tuple[int, int]:
        con = store.connect()
        row = con.execute("SELECT count(*), count(DISTINCT measurement_uid) FROM "
                          f"{parquet_sql(root.files('measurements'))}").fetchone()  # fmt: skip
        con.close()
        return int(row[0]), int(row[1])

    c = Collector(data, grace=3600, dataset=root, export_every=3600)
    assert (
        c.upload("here", _measurements(tmp_path / "m.jsonl", "here", 300).read_bytes()).stored
        == 300
    )
    assert c.caught_up(30)
    c.export(force=True)  # (the loader's thread may have written it already)
    assert stored() == (300, 300)
    c.close()
    assert stored() == (300, 300)
    (data / "exported.json").unlink()  # killed after the commit, before the watermark
    c = Collector(data, grace=3600, dataset=root, export_every=3600)
    more = _measurements(tmp_path / "n.jsonl", "here", 320).read_bytes()
    assert c.upload("here", more).stored == 20
    c.close()  # writes what the log holds beyond its (lost) watermark: the 20 are new
    assert stored() == (320, 320)
    responses = root.files("responses")
    con = store.connect()
    assert con.execute(f"SELECT count(*) FROM {parquet_sql(responses)}").fetchone()[0] == 320
    con.close()


def test_an_agent_killed_mid_spool_loses_and_doubles_nothing(server, tmp_path: Path) -> None:  # noqa: ANN001
    """kill -9 of ``wallwatch upload`` while it spools and sends; the same command again
    completes it: every measurement stored exactly once."""
    s = server()
    token = _cli("token", "new", "here", "--data", str(s.data)).stdout.strip().splitlines()[-1]
    records = _measurements(tmp_path / "m.jsonl", "here", 60000, per_minute=5000)
    spool = tmp_path / "spool"
    command = [sys.executable, "-m", "wallwatch", "upload", "--to", s.url, "--token", token,
               "--spool", str(spool), str(records)]  # fmt: skip
    agent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stored = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and stored == 0 and agent.poll() is None:
        rows = json.loads(s.get("/api/v1/vantages")[1])["results"]
        stored = int(rows[0]["measurements"]) if rows else 0
        time.sleep(0.02)
    agent.kill()  # SIGKILL, mid-way through the batches
    agent.wait()
    assert 0 < stored < 60000, stored
    assert list(spool.glob("*.jsonl.gz")), "the kill left batches in the spool"
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not list(spool.glob("*.jsonl.gz*"))  # sent, acknowledged, nothing half-written left
    body = json.loads(s.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"]
    assert sum(r["measurements"] for r in body) == 60000
    assert json.loads(s.get("/api/v1/vantages")[1])["results"][0]["measurements"] == 60000


def test_the_collector_judges_across_vantages_and_raises_the_event(
    server,
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """Two vantages' rounds of the 2014 loopback lab, uploaded minute by minute: the collector's
    judgement raises the event, alerts, and a webhook receives it."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from test_watch import FORGED_2014

    hooked: list[dict[str, object]] = []

    class Hook(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            hooked.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    data = tmp_path / "collector"
    s = server(
        "--grace", "2", "--webhook", f"http://127.0.0.1:{hook.server_address[1]}/a", data=data
    )
    inside = _cli("token", "new", "inside", "--data", str(data)).stdout.strip().splitlines()[-1]
    outside = _cli("token", "new", "outside", "--data", str(data)).stdout.strip().splitlines()[-1]
    zone = authoritative({f"n{i}.example.com": ["192.0.2.1"] for i in range(40)})
    genuine: LoopbackServer = serve(zone)
    minute0 = 29000000
    _upload_2014(
        s.url, tmp_path, {"inside": inside, "outside": outside}, minute0, genuine.address[0]
    )
    events = _events(s, 20)
    assert events and events[0]["target_address"] == FORGED_2014
    alerts = json.loads(s.get("/api/v1/alerts")[1])["results"]
    assert alerts and alerts[0]["change"] == "start" and alerts[0]["id"]
    heartbeat = json.loads(s.get("/api/v1/heartbeat")[1])["results"][0]
    assert heartbeat["last_minute_judged"] >= minute0 + 11
    event_id = urllib.request.quote(str(events[0]["event_id"]))
    # The event's page carries the argument, step by step, as the report makes it.
    argument = json.loads(s.get(f"/api/v1/events/{event_id}")[1])["results"][0]["argument"]
    steps = {item["id"]: item for item in argument}
    assert "inside_lie_outside_truth" in steps and steps["dark_destination"]["holds"] is None
    served = steps["inside_lie_outside_truth"]["data"]["8.8.8.8:53"]
    assert served["inside"]["forged"] > 0 and served["outside"]["forged"] == 0
    status, pcap_bytes, _ = s.get(f"/api/v1/events/{event_id}/evidence.pcap")
    assert (
        status == 200
        and pcap_bytes[:4] in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4")
        and len(pcap_bytes) > 100
    )
    feed = json.loads(s.get("/api/v1/feeds/events.json")[1])
    assert (
        feed["version"].endswith("1.1") and feed["items"] and "?event=" in feed["items"][-1]["url"]
    )
    atom = s.get("/api/v1/feeds/events.atom")[1].decode()
    assert atom.startswith("<?xml") and "<entry>" in atom and FORGED_2014 in atom
    traces = json.loads(s.get("/api/v1/changepoints?stream=inside")[1])["results"]
    assert traces and any(t["alarm"] for t in traces)
    # Only the inside vantage's stream is in the event: the same resolver, honest outside.
    streams = json.dumps(events[0]["scope"])
    assert "inside" in streams and "outside" not in streams
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not hooked:
        time.sleep(0.1)
    assert hooked and hooked[0]["id"] == alerts[0]["id"]  # the webhook got the alert
    delivered = json.loads(s.get("/api/v1/alerts")[1])["results"][0]["deliveries"]
    assert delivered and delivered[0]["outcome"] == "delivered"
    # The static evidence report of the collector's directory, across both vantages.
    _cli("report", str(data))
    report = json.loads((data / "report.json").read_text())
    (event,) = report["events"]
    assert event["target_address"] == FORGED_2014 and event["checklist"]
    assert report["measurements"] == 14 * 2 * 80
    assert (data / "report.html").exists() and (data / "wallwatch.duckdb").exists()
    hook.shutdown()
    hook.server_close()


def _upload_2014(url: str, tmp_path: Path, tokens: dict[str, str], minute0: int, src: str,
                 pause: float = 0.0,
                 only: Callable[[str, int], bool] = lambda vantage, minute: True) -> None:  # fmt: skip
    """Fourteen minutes of two vantages' rounds; minutes 6-9 forged inside (the 2014 shape).

    ``only(vantage, minute)`` picks the rounds sent (the rest can be sent late)."""
    from test_watch import FORGED_2014

    names = [f"n{i}.example.com" for i in range(40)]
    journal_path = tmp_path / "rounds.jsonl"
    for minute in range(minute0, minute0 + 14):
        forged = minute0 + 6 <= minute < minute0 + 10
        for vantage, token in tokens.items():
            if not only(vantage, minute):
                continue
            journal = Journal.open(journal_path)
            for i, name in enumerate(names):
                truth = f"198.51.100.{i + 1}"
                lie = FORGED_2014 if forged and vantage == "inside" else truth
                for kind, answer in ((TargetKind.RESOLVER, lie), (TargetKind.CONTROL, truth)):
                    reply = Response(t=0.01, rtt=0.01, src=src, sport=53, ip_ttl=60,
                                     raw_response="", rcode=0, ancount=1,
                                     answers=(Answer("A", 60, "", answer),))  # fmt: skip
                    journal.write(Measurement(
                        schema_version=SCHEMA_VERSION,
                        measurement_uid=f"{vantage}-{minute}-{i}-{kind.value}", report_id="r",
                        measurement_start_time="2014-01-21 07:15:00", vantage=vantage,
                        hostname=name, query_type="A",
                        engine=Engine.UDP if kind == TargetKind.RESOLVER else Engine.TCP,
                        resolver_address="8.8.8.8:53", target_kind=kind, transaction_id=i,
                        source_port=4000, t0=0.0, t=0.1, responses=(reply,),
                        annotations={"minute": str(minute)},
                    ))  # fmt: skip
            journal.close()
            assert send(url, token, gzip.compress(journal_path.read_bytes()))["stored"] == 80
            journal_path.unlink()
        time.sleep(pause)


def test_late_rounds_are_rejudged_and_the_change_announced(
    server,
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """The inside vantage's forged minutes arrive after later minutes were judged: the
    collector rebuilds its judgement, the event appears with a ``revised`` alert naming the
    late minutes, verdicts and attributions are counted, and a restart doubles nothing."""
    from test_watch import FORGED_2014

    data = tmp_path / "collector"
    s = server("--grace", "1", "--public-url", "https://ww.example.org/", data=data)
    tokens = {v: _cli("token", "new", v, "--data", str(data)).stdout.strip().splitlines()[-1]
              for v in ("inside", "outside")}  # fmt: skip
    genuine: LoopbackServer = serve(
        authoritative({f"n{i}.example.com": ["192.0.2.1"] for i in range(40)})
    )
    minute0 = 29000100
    forged = range(minute0 + 6, minute0 + 10)
    _upload_2014(s.url, tmp_path, tokens, minute0, genuine.address[0],
                 only=lambda v, m: not (v == "inside" and m in forged))  # fmt: skip
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        heartbeat = json.loads(s.get("/api/v1/heartbeat")[1])["results"][0]
        if heartbeat["last_minute_judged"] == minute0 + 13 and not heartbeat["pending_minutes"]:
            break
        time.sleep(0.2)
    assert heartbeat["last_minute_judged"] == minute0 + 13
    assert json.loads(s.get("/api/v1/events")[1])["results"] == []  # nothing forged seen yet
    _upload_2014(s.url, tmp_path, tokens, minute0, genuine.address[0],
                 only=lambda v, m: v == "inside" and m in forged)  # fmt: skip
    deadline = time.monotonic() + 40
    events: list[dict[str, object]] = []
    while time.monotonic() < deadline and not events:
        events = json.loads(s.get("/api/v1/events")[1])["results"]
        time.sleep(0.3)
    assert events and events[0]["target_address"] == FORGED_2014
    alerts = json.loads(s.get("/api/v1/alerts")[1])["results"]
    revised = [a for a in alerts if a["change"] == "revised"]
    assert revised and revised[0]["late_minutes"] == list(forged)
    # IODA's shape, with the permalink on the public URL.
    start = next(a for a in alerts if a["change"] == "start")
    # One forged reply per query and no genuine one behind it: a resolver's lie as far as
    # this data shows (no dark host, no race), so a warning, not a proven injection.
    assert events[0]["attribution"] == "tampering_resolver"
    assert start["level"] == "warning" and start["method"] == "cusum"
    assert start["entity"]["code"] == FORGED_2014 and start["datasource"] == "wallwatch:inside"
    assert start["value"] > start["history_value"] and start["condition"].startswith("cusum")
    assert start["permalink"] == "https://ww.example.org/?event=" + urllib.request.quote(
        str(events[0]["event_id"])
    )
    # Verdicts and attributions, as judged, by two axes and as filters.
    rows = json.loads(s.get("/api/v1/aggregation?axis=vantage&axis=attribution&grain=day")[1])[
        "results"
    ]
    counts = {(r["vantage"], r["attribution"]): r["measurements"] for r in rows}
    assert counts[("inside", "tampering_resolver")] == 4 * 40, counts
    assert ("outside", "tampering_resolver") not in counts
    picked = json.loads(s.get("/api/v1/measurements?attribution=tampering_resolver&limit=10000")[1])
    assert len(picked["results"]) == 4 * 40 and {r["vantage"] for r in picked["results"]} == {
        "inside"
    }
    answers = json.loads(s.get("/api/v1/aggregation?axis=answer&grain=day&vantage=inside")[1])[
        "results"
    ]
    assert any(r["answer"] == FORGED_2014 and r["measurements"] == 4 * 40 for r in answers)
    assert s.get("/api/v1/aggregation?axis=vantage&axis=tld&axis=verdict")[0] == 422
    assert s.get("/api/v1/measurements?verdict=no_such_outcome")[0] == 422
    # A restart rebuilds the same judgement and raises nothing twice.
    s.stop()
    s2 = server("--grace", "1", data=data)
    time.sleep(2)
    again = json.loads(s2.get("/api/v1/alerts")[1])["results"]
    assert [a["id"] for a in again] == [a["id"] for a in alerts]
    assert (
        json.loads(s2.get("/api/v1/events")[1])["results"][0]["event_id"] == events[0]["event_id"]
    )


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason="Debian's chromium is needed (scripts/setup)"
)
def test_the_dashboard_shows_the_event_live_with_permalinks_and_csv(
    server,
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    """A real browser watches the event appear without a reload, follows its permalink and
    downloads a CSV; nothing is loaded from outside the machine."""
    from playwright.sync_api import expect, sync_playwright

    data = tmp_path / "collector"
    s = server("--grace", "2", data=data)
    tokens = {v: _cli("token", "new", v, "--data", str(data)).stdout.strip().splitlines()[-1]
              for v in ("inside", "outside")}  # fmt: skip
    genuine: LoopbackServer = serve(authoritative({"n0.example.com": ["192.0.2.1"]}))
    outside_requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])  # fmt: skip
        page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone's width
        page.on(
            "request", lambda r: None if r.url.startswith(s.url) else outside_requests.append(r.url)
        )
        page.goto(s.url + "/?by=tld")
        assert page.get_attribute("#events", "data-count") == "0"
        assert page.get_attribute("#series", "data-rows") in (None, "0")
        _upload_2014(s.url, tmp_path, tokens, 29000000, genuine.address[0])
        page.wait_for_selector("[data-event]", timeout=20000)  # no reload: the stream brought it
        # The chart grew with the minutes, live, grouped as the URL says; the answers table
        # shows the forged address.
        page.wait_for_selector("#series svg", timeout=10000)
        page.wait_for_function(
            "Number(document.querySelector('#series').dataset.rows) >= 10", timeout=15000
        )
        assert page.input_value("#by") == "tld"
        page.wait_for_selector('[data-answer="65.49.2.178"]', timeout=10000)
        assert "inside" in page.text_content('[data-answer="65.49.2.178"]')
        page.select_option("#signal", "top_share")
        assert "signal=top_share" in page.url and "by=tld" in page.url
        with page.expect_download() as chart_csv:
            page.click("#series-csv")
        chart_path = chart_csv.value.path()
        assert chart_path is not None
        assert Path(chart_path).read_text().splitlines()[0] == "minute,tld,top_share"
        event_id = page.get_attribute("[data-event]", "data-event")
        assert event_id and "65.49.2.178" in event_id
        page.click("[data-event] a")
        assert f"event={event_id}" in page.url.replace("%3A", ":")
        assert "65.49.2.178" in page.text_content("#event")
        # The argument is judged from the minute logs uploaded so far, and the stream redraws
        # it as more arrive (emptied, then filled): wait until the step is drawn, once.
        expect(page.locator('[data-step="inside_lie_outside_truth"]')).to_have_count(
            1, timeout=20000
        )
        # The permalink alone, in a new page, shows the same event.
        other = browser.new_page()
        other.goto(page.url)
        other.wait_for_selector("#event-section:not([hidden])", timeout=10000)
        assert "65.49.2.178" in other.text_content("#event")
        with page.expect_download() as download:
            page.click("#csv-measurements")
        path = download.value.path()
        assert path is not None and Path(path).read_text().startswith("measurement_uid,")
        assert page.locator("[data-vantage]").count() == 2
        assert " error " not in (page.text_content("#log") or "")  # no script failed
        browser.close()
    assert outside_requests == []


def test_hostile_uploads_are_always_4xx_and_store_nothing(server, tmp_path: Path) -> None:  # noqa: ANN001
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    s = server()
    token = _cli("token", "new", "here", "--data", str(s.data)).stdout.strip().splitlines()[-1]
    good = _measurements(tmp_path / "m.jsonl", "here", 3).read_bytes().splitlines()[0]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(str.encode),
        st.builds(lambda k, v: good.replace(k, v), st.sampled_from([b'"vantage":"here"', b'"schema_version":1',
                  b'"record_type":"measurement"', b'"engine":"udp"', b'"responses":[']),
                  st.sampled_from([b'"vantage":1', b'"schema_version":"x"', b'"record_type":"evil"',
                                   b'"engine":"<script>"', b'"responses":{']))))  # fmt: skip
    def post(body: bytes) -> None:
        status, _ = s.post(body, token)
        assert 400 <= status < 500 or (status == 200 and not body.strip()), (status, body)

    post()
    assert json.loads(s.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"] == []
    # Hostile strings in valid records are stored as data and never become markup.
    hostile = good.replace(b'"n0.example.com"', b'"<img src=x onerror=alert(1)>"')
    assert s.post(hostile, token)[0] == 200
    csv_text = s.get("/api/v1/measurements?format=csv")[1].decode()
    assert "<img src=x onerror=alert(1)>" in csv_text  # data, as it came
    page = s.get("/")[1].decode()
    assert "<img" not in page and ".textContent" in page and "innerHTML" not in page


def test_private_mode_unix_socket_and_rate_limits(tmp_path: Path) -> None:
    from wallwatch.observatory.agent import _UnixConnection

    data = tmp_path / "collector"
    sock = tmp_path / "ww.sock"
    token = _cli("token", "new", "here", "--data", str(data)).stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([sys.executable, "-m", "wallwatch", "serve", "--data", str(data), "--uds", str(sock),
                             "--private", "--rate-limit", "0.005"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)

        def get(path: str, auth: str | None) -> int:
            conn = _UnixConnection(str(sock), timeout=10)
            conn.request("GET", path, headers={"Authorization": f"Bearer {auth}"} if auth else {})
            status = conn.getresponse().status
            conn.close()
            return status

        assert get("/api/v1/events", None) == 401  # private: reading needs a token
        assert get("/api/v1/events", token) == 200
        records = _measurements(tmp_path / "m.jsonl", "here", 5000, per_minute=5000)
        assert send(f"unix:{sock}", token, gzip.compress(records.read_bytes()))["stored"] == 5000
        # Storing 5,000 measurements cost this token more than its 0.005 s of server time a
        # minute: its next request waits (429), whatever it asks.
        assert get("/api/v1/heartbeat", token) == 429
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_watch_ships_each_round_as_it_closes_and_the_collector_sees_the_event(
    server,  # noqa: ANN001
    loopback_2014,  # noqa: ANN001, F811
    tmp_path: Path,
) -> None:
    from test_watch import FORGED_2014, config
    from wallwatch.watch import Watch

    clock, vantage = loopback_2014
    data = tmp_path / "collector"
    s = server("--grace", "1", data=data)
    token = _cli("token", "new", vantage.name, "--data", str(data)).stdout.strip().splitlines()[-1]
    cfg = config(tmp_path, clock, vantage, upload=s.url, upload_token=token)
    lines: list[str] = []
    Watch(cfg, emit=lines.append).run()
    rounds = [json.loads(x) for x in (cfg.out / "rounds.jsonl").read_text().splitlines()]
    total = sum(r["measurements"] for r in rounds)
    agg = json.loads(s.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"]
    assert sum(int(r["measurements"]) for r in agg) == total > 0  # every round, once
    assert not list((cfg.out / "spool").glob("*.gz"))  # the spool drained
    events = _events(s, 15)
    assert events and events[0]["target_address"] == FORGED_2014


def test_passive_ships_each_closed_minute_and_the_collector_sees_the_event(
    server,  # noqa: ANN001
    tmp_path: Path,
) -> None:
    """``wallwatch passive --dnstap FILE --upload URL --token T``: a resolver's fourteen
    minutes (every .com name forged in minutes 6-9, each answer three times) reach the
    collector once each, repeats counted on their records, and the collector raises the
    event from them."""
    from test_passive import FORGED, _minutes_2014
    from wallwatch.interop import dnstap

    data = tmp_path / "collector"
    s = server("--grace", "1", data=data)
    token = _cli("token", "new", "isp", "--data", str(data)).stdout.strip().splitlines()[-1]
    tapfile = tmp_path / "resolver.dnstap"
    with open(tapfile, "wb") as handle:
        dnstap.write_frames(handle, _minutes_2014(23_330_000, range(14), copies=3))
    out = tmp_path / "passive"
    done = _cli("passive", "--dnstap", str(tapfile), "-o", str(out), "--vantage", "isp",
                "--upload", s.url, "--token", token)  # fmt: skip
    assert "14 minutes judged" in done.stderr
    written = [json.loads(line) for f in (out / "measurements").glob("passive-m*.jsonl")
               for line in f.read_text().splitlines()]  # fmt: skip
    assert len(written) == 14 * 40 and sum(int(w["annotations"].get("count", "1"))
                                           for w in written) == 14 * 40 * 3  # fmt: skip
    agg = json.loads(s.get("/api/v1/aggregation?axis=vantage&grain=day")[1])["results"]
    assert sum(int(r["measurements"]) for r in agg) == len(written)  # each record once
    assert not list((out / "spool").glob("*.gz"))  # the spool drained
    events = _events(s, 20)
    assert events and events[0]["target_address"] == FORGED


def test_the_measured_flood_is_served_and_its_file_checked(server, tmp_path: Path) -> None:  # noqa: ANN001
    from wallwatch import flood

    counts = tmp_path / "connections.json"
    s = server("--connections", str(counts))
    # No file yet: nothing measured, said as an empty answer.
    status, body, _ = s.get("/api/v1/connections?address=65.49.2.178")
    assert status == 200 and json.loads(body)["results"] == []
    counts.write_text(json.dumps({"1390288500": {"65.49.2.178": 40, "192.0.2.7": 3},
                                  "1390288501": {"65.49.2.178": 55}}))  # fmt: skip
    rows = json.loads(s.get("/api/v1/connections?address=65.49.2.178")[1])["results"]
    assert [r["connections"] for r in rows] == [40, 55]
    assert s.get("/api/v1/connections?address=%3Cscript%3E")[0] == 422
    assert s.get("/api/v1/connections")[0] == 422
    counts.write_text(json.dumps({"1390288500": {"65.49.2.178": -1}}))
    status, body, _ = s.get("/api/v1/connections?address=65.49.2.178")
    assert status == 503 and b"not a count" in body
    for junk, where in (([], "object of seconds"), ({"x": {}}, "'x' is not a Unix second"),
                        ({"1": {"nope": 1}}, "'nope' is not an address")):  # fmt: skip
        with pytest.raises(flood.FloodError, match=where):
            flood.parse(junk)
    per = flood.parse({"100": {"65.49.2.178": 2}, "101": {"65.49.2.178": 5, "192.0.2.1": 1}})
    summary = flood.for_event(flood.retime(per, lambda t: t * 60), "65.49.2.178", 6000, None)
    assert summary["connections"] == 7 and summary["peak_per_second"] == 5
    assert summary["connections_elsewhere"] == 1


def test_each_shield_is_a_vantage(server, serve, tmp_path: Path) -> None:  # noqa: ANN001
    """``wallwatch shield --upload URL --token T``: every upstream query the shield made,
    with each reply and why it was dropped or accepted, reaches the collector once."""
    from test_shield import MIRROR, ZONE, addresses, ask, injector, shield_process

    data = tmp_path / "collector"
    s = server("--grace", "1", data=data)
    token = _cli("token", "new", "home-shield", "--data", str(data)).stdout.strip().splitlines()[-1]
    upstream = serve(injector([MIRROR]))
    out = tmp_path / "shield"
    proc, port = shield_process(upstream.address, out, "--vantage", "home-shield",
                                "--upload", s.url, "--token", token, stderr=subprocess.PIPE)  # fmt: skip
    try:
        for name in ["www.example.com", "www.example.net"] * 5:
            assert addresses(ask(port, name)) == [ZONE[name][0]]
        time.sleep(2.5)  # closed, written, spooled (each second), sent
    finally:
        proc.terminate()
        assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
        if proc.stderr:
            proc.stderr.close()
    written = (out / "measurements.jsonl").read_text().splitlines()
    assert len(written) == 10
    rows = json.loads(s.get("/api/v1/measurements?limit=100")[1])["results"]
    assert len(rows) == 10 and {r["vantage"] for r in rows} == {"home-shield"}
    assert not list((out / "spool").glob("*.gz"))
