"""OONI measurements as wallwatch records: the same analysis judges them.

Why one reader for many tests: every OONI experiment that resolves names writes its
lookups in the ``df-002-dnst`` shape (``queries[]`` with ``hostname, query_type,
engine, resolver_address, answers, failure, t`` and, since 2022, ``raw_response``).
What differs is where the lookups sit and what counts as the control:

* ``web_connectivity`` 0.0.1 to 0.5.x: ``test_keys.queries`` (the probe's resolver);
  the test helper's ``test_keys.control.dns.addrs`` becomes the control;
* legacy ``dns_consistency`` (ooniprobe 1.x): ``test_keys.queries`` against several
  resolvers, the one at ``control_resolver`` being the control (``test_keys`` may be
  a Python-repr string in YAML-era conversions);
* ``dnscheck``: ``test_keys.bootstrap.queries`` and ``test_keys.lookups[*].queries``;
* ``dnsping``: ``test_keys.pings[*].query`` and, since 0.3, its ``delayed_responses``
  -- every reply to one query, exactly the multi-reply evidence of an injector, so a
  ping becomes one measurement whose replies are the query's and the delayed ones;
* any other test with ``test_keys.queries`` (urlgetter, ...): the queries alone.

Documents come one per line (JSONL, the API's and the S3 bucket's form), or one per
file (pretty-printed), plain or gzip; an API envelope whose ``body`` or
``raw_measurement`` is the measurement as a JSON string is opened. Decoding reads only
the fields used, into typed structs (msgspec), so a web_connectivity line with its
HTTP bodies is skipped over rather than built into Python objects: import streams at
the speed of the disk, in flat memory.

A line that is not JSON, not an OONI measurement, or of an unknown test or version
becomes an ``input_error`` record naming the file and line; the file's other lines
are still imported (:class:`ImportSummary`).
"""

from __future__ import annotations

import ast
import base64
import binascii
import functools
import gzip
import hashlib
import io
import ipaddress
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import msgspec

from wallwatch import records
from wallwatch.interop.summary import ImportSummary
from wallwatch.probe.reply import make_response
from wallwatch.records import Answer, InputError, Measurement, Response
from wallwatch.vocab import Engine, Failure, TargetKind
from wallwatch.wire import parse_reply

_ENGINES = {"udp": Engine.UDP, "tcp": Engine.TCP, "dot": Engine.DOT, "doh": Engine.DOH}
# OONI's probe says dns_nxdomain_error, its test helper dns_name_error, for the same RCODE.
_RCODES = {
    "dns_nxdomain_error": 3,
    "dns_name_error": 3,
    "dns_refused_error": 5,
    "dns_servfail_error": 2,
}
#: Tests read, with the versions known to hold DNS lookups where this reader looks.
SUPPORTED: dict[str, tuple[str, ...]] = {
    "web_connectivity": ("0.0.", "0.1.", "0.2.", "0.3.", "0.4.", "0.5."),
    "dns_consistency": ("0.",),
    "dnscheck": ("0.",),
    "dnsping": ("0.",),
    "urlgetter": ("0.",),
}


class OAnswer(msgspec.Struct):
    answer_type: str | None = None
    ipv4: str | None = None
    ipv6: str | None = None
    hostname: str | None = None
    ttl: int | float | str | None = None
    #: The answer's origin AS as the probe looked it up on the day (df-002, since 2020).
    asn: int | None = None
    as_org_name: str | None = None


class OQuery(msgspec.Struct):
    hostname: str | None = None
    query_type: str | None = None
    engine: str | None = None
    resolver_address: str | None = None
    resolver_hostname: str | None = None
    resolver_port: str | int | None = None
    failure: str | None = None
    answers: list[OAnswer] | None = None
    raw_response: str | None = None
    t: float | None = None
    t0: float | None = None
    transaction_id: int | None = None


class OPing(msgspec.Struct):
    query: OQuery | list[OQuery] | None = None
    delayed_responses: list[OQuery] | None = None


class OControlDns(msgspec.Struct):
    addrs: list[str] | None = None
    failure: str | None = None


class OControl(msgspec.Struct):
    dns: OControlDns | None = None


class OLookup(msgspec.Struct):
    queries: list[OQuery] | None = None


