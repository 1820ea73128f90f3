"""Known addresses: forged pools of the firewall and ISP NXDOMAIN-redirect addresses.

Shipped as a versioned data file (``wallwatch/data/forged-pools.toml``) with the
source of every list ([gfwatch-2021]; [wallbleed-2025]; [pcap-dnsproxy]); larger third-party lists are read
from the shared data directory when it is present. Every IPv6 answer of the firewall
in 2020 was in Teredo, 2001::/32 (GFWatch); that prefix is matched by the signals.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from importlib import resources

from wallwatch.paths import shared_data

_ADDRESS = re.compile(r"(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f:]*:[0-9A-Fa-f:]+")


@dataclass(frozen=True, slots=True)
class KnownAddress:
    address: str
    #: ``forged`` or ``nxdomain_redirect``.
    kind: str
    list_id: str


def _file_addresses(relative: str) -> list[str]:
    path = shared_data() / relative
    if not path.exists():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        text = line.split("#", 1)[0].strip()
        if "=" in text:
            text = text.split("=", 1)[1]
        found = _ADDRESS.fullmatch(text.strip())
        if found:
            out.append(found.group(0).lower())
    return out


def load() -> tuple[str, list[KnownAddress]]:
    """(version, addresses) of every known list.

    The version is the data file's date *and* a hash of what was loaded: the larger
    lists are read only where the third-party files are present, and the content
    then differs by two orders of magnitude, so a date alone would not say which
    pools a verdict was judged against.
    """
    data = tomllib.loads(
        resources.files("wallwatch.data").joinpath("forged-pools.toml").read_text()
    )
    out: list[KnownAddress] = []
    for kind in ("forged", "nxdomain_redirect"):
        for entry in data.get(kind, []):
            addresses = list(entry.get("addresses", []))
            for relative in entry.get("files", []):
                addresses += _file_addresses(relative)
            out += [KnownAddress(a, kind, entry["id"]) for a in dict.fromkeys(addresses)]
    digest = hashlib.sha256(
        "\n".join(sorted(f"{k.kind},{k.list_id},{k.address}" for k in out)).encode()
    ).hexdigest()[:12]
    return f"{data['version']}+{len(out)}:{digest}", out


def owner(address: str) -> tuple[str, str] | None:
    """(owner, source) of an address the shipped data names, or None."""
    data = tomllib.loads(
        resources.files("wallwatch.data").joinpath("forged-pools.toml").read_text()
    )
    for entry in data.get("owner", []):
        if entry.get("address") == address:
            return str(entry["name"]), str(entry.get("source", ""))
    return None


def lists_of(address: str) -> list[str]:
    """Ids of the known lists an address is in."""
    _version, known = load()
    return sorted({k.list_id for k in known if k.address == address.lower()})
