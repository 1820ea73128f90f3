"""wallwatch records in the formats other tools read: OONI, zdns, Parquet, pcapng.

* ``ooni``: one OONI measurement per wallwatch measurement, as ``dnsping`` 0.3 writes
  it -- ``test_keys.pings[0].query`` is the first reply in ``df-002-dnst`` shape
  (answers, failure, ``raw_response``, t0/t, transaction ID) and ``delayed_responses``
  holds every later reply, so the race between a forgery and the genuine answer
  survives the trip (``wallwatch import ooni`` reads it back into the same replies);
* ``zdns``: zdns's JSON lines (``name, class, status, timestamp, data{answers,
  additionals, authorities, protocol, resolver, flags}``) from the first reply, with
  ``data.wallwatch`` adding what zdns has no field for (every reply's addresses, IP
  TTLs and times);
* ``parquet``: the store's tables as Parquet files (DuckDB);
* ``pcapng``: each measurement's query and replies as packets (:mod:`wallwatch.report.pcap`).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from wallwatch.journal import read_records
from wallwatch.records import Answer, Measurement, Response

_RCODE_FAILURE = {3: "dns_nxdomain_error", 2: "dns_servfail_error", 5: "dns_refused_error"}
_ZDNS_STATUS = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


class ExportFormat(StrEnum):
    OONI = "ooni"
    ZDNS = "zdns"
    PARQUET = "parquet"
    PCAPNG = "pcapng"


def measurements(paths: Iterable[Path]) -> Iterator[Measurement]:
    for path in paths:
        for record in read_records(path):
            if isinstance(record, Measurement):
                yield record


def _answers(answers: tuple[Answer, ...]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for a in answers:
        item: dict[str, Any] = {"answer_type": a.answer_type, "ttl": a.ttl}
        if a.ipv4:
            item["ipv4"] = a.ipv4
        elif a.ipv6:
            item["ipv6"] = a.ipv6
        elif a.hostname:
            item["hostname"] = a.hostname
        out.append(item)
    return out


def _ooni_query(m: Measurement, r: Response | None) -> dict[str, Any]:
    failure = m.failure.value if m.failure else None
    if r is not None:
        failure = _RCODE_FAILURE.get(r.rcode or 0) or (None if r.answers else "dns_no_answer")
    return {
        "answers": _answers(r.answers) if r else [],
        "engine": m.engine.value,
        "failure": failure,
        "hostname": m.hostname,
        "query_type": m.query_type,
        "raw_response": r.raw_response if r else "",
        "rcode": (r.rcode or 0) if r else 0,
        "resolver_address": m.resolver_address,
        "resolver_hostname": None,
        "resolver_port": None,
        "t0": m.t0,
        "t": (m.t0 + r.rtt) if r else m.t,
        "transaction_id": m.transaction_id,
    }


def to_ooni(m: Measurement) -> dict[str, Any]:
    cc, _, asn = m.vantage.partition("/")
    first, *later = m.responses or (None,)
    return {
        "annotations": {"engine_name": "wallwatch", "wallwatch_target_kind": m.target_kind.value,
                        "wallwatch_measurement_uid": m.measurement_uid, **m.annotations},
        "data_format_version": "0.2.0",
        "input": f"udp://{m.resolver_address}",
        "measurement_start_time": m.measurement_start_time,
        "probe_asn": asn if asn.startswith("AS") else "AS0",
        "probe_cc": cc if len(cc) == 2 and cc.isupper() else "ZZ",
        "report_id": m.report_id,
        "software_name": "wallwatch",
        "test_keys": {"pings": [{"query": _ooni_query(m, first),
                                 "delayed_responses": [_ooni_query(m, r) for r in later if r]}]},
        "test_name": "dnsping",
        "test_version": "0.3.0",
    }  # fmt: skip


def to_zdns(m: Measurement) -> dict[str, Any]:
    first = m.responses[0] if m.responses else None
    status = "TIMEOUT" if first is None else _ZDNS_STATUS.get(first.rcode or 0, "ERROR")
    flags = (first.flags or 0) if first else 0
    when = datetime.strptime(m.measurement_start_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    data: dict[str, Any] = {
        "answers": [{"ttl": a.ttl, "type": a.answer_type, "class": "IN", "name": a.name or m.hostname,
                     "answer": a.ipv4 or a.ipv6 or a.hostname or a.rdata or ""}
                    for a in (first.answers if first else ())],
        "additionals": [], "authorities": [],
        "protocol": m.engine.value, "resolver": m.resolver_address,
        "flags": {"response": bool(flags & 0x8000), "opcode": (flags >> 11) & 0xF,
                  "authoritative": bool(flags & 0x0400), "truncated": bool(flags & 0x0200),
                  "recursion_desired": bool(flags & 0x0100), "recursion_available": bool(flags & 0x0080),
                  "authenticated": bool(flags & 0x0020), "checking_disabled": bool(flags & 0x0010),
                  "error_code": (first.rcode or 0) if first else 0},
        "wallwatch": {"measurement_uid": m.measurement_uid, "target_kind": m.target_kind.value,
                      "replies": [{"t": r.t, "rtt": r.rtt, "ip_ttl": r.ip_ttl,
                                   "addresses": [a.ipv4 or a.ipv6 for a in r.answers if a.ipv4 or a.ipv6]}
                                  for r in m.responses]},
    }  # fmt: skip
    return {"name": m.hostname, "class": "IN", "status": status,
            "timestamp": when.isoformat().replace("+00:00", "Z"), "data": data}  # fmt: skip


def export(paths: list[Path], fmt: ExportFormat, out: Path) -> int:
    """Write ``paths``' measurements to ``out`` in ``fmt``; return what was written."""
    if fmt == ExportFormat.PARQUET:
        from wallwatch import store

        with tempfile.TemporaryDirectory(prefix="ww-export-") as tmp:
            report = store.ingest(paths, Path(tmp) / "export.duckdb", parquet_dir=out)
        return report.measurements
    if fmt == ExportFormat.PCAPNG:
        from wallwatch.report import pcap

        return pcap.write(out, measurements(paths), {}, pcapng=True)
    convert = to_ooni if fmt == ExportFormat.OONI else to_zdns
    count = 0
    with open(out, "w") as handle:
        for m in measurements(paths):
            handle.write(json.dumps(convert(m), separators=(",", ":")) + "\n")
            count += 1
    return count