class OTls(msgspec.Struct):
    address: str | None = None
    server_name: str | None = None
    failure: str | None = None
    no_tls_verify: bool | None = None


class OTestKeys(msgspec.Struct):
    queries: list[OQuery] | None = None
    tls_handshakes: list[OTls] | None = None
    control: OControl | None = None
    control_resolver: str | None = None
    pings: list[OPing] | None = None
    lookups: dict[str, OLookup] | None = None
    bootstrap: OLookup | None = None


class ODoc(msgspec.Struct):
    test_name: str | None = None
    test_version: str | None = None
    measurement_start_time: str | None = None
    probe_cc: str | None = None
    probe_asn: str | int | None = None
    report_id: str | None = None
    measurement_uid: str | None = None
    input: str | list[Any] | dict[str, Any] | None = None
    test_keys: OTestKeys | str | None = None
    # API envelopes: the measurement, as a JSON string.
    body: str | None = None
    raw_measurement: str | None = None
    # Censored Planet's keys, to say what a wrong file is.
    vp: str | None = None
    test_url: str | None = None
    resolver: str | None = None


_decode = msgspec.json.Decoder(ODoc).decode
_ENCODE_SORTED = msgspec.json.Encoder(order="sorted").encode
_decode_keys = msgspec.json.Decoder(OTestKeys).decode


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as probe:
        magic = probe.read(2)
    # A 1 MiB buffer: an OONI line (tens of KB with its HTTP bodies) is then found in the
    # buffer in one scan, where the default 8 KB buffer read each line in pieces and
    # joined them (a sixth of an import, measured).
    if magic == b"\x1f\x8b":
        return cast(IO[bytes], io.BufferedReader(gzip.open(path, "rb"), 1 << 20))
    return open(path, "rb", buffering=1 << 20)  # noqa: SIM115


class Unreadable(ValueError):
    """The file itself could not be read on (a truncated or corrupt gzip stream)."""

    def __init__(self, line: int, error: str) -> None:
        super().__init__(error)
        self.line = line


def documents(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line, raw JSON) of each document: JSON lines, or one pretty-printed document.

    A document that starts with a comment (``//`` or ``/*``, the ``.jsonc`` form OONI's
    probe-cli keeps test data in) is read as one commented document. A gzip stream that
    ends early or is corrupt raises :class:`Unreadable` after the documents before it.
    """
    number = 0
    try:
        with _open(path) as handle:
            first = handle.readline()
            number = 1
            stripped = first.strip()
            commented = stripped.startswith((b"//", b"/*"))
            single = commented or (stripped.startswith(b"{") and not _complete(stripped))
            if single:
                yield 1, first + handle.read()
                return
            if stripped:
                yield 1, first
            for number, line in enumerate(handle, start=2):
                # A document line starts with its brace: no copy of a 40 KB line to
                # find out whether it is blank.
                if line[:1] == b"{" or line.strip():
                    yield number, line
    except (EOFError, OSError, zlib.error) as exc:
        raise Unreadable(
            number + 1, f"the file could not be read past line {number}: {exc}"
        ) from None


def strip_comments(text: bytes) -> bytes:
    """JSON without ``//`` and ``/* */`` comments (outside strings); line breaks are kept,
    so an error's line number still points into the file as written."""
    out = bytearray()
    i, n, in_string = 0, len(text), False
    while i < n:
        c = text[i]
        if in_string:
            out.append(c)
            if c == 0x5C and i + 1 < n:  # backslash: keep the escaped byte
                out.append(text[i + 1])
                i += 2
                continue
            if c == 0x22:
                in_string = False
            i += 1
        elif c == 0x22:
            in_string = True
            out.append(c)
            i += 1
        elif text.startswith(b"//", i):
            end = text.find(b"\n", i)
            i = n if end < 0 else end
        elif text.startswith(b"/*", i):
            end = text.find(b"*/", i + 2)
            chunk = text[i : n if end < 0 else end + 2]
            out += b"\n" * chunk.count(b"\n")
            i = n if end < 0 else end + 2
        else:
            out.append(c)
            i += 1
    return bytes(out)


