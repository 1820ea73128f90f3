"""Origin-AS matching from offline MMDB snapshots, date-aware (tests build tiny MMDB files)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import dns.message
import dns.rrset
from mmdb_writer import MMDBWriter
from netaddr import IPSet

from conftest import probe_into_store, qn, udp_query
from wallwatch import store
from wallwatch.analysis.netinfo import NetinfoDB
from wallwatch.analysis.run import analyze
from wallwatch.lab.loopback import Request, authoritative
from wallwatch.probe.engine import Query
from wallwatch.probe.stream import StreamServer
from wallwatch.vocab import Engine, TargetKind


def write_mmdb(path: Path, networks: dict[str, int]) -> None:
    writer = MMDBWriter(ip_version=4, database_type="GeoLite2-ASN")
    for network, asn in networks.items():
        writer.insert_network(IPSet([network]), {"autonomous_system_number": asn,
                                                 "autonomous_system_organization": f"AS{asn} org"})  # fmt: skip
    writer.to_db_file(str(path))


def test_lookups_use_the_snapshot_of_the_day(tmp_path: Path) -> None:
    write_mmdb(tmp_path / "20140101-asn.mmdb", {"198.51.100.0/24": 64500})
    write_mmdb(tmp_path / "20200101-asn.mmdb", {"198.51.100.0/24": 64999})
    db = NetinfoDB(tmp_path)
    assert db.lookup(date(2014, 1, 21), "198.51.100.7") == (64500, "AS64500 org")
    assert db.lookup(date(2021, 6, 1), "198.51.100.7") == (64999, "AS64999 org")
    assert db.lookup(date(2010, 1, 1), "198.51.100.7")[0] == 64500  # before all: the oldest
    assert db.lookup(date(2021, 6, 1), "8.8.8.8") == (None, None)
    db.close()


def test_a_cdn_answer_in_the_controls_as_is_not_tampering(serve, tmp_path: Path) -> None:
    control_zone = {"cdn.example.com": ["198.51.100.5"], "other.example.com": ["192.0.2.99"]}

    def resolver(request: Request) -> dns.message.Message:
        assert request.message is not None
        name = request.message.question[0].name
        reply = dns.message.make_response(request.message)
        address = "198.51.100.77" if name.to_text().startswith("cdn.") else "203.0.113.99"
        reply.answer.append(dns.rrset.from_text(name, 60, "IN", "A", address))
        return reply

    control = serve(authoritative(control_zone), "127.0.0.1")
    lying = serve(resolver, "127.0.0.2", tcp=False)
    host, port = control.address
    queries: list[Query] = []
    for name in control_zone:
        queries.append(Query(qn(name), 1, engine=Engine.TCP, stream=StreamServer(Engine.TCP, host, port),
                             kind=TargetKind.CONTROL))  # fmt: skip
        queries.append(udp_query(lying, name))
    db = probe_into_store(tmp_path, queries, window=0.1)
    mmdb = tmp_path / "asn.mmdb"
    write_mmdb(mmdb, {"198.51.100.0/24": 64500, "203.0.113.0/24": 64501, "192.0.2.0/24": 64502})
    analyze(db)
    assert dict(store.query(db, "SELECT hostname, attribution FROM attributions")) == {
        "cdn.example.com": "tampering_resolver", "other.example.com": "tampering_resolver"}  # fmt: skip
    analyze(db, mmdb=mmdb)
    verdicts = dict(store.query(db, "SELECT hostname, outcome FROM reply_verdicts"))
    assert verdicts == {"cdn.example.com": "ok.match_asn", "other.example.com": "resolver.tampered"}
    assert dict(store.query(db, "SELECT hostname, attribution FROM attributions")) == {
        "cdn.example.com": "none", "other.example.com": "tampering_resolver"}  # fmt: skip
