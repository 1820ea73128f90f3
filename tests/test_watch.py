"""``watch`` on loopback: an injector switched on and off by the clock, then the report.

The resolver on 127.0.0.1 is raced by an injector that forges 65.49.2.178 for
.com/.net/.org names between 15:14 and 15:18 of a compressed clock (30x: a minute
every two seconds); 127.0.0.2 is a dark host that only the injector "answers" for.
Every round runs ``wallwatch probe`` in a child process, as in the lab.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import msgspec
import pytest
from click.testing import CliRunner

from conftest import check_report_in_browser
from wallwatch.cli import main
from wallwatch.demo import FORGED_2014, demo_names, matches_2014
from wallwatch.lab import zones
from wallwatch.lab.loopback import Forgery, authoritative, racing_injector
from wallwatch.watch import Clock, Vantage, Watch, WatchConfig

CHINA = timezone(timedelta(hours=8))
START = datetime(2014, 1, 21, 15, 10, tzinfo=CHINA)
ON, OFF = START + timedelta(minutes=4), START + timedelta(minutes=8)
SCALE = 30.0


def panel(tmp_path: Path) -> Path:
    names = [n.hostname for n in demo_names()]
    per_tld = {"com": 12, "net": 6, "org": 6, "cn": 8}
    chosen = [
        n for tld, k in per_tld.items() for n in [x for x in names if x.endswith("." + tld)][:k]
    ]
    path = tmp_path / "panel.txt"
    path.write_text("\n".join(chosen) + "\n")
    return path


@pytest.fixture
def loopback_2014(serve):  # noqa: ANN001, ANN201
    """(clock, vantage): the clock starts now at 15:10 China time."""
    clock = Clock(time.time(), SCALE, START.timestamp(), CHINA)
    on, off = ON.timestamp(), OFF.timestamp()

    def injecting(name: str) -> bool:
        return on <= clock.now() < off and matches_2014(name)

    zone = {n.hostname: [zones.genuine_address(n.hostname)] for n in demo_names()}
    genuine = authoritative(zone)
    forgery = Forgery(FORGED_2014, ip_ttl=103, answer_ttl=236)
    resolver = serve(racing_injector(genuine, injecting, [forgery], genuine_delay=0.04,
                                     genuine_ip_ttl=52), tcp_handler=genuine)  # fmt: skip
    dark = serve(racing_injector(lambda _r: None, injecting, [forgery]), "127.0.0.2", tcp=False)
    (rh, rp), (dh, dp) = resolver.address, dark.address
    vantage = Vantage("inside", (f"{rh}:{rp}", f"dark:{dh}:{dp}"), (f"tcp:{rh}:{rp}",))
    return clock, vantage


def config(tmp_path: Path, clock: Clock, vantage: Vantage, **kw: object) -> WatchConfig:
    args: dict[str, object] = dict(
        names=panel(tmp_path), out=tmp_path / "watch", vantages=[vantage], clock=clock,
        timeout=0.25, window=0.15, until=(START + timedelta(minutes=11)).timestamp(),
    )  # fmt: skip
    args.update(kw)
    return WatchConfig(**args)  # type: ignore[arg-type]


def minute(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def test_watch_raises_the_event_within_a_minute_and_ends_it(loopback_2014, tmp_path) -> None:  # noqa: ANN001
    clock, vantage = loopback_2014
    lines: list[str] = []
    posted: list[str] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            posted.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args: object) -> None:
            pass

    hook = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    cfg = config(tmp_path, clock, vantage, post=f"http://127.0.0.1:{hook.server_address[1]}/alerts")
    try:
        Watch(cfg, emit=lines.append).run()
    finally:
        hook.shutdown()
        hook.server_close()
    assert posted == lines  # every alert also went to the URL, once
    deliveries = [json.loads(x) for x in (cfg.out / "deliveries.jsonl").read_text().splitlines()]
    assert [d["outcome"] for d in deliveries] == ["delivered"] * len(lines)
    alerts = [json.loads(line) for line in lines]
    assert [a["change"] for a in alerts] == ["start", "end"], alerts
    event = alerts[-1]["event"]
    assert event["target_address"] == FORGED_2014
    assert abs(minute(event["onset"]) - ON) <= timedelta(minutes=1)
    assert abs(minute(event["end"]) - OFF) <= timedelta(minutes=1)
    assert minute(event["detected_at"]) - ON <= timedelta(minutes=2)
    assert event["attribution"] == "on_path_injector"
    assert event["scope"]["tlds"] == ["com", "net", "org"]
    assert any("dark" in r for r in event["scope"]["resolvers"])
    # The alert lines are also on disk, and events.json holds the same event.
    assert (cfg.out / "alerts.jsonl").read_text().splitlines() == lines
    saved = json.loads((cfg.out / "events.json").read_text())
    assert saved["events"][0]["onset"] == event["onset"]

    # The report of that directory: the analysis agrees, the checklist holds.
    result = CliRunner().invoke(main, ["report", str(cfg.out)])
    assert result.exit_code == 0, result.output
    report = json.loads((cfg.out / "report.json").read_text())
    (ev,) = report["events"]
    assert ev["attribution"] == "on_path_injector"
    checks = {c["id"]: c["holds"] for c in ev["checklist"]}
    assert checks["dark_destination"] and checks["too_fast"] and checks["one_address_or_known_pool"]
    assert checks["selective_scope"]  # .cn untouched
    assert ev["target_owner"]["name"].startswith("Dynamic Internet Technology")
    assert {e["label"].split(" ")[0] for e in ev["examples"]} >= {"Forged", "A"}
    assert FORGED_2014 in ev["examples"][0]["dig"]
    _check_pcap(cfg.out / "evidence.pcap")
    check_report_in_browser(cfg.out / "report.html", tmp_path)


def _check_pcap(path: Path) -> None:
    import dpkt

    with open(path, "rb") as f:
        reader = dpkt.pcap.Reader(f)
        assert reader.datalink() == 101  # LINKTYPE_RAW
        packets = [(ts, dpkt.ip.IP(buf)) for ts, buf in reader]
    assert packets and all(ip.p == 17 for _ts, ip in packets)
    replies = [ip for _ts, ip in packets if ip.src == bytes([127, 0, 0, 1])]
    answers = set()
    for ip in replies:
        message = dpkt.dns.DNS(ip.udp.data)
        answers |= {bytes(a.rdata) for a in message.an if a.type == 1}
    assert bytes([65, 49, 2, 178]) in answers  # the forgery, as received
    assert {ip.ttl for ip in replies} >= {103, 52}  # forged and genuine IP TTLs kept


def test_a_restart_resumes_without_losing_or_doubling_minutes(loopback_2014, tmp_path) -> None:  # noqa: ANN001
    clock, vantage = loopback_2014
    first: list[str] = []
    cfg = config(tmp_path, clock, vantage, rounds=3)
    Watch(cfg, emit=first.append).run()
    done = [
        msgspec.json.decode(line) for line in (cfg.out / "rounds.jsonl").read_bytes().splitlines()
    ]
    assert [r["round"] for r in done] == [0, 1, 2]
    # A crash tore the next round: one record and half of another are on disk, and
    # no round record says the round finished.
    last = sorted((cfg.out / "measurements").glob("r000002-*"))[0]
    torn = cfg.out / "measurements" / f"r000003-m{done[-1]['minute'] + 1}-inside.jsonl"
    torn.write_bytes(last.read_bytes().splitlines(keepends=True)[0] + b'{"record_type": "meas')
    second: list[str] = []
    Watch(config(tmp_path, clock, vantage, rounds=6), emit=second.append).run()
    records = [
        msgspec.json.decode(line) for line in (cfg.out / "rounds.jsonl").read_bytes().splitlines()
    ]
    assert [r["round"] for r in records] == [0, 1, 2, 3, 4, 5]
    # Half a sweep is not a quiet minute: set aside (kept on disk), not judged.
    assert records[3]["partial"] and records[3]["discarded"] and records[3]["measurements"] == 1
    assert (torn.parent / (torn.name + ".torn")).exists() and not torn.exists()
    minutes = json.loads((cfg.out / "events.json").read_text())["minutes"]
    judged = {r["minute"] for r in records if not r.get("discarded")}
    assert len(minutes) == len(set(minutes)) == len(judged)
    changes = [json.loads(line)["change"] for line in first + second]
    assert changes.count("start") <= 1 and len(first + second) == len(set(first + second))
    result = CliRunner().invoke(main, ["report", str(cfg.out)])
    assert result.exit_code == 0, result.output
    report = json.loads((cfg.out / "report.json").read_text())
    assert any("torn" in m for m in report["missing"])
    assert report["measurements"] == sum(
        r["measurements"] for r in records if not r.get("discarded")
    )


def test_an_alert_raised_but_not_logged_before_a_crash_is_raised_once_on_restart(
    loopback_2014,
    tmp_path,  # noqa: ANN001
) -> None:
    """A kill between writing rounds.jsonl and alerts.jsonl: the restart re-derives the
    alerts of the finished rounds and raises the missing one, exactly once."""
    clock, vantage = loopback_2014
    first: list[str] = []
    cfg = config(tmp_path, clock, vantage)
    Watch(cfg, emit=first.append).run()
    alerts = cfg.out / "alerts.jsonl"
    logged = alerts.read_text().splitlines()
    assert [json.loads(a)["change"] for a in logged] == ["start", "end"]
    alerts.write_text(logged[0] + "\n" + logged[1][: len(logged[1]) // 2])  # "end" torn away
    second: list[str] = []
    Watch(config(tmp_path, clock, vantage), emit=second.append).run()
    assert [json.loads(a)["change"] for a in second] == ["end"]
    ids = [json.loads(a)["id"] for a in alerts.read_text().splitlines() if a.endswith("}")]
    assert len(ids) == len(set(ids)) == 2
    third: list[str] = []
    Watch(config(tmp_path, clock, vantage), emit=third.append).run()
    assert third == []


def test_report_of_an_empty_directory_says_what_is_missing(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["events"] == []
    assert any("events.json" in m for m in report["missing"])
    assert any("nothing was measured" in m for m in report["missing"])
    assert "What this report cannot show" in (tmp_path / "report.html").read_text()


def test_watch_rejects_a_bad_vantage() -> None:
    result = CliRunner().invoke(main, ["watch", "-f", __file__, "-o", "/tmp/x", "-V", "nothing"])
    assert result.exit_code != 0 and "NAME=TARGET" in result.output
