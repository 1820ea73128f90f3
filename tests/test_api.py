"""The public Python API: its surface is pinned, and each call works end to end on loopback."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

import wallwatch as ww
from conftest import SHARED
from wallwatch.lab.loopback import Forgery, LoopbackServer, authoritative, racing_injector
from wallwatch.vocab import Attribution, Outcome

#: The curated surface (httpx's test_exported_members): a change here is an API change.
EXPECTED = [
    "AddressInfo", "Analysis", "Answer", "Attribution", "Engine", "Evidence", "Failure",
    "InputError", "Measurement", "NameAttribution", "Outcome", "ReplyVerdict", "Response",
    "Stray", "TargetKind", "__version__", "analyze", "detect", "explain", "locate", "netinfo",
    "probe", "read",
]  # fmt: skip


def test_all_is_pinned() -> None:
    assert ww.__all__ == EXPECTED
    for name in ww.__all__:
        assert getattr(ww, name) is not None


ZONE = {"www.google.com": ["142.250.72.4"], "example.org": ["93.184.215.14"]}


def _lab(serve: Callable[..., LoopbackServer]) -> tuple[LoopbackServer, LoopbackServer]:
    """A resolver behind a racing injector (Facebook's address first), and a dark host."""
    genuine = authoritative(ZONE, aa=False)
    forged = [Forgery("31.13.92.35", delay=0.0, answer_ttl=236)]
    blocked = lambda name: name == "www.google.com"  # noqa: E731
    resolver = serve(racing_injector(genuine, blocked, forged, genuine_delay=0.05))
    dark = serve(racing_injector(lambda _r: None, blocked, forged), "127.0.0.2", tcp=False)
    return resolver, dark


def test_probe_returns_every_reply_in_memory(serve: Callable[..., LoopbackServer]) -> None:
    resolver, dark = _lab(serve)
    control = serve(authoritative(ZONE, aa=False), "127.0.0.3")
    ms = ww.probe(["www.google.com", "example.org"], [resolver.spec, f"dark:{dark.spec}"],
                  control=f"tcp:{control.spec}", rate=None, timeout=0.4, window=0.3, retries=0,
                  vantage="nb")  # fmt: skip
    by = {(m.hostname, m.target_kind.value): m for m in ms}
    raced = by[("www.google.com", "resolver")]
    assert [a.ipv4 for r in raced.responses for a in r.answers] == ["31.13.92.35", "142.250.72.4"]
    assert by[("www.google.com", "dark")].responses
    assert not by[("example.org", "dark")].responses
    assert by[("example.org", "control")].responses[0].answers[0].ipv4 == "93.184.215.14"

    with ww.analyze(ms) as result:
        rows = {(r.hostname, r.query_type): r for r in result.attribution_rows()}
        assert rows[("www.google.com", "A")].attribution is Attribution.ON_PATH_INJECTOR
        assert rows[("www.google.com", "A")].bad_answers == ("31.13.92.35",)
        assert rows[("example.org", "A")].attribution is Attribution.NONE
        assert rows[("example.org", "A")].bad_answers == ()
        outcomes = {v.outcome for v in result.verdict_rows() if v.hostname == "www.google.com"}
        assert {
            Outcome.INJECTED_DARK,
            Outcome.INJECTED_MULTI_REPLY,
            Outcome.OK_MATCH_IP,
        } <= outcomes
        # The same tables as DuckDB relations, and SQL over them.
        assert result.attributions.count("*").fetchall()[0][0] == 2
        assert result.sql("SELECT count(*) FROM reply_verdicts WHERE netinfo_version <> 'none'"
                          ).fetchall()[0][0] > 0  # fmt: skip
        table = result.arrow("attributions")
        assert table.num_rows == 2 and "attribution" in table.column_names
        text = ww.explain(result, raced.measurement_uid)
        assert "forged on the network path" in text and "31.13.92.35" in text
        with pytest.raises(ValueError, match="no table"):
            result.relation("nope")


def test_probe_can_also_write_a_file(serve: Callable[..., LoopbackServer], tmp_path: Path) -> None:
    resolver = serve(authoritative(ZONE, aa=False))
    out = tmp_path / "m.jsonl"
    ms = ww.probe("example.org", resolver.spec, output=out, rate=None, timeout=0.3, window=0.1,
                  retries=0)  # fmt: skip
    assert len(ms) == 1
    again = [r for r in ww.read(out) if isinstance(r, ww.Measurement)]
    assert again == ms


def test_read_detects_every_format() -> None:
    data = SHARED / "data"
    ooni = data / "ooni/real/backend-fastpath/web_connectivity_ir_fp.json"
    sat = data / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25"
    cap = data / "pcap/gfw-report-quic-sni-availability-attack/dns_victim_client_anon.pcap"
    if not ooni.exists():
        pytest.skip("shared data not present")
    assert ww.detect(ooni) == "ooni" and ww.detect(sat) == "satellite" and ww.detect(cap) == "pcap"
    records = list(ww.read(ooni, sat, cap))
    kinds = {r.annotations.get("ooni_test", r.vantage.split("/")[0]) for r in records
             if isinstance(r, ww.Measurement)}  # fmt: skip
    assert "satellite" in kinds and any("web_connectivity" in k for k in kinds)
    with ww.analyze(records) as result:
        assert result.summary.replies > 0
        assert result.arrow("reply_verdicts").num_rows == result.summary.replies


def test_read_accepts_a_file_object(tmp_path: Path) -> None:
    src = SHARED / "data/ooni/real/backend-fastpath/bug_351.json"
    if not src.exists():
        pytest.skip("shared data not present")
    gz = tmp_path / "bug.json.gz"
    gz.write_bytes(gzip.compress(src.read_bytes()))
    with gz.open("rb") as handle:
        got = list(ww.read(handle, format="ooni"))
    assert got and all(isinstance(r, ww.Measurement) for r in got)


def test_netinfo_out_of_the_box() -> None:
    fb, google, private = ww.netinfo("31.13.92.35", "8.8.8.8", "10.1.2.3")
    assert (fb.asn, google.asn, private.asn) == (32934, 15169, None)
    assert "Facebook" in (fb.org or "") and fb.prefix == "31.13.64.0/18"
    assert (
        fb.dataset is not None and "@ip-location-db/asn@" in fb.dataset and "sha256:" in fb.dataset
    )
    v6 = ww.netinfo("2a03:2880:f10c:83:face:b00c:0:25de")[0]
    assert v6.asn == 32934


def test_analyze_refuses_nothing() -> None:
    with pytest.raises(ValueError, match="no records"):
        ww.analyze([])


def test_analysis_of_a_store_file(serve: Callable[..., LoopbackServer], tmp_path: Path) -> None:
    from wallwatch import store

    resolver = serve(authoritative(ZONE, aa=False))
    out = tmp_path / "m.jsonl"
    ww.probe(["example.org", "www.google.com"], resolver.spec, output=out, rate=None,
             timeout=0.3, window=0.1, retries=0)  # fmt: skip
    db = tmp_path / "s.duckdb"
    store.ingest([out], db)
    with ww.analyze(db) as result:
        rows = result.attribution_rows()
    # No control: nothing can be called genuine or tampered, and the row says what is missing.
    assert {r.attribution for r in rows} == {Attribution.UNKNOWN}
    assert not any(r.has_control for r in rows)
    uid = json.loads(out.read_text().splitlines()[0])["measurement_uid"]
    text = ww.explain(db, uid)
    assert "no control lookup" in text and "cannot be told from this data" in text


def test_explain_accepts_the_sources_own_measurement_id() -> None:
    path = (SHARED / "data/ooni/real/explorer/measurement_meta_0120200303c6ba9056fe7973cc6b51d15e2ebe18"
            "_IE_efindlove_httpdiff.json")  # fmt: skip
    if not path.exists():
        pytest.skip("shared data not present")
    records = list(ww.read(path))
    source_uid = records[0].annotations["ooni_measurement_uid"]
    assert source_uid and not any(r.measurement_uid == source_uid for r in records)
    with ww.analyze(records) as result:
        text = ww.explain(result, source_uid)
    assert "www.efindlove.com" in text and "genuine" in text
    # Replies imported without packet bytes are shown from their fields, not as parse failures.
    assert "no packet bytes in the source" in text and "does not parse" not in text


def test_an_ooni_answers_own_asn_is_used_before_todays_table() -> None:
    """OONI records each answer's AS as the probe looked it up on the day: that routing,
    not the bundled table's, judges AS consistency, and the verdict says which was used."""
    path = SHARED / "data/ooni/real/probe-cli/IT_nexa.polito.it_measurement.json"
    if not path.exists():
        pytest.skip("shared data not present")
    records = list(ww.read(path))
    assert any("answer_asns" in r.annotations for r in records if isinstance(r, ww.Measurement))
    with ww.analyze(records) as result:
        rows = result.sql("SELECT asn, dataset FROM ip_asn WHERE ip = '130.192.16.171'").fetchall()
        assert rows == [(137, "the source's own lookup on the day")]
        versions = result.sql("SELECT DISTINCT netinfo_version FROM reply_verdicts").fetchall()
    assert "source: per-answer ASNs" in versions[0][0]
