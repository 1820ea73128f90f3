"""Lab scenarios: TOML files with the censor's configuration and a machine-readable truth.

A scenario says who tampers, how, with which names and when (``[[injectors]]``,
``[resolver]``, ``[authoritative]``), and repeats it as ``[[truth]]`` entries that
tests and the analysis compare their conclusions with. Times are wall-clock times
of the incident; ``time_scale`` replays them faster (60 = one minute a second), so
the 24 minutes of 21 January 2014 replay in 24 seconds. Shipped scenarios live in
``wallwatch/data/scenarios``; ``wallwatch lab up PATH.toml`` takes a file too.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any

import msgspec

from wallwatch.lab.injector import PROFILES, Anchor
from wallwatch.paths import shared_data


class Truth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One fact of the scenario's ground truth (also its schema: unknown keys are refused)."""

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


class _Strict(msgspec.Struct, forbid_unknown_fields=True):
    """Scenario tables: an unknown key is an error (a typo must not bring a lab up silently)."""


class _RuleSpec(_Strict):
    pattern: str
    anchor: Anchor = Anchor.SUFFIX
    pool: str = ""


class _InjectorSpec(_Strict):
    id: str
    profile: str
    active: list[tuple[str, str]] = []
    pools: dict[str, list[str]] = {}
    rules: list[_RuleSpec] = []
    rules_file: str | None = None
    rules_every: int | None = None
    pool_file: str | None = None
    processes: int = 3


class _ResolverSpec(_Strict):
    cache_max: float | None = None
    hijack: dict[str, str] = {}
    nxdomain_rewrite: str | None = None


class _AuthoritativeSpec(_Strict):
    override: dict[str, str] = {}


class _PublicResolverSpec(_Strict):
    root: str = "outside"


class _ScenarioSpec(_Strict):
    name: str
    clock_start: str
    summary: str = ""
    sources: list[str] = []
    time_scale: float = 1.0
    delay_ms: int = 80
    border_hops: int = 3
    injectors: list[_InjectorSpec] = []
    resolver: _ResolverSpec = msgspec.field(default_factory=_ResolverSpec)
    authoritative: _AuthoritativeSpec = msgspec.field(default_factory=_AuthoritativeSpec)
    public_resolver: _PublicResolverSpec = msgspec.field(default_factory=_PublicResolverSpec)
    truth: list[Truth] = []


def validate(data: dict[str, Any], where: str) -> _ScenarioSpec:
    """Check a scenario's keys, types and ranges before anything is built; raise
    ``ValueError`` naming the file and the field."""
    try:
        spec = msgspec.convert(data, _ScenarioSpec)
    except msgspec.ValidationError as exc:
        raise ValueError(f"{where}: bad scenario: {exc}") from None
    problems = []
    if not (math.isfinite(spec.time_scale) and spec.time_scale > 0):
        problems.append(f"time_scale must be a positive number, not {spec.time_scale}")
    if spec.delay_ms < 0:
        problems.append(f"delay_ms must be >= 0, not {spec.delay_ms}")
    if not 1 <= spec.border_hops <= 30:
        problems.append(f"border_hops must be 1-30, not {spec.border_hops}")
    if spec.resolver.cache_max is not None and not spec.resolver.cache_max > 0:
        problems.append(f"resolver.cache_max must be > 0, not {spec.resolver.cache_max}")
    if spec.public_resolver.root not in ("inside", "outside"):
        problems.append(
            f"public_resolver.root must be inside or outside, not {spec.public_resolver.root!r}"
        )
    for i, injector in enumerate(spec.injectors):
        if injector.profile not in PROFILES:
            problems.append(f"injectors[{i}].profile {injector.profile!r} is not one of "
                            f"{', '.join(sorted(PROFILES))}")  # fmt: skip
        if injector.processes < 1:
            problems.append(f"injectors[{i}].processes must be >= 1")
        if injector.rules_every is not None and injector.rules_every < 1:
            problems.append(f"injectors[{i}].rules_every must be >= 1")
        for a, b in injector.active:
            try:
                if datetime.fromisoformat(b) <= datetime.fromisoformat(a):
                    problems.append(f"injectors[{i}].active: {b} is not after {a}")
            except ValueError as exc:
                problems.append(f"injectors[{i}].active: {exc}")
    try:
        datetime.fromisoformat(spec.clock_start)
    except ValueError as exc:
        problems.append(f"clock_start: {exc}")
    if problems:
        raise ValueError(f"{where}: bad scenario: " + "; ".join(problems))
    return spec


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
    spec = validate(data, where)
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
            truth=list(spec.truth),
            sources=list(data.get("sources", [])),
            nxdomain_rewrite=data.get("resolver", {}).get("nxdomain_rewrite"),
            public_root_inside=data.get("public_resolver", {}).get("root") == "inside",
            resolver_cache_max=data.get("resolver", {}).get("cache_max"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{where}: bad scenario: {exc}") from None
