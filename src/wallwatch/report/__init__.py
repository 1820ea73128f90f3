"""``wallwatch report``: an evidence page a journalist can read and a researcher can verify.

:mod:`.evidence` gathers the facts (events, the attribution checklist with its data,
histograms, example packets, the pcap); :mod:`.charts` turns them into Vega-Lite
specs; :mod:`.html` writes one self-contained page (no CDN: the chart library is
inlined) next to its JSON twin.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wallwatch.flood import PerSecond


def write(out: Path, *, html_path: Path | None = None, json_path: Path | None = None,
          db: Path | None = None, connections: PerSecond | None = None) -> dict[str, Any]:  # fmt: skip
    """Build the report of a watch directory; write ``report.html`` and ``report.json``.

    ``connections``: the hosts' connection counts (:mod:`wallwatch.flood`), when measured."""
    from wallwatch.report import evidence, html

    report = evidence.build(out, db=db, connections=connections)
    (json_path or out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    (html_path or out / "report.html").write_text(html.render(report))
    return report
