"""Package-level checks: every module imports, vocabularies are closed, doctests pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import msgspec
import pytest

import wallwatch
from wallwatch import records
from wallwatch.names import parse_lines
from wallwatch.probe import ratelimit
from wallwatch.targets import parse_target
from wallwatch.vocab import Failure, TargetKind

MODULES = sorted(
    m.name
    for m in pkgutil.walk_packages(wallwatch.__path__, "wallwatch.")
    if m.name != "wallwatch.__main__"
)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


@pytest.mark.parametrize("module", [ratelimit, importlib.import_module("wallwatch.names")])
def test_doctests(module: object) -> None:
    result = doctest.testmod(module)  # type: ignore[arg-type]
    assert result.attempted > 0 and result.failed == 0


def test_failure_strings_are_oonis() -> None:
    assert Failure.DNS_NXDOMAIN == "dns_nxdomain_error"
    assert Failure.GENERIC_TIMEOUT == "generic_timeout_error"
    assert Failure.CONNECTION_REFUSED == "connection_refused"


def test_records_refuse_unknown_vocabulary_and_versions() -> None:
    line = b'{"record_type":"input_error","schema_version":1,"report_id":"r","source":"-","line":1,"text":"x","error":"e"}'
    assert isinstance(records.decode(line), records.InputError)
    with pytest.raises(Exception, match="schema_version 99"):
        records.decode(line.replace(b'"schema_version":1', b'"schema_version":99'))
    with pytest.raises(msgspec.ValidationError):
        records.decode(line.replace(b"input_error", b"anomaly"))


@pytest.mark.parametrize(
    ("spec", "address", "port", "kind"),
    [
        ("8.8.8.8", "8.8.8.8", 53, TargetKind.RESOLVER),
        ("dark:10.0.0.5", "10.0.0.5", 53, TargetKind.DARK),
        ("auth:[2001:db8::1]:5353", "2001:db8::1", 5353, TargetKind.AUTHORITATIVE),
        ("2001:db8::53", "2001:db8::53", 53, TargetKind.RESOLVER),
        ("resolver:127.0.0.1:5300", "127.0.0.1", 5300, TargetKind.RESOLVER),
    ],
)
def test_target_specs(spec: str, address: str, port: int, kind: TargetKind) -> None:
    target = parse_target(spec)
    assert (target.address, target.port, target.kind) == (address, port, kind)


@pytest.mark.parametrize("spec", ["dark:", "1.2.3.4:0", "1.2.3.4:99999", "[::1", "example.com"])
def test_bad_target_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="target"):
        parse_target(spec)


def test_names_keep_line_numbers() -> None:
    items = list(parse_lines(["ok.com", "", "# c", "not ok", "ÖBB.at"], "f"))
    assert [(type(i).__name__, i.line) for i in items] == [
        ("QueryName", 1),
        ("BadLine", 4),
        ("QueryName", 5),
    ]
    assert items[2].hostname == "xn--bb-eka.at"  # type: ignore[union-attr]
