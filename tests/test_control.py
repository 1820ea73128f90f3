"""The trusted control channels against loopback servers: TCP, DNS over TLS, DNS over HTTPS."""

from __future__ import annotations

import http.server
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.message
import pytest

from conftest import measurements, qn, run_probe
from wallwatch.lab.loopback import Request, authoritative
from wallwatch.probe.engine import Query
from wallwatch.probe.stream import parse_stream_server
from wallwatch.vocab import Engine, Failure, TargetKind

ZONE = {"www.example.com": ["93.184.216.34"]}


def control(spec: str) -> Query:
    server = parse_stream_server(spec)
    return Query(
        qn("www.example.com"), 1, engine=server.engine, stream=server, kind=TargetKind.CONTROL
    )


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
         str(cert), "-days", "1", "-subj", "/CN=dns.lab.test", "-addext", "subjectAltName=DNS:dns.lab.test"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, cert


def test_dns_over_tls(serve, tmp_path: Path, certificate: tuple[Path, Path]) -> None:
    key, cert = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = serve(authoritative(ZONE), tls=context)
    records, _ = run_probe(tmp_path, [control(f"dot:{server.spec}")])
    (m,) = measurements(records)
    assert m.engine is Engine.DOT and m.target_kind is TargetKind.CONTROL
    assert [a.ipv4 for r in m.responses for a in r.answers] == ["93.184.216.34"]
    # Verifying the name against an untrusted certificate fails, and says so.
    records, _ = run_probe(tmp_path, [control(f"dot:{server.spec}#dns.lab.test")])
    (m,) = measurements(records)
    assert m.failure is Failure.SSL_ERROR and not m.responses


class _DohHandler(http.server.BaseHTTPRequestHandler):
    answer = staticmethod(authoritative(ZONE))

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        reply = self.answer(
            Request(body, dns.message.from_wire(body), self.client_address[:2], "tcp")
        )
        assert isinstance(reply, dns.message.Message)
        wire = reply.to_wire()
        self.send_response(200)
        self.send_header("Content-Type", "application/dns-message")
        self.send_header("Content-Length", str(len(wire)))
        self.end_headers()
        self.wfile.write(wire)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def doh_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DohHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/dns-query"
    httpd.shutdown()
    httpd.server_close()


def test_dns_over_https(tmp_path: Path, doh_url: str) -> None:
    records, _ = run_probe(tmp_path, [control(f"doh:{doh_url}")])
    (m,) = measurements(records)
    assert m.engine is Engine.DOH and m.resolver_address == doh_url
    assert [a.ipv4 for r in m.responses for a in r.answers] == ["93.184.216.34"]


def test_control_specs() -> None:
    assert parse_stream_server("dot:1.1.1.1").port == 853
    assert parse_stream_server("tcp:[2001:db8::1]").resolver_address == "[2001:db8::1]:53"
    assert parse_stream_server("dot:9.9.9.9#dns.quad9.net").tls_name == "dns.quad9.net"
    for bad in ("udp:8.8.8.8", "8.8.8.8", "doh:ftp://x/", "smtp:1.2.3.4"):
        with pytest.raises(ValueError):
            parse_stream_server(bad)
