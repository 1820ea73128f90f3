"""The prober's UDP loop in C (``wallwatch._probeloop``): when it runs, and what it is told.

Why: the Python loop spends ~45 us a query on bookkeeping and encoding (docs/performance.md),
a quarter of a C client's rate on the same machine. ``_probeloop.Sweep`` sends and reads in
``sendmmsg``/``recvmmsg`` batches, matches, keeps the window, retries, and writes each plain
record itself. It is given the record's constant parts here, encoded by msgspec, so the
layout of :class:`~wallwatch.records.Measurement` stays defined once; the differential tests
(``tests/test_probeloop.py``) hold its lines to msgspec's bytes.

It takes the common query: UDP over IPv4, the sweep's shared sockets, the system's IP TTL,
no raw capture. Every other query (IPv6, a fixed source port or TTL, TCP, DoT, DoH, the raw
capture's fields) runs in the Python loop beside it, in the same sweep.

``WALLWATCH_NO_NATIVE=1`` in the environment (at install: do not build; at run time: do not
use) forces the pure-Python loop, which is said once on stderr when the extension is missing.
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

import msgspec

from wallwatch import records
from wallwatch.targets import Target
from wallwatch.vocab import Engine, Failure, TargetKind
from wallwatch.wire import query_tail

_encode = msgspec.json.encode


def _load() -> Any:
    if os.environ.get("WALLWATCH_NO_NATIVE"):
        return None
    try:
        from wallwatch import _probeloop  # type: ignore[attr-defined]
    except ImportError:  # pragma: no cover - the build hook compiles it where it can
        print("wallwatch: the native prober loop is not built (no compiler at install); "
              "the prober runs in pure Python, about four times slower", file=sys.stderr)  # fmt: skip
        return None
    return _probeloop


#: The extension module, or None (not built, or WALLWATCH_NO_NATIVE set).
module: Any = _load()

#: Attempts one query may make in C (its retries and TCP retries); a sweep configured for
#: more runs in Python.
MAX_ATTEMPTS = 16

#: Capturing sockets the C loop holds (``--ports``); a sweep asking for more runs in Python.
MAX_SOCKETS = 64

#: Answer types the C writer renders, in the order it wants their names.
ANSWER_TYPES = (1, 28, 2, 5, 12, 39)


def strings(
    *,
    uid_prefix: str,
    report_id: str,
    start_time: str,
    vantage: str,
    rd: bool,
    edns_payload: int | None,
    annotations: dict[str, str],
) -> dict[str, Any]:
    """What a ``_probeloop.Sweep`` is told: the constant parts of the sweep's records as
    msgspec encodes them, the query's bytes around its name as :func:`wire.query_tail`
    builds them, and how to describe a new target or query type (see ``_probeloop.c``)."""
    from wallwatch.probe.reply import type_text

    around = query_tail(b"\x00", 1, rd=rd, edns_payload=edns_payload)
    return {
        "uid_prefix": uid_prefix.encode("ascii"),
        "head": b'{"record_type":"measurement","schema_version":'
        + _encode(records.SCHEMA_VERSION)
        + b',"measurement_uid":"'
        + uid_prefix.encode("ascii"),
        "mid": b'","report_id":'
        + _encode(report_id)
        + b',"measurement_start_time":'
        + _encode(start_time)
        + b',"vantage":'
        + _encode(vantage)
        + b",",
        "ip_ttl": b',"ip_ttl":null,"attempts":',
        "input": b',"rd":'
        + _encode(rd)
        + b',"edns_payload":'
        + _encode(edns_payload)
        + b',"input":',
        "tail": b',"icmp":[],"annotations":' + _encode(annotations) + b"}\n",
        "udp": _encode(Engine.UDP),
        "types": tuple(_encode(type_text(t)) for t in ANSWER_TYPES),
        "generic_timeout": _encode(Failure.GENERIC_TIMEOUT),
        "no_answer": _encode(Failure.DNS_NO_ANSWER),
        "nxdomain": _encode(Failure.DNS_NXDOMAIN),
        "refused": _encode(Failure.DNS_REFUSED),
        "servfail": _encode(Failure.DNS_SERVFAIL),
        "misbehaving": _encode(Failure.DNS_SERVER_MISBEHAVING),
        # the query: 10 header bytes after the ID, the name, type and class, then the OPT
        "query_head": around[:10],
        "query_opt": around[10 + 1 + 4 :],
        "udp_engine": Engine.UDP,
        "kinds": {kind: b',"target_kind":' + _encode(kind) for kind in TargetKind},
        "describe_target": describe_target,
        "describe_qtype": lambda qtype: b',"query_type":' + _encode(type_text(qtype)),
        "json": _encode,
    }


def describe_target(target: Target) -> tuple[bytes, int, bytes] | None:
    """An IPv4 target as the C loop holds it, or None (the Python loop takes it)."""
    if target.family != socket.AF_INET:
        return None
    return (
        socket.inet_aton(target.address),
        target.port,
        b',"engine":' + _encode(Engine.UDP) + b',"resolver_address":'
        + _encode(target.resolver_address),
    )  # fmt: skip


#: A failed send, as the C loop reports it (0: none).
SEND_FAILURES: dict[int, Failure | None] = {
    0: None,
    1: Failure.HOST_UNREACHABLE,
    2: Failure.UNKNOWN,
}
