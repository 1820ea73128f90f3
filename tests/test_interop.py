"""Importers (OONI, Satellite, pcap) and exporters (OONI, zdns, Parquet, pcapng) on real files."""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable
from pathlib import Path

import dpkt
import pytest
from click.testing import CliRunner

from conftest import SHARED, probe_into_store, udp_query
from wallwatch import columns
from wallwatch.cli import main
from wallwatch.interop import ooni, pcap, satellite
from wallwatch.interop.export import ExportFormat, export
from wallwatch.interop.summary import ImportSummary
from wallwatch.interop.validation import judge_measurements
from wallwatch.journal import read_records
from wallwatch.lab.loopback import Forgery, authoritative, racing_injector
from wallwatch.records import InputError, Measurement

DATA = SHARED / "data"
needs_data = pytest.mark.skipif(not DATA.exists(), reason=f"{DATA} is not beside the project")
SPEC_DNSPING = Path(__file__).parent / "data" / "ooni-dnsping-0.3.json"
SPEC_DNSCHECK = Path(__file__).parent / "data" / "ooni-dnscheck-0.9.json"


def ooni_files() -> list[Path]:
    with open(DATA / "INDEX.csv", newline="", encoding="utf-8") as handle:
        return [DATA / r["path"] for r in csv.DictReader(handle)
                if r["path"].startswith("ooni/") and r["path"].endswith(".json")]  # fmt: skip


@needs_data
def test_every_ooni_file_in_the_shared_data_imports_without_a_skip() -> None:
    summary = ImportSummary()
    for path in ooni_files():
        records = list(ooni.read_records(path, summary))
        assert not [r for r in records if isinstance(r, InputError)], path
    assert summary.documents == len(ooni_files()) and summary.measurements > 400
    assert not summary.skipped