def _where(raw: bytes, start: int, exc: Exception) -> int:
    """The file line a decode error points at, for a multi-line document starting at ``start``."""
    if b"\n" not in raw.rstrip():
        return start
    found = re.search(r"byte (\d+)", str(exc))
    if found:
        return start + raw[: int(found.group(1))].count(b"\n")
    # "truncated": the document was cut at its last line.
    return start + raw.rstrip().count(b"\n")


def _complete(line: bytes) -> bool:
    try:
        msgspec.json.decode(line)
    except msgspec.DecodeError:
        return False
    return True


def read_records(
    path: str | Path, summary: ImportSummary | None = None
) -> Iterator[Measurement | InputError]:
    """Measurements of one OONI file, and an ``input_error`` for each line skipped."""
    path = Path(path)
    summary = summary if summary is not None else ImportSummary()
    summary.files += 1
    try:
        for number, raw in documents(path):
            try:
                doc = _document(raw)
                # Without OONI's own ID, the ID derives from the content (a renamed or
                # moved file gives the same IDs, so a store never doubles it).
                made = list(_measurements(doc, str(path), number, raw))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                where = _where(raw, number, exc)
                cut = "truncated" in str(exc)
                reason = "truncated document" if cut else "not JSON of an OONI measurement"
                error = f"the document was cut at line {where}: {exc}" if cut else str(exc)
                yield summary.skip("ooni", str(path), where, reason, error, raw)
                continue
            except ValueError as exc:
                yield summary.skip("ooni", str(path), number, str(exc).split(":")[0], str(exc), raw)
                continue
            summary.documents += 1
            summary.measurements += len(made)
            yield from made
    except Unreadable as exc:
        yield summary.skip("ooni", str(path), exc.line, "unreadable file", str(exc))
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        yield summary.skip("ooni", str(path), 0, "unreadable file", f"cannot open: {exc.strerror}")


def _document(raw: bytes) -> ODoc:
    """One OONI document: plain, commented (.jsonc), an API envelope, or test_keys alone."""
    try:
        doc = _decode(raw)
    except msgspec.DecodeError:
        cleaned = strip_comments(raw)
        if cleaned == raw:
            raise
        raw = cleaned
        doc = _decode(raw)
    if doc.test_name is None and doc.test_keys is None and not (doc.body or doc.raw_measurement):
        keys = _decode_keys(raw)
        if keys.queries or keys.control or keys.pings or keys.lookups:
            # A test_keys object on its own (probe-cli keeps test data this way).
            return ODoc(test_keys=keys)
    return _unwrap(doc)


def read(path: str | Path) -> Iterator[Measurement]:
    """Measurements of one OONI file; a bad line raises ``ValueError`` naming it."""
    for record in read_records(path):
        if isinstance(record, InputError):
            raise ValueError(f"{record.source}:{record.line}: {record.error}")
        yield record


def _unwrap(doc: ODoc) -> ODoc:
    for inner in (doc.raw_measurement, doc.body):
        if doc.test_keys is None and inner:
            return _unwrap(_decode(inner.encode()))
    if doc.test_name is None and doc.test_keys is None:
        if doc.vp or doc.test_url or doc.resolver:
            raise ValueError("not an OONI measurement: this looks like Censored Planet "
                             "Satellite data (use 'wallwatch import satellite DIR')")  # fmt: skip
        raise ValueError("not an OONI measurement: no test_name and no test_keys")
    return doc


def _keys(doc: ODoc) -> OTestKeys:
    keys = doc.test_keys
    if isinstance(keys, str):
        # YAML-era conversions store test_keys as a string (JSON or a Python repr).
        try:
            return _decode_keys(keys.encode())
        except msgspec.DecodeError:
            try:
                value = ast.literal_eval(keys)
            except (ValueError, SyntaxError):
                raise ValueError(f"unreadable test_keys: {keys[:60]!r}") from None
            return msgspec.convert(value, OTestKeys, strict=False)
    return keys or OTestKeys()


