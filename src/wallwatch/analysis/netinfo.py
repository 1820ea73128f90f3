"""Date-aware IP-to-AS lookups from offline MMDB snapshots (the OONI NetinfoDB idea).

Why date-aware: an address's origin AS changes; judging a 2014 answer with today's
routing table would call genuine answers forged and the reverse. A directory holds
snapshots named ``YYYYMMDD-<anything>.mmdb`` (or one ``.mmdb`` file for every date);
each lookup uses the newest snapshot not after the measurement's day, else the
oldest. Records follow the GeoLite2-ASN / ip2asn layout
(``autonomous_system_number``, ``autonomous_system_organization``).

Lookups run once per distinct (day, address) of a dataset, and their results join the
SQL analysis as a table, so the per-reply work stays in DuckDB.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

import maxminddb

_DATED = re.compile(r"^(\d{8})")


class NetinfoDB:
    """A set of dated MMDB snapshots."""

    def __init__(self, path: str | Path) -> None:
        root = Path(path)
        files = [root] if root.is_file() else sorted(root.glob("*.mmdb"))
        if not files:
            raise ValueError(f"{path}: no .mmdb file")
        dated: list[tuple[date, Path]] = []
        for file in files:
            found = _DATED.match(file.name)
            day = date(1970, 1, 1)
            if found:
                text = found.group(1)
                day = date(int(text[:4]), int(text[4:6]), int(text[6:]))
            dated.append((day, file))
        dated.sort()
        self._days = [d for d, _ in dated]
        self._readers: list[Any] = [maxminddb.open_database(str(f)) for _, f in dated]

    def _reader(self, day: date) -> Any:
        index = bisect.bisect_right(self._days, day) - 1
        return self._readers[max(index, 0)]

    def lookup(self, day: date, address: str) -> tuple[int | None, str | None]:
        """(AS number, AS organisation) of ``address`` as of ``day``; (None, None) if unknown."""
        try:
            record = self._reader(day).get(address)
        except ValueError:
            return None, None
        if not isinstance(record, dict):
            return None, None
        asn = record.get("autonomous_system_number")
        org = record.get("autonomous_system_organization")
        return (int(asn) if asn is not None else None), (str(org) if org is not None else None)

    def rows(
        self, pairs: Iterable[tuple[date, str]]
    ) -> list[tuple[date, str, int | None, str | None]]:
        """Lookups for many (day, address) pairs, as rows for a table."""
        return [(day, address, *self.lookup(day, address)) for day, address in pairs]

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
