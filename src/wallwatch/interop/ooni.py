"""A minimal reader of OONI Web Connectivity measurements (df-000 + df-002), for validation.

Each entry of ``test_keys.queries`` becomes a measurement against the probe's resolver
(OONI keeps the answers, rarely the raw bytes: ``raw_response`` is then empty), and the
test helper's DNS answer (``test_keys.control.dns``) becomes the trusted control, once
per query type asked. The full importer (versions, dnsping, envelopes, Satellite) is
separate work; this reader exists so the analysis can be checked against OONI's own
verdicts (docs/validation.md).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wallwatch import records
from wallwatch.records import Answer, Measurement, Response
from wallwatch.vocab import Engine, Failure, TargetKind

_ENGINES = {"udp": Engine.UDP, "tcp": Engine.TCP, "dot": Engine.DOT, "doh": Engine.DOH}
# OONI's probe says dns_nxdomain_error, its test helper dns_name_error, for the same RCODE.
_RCODES = {
    "dns_nxdomain_error": 3,
    "dns_name_error": 3,
    "dns_refused_error": 5,
    "dns_servfail_error": 2,
}


def _answers(items: list[dict[str, Any]] | None) -> tuple[Answer, ...]:
    out = []
    for item in items or []:
        kind = item.get("answer_type", "A")
        ttl = int(item.get("ttl") or 0)
        if item.get("ipv4"):
            out.append(Answer("A", ttl, "", item["ipv4"]))
        elif item.get("ipv6"):
            out.append(Answer("AAAA", ttl, "", None, item["ipv6"]))
        elif item.get("hostname"):
            out.append(Answer(kind, ttl, "", None, None, item["hostname"]))
    return tuple(out)


def _response(failure: str | None, answers: tuple[Answer, ...], t: float) -> tuple[Response, ...]:
    """OONI keeps one outcome per query: an answer, an RCODE failure, or a transport failure."""
    if failure not in (None, "dns_no_answer") and failure not in _RCODES:
        return ()  # a timeout or a local failure: no reply to judge
    return (
        Response(t=t, rtt=t, src="", sport=0, ip_ttl=None, raw_response="", rcode=_RCODES.get(failure or "", 0),
                 ancount=len(answers), answers=answers),
    )  # fmt: skip


def _failure(failure: str | None) -> Failure | None:
    try:
        return Failure(failure) if failure else None
    except ValueError:
        return Failure.UNKNOWN


def read(path: str | Path) -> Iterator[Measurement]:
    """Measurements of one OONI file (one JSON object, or JSON lines)."""
    text = Path(path).read_text(encoding="utf-8")
    try:
        documents = [json.loads(text)]
    except json.JSONDecodeError:
        documents = [json.loads(line) for line in text.splitlines() if line.strip()]
    for doc in documents:
        if "test_keys" not in doc:
            raise ValueError(f"{path}: not an OONI measurement (no test_keys)")
        yield from _measurements(doc, str(path))


def _measurements(doc: dict[str, Any], source: str) -> Iterator[Measurement]:
    keys = doc["test_keys"] or {}
    start = str(doc.get("measurement_start_time") or "1970-01-01 00:00:00")
    vantage = f"{doc.get('probe_cc', 'ZZ')}/{doc.get('probe_asn', 'AS0')}"
    report = str(doc.get("report_id") or Path(source).stem)
    base: dict[str, Any] = dict(schema_version=records.SCHEMA_VERSION, report_id=report, measurement_start_time=start,
                vantage=vantage, transaction_id=0, source_port=0, t0=0.0, t=0.0, edns_payload=None)  # fmt: skip
    qtypes: set[str] = set()
    for index, query in enumerate(keys.get("queries") or []):
        qtype = str(query.get("query_type") or "A")
        qtypes.add(qtype)
        answers = _answers(query.get("answers"))
        engine = _ENGINES.get(str(query.get("engine")), Engine.GETADDRINFO)
        address = str(query.get("resolver_address") or query.get("resolver_hostname") or "system")
        yield Measurement(
            **base, measurement_uid=_uid(source, index), hostname=str(query.get("hostname")),
            query_type=qtype, engine=engine, resolver_address=address,
            target_kind=TargetKind.RESOLVER, failure=_failure(query.get("failure")),
            responses=_response(query.get("failure"), answers, float(query.get("t") or 0.0)),
            annotations={"source": source, "input": str(doc.get("input") or "")},
        )  # fmt: skip
    control = (
        (keys.get("control") or {}).get("dns") if isinstance(keys.get("control"), dict) else None
    )
    if not control:
        return
    hostname = next((str(q.get("hostname")) for q in keys.get("queries") or []), None)
    if hostname is None:
        return
    for qtype in sorted(qtypes):
        addresses = [a for a in control.get("addrs") or [] if _family_fits(a, qtype)]
        answers = tuple(Answer("A" if ":" not in a else "AAAA", 0, "", None if ":" in a else a,
                               a if ":" in a else None) for a in addresses)  # fmt: skip
        yield Measurement(
            **base, measurement_uid=_uid(source, f"control-{qtype}"), hostname=hostname,
            query_type=qtype, engine=Engine.GETADDRINFO, resolver_address="ooni-test-helper",
            target_kind=TargetKind.CONTROL, failure=_failure(control.get("failure")),
            responses=_response(control.get("failure"), answers, 0.0),
        )  # fmt: skip


def _family_fits(address: str, qtype: str) -> bool:
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return False
    return qtype == "ANY" or (qtype == "A") == (version == 4)


def _uid(source: str, index: object) -> str:
    return hashlib.blake2b(f"{source}|{index}".encode(), digest_size=8).hexdigest()