def _measurements(doc: ODoc, source: str, line: int, raw: bytes) -> Iterator[Measurement]:
    name = doc.test_name or "?"
    version = doc.test_version or "?"
    prefixes = SUPPORTED.get(name)
    keys = _keys(doc)
    if prefixes is None and not keys.queries:
        raise ValueError(f"unsupported OONI test: {name} {version} holds no DNS lookups "
                         "wallwatch reads")  # fmt: skip
    if prefixes is not None and not version.startswith(prefixes):
        raise ValueError(f"unknown test version: {name} {version} (read: "
                         f"{', '.join(p + 'x' for p in prefixes)})")  # fmt: skip
    start = (doc.measurement_start_time or "1970-01-01 00:00:00").replace("T", " ").rstrip("Z")[:19]
    # OONI names a measurement by its report and input; without its own measurement_uid
    # the ID derives from those (or from the bytes when even they are missing), never
    # from the file's path, so a renamed or reformatted file gives the same IDs.
    uid = doc.measurement_uid
    if not uid:
        identity = (doc.report_id, doc.measurement_start_time, doc.test_name, str(doc.input))
        content = "|".join(map(str, identity)).encode() if doc.report_id else raw
        uid = hashlib.blake2b(content, digest_size=8).hexdigest()
    base: dict[str, Any] = dict(
        schema_version=records.SCHEMA_VERSION, report_id=doc.report_id or Path(source).stem,
        measurement_start_time=start, vantage=f"{doc.probe_cc or 'ZZ'}/{_asn(doc.probe_asn)}",
        transaction_id=0, source_port=0, edns_payload=None,
    )  # fmt: skip
    notes = {"source": f"{source}:{line}", "ooni_test": f"{name} {version}",
             # Addresses that completed a verified TLS handshake for the name: a CA vouches
             # for them, as OONI's dns_consistency counts (ts-017) [ooni-ts017].
             "tls_validated": " ".join(_validated(keys.tls_handshakes or [])),
             "ooni_measurement_uid": doc.measurement_uid or "",
             "input": doc.input if isinstance(doc.input, str) else ""}  # fmt: skip
    control_ip = (keys.control_resolver or "").rsplit(":", 1)[0]
    index = 0

    def emit(
        query: OQuery, later: list[OQuery] | None = None, kind: TargetKind | None = None
    ) -> Measurement:
        nonlocal index
        index += 1
        address = _resolver(query)
        if kind is None:
            host = address.rsplit(":", 1)[0]
            kind = TargetKind.CONTROL if control_ip and host == control_ip else TargetKind.RESOLVER
        replies = list(_responses(query)) + [
            r for q in later or [] for r in _responses(q, delayed=True)
        ]
        origin = _origins([query, *(later or [])])
        return Measurement(
            **base, measurement_uid=f"{uid}.{index}", hostname=(query.hostname or "").rstrip("."),
            query_type=query.query_type or "A", engine=_ENGINES.get(query.engine or "", Engine.GETADDRINFO),
            resolver_address=address, target_kind=kind, failure=_failure(query.failure),
            t0=float(query.t0 or 0.0), t=float(query.t or 0.0),
            responses=tuple(replies), annotations={**notes, **origin},
        )  # fmt: skip

    lookups: list[OQuery] = list(keys.queries or [])
    if keys.bootstrap and keys.bootstrap.queries:
        lookups += keys.bootstrap.queries
    for lookup in (keys.lookups or {}).values():
        lookups += lookup.queries or []
    qtypes: set[str] = set()
    hostname = None
    for query in lookups:
        if not query.hostname:
            continue
        qtypes.add(query.query_type or "A")
        hostname = hostname or query.hostname
        yield emit(query)
    for ping in keys.pings or []:
        first = ping.query[0] if isinstance(ping.query, list) and ping.query else ping.query
        if isinstance(first, OQuery) and first.hostname:
            yield emit(first, ping.delayed_responses)
    dns = keys.control.dns if keys.control else None
    if dns is None or hostname is None:
        return
    for qtype in sorted(qtypes):
        addresses = [a for a in dns.addrs or [] if _family_fits(a, qtype)]
        answers = tuple(Answer("AAAA" if ":" in a else "A", 0, "", None if ":" in a else a,
                               a if ":" in a else None) for a in addresses)  # fmt: skip
        index += 1
        yield Measurement(
            **base, measurement_uid=f"{uid}.{index}", hostname=hostname.rstrip("."), query_type=qtype,
            engine=Engine.GETADDRINFO, resolver_address="ooni-test-helper",
            target_kind=TargetKind.CONTROL, failure=_failure(dns.failure), t0=0.0, t=0.0,
            responses=_reply(dns.failure, answers, 0.0), annotations=notes,
        )  # fmt: skip


