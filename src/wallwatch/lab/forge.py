"""Forged replies built the way the Great Firewall's injector builds them.

The skeleton is Injector 3's, reverse-engineered in Wallbleed's ``blackbox.c`` and
shown verbatim in Wallbleed Fig. 1 ([wallbleed-2025]; [triplet-2021]; [gfwrev-2009]): copy the query from its ID
through the question's QTYPE and QCLASS, set the counts to 1/1/0/0 -- which drops
the query's EDNS OPT record -- and append one answer ``c0 0c | TYPE | 00 01 | TTL |
RDLEN | RDATA`` whose TYPE is AAAA for an AAAA query and A for *every* other
query type. Flags are ``0x8180`` when the query had RD set and ``0x8400``
otherwise (n4p#466's own example and blackbox.c agree on this mapping).

Profile knobs of the other injectors ([wallbleed-2025]; [triplet-2021]; [gfwrev-2009], Triplet Table 3): the AA
bit, the answer TTL, and the answer owner as the full QNAME instead of the
``c00c`` pointer.
"""

from __future__ import annotations

import ipaddress
import struct
from enum import StrEnum

_QUERY_MIN = 12


class NameForm(StrEnum):
    """How the forged answer names its owner."""

    #: ``c0 0c``, a pointer to the question (Injectors 2 and 3).
    POINTER = "pointer"
    #: The question's name bytes copied in full (Injector 1; 2009 Type 2).
    FULL = "full"


class NotForgeable(ValueError):
    """The packet is not a query the injector would parse (short, QR set, no question)."""


def question_end(query: bytes) -> int:
    """Offset just past QTYPE/QCLASS of the (single) question, as the injector reads it.

    The injector assumes exactly one question and walks plain labels only; a
    compression pointer in a query is not followed (Wallbleed 8, klzgrad 2014).
    """
    if len(query) < _QUERY_MIN or query[2] & 0x80:
        raise NotForgeable("not a query")
    off = 12
    while True:
        if off >= len(query):
            raise NotForgeable("question runs past the end")
        length = query[off]
        if length == 0:
            off += 1
            break
        if length & 0xC0:
            raise NotForgeable("compressed or extended label in the question")
        off += 1 + length
    if off + 4 > len(query):
        raise NotForgeable("no QTYPE/QCLASS")
    return off + 4


def forge_reply(
    query: bytes,
    address: str,
    *,
    answer_ttl: int = 236,
    aa: bool | None = None,
    name_form: NameForm = NameForm.POINTER,
) -> bytes:
    """The forged reply to ``query`` pointing at ``address``.

    ``aa=None`` follows the query's RD bit as Injector 3 does (RD=1 -> 0x8180,
    RD=0 -> 0x8400); ``aa=True`` adds the AA bit to 0x8180 as Injector 1 does.
    An AAAA query gets an IPv6 ``address``; any other type gets the IPv4 one.
    """
    end = question_end(query)
    qtype = struct.unpack_from("!H", query, end - 4)[0]
    ip = ipaddress.ip_address(address)
    if (qtype == 28) != (ip.version == 6):
        raise ValueError("an AAAA query needs an IPv6 forged address, any other query an IPv4 one")
    return build_forged(query, end, qtype, ip.packed, answer_ttl=answer_ttl, aa=aa,
                        name_form=name_form)  # fmt: skip


def build_forged(
    query: bytes,
    end: int,
    qtype: int,
    packed: bytes,
    *,
    answer_ttl: int,
    aa: bool | None,
    name_form: NameForm,
) -> bytes:
    """:func:`forge_reply` for callers that already parsed the question (the border's hot path)."""
    flags = 0x8180 if query[2] & 0x01 else 0x8400
    if aa:
        flags |= 0x0400
    rtype = 28 if qtype == 28 else 1
    owner = b"\xc0\x0c" if name_form == NameForm.POINTER else query[12 : end - 4]
    header = query[:2] + struct.pack("!HHHHH", flags, 1, 1, 0, 0)
    answer = owner + struct.pack("!HHIH", rtype, 1, answer_ttl, len(packed)) + packed
    return header + query[12:end] + answer
