"""The bundled IP-to-AS table: origin AS and organisation of any address, with no option given.

Why bundled: consistency by origin AS (OONI's ``dns_consistency``, Satellite's
``asnum`` tag) and "a large platform's address for a name that is not theirs" (the
firewall's forged pools are mostly Facebook, Twitter and Dropbox ranges,
[wallbleed-2025] App. A, [triplet-2021] section 3.2) need an AS for every answer, and a
researcher opening someone else's file has no MaxMind account at hand. The table is
``@ip-location-db/asn`` from the npm registry ([ip-location-db]: RouteViews, the five
RIRs and DB-IP's ASN Lite, CC BY 4.0 with attribution, IPv4 and IPv6, AS number *and*
organisation). ``scripts/setup`` fetches one pinned version, checks its integrity, and
:func:`build` compacts its two numeric CSV files (about 33 MB) into sorted arrays
(about 11 MB) that load in a few tens of milliseconds; the licence files and the
version are kept beside them (``ipasn.json``).

It is *today's* routing (the build's date): for historic data, dated MMDB snapshots of
the measurement's day take precedence (:mod:`.netinfo`). Every lookup names the
dataset and its content hash, so a verdict says which table it rests on.

    python -m wallwatch.analysis.ipasn build asn-2.3.2026061719.tgz   # at setup
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import ipaddress
import json
import os
import socket
import sys
import tarfile
from array import array
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

#: The npm package and the version ``scripts/setup`` installs (one place: setup reads it).
PACKAGE = "@ip-location-db/asn"
VERSION = "2.3.2026061719"
#: Where the compacted table lives (``WALLWATCH_IPASN`` overrides, for a newer build).
_ENV = "WALLWATCH_IPASN"


@dataclass(frozen=True, slots=True)
class Dataset:
    """Which table answered: what a verdict row names."""

    name: str
    #: The day its routing describes (YYYY-MM-DD).
    date: str
    #: The first 16 hex digits of the SHA-256 of the table as shipped.
    sha256: str
    licence: str

    def label(self) -> str:
        return f"{self.name} {self.date} sha256:{self.sha256}"


@dataclass(frozen=True, slots=True)
class Range:
    asn: int
    org: str
    prefix: str


def default_dir() -> Path:
    """The directory of the compacted table (inside the installed package by default)."""
    override = os.environ.get(_ENV)
    if override:
        return Path(override)
    return Path(str(resources.files("wallwatch.data"))) / "ipasn"


class IpAsn:
    """Sorted, non-overlapping ranges per address family; one bisect per lookup."""

    def __init__(self, directory: str | Path | None = None) -> None:
        root = Path(directory) if directory is not None else default_dir()
        meta_path = root / "ipasn.json"
        if not meta_path.exists():
            raise FileNotFoundError(
                f"{root}: no bundled IP-to-AS table; ./scripts/setup builds it "
                f"(python -m wallwatch.analysis.ipasn build {PACKAGE}-{VERSION}.tgz)"
            )
        meta = json.loads(meta_path.read_text())
        self.dataset = Dataset(meta["name"], meta["date"], meta["sha256"], meta["licence"])
        self._v4_start = array("I")
        self._v4_end = array("I")
        self._v4_asn = array("I")
        raw = (root / "v4.bin").read_bytes()
        n = meta["v4"]
        for part, target in enumerate((self._v4_start, self._v4_end, self._v4_asn)):
            target.frombytes(raw[part * 4 * n : (part + 1) * 4 * n])
        raw6 = (root / "v6.bin").read_bytes()
        m = meta["v6"]
        self._v6_start = [int.from_bytes(raw6[i * 16 : i * 16 + 16]) for i in range(m)]
        self._v6_end = [int.from_bytes(raw6[(m + i) * 16 : (m + i) * 16 + 16]) for i in range(m)]
        self._v6_asn = array("I")
        self._v6_asn.frombytes(raw6[32 * m :])
        self._orgs: dict[str, str] = json.loads((root / "orgs.json").read_text())

    def origin(self, address: str) -> tuple[int, str] | None:
        """(ASN, organisation) of ``address``, or None: :meth:`lookup` without the prefix,
        for the analysis's bulk lookups (no ``ipaddress`` objects: ten times cheaper)."""
        try:
            packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET,
                                      address)  # fmt: skip
        except (OSError, ValueError):
            return None
        value = int.from_bytes(packed, "big")
        if len(packed) == 4:
            starts, ends, asns = self._v4_start, self._v4_end, self._v4_asn
        else:
            starts, ends, asns = self._v6_start, self._v6_end, self._v6_asn  # type: ignore[assignment]
        i = bisect.bisect_right(starts, value) - 1
        if i < 0 or value > ends[i]:
            return None
        asn = asns[i]
        return asn, self._orgs.get(str(asn), "")

    def lookup(self, address: str) -> Range | None:
        """The range holding ``address``, or None (unrouted, bogon, or not an address)."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        value = int(ip)
        if ip.version == 4:
            i = bisect.bisect_right(self._v4_start, value) - 1
            if i < 0 or value > self._v4_end[i]:
                return None
            start, end, asn = self._v4_start[i], self._v4_end[i], self._v4_asn[i]
            lo, hi = ipaddress.IPv4Address(start), ipaddress.IPv4Address(end)
        else:
            i = bisect.bisect_right(self._v6_start, value) - 1
            if i < 0 or value > self._v6_end[i]:
                return None
            start, end, asn = self._v6_start[i], self._v6_end[i], self._v6_asn[i]
            lo6, hi6 = ipaddress.IPv6Address(start), ipaddress.IPv6Address(end)
            return Range(asn, self._orgs.get(str(asn), ""), _prefix(lo6, hi6, ip))
        return Range(asn, self._orgs.get(str(asn), ""), _prefix(lo, hi, ip))


def _prefix(
    lo: ipaddress.IPv4Address | ipaddress.IPv6Address,
    hi: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> str:
    """The CIDR block of the range that holds ``ip`` (a range need not be one prefix)."""
    for net in ipaddress.summarize_address_range(lo, hi):
        if ip in net:
            return str(net)
    return f"{lo}-{hi}"  # pragma: no cover - summarize covers the range


@cache
def bundled() -> IpAsn:
    """The table of this install, loaded once per process."""
    return IpAsn()


def build(tarball: str | Path, out: str | Path | None = None) -> Path:
    """Compact the npm package's numeric CSV files into ``out`` (default: :func:`default_dir`)."""
    target = Path(out) if out is not None else default_dir()
    data = Path(tarball).read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    members: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("package/")
            if name in ("asn-ipv4-num.csv", "asn-ipv6-num.csv", "package.json") or name.endswith(
                ("LICENSE", "MODIFICATIONS")
            ):
                handle = tar.extractfile(member)
                if handle is not None:
                    members[name] = handle.read()
    for needed in ("asn-ipv4-num.csv", "asn-ipv6-num.csv", "package.json"):
        if needed not in members:
            raise ValueError(f"{tarball}: not the {PACKAGE} package (no {needed})")
    orgs: dict[str, str] = {}
    tables = {}
    for family in ("ipv4", "ipv6"):
        rows = []
        text = members[f"asn-{family}-num.csv"].decode("utf-8", errors="replace")
        for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            try:
                start, end, asn = int(row[0]), int(row[1]), int(row[2])
            except (ValueError, IndexError):
                raise ValueError(
                    f"{tarball}:asn-{family}-num.csv:{number}: bad row {row!r}"
                ) from None
            orgs.setdefault(str(asn), row[3] if len(row) > 3 else "")
            rows.append((start, end, asn))
        rows.sort()
        tables[family] = rows
    version = json.loads(members["package.json"])["version"]
    # Versions are 2.3.YYYYMMDDHH: the build's day.
    stamp = version.rsplit(".", 1)[-1]
    day = f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}" if len(stamp) >= 8 else "unknown"
    target.mkdir(parents=True, exist_ok=True)
    v4 = tables["ipv4"]
    blob = array("I", [r[0] for r in v4]).tobytes() + array("I", [r[1] for r in v4]).tobytes()
    blob += array("I", [r[2] for r in v4]).tobytes()
    _atomic(target / "v4.bin", blob)
    v6 = tables["ipv6"]
    blob6 = b"".join(r[0].to_bytes(16) for r in v6) + b"".join(r[1].to_bytes(16) for r in v6)
    blob6 += array("I", [r[2] for r in v6]).tobytes()
    _atomic(target / "v6.bin", blob6)
    _atomic(target / "orgs.json", json.dumps(orgs, ensure_ascii=False).encode())
    for name, content in members.items():
        if name.endswith(("LICENSE", "MODIFICATIONS")):
            _atomic(target / name, content)
    meta = {
        "name": f"{PACKAGE}@{version}",
        "date": day,
        "sha256": digest,
        "licence": "CC BY 4.0: RouteViews (routeviews.org), NRO RIR delegations, "
        "DB-IP ASN Lite (https://db-ip.com); see ROUTEVIEWS-LICENSE, DBIP-LICENSE, NRO_LICENSE",
        "v4": len(v4),
        "v6": len(v6),
    }
    # Written last: a table without its metadata is not a table (IpAsn checks for it).
    _atomic(target / "ipasn.json", json.dumps(meta, indent=1).encode())
    return target


def _atomic(path: Path, content: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (2, 3) or args[0] != "build":
        print(
            "usage: python -m wallwatch.analysis.ipasn build PACKAGE.tgz [OUT_DIR]", file=sys.stderr
        )
        return 2
    try:
        where = build(args[1], args[2] if len(args) == 3 else None)
    except (OSError, ValueError, tarfile.TarError) as exc:
        print(f"ipasn: {exc}", file=sys.stderr)
        return 1
    print(f"ipasn: {where}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