def _origins(queries: list[OQuery]) -> dict[str, str]:
    """``answer_asns``: each answer's origin AS as the probe saw it on the day (JSON), kept
    so the analysis judges AS consistency with the routing of the measurement's own day
    rather than today's table."""
    found: dict[str, list[object]] = {}
    for query in queries:
        for answer in query.answers or []:
            address = answer.ipv4 or answer.ipv6
            if address and answer.asn:
                found[address.lower()] = [int(answer.asn), answer.as_org_name or ""]
    # msgspec, sorted as json.dumps(sort_keys=True) sorts, without its separators'
    # spaces: the analysis reads the value as JSON, whatever its spacing.
    return {"answer_asns": _ENCODE_SORTED(found).decode()} if found else {}


def _validated(handshakes: list[OTls]) -> list[str]:
    out = []
    for tls in handshakes:
        if tls.failure is None and not tls.no_tls_verify and tls.address and tls.server_name:
            host = tls.address.rsplit(":", 1)[0].strip("[]").lower()
            out.append(host)
    return sorted(set(out))


def _asn(value: str | int | None) -> str:
    return f"AS{value}" if isinstance(value, int) else (value or "AS0")


def _resolver(query: OQuery) -> str:
    if query.resolver_address:
        return query.resolver_address
    if query.resolver_hostname:
        return f"{query.resolver_hostname}:{query.resolver_port or 53}"
    return "system"


def _responses(query: OQuery, *, delayed: bool = False) -> Iterator[Response]:
    t = float(query.t or 0.0)
    rtt = max(0.0, t - float(query.t0 or 0.0))
    if query.raw_response:
        try:
            data = base64.b64decode(query.raw_response, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        if data:
            yield make_response(data, parse_reply(data), src=_resolver(query).rsplit(":", 1)[0],
                                sport=53, ip_ttl=None, t=t, rtt=rtt)  # fmt: skip
            return
    if delayed and not query.answers and not query.failure:
        return
    yield from _reply(query.failure, _answers(query.answers), t, rtt)


def _answers(items: list[OAnswer] | None) -> tuple[Answer, ...]:
    out = []
    for item in items or []:
        try:
            ttl = int(float(item.ttl or 0))
        except ValueError:
            ttl = 0
        if item.ipv4:
            out.append(Answer("A", ttl, "", _address(item.ipv4, 4)))
        elif item.ipv6:
            out.append(Answer("AAAA", ttl, "", None, _address(item.ipv6, 6)))
        elif item.hostname:
            out.append(Answer(item.answer_type or "CNAME", ttl, "", None, None, item.hostname))
    return tuple(out)


@functools.lru_cache(maxsize=65536)  # answers repeat: an address is checked once
def _address(text: str, version: int) -> str:
    """An answer's address, checked: anything else makes the document an input error."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"bad answer: {text[:60]!r} is not an IPv{version} address") from None
    if address.version != version:
        raise ValueError(f"bad answer: {text[:60]!r} is not an IPv{version} address")
    return str(address)


def _reply(failure: str | None, answers: tuple[Answer, ...], t: float,
           rtt: float | None = None) -> tuple[Response, ...]:  # fmt: skip
    """OONI keeps one outcome per query: an answer, an RCODE failure, or a transport failure."""
    if failure not in (None, "dns_no_answer") and failure not in _RCODES:
        return ()  # a timeout or a local failure: no reply to judge
    return (
        Response(t=t, rtt=t if rtt is None else rtt, src="", sport=0, ip_ttl=None, raw_response="",
                 rcode=_RCODES.get(failure or "", 0), ancount=len(answers), answers=answers),
    )  # fmt: skip


def _failure(failure: str | None) -> Failure | None:
    try:
        return Failure(failure) if failure else None
    except ValueError:
        return Failure.UNKNOWN


@functools.lru_cache(maxsize=65536)
def _family_fits(address: str, qtype: str) -> bool:
    try:
        version = ipaddress.ip_address(address).version
    except ValueError:
        return False
    return qtype == "ANY" or (qtype == "A") == (version == 4)
