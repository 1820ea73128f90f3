"""The flood, measured: connections the hosts at an answer's address received, per second.

A redirection's harm is the traffic it sends somewhere: in 2014 a country's browsers
fell on 65.49.2.178 and took it down ([greatfire-2014]). The detector can only
*estimate* that share from which names were hit (weighted by popularity); a host that
counts the connections it receives *measures* it. The lab's sink does
(:mod:`wallwatch.lab.sink`, with the emulated users of :mod:`wallwatch.lab.users`); a
host's operator could give the same file from their own logs.

The file is JSON: ``{"<Unix second>": {"<address>": <connections>, ...}, ...}``, in the
clock the events use (the scenario's, in the lab). :func:`load` checks every entry and
names the first bad one; :func:`for_event` gives an event's share of it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

#: second -> address -> connections
PerSecond = dict[int, dict[str, int]]


class FloodError(ValueError):
    """A connections file that is not what :func:`load` reads; says where."""


def parse(data: object, source: str = "connections") -> PerSecond:
    if not isinstance(data, dict):
        raise FloodError(f"{source}: expected an object of seconds")
    out: PerSecond = {}
    for second, counts in data.items():
        try:
            key = int(second)
        except (TypeError, ValueError):
            raise FloodError(f"{source}: {second!r} is not a Unix second") from None
        if not isinstance(counts, dict):
            raise FloodError(f"{source}: second {second}: expected an object of addresses")
        row: dict[str, int] = {}
        for address, n in counts.items():
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise FloodError(
                    f"{source}: second {second}: {address!r} is not an address"
                ) from None
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise FloodError(f"{source}: second {second}, {address}: {n!r} is not a count")
            row[address] = n
        out[key] = row
    return out


def load(path: Path) -> PerSecond:
    """Read a connections file; :class:`FloodError` names what is wrong."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FloodError(f"{path}: {exc}") from None
    return parse(data, str(path))


def retime(per_second: PerSecond, to_time: Callable[[float], float]) -> PerSecond:
    """The same counts on another clock (the lab's sink counts real seconds; events are
    on the scenario's), summed where several seconds land on one."""
    out: PerSecond = {}
    for second, counts in per_second.items():
        row = out.setdefault(int(to_time(second)), {})
        for address, n in counts.items():
            row[address] = row.get(address, 0) + n
    return out


def series(per_second: PerSecond, address: str, tz: tzinfo = UTC) -> list[dict[str, Any]]:
    """``[{"t": ISO time, "connections": n}]`` for one address, in time order."""
    return [{"t": datetime.fromtimestamp(s, tz).isoformat(timespec="seconds"),
             "connections": counts.get(address, 0)}
            for s, counts in sorted(per_second.items())]  # fmt: skip


def for_event(per_second: PerSecond, address: str, start: float, end: float | None,
              tz: tzinfo = UTC) -> dict[str, Any]:  # fmt: skip
    """What the hosts measured during an event (``start``/``end``: Unix seconds): the
    connections to its target address, their peak per second, and those to every other
    address counted (the genuine hosts, in the lab) for comparison."""
    inside = {s: c for s, c in per_second.items() if s >= start and (end is None or s <= end)}
    to_target = [c.get(address, 0) for _s, c in sorted(inside.items())]
    peak_at = max(inside, key=lambda s: inside[s].get(address, 0)) if inside else None
    return {
        "address": address,
        "connections": sum(to_target),
        "peak_per_second": max(to_target, default=0),
        "peak_at": None if peak_at is None
        else datetime.fromtimestamp(peak_at, tz).isoformat(timespec="seconds"),
        "connections_elsewhere": sum(n for c in inside.values() for a, n in c.items() if a != address),
        "seconds": len(inside),
    }  # fmt: skip
