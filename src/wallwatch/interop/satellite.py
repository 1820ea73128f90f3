"""Censored Planet Satellite scans (v1, v2.1, v2.2) as wallwatch records.

Satellite asks open resolvers around the world for a list of domains and compares
the answers with trusted resolvers' (the control) by IP, HTTP body, TLS certificate
and AS ("tags"). It keeps no packets, so only the control comparison, pools and bogon
checks can judge its answers here; its own verdict (``anomaly``, the tags each answer
``matched``) is kept in the annotations for the validation table.

The three layouts (Censored Planet's documentation and its pipeline's
``flatten_satellite``):

* **v1** (to 2021-02): ``interference.json`` lines ``{resolver, query, answers: {ip:
  [matched tags]} | error, passed}``; ``answers_control.json`` lines ``{resolver,
  query, answers: [ip]}`` (the control); the date is in the directory's name;
* **v2.1** (2021-03 to 2021-06): ``results.json`` lines ``{vp, location, test_url,
  response: {ip: [matched], "rcode": [...]}, anomaly, confidence, start_time}``;
  ``responses_control.json`` lines ``{vp, test_url, response: [{url, response: [ip],
  rcode, start_time}]}``;
* **v2.2** (from 2021-06-24): ``results.json`` lines whose ``response`` is a list of
  ``{url, has_type_a, response: {ip: {http, cert, asnum, asname, matched}}, error,
  rcode}`` and ``passed_liveness`` instead of ``passed_control``.

A line that does not fit becomes an ``input_error`` naming file and line; the rest
of the file is still read.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from wallwatch import records
from wallwatch.interop.summary import ImportSummary
from wallwatch.records import Answer, InputError, Measurement, Response
from wallwatch.vocab import Engine, Failure, TargetKind

_DATE = re.compile(r"(\d{4}-\d{2}-\d{2})")


def _time(text: str) -> str:
    """``2021-04-25 15:37:16.85 -0400 EDT m=+...`` -> ``2021-04-25 19:37:16`` (UTC)."""
    parts = text.split(" ")
    stamp = f"{parts[0]} {parts[1][:15]}"
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in parts[1] else "%Y-%m-%d %H:%M:%S"
    when = datetime.strptime(f"{stamp} {parts[2]}", f"{fmt} %z")
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _answers(addresses: list[str]) -> tuple[Answer, ...]:
    return tuple(Answer("AAAA" if ":" in a else "A", 0, "", None if ":" in a else a,
                        a if ":" in a else None) for a in addresses)  # fmt: skip


#: Satellite's RCODEs as OONI's failure strings (the vocabulary every importer shares).
_RCODE_FAILURES = {2: Failure.DNS_SERVFAIL, 3: Failure.DNS_NXDOMAIN, 5: Failure.DNS_REFUSED}


def failure_of(rcode: int | None, error: str | None) -> Failure | None:
    """OONI's failure string for one Satellite attempt (None: a usable NOERROR reply)."""
    text = (error or "").lower()
    if rcode is None or rcode < 0:
        if "refused" in text:
            return Failure.CONNECTION_REFUSED
        if "unreachable" in text:
            return Failure.HOST_UNREACHABLE
        return Failure.GENERIC_TIMEOUT
    if rcode == 0:
        return None
    return _RCODE_FAILURES.get(rcode, Failure.DNS_SERVER_MISBEHAVING)


class Attempt(NamedTuple):
    """One query of Satellite's retries: its RCODE (None: no reply), addresses, error, time."""

    rcode: int | None
    addresses: list[str]
    error: str | None = None


def _measurement(*, source: str, vp: str, hostname: str, kind: TargetKind,
                 attempts: list[Attempt], start: str, country: str,
                 notes: dict[str, str]) -> Measurement:  # fmt: skip
    """One query with its retries: every attempt that drew a reply is one of its responses.

    The ID derives from what was measured (vantage, resolver, name, time, kind), not from
    the file's path, so a renamed or moved scan directory gives the same IDs.
    """
    responses = tuple(
        Response(t=0.0, rtt=0.0, src=vp, sport=53, ip_ttl=None, raw_response="", rcode=a.rcode,
                 ancount=len(a.addresses), answers=_answers(a.addresses), attempt=i)
        for i, a in enumerate(attempts) if a.rcode is not None and a.rcode >= 0
    )  # fmt: skip
    # As OONI: the failure of the first reply, or of the last attempt when none replied.
    first = next((a for a in attempts if a.rcode is not None and a.rcode >= 0), None)
    last = attempts[-1] if attempts else Attempt(None, [], None)
    failure = failure_of(first.rcode, first.error) if first else failure_of(None, last.error)
    uid = hashlib.blake2b(f"{vp}|{hostname}|{start}|{kind.value}".encode(), digest_size=8)
    return Measurement(
        schema_version=records.SCHEMA_VERSION, measurement_uid=uid.hexdigest(),
        report_id=Path(source).parent.name, measurement_start_time=start,
        vantage=f"satellite/{country}", hostname=hostname.rstrip("."), query_type="A",
        engine=Engine.UDP, resolver_address=f"{vp}:53", target_kind=kind, transaction_id=0,
        source_port=0, t0=0.0, t=0.0, edns_payload=None, responses=responses,
        failure=failure, attempts=max(1, len(attempts)), annotations={"source": source, **notes},
    )  # fmt: skip


