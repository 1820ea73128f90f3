"""The analysis against loopback data whose truth is known: verdicts and attribution."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import dns.message
import dns.rcode
import dns.rrset
import pytest

from conftest import SHARED, assert_same_stores, probe_into_store, udp_query
from wallwatch import store
from wallwatch.analysis import run
from wallwatch.analysis.rules import RULES, RULES_VERSION, verdict_sql
from wallwatch.analysis.run import REPLY_BYTES, analyze, analyze_connection, slices_for
from wallwatch.lab.loopback import Forgery, Request, authoritative, racing_injector
from wallwatch.names import QueryName
from wallwatch.probe.engine import Query
from wallwatch.probe.stream import StreamServer
from wallwatch.vocab import Engine, TargetKind

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import mix  # noqa: E402

needs_data = pytest.mark.skipif(
    not (SHARED / "data").exists(), reason="the shared data is not beside the project"
)

ZONE = {
    "www.example.com": ["93.184.216.34"],
    "blocked.example.com": ["198.51.100.7"],
    "lied.example.org": ["203.0.113.9"],
    "clean.example.net": ["192.0.2.44"],
}
AD = "123.125.81.12"  # a DNSPai NXDOMAIN-redirect address (dnsmasq-china-list)


def isp(genuine):  # noqa: ANN001, ANN201
    """An ISP resolver that lies about one name and rewrites NXDOMAIN."""

    def handle(request: Request) -> object:
        assert request.message is not None
        name = request.message.question[0].name.to_text().rstrip(".")
        reply = genuine(request)
        if name == "lied.example.org":
            reply.answer = [dns.rrset.from_text("lied.example.org.", 60, "IN", "A", "10.66.66.66")]
        elif reply.rcode() == dns.rcode.NXDOMAIN:
            reply.set_rcode(dns.rcode.NOERROR)
            reply.answer = [
                dns.rrset.from_text(request.message.question[0].name, 60, "IN", "A", AD)
            ]
        return reply

    return handle


@pytest.fixture
def dataset(serve, tmp_path: Path) -> Path:  # noqa: ANN001
    genuine = authoritative(ZONE)
    blocked = lambda name: name.startswith("blocked.")  # noqa: E731
    forged = [Forgery("65.49.2.178", ip_ttl=103), Forgery("8.7.198.45", delay=0.002, ip_ttl=110)]
    path_resolver = serve(racing_injector(genuine, blocked, forged, genuine_delay=0.05, genuine_ip_ttl=52),
                          tcp_handler=genuine)  # fmt: skip
    dark = serve(racing_injector(lambda _r: None, blocked, forged), "127.0.0.2", tcp=False)
    lying = serve(
        racing_injector(isp(genuine), blocked, [], genuine_delay=0.001), "127.0.0.3", tcp=False
    )
    names = ["www.example.com", "blocked.example.com", "lied.example.org", "clean.example.net",
             "missing.example.com"]  # fmt: skip
    host, port = path_resolver.address
    queries: list[Query] = []
    for i, name in enumerate(names):
        qn = QueryName(name, None, "t", i)
        queries.append(Query(qn, 1, engine=Engine.TCP, stream=StreamServer(Engine.TCP, host, port),
                             kind=TargetKind.CONTROL))  # fmt: skip
        queries += [udp_query(path_resolver, name), udp_query(lying, name),
                    udp_query(dark, name, kind=TargetKind.DARK)]  # fmt: skip
    db = probe_into_store(tmp_path, queries)
    analyze(db)
    return db


def test_attribution_per_name(dataset: Path) -> None:
    rows = dict(
        (name, (attribution, confidence))
        for name, attribution, confidence in store.query(
            dataset, "SELECT hostname, attribution, confidence FROM attributions"
        )
    )
    assert rows["blocked.example.com"] == ("on_path_injector", "high")
    assert rows["lied.example.org"][0] == "tampering_resolver"
    assert rows["missing.example.com"][0] == "isp_nxdomain_rewrite"
    assert rows["www.example.com"] == ("none", "high")
    assert rows["clean.example.net"] == ("none", "high")


def test_every_forged_reply_is_told_from_the_genuine_one(dataset: Path) -> None:
    rows = store.query(
        dataset,
        """
        SELECT v.resolver_address, v.response_index, v.outcome, v.rule_id, v.ips
        FROM reply_verdicts v WHERE v.hostname = 'blocked.example.com' ORDER BY 1, 2""",
    )
    by_target = {}
    for address, index, outcome, rule_id, ips in rows:
        by_target.setdefault(address.split(":")[0], []).append((index, outcome, rule_id, ips))
    # The raced resolver: two forgeries, then the genuine answer.
    assert [(o, r) for _, o, r, _ in by_target["127.0.0.1"]] == [
        ("injected.multi_reply", "raced_by_genuine"), ("injected.multi_reply", "raced_by_genuine"),
        ("ok.match_ip", "control_match")]  # fmt: skip
    assert {o for _, o, _, _ in by_target["127.0.0.2"]} == {"injected.dark_destination"}
    # No clean name is called tampered, on any path.
    clean = store.query(
        dataset,
        """SELECT count(*) FROM reply_verdicts
        WHERE hostname IN ('www.example.com', 'clean.example.net') AND outcome NOT IN ('ok.match_ip', 'dns.timeout')""",
    )
    assert clean == [(0,)]


def test_verdicts_record_the_rules_that_fired(dataset: Path) -> None:
    rows = store.query(
        dataset,
        """SELECT rules_fired, rules_version, pools_version FROM reply_verdicts
        WHERE hostname = 'blocked.example.com' AND target_kind = 'dark'""",
    )
    assert rows and all(
        "dark_destination" in fired and "forged_pool" in fired for fired, _, _ in rows
    )
    assert {version for _, version, _ in rows} == {RULES_VERSION}


def test_rule_ids_are_unique_and_sql_is_built_from_them() -> None:
    ids = [r.rule_id for r in RULES]
    assert len(ids) == len(set(ids))
    sql = verdict_sql()
    assert all(f"'{rule_id}'" in sql for rule_id in ids)


def test_analyze_names_a_missing_store(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from wallwatch.cli import main

    result = CliRunner().invoke(main, ["analyze", "--db", str(tmp_path / "none.duckdb")])
    assert result.exit_code != 0 and "no such store" in result.output


def test_explain_gives_the_argument_and_the_packets(dataset: Path) -> None:
    from wallwatch.explain import explain

    (uid,) = store.query(
        dataset,
        """SELECT measurement_uid FROM measurements
        WHERE hostname = 'blocked.example.com' AND resolver_address LIKE '127.0.0.1:%' AND engine = 'udp'""",
    )[0]
    text = explain(dataset, uid)
    assert "forged on the network path" in text and "confidence high" in text
    assert "by rule raced_by_genuine" in text and "65.49.2.178" in text
    assert text.count(";QUESTION") == 3  # every packet, rendered from its raw bytes
    with pytest.raises(ValueError, match="no measurement"):
        explain(dataset, "nope")


def test_injector_families_are_grouped_then_named(dataset: Path) -> None:
    rows = store.query(
        dataset, "SELECT profile, aa, name_form, answer_ttl, replies FROM injector_families"
    )
    # Both loopback forgeries use Injector 3's construction (pointer, answer TTL 236).
    assert rows and {r[0] for r in rows} == {"injector3"}
    assert all(not aa and form == "pointer" and ttl == 236 for _, aa, form, ttl, _ in rows)


def test_malformed_replies_get_a_verdict_of_their_own(serve, tmp_path: Path) -> None:
    server = serve(
        lambda request: (
            request.wire[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00\x03www\xc0\xff"
        )
    )
    db = probe_into_store(tmp_path, [udp_query(server, "www.example.com")], window=0.1)
    analyze(db)
    assert store.query(db, "SELECT outcome, rule_id FROM reply_verdicts") == [
        ("dns.malformed", "malformed_reply")
    ]


def _poisoned_cache_dataset(serve, tmp_path: Path, *, with_raced_path: bool) -> Path:  # noqa: ANN001
    """A resolver serving a forgery from its cache; its address is in no shipped pool."""
    genuine = authoritative(ZONE)
    blocked = lambda name: name.startswith("blocked.")  # noqa: E731
    unlisted = [Forgery("173.252.73.48", ip_ttl=103)]
    path_resolver = serve(racing_injector(genuine, blocked, unlisted, genuine_delay=0.05),
                          tcp_handler=genuine)  # fmt: skip
    poisoned = serve(racing_injector(lambda _r: None, blocked, unlisted), "127.0.0.4", tcp=False)
    host, port = path_resolver.address
    name = "blocked.example.com"
    queries = [
        Query(QueryName(name, None, "t", 0), 1, engine=Engine.TCP,
              stream=StreamServer(Engine.TCP, host, port), kind=TargetKind.CONTROL),
        udp_query(poisoned, name),
    ]  # fmt: skip
    if with_raced_path:
        queries.append(udp_query(path_resolver, name))
    db = probe_into_store(tmp_path, queries)
    analyze(db)
    return db


@pytest.mark.parametrize(
    ("with_raced_path", "expected"),
    [(True, "injected.forged_pool"), (False, "injected.unrelated_platform")],
)
def test_a_poisoned_cache_is_named_by_an_address_the_injector_was_caught_using(
    serve,
    tmp_path: Path,
    with_raced_path: bool,
    expected: str,  # noqa: ANN001
) -> None:
    db = _poisoned_cache_dataset(serve, tmp_path, with_raced_path=with_raced_path)
    rows = store.query(
        db, "SELECT outcome FROM reply_verdicts WHERE resolver_address LIKE '127.0.0.4:%'"
    )
    assert rows == [(expected,)]


# --- the analysis in slices of names (a store larger than the memory cap) ---------------


def _copy(db: Path, name: str) -> Path:
    other = db.with_name(name)
    shutil.copyfile(db, other)
    return other


def test_a_store_analysed_in_slices_is_the_one_go_result(dataset: Path) -> None:
    """The lab's store (a forged pool learned from the dark host, races, an ISP's lie)
    judged in three slices of names: every analysis table, row for row."""
    sliced = _copy(dataset, "sliced.duckdb")
    summary = analyze(sliced, slices=3)
    assert summary.replies > 0
    assert_same_stores(dataset, sliced)


def test_a_generated_mix_in_slices_is_the_one_go_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names whose verdicts need other slices: a pool learned from another slice's dark
    hosts, path baselines over every slice's samples. The slices come from the store's
    size against the memory cap, as they would for a store too large for it."""
    db = tmp_path / "mix.duckdb"
    con = store.connect(db)
    try:
        mix.generate(con, 4000)
    finally:
        con.close()
    sliced = _copy(db, "sliced.duckdb")
    analyze(db)
    con = store.connect(sliced)
    try:
        replies = int(con.execute("SELECT count(*) FROM responses").fetchone()[0])
        assert slices_for(con, limit=REPLY_BYTES * 1000) == -(-replies // 1000)
        assert slices_for(con) == 1  # the default cap holds this store in one go
        # A reply taking as much as 1/2000 of the cap: the store no longer fits it.
        monkeypatch.setattr(run, "REPLY_BYTES", store.limit_bytes() // 2000)
        assert slices_for(con) == -(-replies // 2000) >= 4
        analyze_connection(con)
        # The slices' copies are gone: the connection sees the whole store again, and
        # the store holds no working table of the run.
        assert con.execute("SELECT count(*) FROM measurements").fetchone()[0] == 4000 * 2 + 1200
        left = con.execute("SELECT table_name FROM duckdb_tables() "
                           "WHERE table_name LIKE '\\_ww\\_%' ESCAPE '\\'").fetchall()  # fmt: skip
        assert left == []
    finally:
        con.close()
    assert_same_stores(db, sliced)


@needs_data
def test_the_real_third_party_files_in_slices(tmp_path: Path) -> None:
    """Every OONI and Censored Planet file of the shared data: one go and seven slices."""
    from test_scale import _real_jsonl

    db = tmp_path / "real.duckdb"
    store.ingest([_real_jsonl(tmp_path)], db)
    sliced = _copy(db, "sliced.duckdb")
    analyze(db, slices=1)
    analyze(sliced, slices=7)
    assert_same_stores(db, sliced)


@pytest.mark.parametrize(("text", "expected"), [
    ("3GB", 3 * 10**9), ("800MiB", 800 * 2**20), ("1.5 GB", 1_500_000_000), ("512kb", 512_000),
])  # fmt: skip
def test_memory_limits_read_as_duckdb_reads_them(text: str, expected: int) -> None:
    assert store.limit_bytes(text) == expected
    con = store.connect()
    con.execute(f"SET memory_limit = '{text}'")  # DuckDB takes the same text
    con.close()


@pytest.mark.parametrize("text", ["", "lots", "-1GB", "0GB", "3 parsecs", "1e9"])
def test_a_bad_memory_limit_is_named(text: str) -> None:
    with pytest.raises(ValueError, match="WALLWATCH_MEMORY_LIMIT"):
        store.limit_bytes(text)
