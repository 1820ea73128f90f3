"""One self-contained HTML page from the report's data (Jinja2 + inlined vega-embed)."""

from __future__ import annotations

from functools import cache
from typing import Any

import jinja2

from wallwatch import __version__
from wallwatch.escape import json_for_html
from wallwatch.report import charts


@cache
def vega_bundle() -> str:
    """vega + vega-lite + vega-embed as one script, from vl-convert (no network)."""
    import vl_convert
    from altair.utils._importers import vl_version_for_vl_convert

    # The stub wants a snippet; without one the call returns the libraries alone.
    bundle: str = vl_convert.javascript_bundle(vl_version=vl_version_for_vl_convert())  # type: ignore[call-arg]
    return bundle


def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("wallwatch.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,
    )


def render(report: dict[str, Any]) -> str:
    specs: list[tuple[str, str, str]] = []
    for n, event in enumerate(report["events"]):
        for name, spec in charts.for_event(report, event):
            # Safe inside <script> whatever the data's strings hold (wallwatch.escape).
            specs.append((f"chart-{n}-{name}", name, json_for_html(spec)))
    return (
        _env()
        .get_template("report.html.j2")
        .render(
            report=report,
            specs=specs,
            version=__version__,
            vega_bundle=vega_bundle(),
        )
    )
