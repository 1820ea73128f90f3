"""A minimal reader of Censored Planet Satellite v2 (2021) results, for validation.

``results.json`` holds one line per (resolver, domain) with the answer addresses as keys
of ``response`` and the RCODE of each try (-1 = no reply); ``responses_control.json``
holds the same domains resolved through trusted resolvers (1.1.1.1, 8.8.8.8), which
become wallwatch's control. Satellite keeps no packets, so only the control comparison,
pools and bogon checks can judge these answers. Satellite v1 and v2.2 are the importer's
job.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wallwatch import records
from wallwatch.records import Answer, Measurement, Response
from wallwatch.vocab import Engine, Failure, TargetKind


def _time(text: str) -> str:
    """``2021-04-25 15:37:16.85 -0400 EDT m=+...`` -> ``2021-04-25 19:37:16`` (UTC)."""
    stamp, offset = text.split(" ")[0:2], text.split(" ")[2]
    when = datetime.strptime(f"{stamp[0]} {stamp[1][:15]} {offset}", "%Y-%m-%d %H:%M:%S.%f %z")
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _answers(addresses: list[str]) -> tuple[Answer, ...]:
    return tuple(Answer("AAAA" if ":" in a else "A", 0, "", None if ":" in a else a,
                        a if ":" in a else None) for a in addresses)  # fmt: skip


def _measurement(line: dict[str, Any], kind: TargetKind, addresses: list[str], rcode: int | None,
                 source: str, index: int) -> Measurement:  # fmt: skip
    responses: tuple[Response, ...] = ()
    if rcode is not None and rcode >= 0:
        responses = (Response(t=0.0, rtt=0.0, src=str(line["vp"]), sport=53, ip_ttl=None, raw_response="",
                              rcode=rcode, ancount=len(addresses), answers=_answers(addresses)),)  # fmt: skip
    country = (line.get("location") or {}).get("country_code", "ZZ")
    return Measurement(
        schema_version=records.SCHEMA_VERSION,
        measurement_uid=hashlib.blake2b(f"{source}|{index}".encode(), digest_size=8).hexdigest(),
        report_id=Path(source).parent.name, measurement_start_time=_time(str(line["start_time"])),
        vantage=f"satellite/{country}", hostname=str(line["test_url"]), query_type="A",
        engine=Engine.UDP, resolver_address=f"{line['vp']}:53", target_kind=kind, transaction_id=0,
        source_port=0, t0=0.0, t=0.0, edns_payload=None, responses=responses,
        failure=None if responses else Failure.GENERIC_TIMEOUT,
        annotations={"source": source, "anomaly": str(line.get("anomaly")),
                     "confidence": str((line.get("confidence") or {}).get("average"))},
    )  # fmt: skip


def read(directory: str | Path) -> Iterator[Measurement]:
    """Measurements of a Satellite v2 scan directory (results plus controls)."""
    folder = Path(directory)
    results = folder / "results.json"
    if not results.exists():
        raise ValueError(f"{directory}: no results.json (not a Satellite v2 scan)")
    for index, text in enumerate(results.read_text().splitlines()):
        line = json.loads(text)
        if "test_url" not in line or not isinstance(line.get("response"), dict):
            raise ValueError(f"{results}:{index + 1}: not a Satellite v2 result")
        response = line["response"]
        rcodes = [int(r) for r in response.get("rcode", [])]
        addresses = [k for k in response if k not in ("rcode", "error")]
        yield _measurement(line, TargetKind.RESOLVER, addresses, rcodes[-1] if rcodes else None,
                           str(results), index)  # fmt: skip
    control = folder / "responses_control.json"
    if control.exists():
        for index, text in enumerate(control.read_text().splitlines()):
            line = json.loads(text)
            for entry in line.get("response") or []:
                if entry.get("url") == line.get("test_url"):
                    line = {**line, "start_time": entry["start_time"]}
                    yield _measurement(line, TargetKind.CONTROL, list(entry.get("response") or []),
                                       int(entry.get("rcode", -1)), str(control), index)  # fmt: skip
