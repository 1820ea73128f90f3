"""Chaos: kill -9 at random points, a full disk; then resume and count. Nothing lost, nothing doubled.

Every test is bounded in time (a few seconds each) and sends packets only to loopback.
The figures are in docs/reliability.md.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import ingest_both
from wallwatch import store
from wallwatch.lab.loopback import LoopbackServer, authoritative

pytestmark = pytest.mark.chaos
NAMES = 3000


def _names(tmp_path: Path, count: int = NAMES) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("".join(f"n{i}.example.com\n" for i in range(count)))
    return path


def _server(serve: Callable[..., LoopbackServer], count: int = NAMES) -> LoopbackServer:
    return serve(authoritative({f"n{i}.example.com": ["192.0.2.1"] for i in range(count)}))


def _probe(names: Path, server: LoopbackServer, out: Path, *extra: str) -> subprocess.Popen[bytes]:
    """The probe CLI in a child; its stderr goes to ``out``.stderr."""
    with open(f"{out}.stderr", "ab") as err:
        return subprocess.Popen(
        [sys.executable, "-m", "wallwatch", "probe", "-f", str(names), "-t", server.spec,
         "-o", str(out), "--quiet", "--rate", "3000", "--window", "0.05", "--timeout", "0.3",
         "--retries", "0", *extra],
        stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
    )  # fmt: skip


def _keys(out: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in out.read_bytes().splitlines():
        record = json.loads(line)
        if record["record_type"] == "measurement":
            counts[record["hostname"]] += 1
    return counts


def _children_writing(out: Path) -> list[int]:
    """Processes whose command line names ``out`` (workers left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(out).encode() in cmdline and state != "Z":
            found.append(int(entry.name))
    return found


@pytest.mark.parametrize("procs", [1, 2])
def test_kill_9_at_random_points_then_resume_loses_and_doubles_nothing(
    serve,
    tmp_path: Path,
    procs: int,  # noqa: ANN001
) -> None:
    names, server, out = _names(tmp_path), _server(serve), tmp_path / "out.jsonl"
    rng = random.Random(procs)
    kills = 0
    for _ in range(4):
        proc = _probe(
            names, server, out, "--procs", str(procs), *(["--resume"] if out.exists() else [])
        )
        time.sleep(rng.uniform(0.2, 0.6))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)  # the parent only: its workers must follow it
            kills += 1
        proc.wait()
        deadline = time.monotonic() + 5
        while _children_writing(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _children_writing(out), "a worker outlived its killed parent"
    final = _probe(names, server, out, "--procs", str(procs), "--resume")
    assert final.wait(timeout=60) == 0, Path(f"{out}.stderr").read_text()
    counts = _keys(out)
    assert kills >= 1
    assert len(counts) == NAMES, f"lost {NAMES - len(counts)}"
    assert max(counts.values()) == 1, f"doubled {sum(1 for c in counts.values() if c > 1)}"
    # Whatever the kills left of the Parquet twin, ingest through it gives the JSONL's store.
    assert ingest_both(out, tmp_path) >= NAMES


def test_kill_9_during_ingest_then_ingest_again_loads_everything_once(
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    names, server, out = _names(tmp_path), _server(serve), tmp_path / "out.jsonl"
    assert _probe(names, server, out).wait(timeout=60) == 0
    db = tmp_path / "s.duckdb"
    for delay in (0.05, 0.15, 0.3):
        proc = subprocess.Popen([sys.executable, "-m", "wallwatch", "ingest", str(out), "--db", str(db)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        time.sleep(delay)
        proc.kill()
        proc.wait()
    done = subprocess.run([sys.executable, "-m", "wallwatch", "ingest", str(out), "--db", str(db)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    again = subprocess.run([sys.executable, "-m", "wallwatch", "ingest", str(out), "--db", str(db)],
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert again.returncode == 0 and "+0 measurements" in again.stderr
    assert store.query(
        db, "SELECT count(*), count(DISTINCT measurement_uid) FROM measurements"
    ) == [(NAMES, NAMES)]


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("mount"), reason="needs root to mount a tmpfs"
)
def test_a_full_disk_is_one_line_and_keeps_what_was_written(serve, tmp_path: Path) -> None:  # noqa: ANN001
    names, server = _names(tmp_path), _server(serve)
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)], check=True)
    try:
        out = small / "out.jsonl"
        proc = subprocess.run(
            [sys.executable, "-m", "wallwatch", "probe", "-f", str(names), "-t", server.spec,
             "-o", str(out), "--quiet", "--rate", "3000", "--window", "0.05", "--timeout", "0.3",
             "--retries", "0"], capture_output=True, timeout=60,
        )  # fmt: skip
        text = proc.stderr.decode()
        assert proc.returncode == 1, text
        assert "No space left on device" in text and "Traceback" not in text
        assert len([line for line in text.splitlines() if line.strip()]) <= 2, text
        counts = _keys_tolerant(out)
        assert counts and max(counts.values()) == 1  # every record written is whole and once
    finally:
        subprocess.run(["umount", str(small)], check=False)


def _keys_tolerant(out: Path) -> Counter[str]:
    """Like :func:`_keys`, dropping a last line torn by the full disk."""
    lines = out.read_bytes().split(b"\n")
    counts: Counter[str] = Counter()
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record["record_type"] == "measurement":
            counts[record["hostname"]] += 1
    return counts


def test_kill_9_of_watch_mid_round_leaves_no_sweep_behind_and_no_silent_minute(
    serve,
    tmp_path: Path,  # noqa: ANN001
) -> None:
    names, server = _names(tmp_path, 600), _server(serve, 600)
    out = tmp_path / "watch"
    argv = [sys.executable, "-m", "wallwatch", "watch", "-f", str(names), "-o", str(out),
            "-V", f"here={server.spec}", "--every", "1", "--rate", "1500", "--timeout", "0.3",
            "--window", "0.05"]  # fmt: skip
    with open(tmp_path / "watch.stderr", "ab") as err:
        proc = subprocess.Popen([*argv, "--rounds", "50"], stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while not _children_writing(out / "measurements") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _children_writing(out / "measurements"), "no sweep started"
    while time.monotonic() < deadline and not any(
        f.stat().st_size for f in (out / "measurements").glob("r000000-*.jsonl")
    ):
        time.sleep(0.01)  # kill once the first round has written part of its sweep
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    assert not _children_writing(out / "measurements"), "a sweep outlived the killed watch"
    done = subprocess.run([*argv, "--rounds", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rounds = [json.loads(x) for x in (out / "rounds.jsonl").read_text().splitlines()]
    torn = [r for r in rounds if r.get("partial")]
    assert torn, rounds  # the killed round was found
    for r in torn:  # either whole and judged, or set aside and not judged
        assert r["discarded"] == (r["measurements"] < 600)
    judged = [r for r in rounds if not r.get("discarded")]
    assert sum(r["measurements"] for r in judged) == 600 * len(judged)
