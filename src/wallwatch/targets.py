"""Where queries go: an address, a port and what we believe the host is.

A target is written ``[kind:]address[:port]`` on the command line: ``8.8.8.8``,
``dark:10.0.0.5``, ``authoritative:[2001:db8::1]:53``, ``resolver:127.0.0.1:5300``.
The kind is part of the measurement because it decides how a reply is read later
(any reply from a ``dark`` host is injected; see :class:`~wallwatch.vocab.TargetKind`).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from wallwatch.vocab import TargetKind

_KIND_ALIASES = {"auth": TargetKind.AUTHORITATIVE, **{k.value: k for k in TargetKind}}


@dataclass(frozen=True, slots=True)
class Target:
    """One destination of queries."""

    address: str
    port: int = 53
    kind: TargetKind = TargetKind.RESOLVER

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_INET`` or ``AF_INET6``."""
        return socket.AF_INET6 if ":" in self.address else socket.AF_INET

    @property
    def resolver_address(self) -> str:
        """OONI's ``ip:port`` form, IPv6 in brackets."""
        if self.family == socket.AF_INET6:
            return f"[{self.address}]:{self.port}"
        return f"{self.address}:{self.port}"


def parse_target(spec: str, default_kind: TargetKind = TargetKind.RESOLVER) -> Target:
    """Parse ``[kind:]address[:port]``; raise ``ValueError`` with the reason."""
    text = spec.strip()
    kind = default_kind
    head, sep, rest = text.partition(":")
    if sep and head.lower() in _KIND_ALIASES:
        kind, text = _KIND_ALIASES[head.lower()], rest
    port = 53
    if text.startswith("["):
        addr, sep, tail = text[1:].partition("]")
        if not sep:
            raise ValueError(f"target {spec!r}: missing ']'")
        if tail:
            if not tail.startswith(":"):
                raise ValueError(f"target {spec!r}: expected ':port' after ']'")
            port = _port(spec, tail[1:])
    elif text.count(":") == 1:
        addr, _, p = text.partition(":")
        port = _port(spec, p)
    else:
        addr = text
        head6, _, last = text.rpartition(":")
        if last.isdigit() and head6 and _is_address(head6.removesuffix(":") or head6):
            # "::1:5300" is an address, but most likely meant as [::1]:5300.
            raise ValueError(f"target {spec!r}: ambiguous; write [{head6}]:{last} for a port, "
                             f"or [{text}] for the address")  # fmt: skip
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        raise ValueError(f"target {spec!r}: {addr!r} is not an IP address") from None
    return Target(str(ip), port, kind)


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _port(spec: str, text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"target {spec!r}: bad port {text!r}")
    return int(text)
