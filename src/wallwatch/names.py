"""Query names from files or stdin: IDN to punycode, URLs to host names, junk reported.

Test lists come in many shapes (a bare name per line, OONI/Citizen Lab URL lists,
names with a trailing dot, IDNs in Unicode). Each line becomes one ASCII query
name or one :class:`BadLine` naming the file and line number, so that a junk line
is reported and kept in the output, never silently lost. Blank lines and ``#``
comments are not junk.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO
from urllib.parse import urlsplit

import idna

from wallwatch.wire import NameError_, encode_name

# Host-name characters (plus '_' and '*', which real lists contain); labels 1-63 bytes.
_ASCII_NAME = re.compile(r"(?:[a-z0-9_*-]{1,63}\.)*[a-z0-9_*-]{1,63}")


class QueryName(NamedTuple):
    """A usable query name and where it came from (a tuple: millions are made per sweep)."""

    #: ASCII name, lower-case, without trailing dot.
    hostname: str
    #: The line as given, when it differs from ``hostname``.
    input: str | None
    source: str
    line: int


@dataclass(frozen=True, slots=True)
class BadLine:
    """An input line that is not a query name."""

    source: str
    line: int
    text: str
    error: str


def to_hostname(text: str) -> str:
    """Turn one input token into an ASCII query name; raise ``ValueError`` if impossible.

    >>> to_hostname("https://www.Example.com/path?q=1")
    'www.example.com'
    >>> to_hostname("яндекс.рф")
    'xn--d1acpjx3f.xn--p1ai'
    """
    token = text.strip()
    if "://" in token:
        host = urlsplit(token).hostname
        if not host:
            raise ValueError("URL without a host name")
        token = host
    token = token.rstrip(".")
    if not token:
        raise ValueError("empty name")
    if token.isascii():
        name = token.lower()
        if len(name) <= 253 and _ASCII_NAME.fullmatch(name):
            return name
    if any(c.isspace() for c in token):
        raise ValueError("whitespace inside a name")
    if token.isascii():
        if any(not (c.isalnum() or c in "-_.*") for c in name):
            raise ValueError("character not allowed in a host name")
    else:
        try:
            name = idna.encode(token, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise ValueError(f"not a valid IDN: {exc}") from exc
    try:
        encode_name(name)
    except NameError_ as exc:
        raise ValueError(str(exc)) from exc
    return name


def parse_lines(lines: Iterable[str], source: str) -> Iterator[QueryName | BadLine]:
    """Yield a name or a bad line for each meaningful line of ``lines``."""
    for number, raw in enumerate(lines, start=1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        token = text.split(",", 1)[0].strip() if "://" not in text else text.split()[0]
        try:
            host = to_hostname(token)
        except ValueError as exc:
            yield BadLine(source, number, text, str(exc))
            continue
        yield QueryName(host, None if host == text else text, source, number)


def read_names(path: str | Path) -> Iterator[QueryName | BadLine]:
    """Names from a file, or from stdin when ``path`` is ``-``."""
    if str(path) == "-":
        yield from parse_lines(sys.stdin, "-")
        return
    handle: TextIO
    with open(path, encoding="utf-8", errors="replace") as handle:
        yield from parse_lines(handle, str(path))