def version(directory: Path) -> str:
    """``v1``, ``v2.1`` or ``v2.2``, from the files and the first result line."""
    if (directory / "interference.json").exists():
        return "v1"
    results = directory / "results.json"
    if not results.exists():
        raise ValueError(
            f"{directory}: not a Satellite scan (no interference.json, no results.json)"
        )
    with open(results, "rb") as handle:
        first = handle.readline()
    try:
        line = json.loads(first)
    except ValueError:
        raise ValueError(f"{results}:1: not JSON") from None
    if not isinstance(line, dict) or "test_url" not in line:
        raise ValueError(f"{results}:1: not a Satellite result (no test_url)")
    return "v2.2" if isinstance(line.get("response"), list) else "v2.1"


def read_records(
    directory: str | Path, summary: ImportSummary | None = None
) -> Iterator[Measurement | InputError]:
    """Measurements of a Satellite scan directory, and an ``input_error`` per line skipped."""
    folder = Path(directory)
    summary = summary if summary is not None else ImportSummary()
    try:
        kind = version(folder)
    except (ValueError, OSError) as exc:
        # One bad directory is named and skipped; the others are still read.
        yield summary.skip("satellite", str(folder), 0, "not a Satellite scan", str(exc))
        return
    found = _DATE.search(folder.name)
    day = f"{found.group(1)} 00:00:00" if found else "1970-01-01 00:00:00"
    if kind == "v1":
        countries = _v1_countries(folder)
        yield from _lines(folder / "interference.json", summary, lambda line, i, src: _v1(
            line, i, src, day, countries, TargetKind.RESOLVER))  # fmt: skip
        yield from _lines(folder / "answers_control.json", summary, lambda line, i, src: _v1(
            line, i, src, day, countries, TargetKind.CONTROL))  # fmt: skip
        return
    yield from _lines(folder / "results.json", summary, _v2)
    yield from _lines(folder / "responses_control.json", summary, _v2_control)


def read(directory: str | Path) -> Iterator[Measurement]:
    """Measurements of a scan; a bad line raises ``ValueError`` naming it."""
    for record in read_records(directory):
        if isinstance(record, InputError):
            raise ValueError(f"{record.source}:{record.line}: {record.error}")
        yield record


def _lines(path: Path, summary: ImportSummary, make: Any) -> Iterator[Measurement | InputError]:
    if not path.exists():
        return
    summary.files += 1
    with open(path, "rb") as handle:
        for index, raw in enumerate(handle):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                if not isinstance(line, dict):
                    raise ValueError("not a JSON object")
                made = list(make(line, index, str(path)))
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                yield summary.skip("satellite", str(path), index + 1, "not a Satellite line",
                                   f"not a Satellite line: {exc!r}", raw)  # fmt: skip
                continue
            summary.documents += 1
            summary.measurements += len(made)
            yield from made


