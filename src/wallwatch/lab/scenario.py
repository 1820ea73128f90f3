"""Lab scenarios: TOML files with the censor's configuration and a machine-readable truth.

A scenario says who tampers, how, with which names and when (``[[injectors]]``,
``[resolver]``, ``[authoritative]``), and repeats it as ``[[truth]]`` entries that
tests and the analysis compare their conclusions with. Times are wall-clock times
of the incident; ``time_scale`` replays them faster (60 = one minute a second), so
the 24 minutes of 21 January 2014 replay in 24 seconds. Shipped scenarios live in
``wallwatch/data/scenarios``; ``wallwatch lab up PATH.toml`` takes a file too.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

from wallwatch.paths import shared_data


@dataclass(frozen=True, slots=True)
class Truth:
    """One fact of the scenario's ground truth."""

    actor: str
    attribution: str
    names: str
    answer: str = ""
    start: str = ""
    end: str = ""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    summary: str
    clock_start: datetime
    time_scale: float
    delay_ms: int
    border_hops: int
    injectors: list[dict[str, Any]]
    resolver_hijack: dict[str, str] = field(default_factory=dict)
    authoritative_override: dict[str, str] = field(default_factory=dict)
    truth: list[Truth] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    #: The ISP resolver rewrites NXDOMAIN (A queries) into this address.
    nxdomain_rewrite: str | None = None
    #: The public resolver's root server instance is inside the censored network.
    public_root_inside: bool = False
    #: The ISP resolver keeps no answer longer than this many *scenario* seconds
    #: (Unbound's ``cache-max-ttl``, divided by ``time_scale``), so that its cache
    #: fills with forgeries and drains again on the incident's clock, not the machine's.
    resolver_cache_max: float | None = None

    def seconds(self, when: str) -> float:
        """Scenario-clock seconds of an ISO time (0 = ``clock_start``)."""
        return (datetime.fromisoformat(when) - self.clock_start).total_seconds()

    def border_injectors(self) -> list[dict[str, Any]]:
        """Injector specs for the border process: windows in scenario seconds, files read."""
        out = []
        for spec in self.injectors:
            copy = expand_files(spec)
            copy["active"] = [[self.seconds(a), self.seconds(b)] for a, b in spec.get("active", [])]
            copy.setdefault("pools", {"": ["65.49.2.178"]})
            out.append(copy)
        return out

    def pool_addresses(self) -> list[str]:
        """Every forged IPv4 address the scenario can send (for the sink host)."""
        seen: dict[str, None] = {}
        for spec in map(expand_files, self.injectors):
            for addresses in spec.get("pools", {}).values():
                for address in addresses:
                    if ":" not in address:
                        seen[address] = None
        return list(seen)


def _lines(relative: str, every: int = 1) -> list[str]:
    path = shared_data() / relative
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return [t.strip() for t in lines[::every] if t.strip() and not t.startswith("#")]


def expand_files(spec: dict[str, Any]) -> dict[str, Any]:
    """Add the rules of ``rules_file`` and the pool of ``pool_file`` (paths under the shared
    data directory) to an injector spec; a missing file adds nothing."""
    copy = dict(spec)
    if "rules_file" in spec:
        names = _lines(spec["rules_file"], int(spec.get("rules_every", 1)))
        copy["rules"] = [*spec.get("rules", []), *({"pattern": n} for n in names if "." in n)]
    if "pool_file" in spec:
        addresses = _lines(spec["pool_file"])
        if addresses:
            copy["pools"] = {**spec.get("pools", {}), "": addresses}
    return copy


def available() -> list[str]:
    """Names of the shipped scenarios."""
    folder = resources.files("wallwatch.data").joinpath("scenarios")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str) -> Scenario:
    """A shipped scenario by name, or a scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        text = path.read_text()
        where = str(path)
    else:
        resource = resources.files("wallwatch.data").joinpath("scenarios", f"{name_or_path}.toml")
        if not resource.is_file():
            raise ValueError(f"no scenario {name_or_path!r}; shipped: {', '.join(available())}")
        text = resource.read_text()
        where = f"scenarios/{name_or_path}.toml"
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{where}: {exc}") from None
    try:
        return Scenario(
            name=data["name"],
            summary=data.get("summary", ""),
            clock_start=datetime.fromisoformat(data["clock_start"]),
            time_scale=float(data.get("time_scale", 1.0)),
            delay_ms=int(data.get("delay_ms", 80)),
            border_hops=int(data.get("border_hops", 3)),
            injectors=list(data.get("injectors", [])),
            resolver_hijack=dict(data.get("resolver", {}).get("hijack", {})),
            authoritative_override=dict(data.get("authoritative", {}).get("override", {})),
            truth=[Truth(**t) for t in data.get("truth", [])],
            sources=list(data.get("sources", [])),
            nxdomain_rewrite=data.get("resolver", {}).get("nxdomain_rewrite"),
            public_root_inside=data.get("public_resolver", {}).get("root") == "inside",
            resolver_cache_max=data.get("resolver", {}).get("cache_max"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad scenario: {exc}") from None
