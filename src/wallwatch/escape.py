"""Text from outside, made safe where it is shown: the terminal, and JSON inside HTML.

Why one module: names, resolver answers, vantage names and imported files are chosen by
whoever made the data, and wallwatch shows them in three places that each interpret
some characters -- a terminal (escape sequences can rewrite the screen or the title), a
rich console (``[red]`` is markup), and a ``<script>`` block of the report (``</script>``,
``<!--`` and U+2028 change how the page parses). Each place calls the one function
here for it, so nothing from outside reaches them raw.
"""

from __future__ import annotations

import json
import re
from typing import Any

from rich.markup import escape as _rich_escape

# C0 controls except tab and newline, DEL, and the C1 controls (0x80-0x9f: 8-bit CSI).
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def terminal(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` (tab and newline kept)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def console(text: str) -> str:
    """``text`` for a rich console: control characters shown, markup never interpreted."""
    return _rich_escape(terminal(text))


_HTML_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
                "\u2029": "\\u2029"}  # fmt: skip


def json_for_html(value: Any) -> str:
    """JSON that can sit inside a ``<script>`` element whatever its strings hold.

    ``<``, ``>`` and ``&`` become ``\\u`` escapes (so neither ``</script>`` nor ``<!--``
    can end or hide the block), and so do U+2028/U+2029 (line terminators in older
    JavaScript). The value is the same JSON to any parser.
    """
    text = json.dumps(value)
    return re.sub("[<>&\u2028\u2029]", lambda m: _HTML_UNSAFE[m.group()], text)
