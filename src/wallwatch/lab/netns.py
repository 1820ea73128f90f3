"""Network namespaces for the lab: create, wire, run in, and remove, with iproute2.

Safety rules, enforced here rather than trusted to callers:

* every namespace wallwatch creates is named ``ww-lab-<node>``; :func:`ours` lists
  only those, and :func:`teardown` removes only those (with every process inside);
* a veth pair is created with *both* ends already inside lab namespaces
  (``ip link add ... netns A ... peer ... netns B``), so no lab interface ever
  exists in the machine's own namespace, not even for a moment;
* :func:`assert_isolated` checks after set-up that the root namespace's
  interfaces are exactly what they were before, and that no lab namespace has a
  link whose peer lives outside the lab.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence

PREFIX = "ww-lab-"


class LabError(RuntimeError):
    """The lab could not be set up or torn down; the message says where."""


def can_use_namespaces() -> str | None:
    """None when namespaces can be made here; otherwise the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root (run as root, or use the loopback lab)"
    if shutil.which("ip") is None:
        return "iproute2's 'ip' command is missing (apt-get install iproute2)"
    probe = f"{PREFIX}probe-{os.getpid()}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode:
        return f"'ip netns add' failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def run(args: Sequence[str], *, check: bool = True) -> str:
    """Run a command; raise :class:`LabError` with its stderr when it fails."""
    done = subprocess.run(list(args), capture_output=True, text=True)
    if check and done.returncode:
        raise LabError(f"{' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def run_input(args: Sequence[str], text: str) -> None:
    """Run a command fed ``text`` on stdin (``ip -batch -``); raise :class:`LabError` on failure."""
    done = subprocess.run(list(args), input=text, capture_output=True, text=True)
    if done.returncode:
        raise LabError(f"{' '.join(args)}: {done.stderr.strip()}")


def ns_name(node: str) -> str:
    return PREFIX + node


def ip(ns: str, *args: str) -> str:
    """``ip`` inside namespace ``ns``."""
    return run(["ip", "-n", ns, *args])


def ours() -> list[str]:
    """Lab namespaces that exist now (only ``ww-lab-`` ones)."""
    out = run(["ip", "netns", "list"], check=False)
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(PREFIX)]


def add_namespace(node: str) -> str:
    ns = ns_name(node)
    run(["ip", "netns", "add", ns])
    ip(ns, "link", "set", "lo", "up")
    return ns


def add_veth(a_ns: str, a_if: str, b_ns: str, b_if: str, a_mac: str | None = None) -> None:
    """A veth pair created directly inside two lab namespaces."""
    if not (a_ns.startswith(PREFIX) and b_ns.startswith(PREFIX)):
        raise LabError("both ends of a lab link must be in lab namespaces")
    args = ["ip", "link", "add", a_if, "netns", a_ns]
    if a_mac:
        args += ["address", a_mac]
    run([*args, "type", "veth", "peer", "name", b_if, "netns", b_ns])
    ip(a_ns, "link", "set", a_if, "up")
    ip(b_ns, "link", "set", b_if, "up")


def root_links() -> list[str]:
    """Interface names of the machine's own namespace."""
    out = run(["ip", "-o", "link", "show"])
    return sorted(line.split(":")[1].strip().split("@")[0] for line in out.splitlines())


def assert_isolated(before: list[str], namespaces: Sequence[str]) -> None:
    """Refuse a lab that touches the machine's own network."""
    after = root_links()
    if after != before:
        raise LabError(f"the root namespace's interfaces changed: {before} -> {after}")
    for ns in namespaces:
        for line in ip(ns, "-o", "-d", "link", "show").splitlines():
            if " veth " in line and f"link-netns {PREFIX}" not in line:
                raise LabError(f"{ns}: a veth whose peer is not in the lab: {line.split(':')[1]}")
        routes = ip(ns, "route", "show", "default")
        if routes.strip() and "dev" not in routes:
            raise LabError(f"{ns}: unexpected default route {routes.strip()}")


#: Processes this interpreter started, reaped by :func:`teardown` (no zombies).
_children: list[subprocess.Popen[bytes]] = []


def spawn(ns: str, args: Sequence[str], log: str) -> subprocess.Popen[bytes]:
    """Start a long-running process inside a lab namespace, logging to ``log``."""
    with open(log, "ab") as handle:
        child = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children.append(child)
    return child


def spawned() -> list[subprocess.Popen[bytes]]:
    """The processes :func:`spawn` started in this process, in order."""
    return list(_children)


def pids(ns: str) -> list[int]:
    out = run(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit()]


def teardown(wait: float = 3.0) -> list[str]:
    """Kill every process in every lab namespace and delete the namespaces."""
    namespaces = ours()
    victims = {pid for ns in namespaces for pid in pids(ns)}
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while victims and time.monotonic() < deadline:
        victims = {p for p in victims if os.path.exists(f"/proc/{p}")}
        time.sleep(0.05)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for ns in namespaces:
        run(["ip", "netns", "del", ns], check=False)
    while _children:
        child = _children.pop()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
    return namespaces