def _v1_countries(folder: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    path = folder / "tagged_resolvers.json"
    if path.exists():
        for raw in path.read_text().splitlines():
            try:
                line = json.loads(raw)
                out[str(line["resolver"])] = str(line.get("country") or "ZZ")
            except (ValueError, KeyError):
                continue
    return out


def _v1(line: dict[str, Any], index: int, source: str, day: str, countries: dict[str, str],
        kind: TargetKind) -> Iterator[Measurement]:  # fmt: skip
    answers = line.get("answers")
    if "error" in line and not answers:
        addresses, rcode = [], None
    elif isinstance(answers, dict):
        addresses, rcode = list(answers), 0
    elif isinstance(answers, list):
        addresses, rcode = [str(a) for a in answers], 0
    else:
        raise ValueError("no answers and no error")
    tags = answers if isinstance(answers, dict) else {}
    notes = {"satellite": "v1", "passed": str(line.get("passed")),
             "matched": json.dumps({ip: t for ip, t in tags.items()})}  # fmt: skip
    yield _measurement(source=f"{source}:{index + 1}", vp=str(line["resolver"]),
                       hostname=str(line["query"]), kind=kind,
                       attempts=[Attempt(rcode, addresses, str(line.get("error") or "") or None)],
                       start=day, country=countries.get(str(line["resolver"]), "ZZ"), notes=notes)  # fmt: skip


def _v2(line: dict[str, Any], index: int, source: str) -> Iterator[Measurement]:
    response = line["response"]
    country = (line.get("location") or {}).get("country_code", "ZZ")
    notes = {"anomaly": str(line.get("anomaly")),
             "confidence": str((line.get("confidence") or {}).get("average"))}  # fmt: skip
    if isinstance(response, dict):  # v2.1
        rcodes = [int(r) for r in response.get("rcode", [])]
        errors = [str(e) for e in response.get("error", [])]
        addresses = [k for k in response if k not in ("rcode", "error")]
        matched = {k: v for k, v in response.items() if k not in ("rcode", "error")}
        # The addresses belong to the last attempt (the one with an answer); the earlier
        # RCODEs are the retries (-1: no reply), with their errors in order.
        tries = [Attempt(None if r < 0 else r, [], errors.pop(0) if r < 0 and errors else None)
                 for r in rcodes[:-1]]  # fmt: skip
        if rcodes:
            tries.append(Attempt(None if rcodes[-1] < 0 else rcodes[-1], addresses,
                                 errors[0] if rcodes[-1] < 0 and errors else None))  # fmt: skip
        yield _measurement(source=f"{source}:{index + 1}", vp=str(line["vp"]),
                           hostname=str(line["test_url"]), kind=TargetKind.RESOLVER, attempts=tries,
                           start=_time(str(line["start_time"])), country=country,
                           notes={"satellite": "v2.1", **notes, "matched": json.dumps(matched)})  # fmt: skip
        return
    if not isinstance(response, list):
        raise ValueError("response is neither an object (v2.1) nor a list (v2.2)")
    attempts: list[Attempt] = []
    tags: dict[str, Any] = {}
    start = _time(str(line["start_time"]))
    for entry in response:  # v2.2: the test domain's queries (others are liveness checks)
        if entry.get("url") != line["test_url"]:
            continue
        answers = entry.get("response") or {}
        if isinstance(answers, dict):
            tags.update({ip: (t or {}).get("matched") for ip, t in answers.items()})
        addresses = list(answers) if isinstance(answers, dict) else [str(a) for a in answers]
        rcode: int | None = int(entry.get("rcode", -1))
        error = entry.get("error")
        error = None if error in (None, "null", "") else str(error)
        if (rcode is not None and rcode < 0) or (error and not addresses):
            rcode = None
        if not attempts:
            start = _time(str(entry.get("start_time") or line["start_time"]))
        attempts.append(Attempt(rcode, addresses, error))
    if attempts:
        # Satellite retries a query up to four times: one measurement with its attempts.
        yield _measurement(source=f"{source}:{index + 1}", vp=str(line["vp"]),
                           hostname=str(line["test_url"]), kind=TargetKind.RESOLVER,
                           attempts=attempts, start=start, country=country,
                           notes={"satellite": "v2.2", **notes, "matched": json.dumps(tags)})  # fmt: skip


def _v2_control(line: dict[str, Any], index: int, source: str) -> Iterator[Measurement]:
    tries = []
    start = line.get("start_time")
    for entry in line.get("response") or []:
        if entry.get("url") != line.get("test_url"):
            continue
        answers = entry.get("response") or []
        addresses = list(answers) if isinstance(answers, dict) else [str(a) for a in answers]
        rcode = int(entry.get("rcode", -1))
        error = entry.get("error")
        start = start or entry.get("start_time")
        tries.append(Attempt(None if rcode < 0 else rcode, addresses,
                             None if error in (None, "null", "") else str(error)))  # fmt: skip
    if tries:
        yield _measurement(source=f"{source}:{index + 1}", vp=str(line["vp"]),
                           hostname=str(line["test_url"]), kind=TargetKind.CONTROL, attempts=tries,
                           start=_time(str(start)), country="control",
                           notes={"satellite": "control"})  # fmt: skip
