"""Alert delivery: deadlines, retries, a log, and exactly once per receiver across restarts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from wallwatch.delivery import Deliverer, Policy

FAST = Policy(connect_timeout=1.0, total_timeout=1.0, attempts=3, backoff=0.05)


class Receiver:
    """A local HTTP receiver whose behaviour per request is scripted."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.got: list[tuple[str, dict[str, object]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.got.append((self.headers["Idempotency-Key"], body))
                action = receiver.script.pop(0) if receiver.script else "ok"
                if action == "trickle":  # one byte every 0.4 s, forever (until cut off)
                    self.wfile.write(b"H")
                    for _ in range(20):
                        time.sleep(0.4)
                        try:
                            self.wfile.write(b"T")
                            self.wfile.flush()
                        except OSError:
                            return
                    return
                self.send_response({"fail": 500, "refuse": 404}.get(action, 200))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[type[Receiver]]:
    made: list[Receiver] = []

    def make(script: list[str]) -> Receiver:
        r = Receiver(script)
        made.append(r)
        return r

    yield make  # type: ignore[misc]
    for r in made:
        r.close()


def _log(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_a_trickling_receiver_never_blocks_the_sender(receiver, tmp_path: Path) -> None:  # noqa: ANN001
    slow = receiver(["trickle", "trickle", "trickle"])
    d = Deliverer(tmp_path / "deliveries.jsonl", [slow.url], policy=FAST).start()
    start = time.monotonic()
    d.send({"id": "a1", "change": "start"})
    assert time.monotonic() - start < 0.1  # send() only queues
    d.close(timeout=10)
    entry = _log(tmp_path / "deliveries.jsonl")[-1]
    assert entry["outcome"] == "failed" and entry["attempts"] == 3
    assert "within 1 s" in str(entry["detail"])
    assert time.monotonic() - start < 6  # three attempts, each cut at the 1 s deadline


def test_a_5xx_is_retried_and_delivered_once(receiver, tmp_path: Path) -> None:  # noqa: ANN001
    flaky = receiver(["fail", "fail", "ok"])
    d = Deliverer(tmp_path / "deliveries.jsonl", [flaky.url], policy=FAST).start()
    d.send({"id": "a1", "change": "start"})
    d.close()
    assert [k for k, _ in flaky.got] == ["a1", "a1", "a1"]
    assert [e["outcome"] for e in _log(tmp_path / "deliveries.jsonl")] == ["delivered"]


def test_a_restart_sends_what_was_raised_but_not_delivered_exactly_once(
    receiver,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(
        "".join(json.dumps({"id": f"a{i}", "change": "start"}) + "\n" for i in range(3))
    )
    hook = receiver([])
    log = tmp_path / "deliveries.jsonl"
    log.write_text(json.dumps({"id": "a0", "receiver": hook.url, "outcome": "delivered"}) + "\n"
                   + '{"id": "a1", "receiv')  # a line torn by the crash: a1 is sent again  # fmt: skip
    Deliverer(log, [hook.url], policy=FAST).start(pending_from=alerts).close()
    assert sorted(k for k, _ in hook.got) == ["a1", "a2"]
    Deliverer(log, [hook.url], policy=FAST).start(pending_from=alerts).close()  # and again: nothing
    assert sorted(k for k, _ in hook.got) == ["a1", "a2"]


def test_a_refusing_receiver_is_not_retried(receiver, tmp_path: Path) -> None:  # noqa: ANN001
    hook = receiver(["refuse"])
    d = Deliverer(tmp_path / "d.jsonl", [hook.url], policy=FAST).start()
    d.send({"id": "x", "change": "end"})
    d.close()
    assert len(hook.got) == 1 and _log(tmp_path / "d.jsonl")[0]["outcome"] == "refused"
