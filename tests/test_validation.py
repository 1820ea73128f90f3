"""The analysis on real and QA OONI measurements (../shared/data), against OONI's verdicts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SHARED
from wallwatch.interop import ooni
from wallwatch.interop.validation import judge, ours

OONI = SHARED / "data" / "ooni"
pytestmark = pytest.mark.skipif(not OONI.exists(), reason=f"{OONI} is not beside the project")


@pytest.mark.parametrize(
    ("path", "attribution"),
    [
        ("real/backend-fastpath/web_connectivity_ir_fp.json", "tampering_resolver"),  # 10.10.34.36
        ("real/backend-fastpath/bug_351.json", "none"),
        ("real/probe-cli/manual_dnsgoogle80_measurement.json", "none"),
        ("synthetic-qa/dnsBlockingBOGON.measurement.json", "tampering_resolver"),
        ("synthetic-qa/dnsBlockingNXDOMAIN.measurement.json", "tampering_resolver"),
        ("synthetic-qa/dnsHijackingToProxyWithHTTPURL.measurement.json", "tampering_resolver"),
        ("synthetic-qa/websiteDownNXDOMAIN.measurement.json", "none"),
        ("synthetic-qa/successWithHTTPS.measurement.json", "none"),
        ("synthetic-qa/controlFailureWithSuccessfulHTTPWebsite.measurement.json", "unknown"),
    ],
)
def test_verdicts_on_ooni_data(path: str, attribution: str) -> None:
    assert judge(OONI / path)[0] == attribution


def test_the_api_envelope_is_opened() -> None:
    path = (
        OONI
        / "real/explorer/measurement_meta_0120200303c6ba9056fe7973cc6b51d15e2ebe18_IE_efindlove_httpdiff.json"
    )
    measurements = list(ooni.read(path))
    assert measurements and {m.hostname for m in measurements} == {"www.efindlove.com"}
    assert {m.vantage for m in measurements} == {"IE/AS6830"}
    assert judge(path)[0] == "none"


SATELLITE = SHARED / "data" / "censoredplanet" / "e2e_test_data" / "Satellitev2_2021-04-25"


@pytest.mark.skipif(not SATELLITE.exists(), reason=f"{SATELLITE} is not beside the project")
def test_satellite_v2_results_are_judged_against_their_controls() -> None:
    from wallwatch.interop import satellite
    from wallwatch.interop.validation import judge_measurements

    measurements = list(satellite.read(SATELLITE))
    by_name = {m.hostname: m for m in measurements if m.target_kind == "resolver"}
    assert by_name["custhelp.com"].measurement_start_time == "2021-04-25 19:37:16"  # EDT -> UTC
    assert not by_name["www.unwatch.org"].responses  # every try timed out
    controls = [
        m for m in measurements if m.target_kind == "control" and m.hostname == "custhelp.com"
    ]
    assert (
        judge_measurements([by_name["custhelp.com"], *controls]).attribution == "tampering_resolver"
    )
    with pytest.raises(ValueError, match="not a Satellite scan"):
        list(satellite.read(SATELLITE.parent))


BASELINE = Path(__file__).parent / "data" / "validation-baseline.json"


def test_no_validation_row_gets_worse() -> None:
    """docs/validation.md as a regression test: a row that agreed must still agree, the
    scores may not drop, and every disagreement must carry its reason."""
    from wallwatch.interop.validation import all_rows, scores

    rows = all_rows(SHARED / "data")
    before = json.loads(BASELINE.read_text())
    now = {f"{r.section}|{r.case}": r for r in rows}
    assert set(before["rows"]) <= set(now), "a validation case disappeared"
    worse = [key for key, row in before["rows"].items()
             if row["expected"] == ours(row["attribution"]) and not now[key].agrees]  # fmt: skip
    assert not worse, f"rows that got worse: {worse}"
    for cls, old in before["scores"].items():
        new = scores(rows)[cls]
        assert new["precision"] >= old["precision"] and new["recall"] >= old["recall"], (
            cls,
            old,
            new,
        )
    assert all(r.why for r in rows if not r.agrees), [
        r.case for r in rows if not r.agrees and not r.why
    ]


def test_the_validation_doc_is_current() -> None:
    from wallwatch.interop.validation import all_rows, markdown

    doc = Path(__file__).parents[1] / "docs" / "validation.md"
    assert doc.read_text() == markdown(all_rows(SHARED / "data")), "run ./scripts/validation"