@needs_data
def test_ooni_jsonl_gzip_with_bad_lines_keeps_the_good_ones(tmp_path: Path) -> None:
    good = [json.dumps(json.loads(p.read_text())) for p in ooni_files()[:4]]
    satellite_line = (
        (DATA / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25/results.json")
        .read_text()
        .splitlines()[0]
    )
    ndt = json.dumps({"test_name": "ndt", "test_version": "0.1.0", "test_keys": {"download": []}})
    future = json.loads(good[0])
    future["test_version"] = "9.9.9"
    lines = [good[0], "this is not json", good[1], satellite_line, ndt, json.dumps(future), good[2],
             good[3][: len(good[3]) // 2]]  # fmt: skip
    path = tmp_path / "mixed.jsonl.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("\n".join(lines) + "\n")
    result = CliRunner().invoke(
        main, ["import", "ooni", str(path), "-o", str(tmp_path / "out.jsonl")]
    )
    assert result.exit_code == 0, result.output
    records = list(read_records(tmp_path / "out.jsonl"))
    errors = {r.line: r.error for r in records if isinstance(r, InputError)}
    assert set(errors) == {2, 4, 5, 6, 8}
    assert "Censored Planet Satellite" in errors[4]
    assert "unsupported OONI test: ndt" in errors[5]
    assert "unknown test version: web_connectivity 9.9.9" in errors[6]
    said = " ".join(result.output.split())  # rich wraps long lines at spaces
    assert f"{path}:2: skipped" in said
    imported = {
        r.annotations["source"].rsplit(":", 1)[1] for r in records if isinstance(r, Measurement)
    }
    assert imported == {"1", "3", "7"}
    assert "5 skipped" in said


def test_dnsping_delayed_responses_are_replies_to_the_same_query() -> None:
    """The spec's dnsping sample, with one forged reply racing the genuine one."""
    (m, *rest) = list(ooni.read(SPEC_DNSPING))
    assert len(rest) == 2  # every ping is a measurement
    assert rest[0].responses and not rest[1].responses  # the last ping timed out
    assert [a.ipv4 for r in m.responses for a in r.answers] == ["65.49.2.178", "93.184.216.34"]
    assert m.responses[0].rtt < m.responses[1].rtt
    assert m.resolver_address == "8.8.8.8:53" and m.vantage == "IN/AS24560"


def test_dnscheck_bootstrap_and_lookups_are_read() -> None:
    measurements = list(ooni.read(SPEC_DNSCHECK))
    resolvers = {m.resolver_address for m in measurements}
    assert resolvers == {"system", "https://dns.google/dns-query", "8.8.4.4:443"}
    assert {m.hostname for m in measurements} == {"dns.google", "example.org"}


@needs_data
def test_satellite_v1_v21_and_v22_are_read() -> None:
    base = DATA / "censoredplanet/e2e_test_data"
    v1 = list(satellite.read(base / "Satellitev1_2018-08-03"))
    assert satellite.version(base / "Satellitev1_2018-08-03") == "v1"
    kinds = {m.target_kind.value for m in v1}
    assert kinds == {"resolver", "control"}
    assert {m.measurement_start_time for m in v1} == {"2018-08-03 00:00:00"}
    ireland = [m for m in v1 if m.vantage == "satellite/Ireland"]
    assert ireland and all(m.responses for m in ireland)
    v21 = list(satellite.read(base / "Satellitev2_2021-04-25"))
    assert satellite.version(base / "Satellitev2_2021-04-25") == "v2.1"
    assert any(m.hostname == "custhelp.com" and m.target_kind == "resolver" for m in v21)


@needs_data
def test_satellite_v22_layout_gives_the_same_measurements(tmp_path: Path) -> None:
    """The real v2.1 scan rewritten in the v2.2 layout (per-query list, tagged answers)."""
    src = DATA / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25"
    dst = tmp_path / "CP-Satellite-2021-10-20-12-00-01"
    dst.mkdir()
    out = []
    for raw in (src / "results.json").read_text().splitlines():
        line = json.loads(raw)
        response = line.pop("response")
        rcodes = response.pop("rcode", [])
        error = response.pop("error", None)
        line["passed_liveness"] = line.pop("passed_control", True)
        line["response"] = [{
            "url": "a.root-servers.net", "has_type_a": True,
            "response": {"198.41.0.4": {"matched": ["ip"]}}, "error": "null", "rcode": 0,
        }, {
            "url": line["test_url"], "has_type_a": True,
            "response": {ip: {"asnum": 0, "asname": "", "matched": tags} for ip, tags in response.items()},
            "error": error or ("null" if rcodes and rcodes[-1] != "-1" else "timeout"),
            "rcode": int(rcodes[-1]) if rcodes else -1,
        }]  # fmt: skip
        out.append(json.dumps(line))
    (dst / "results.json").write_text("\n".join(out) + "\n")
    (dst / "responses_control.json").write_text((src / "responses_control.json").read_text())
    assert satellite.version(dst) == "v2.2"

    def answers(ms: Iterable[Measurement]) -> dict[tuple[str, str, str], list[str]]:
        return {(m.resolver_address, m.hostname, m.target_kind.value):
                sorted(a.ipv4 or "" for r in m.responses for a in r.answers) for m in ms}  # fmt: skip

    assert answers(satellite.read(dst)) == answers(satellite.read(src))


@needs_data
def test_a_satellite_file_given_as_ooni_and_a_wrong_directory_say_what_they_are(
    tmp_path: Path,
) -> None:
    results = DATA / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25/results.json"
    with pytest.raises(
        ValueError, match=r"results.json:1: not an OONI measurement: this looks like Censored"
    ):
        list(ooni.read(results))
    result = CliRunner().invoke(
        main, ["import", "satellite", str(tmp_path), "-o", str(tmp_path / "out.jsonl")]
    )
    assert result.exit_code == 1 and "not a Satellite scan" in result.output
    assert "nothing was imported" in result.output


@needs_data
def test_pcap_of_a_drop_imports_as_timeouts() -> None:
    path = DATA / "pcap/gfw-report-quic-sni-availability-attack/dns_victim_client_anon.pcap"
    summary = ImportSummary()
    measurements = [r for r in pcap.read_records(path, summary) if isinstance(r, Measurement)]
    assert len(measurements) == 44 and not any(m.responses for m in measurements)
    assert {m.hostname for m in measurements} == {"http3check.net"}
    assert all(m.ip_ttl for m in measurements)  # the query's own IP TTL, as sent


def _injected_capture(serve, tmp_path: Path) -> tuple[Path, frozenset[int]]:  # noqa: ANN001
    """Probe a raced resolver and a dark host, then write the packets (as a capture would)."""
    genuine = authoritative(
        {"blocked.example.com": ["192.0.2.80"], "www.example.com": ["192.0.2.81"]}
    )
    forged = [Forgery("65.49.2.178", ip_ttl=103)]
    blocked = lambda n: n.startswith("blocked.")  # noqa: E731
    resolver = serve(
        racing_injector(genuine, blocked, forged, genuine_delay=0.03, genuine_ip_ttl=52)
    )
    dark = serve(racing_injector(lambda _r: None, blocked, forged), "127.0.0.2", tcp=False)
    from wallwatch.vocab import TargetKind

    queries = [udp_query(resolver, "blocked.example.com"), udp_query(resolver, "www.example.com"),
               udp_query(dark, "blocked.example.com", kind=TargetKind.DARK)]  # fmt: skip
    (tmp_path / "probe").mkdir()
    db = probe_into_store(tmp_path / "probe", queries)
    files = sorted((tmp_path / "probe").glob("*.jsonl"))
    assert files and db.exists()
    capture = tmp_path / "capture.pcapng"
    export(files, ExportFormat.PCAPNG, capture)
    return capture, frozenset({resolver.address[1], dark.address[1]})


def test_a_capture_of_injection_feeds_the_same_analysis(serve, tmp_path: Path) -> None:  # noqa: ANN001
    capture, ports = _injected_capture(serve, tmp_path)
    measurements = [r for r in pcap.read_records(capture, dark=frozenset({"127.0.0.2"}), ports=ports)
                    if isinstance(r, Measurement)]  # fmt: skip
    raced = next(
        m
        for m in measurements
        if m.hostname == "blocked.example.com" and m.target_kind == "resolver"
    )
    assert [r.ip_ttl for r in raced.responses] == [103, 52]
    assert [a.ipv4 for r in raced.responses for a in r.answers] == ["65.49.2.178", "192.0.2.80"]
    dark = next(m for m in measurements if m.target_kind == "dark")
    judged = judge_measurements([m for m in measurements if m.hostname == "blocked.example.com"])
    assert judged.attribution == "on_path_injector"
    assert "injected.dark_destination" in judged.verdicts
    assert dark.responses


def test_a_corrupt_capture_keeps_the_packets_before_the_cut(serve, tmp_path: Path) -> None:  # noqa: ANN001
    capture, ports = _injected_capture(serve, tmp_path)
    # Rewrite as classic pcap, then cut the last packet in half.
    classic = tmp_path / "capture.pcap"
    with open(capture, "rb") as f_in, open(classic, "wb") as f_out:
        writer = dpkt.pcap.Writer(f_out, snaplen=65535, linktype=101)
        for ts, buf in dpkt.pcapng.Reader(f_in):
            writer.writepkt(buf, ts)
    data = classic.read_bytes()
    classic.write_bytes(data[:-20])
    summary = ImportSummary()
    records = list(pcap.read_records(classic, summary, ports=ports))
    errors = [r for r in records if isinstance(r, InputError)]
    assert len(errors) == 1 and "ends mid-packet" in errors[0].error and "packet" in errors[0].error
    assert sum(isinstance(r, Measurement) for r in records) >= 2
    not_pcap = tmp_path / "notes.txt"
    not_pcap.write_text("hello")
    (error,) = list(pcap.read_records(not_pcap))
    assert isinstance(error, InputError) and "not a pcap" in error.error


def test_export_ooni_round_trips_every_reply(serve, tmp_path: Path) -> None:  # noqa: ANN001
    genuine = authoritative({"blocked.example.com": ["192.0.2.80"]})
    resolver = serve(racing_injector(genuine, lambda n: True, [Forgery("65.49.2.178", ip_ttl=103)],
                                     genuine_delay=0.03))  # fmt: skip
    (tmp_path / "p").mkdir()
    probe_into_store(tmp_path / "p", [udp_query(resolver, "blocked.example.com")])
    files = sorted((tmp_path / "p").glob("*.jsonl"))
    original = [r for r in read_records(files[0]) if isinstance(r, Measurement)]
    export(files, ExportFormat.OONI, tmp_path / "ooni.jsonl")
    back = list(ooni.read(tmp_path / "ooni.jsonl"))
    assert [[a.ipv4 for r in m.responses for a in r.answers] for m in back] == [
        [a.ipv4 for r in m.responses for a in r.answers] for m in original]  # fmt: skip
    assert [r.raw_response for r in back[0].responses] == [
        r.raw_response for r in original[0].responses
    ]
    export(files, ExportFormat.ZDNS, tmp_path / "zdns.jsonl")
    (line,) = [json.loads(x) for x in (tmp_path / "zdns.jsonl").read_text().splitlines()]
    assert line["status"] == "NOERROR" and line["data"]["answers"][0]["answer"] == "65.49.2.178"
    assert len(line["data"]["wallwatch"]["replies"]) == 2
    export(files, ExportFormat.PARQUET, tmp_path / "pq")
    assert (tmp_path / "pq" / "responses.parquet").exists()


# -- importers that never lose a file ------------------------------------------------

REAL = DATA / "ooni/real/backend-fastpath/bug_351.json"


def _import(tmp_path: Path, *files: Path) -> tuple[int, str, list[Measurement]]:
    out = tmp_path / "out.jsonl"
    out.unlink(missing_ok=True)
    result = CliRunner().invoke(main, ["import", "ooni", *map(str, files), "-o", str(out)])
    got = [r for r in read_records(out) if isinstance(r, Measurement)] if out.exists() else []
    return result.exit_code, result.output, got


@needs_data
def test_commented_json_and_test_keys_alone_are_read(tmp_path: Path) -> None:
    text = REAL.read_text()
    commented = tmp_path / "measurement.jsonc"
    commented.write_text("// Test data, as OONI's probe-cli keeps it.\n"
                         + text.replace("{", '{ /* a "quoted" comment */', 1) + "\n// end\n")  # fmt: skip
    code, output, got = _import(tmp_path, commented)
    plain = list(ooni.read(REAL))
    assert code == 0 and [m.measurement_uid for m in got] == [m.measurement_uid for m in plain]
    keys_only = tmp_path / "test_keys.json"
    keys_only.write_text(json.dumps(json.loads(text)["test_keys"], indent=2))
    code, output, got = _import(tmp_path, keys_only)
    assert code == 0 and {m.hostname for m in got} == {m.hostname for m in plain}


@needs_data
def test_an_import_writes_its_records_without_a_parquet_twin(tmp_path: Path) -> None:
    # The twin's converter is slower than an importer: it held `import ooni` back at its
    # end and took its memory from 38 to 188 MB (bench/importer.py), for a cache that
    # ingest does not need (it parses the JSONL instead).
    code, _, got = _import(tmp_path, REAL)
    assert code == 0 and got
    assert not columns.directory(tmp_path / "out.jsonl").exists()


@needs_data
def test_a_truncated_gzip_is_named_and_the_good_files_beside_it_imported(tmp_path: Path) -> None:
    whole = gzip.compress((REAL.read_text().strip() + "\n").encode() * 3)
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    code, output, got = _import(tmp_path, cut, REAL)
    assert code == 0
    assert "cut.jsonl.gz:" in output and "could not be read" in output
    assert "import ooni: 2 file(s)" in output and "1 unreadable file" in output
    assert {m.hostname for m in got}  # the good file's measurements are there


@needs_data
def test_only_unreadable_files_exit_non_zero_with_a_summary(tmp_path: Path) -> None:
    pretty = json.dumps(json.loads(REAL.read_text()), indent=2)
    cut = tmp_path / "cut.json"
    cut.write_text(pretty[: len(pretty) // 2])
    junk = tmp_path / "junk.json"
    junk.write_text("this is not json\n")
    code, output, got = _import(tmp_path, cut, junk)
    where = pretty[: len(pretty) // 2].rstrip().count("\n") + 1
    assert code == 1 and not got
    assert f"cut.json:{where}: skipped: the document was cut at line {where}" in output
    assert "import ooni: 2 file(s), 0 document(s)" in output and "nothing was imported" in output


@needs_data
def test_satellite_retries_are_one_measurement_with_ooni_failures(tmp_path: Path) -> None:
    scan = DATA / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25"
    found = {m.hostname: m for m in satellite.read(scan) if m.target_kind == "resolver"}
    mainichi = found["www.mainichi.co.jp"]  # rcodes -1, -1, 0: two timeouts, then an answer
    assert mainichi.attempts == 3 and len(mainichi.responses) == 1
    assert mainichi.responses[0].attempt == 2 and mainichi.failure is None
    assert found["www.unwatch.org"].failure == "generic_timeout_error"
    assert satellite.failure_of(2, None) == "dns_servfail_error"
    assert satellite.failure_of(3, None) == "dns_nxdomain_error"
    assert satellite.failure_of(5, None) == "dns_refused_error"
    assert satellite.failure_of(None, "read udp: connection refused") == "connection_refused"
    # IDs come from what was measured: a renamed copy of the scan gives the same ones.
    copy = tmp_path / "renamed-scan"
    copy.mkdir()
    for f in scan.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    assert sorted(m.measurement_uid for m in satellite.read(copy)) == sorted(
        m.measurement_uid for m in satellite.read(scan)
    )


@needs_data
def test_a_v22_scan_from_china_without_controls_names_the_firewall_forgery(tmp_path: Path) -> None:
    """The case a first reading got wrong: a Satellite v2.2 scan of a resolver in China whose
    answer for a name that is not Facebook's is a Facebook address, and no control file.

    The layout is the real v2.1 scan's first row rewritten as v2.2 (as above), moved to a
    resolver in China and given a forged answer from the firewall's published pool range
    ([wallbleed-2025] App. A: 31.13/16 is Facebook's). No shipped list holds the address:
    the verdict rests on its origin AS alone, and says so.
    """
    src = json.loads((DATA / "censoredplanet/e2e_test_data/Satellitev2_2021-04-25/results.json")
                     .read_text().splitlines()[0])  # fmt: skip
    forged = "31.13.70.129"
    from wallwatch.analysis import pools

    assert forged not in {k.address for k in pools.load()[1]}
    line = {**src, "vp": "202.106.0.20", "test_url": "www.wikipedia.org",
            "location": {"country_name": "China", "country_code": "CN"}, "anomaly": True,
            "passed_liveness": True}  # fmt: skip
    line.pop("passed_control", None)
    line["response"] = [
        {"url": "www.wikipedia.org", "has_type_a": True, "error": "null", "rcode": -1,
         "response": {}, "start_time": src["start_time"]},
        {"url": "www.wikipedia.org", "has_type_a": True, "error": "null", "rcode": 0,
         "response": {forged: {"asnum": 32934, "asname": "FACEBOOK", "matched": None}}},
    ]  # fmt: skip
    scan = tmp_path / "CP-Satellite-2022-01-01-12-00-01"
    scan.mkdir()
    (scan / "results.json").write_text(json.dumps(line) + "\n")
    assert satellite.version(scan) == "v2.2"
    (m,) = satellite.read(scan)
    assert m.attempts == 2 and len(m.responses) == 1  # one query, a retry, one answer
    judged = judge_measurements([m])
    assert judged.attribution == "tampering_resolver"
    assert "injected.unrelated_platform" in judged.verdicts and judged.on_list
    import wallwatch as ww

    with ww.analyze([m]) as result:
        text = ww.explain(result, m.measurement_uid)
    assert "AS of Facebook" in text and "no control lookup" in text
    assert "cannot be told from this data" in text
