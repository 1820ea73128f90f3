"""The one-call Python API: probe, read, analyze, explain, locate, netinfo.

Why a small curated surface (httpx's ``__init__`` is the model): researchers work in
notebooks, and ``dns.resolver.resolve`` or ``httpx.get`` is what they expect, not five
internal imports and a temporary file. Each function here is a thin layer over the
library modules the CLI uses too, so the CLI and a notebook give the same verdicts.

    import wallwatch as ww
    ms = ww.probe(["www.google.com"], ["8.8.8.8", "dark:203.0.113.7"], control="tcp:9.9.9.9")
    result = ww.analyze(ms + list(ww.read("old.jsonl")))
    result.attributions.df()            # a DuckDB relation; .arrow() needs pyarrow
    print(ww.explain(result, ms[0].measurement_uid))
"""

from __future__ import annotations

import gzip
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

from wallwatch.journal import Journal, read_records
from wallwatch.records import Measurement, Record, decode, encode_into
from wallwatch.targets import Target, parse_target
from wallwatch.vocab import Attribution, Engine, Evidence, Outcome

if TYPE_CHECKING:
    from wallwatch.analysis.netinfo import AddressInfo, Netinfo
    from wallwatch.analysis.run import AnalysisSummary
    from wallwatch.locate import Location
    from wallwatch.names import QueryName

# The analysis (DuckDB), the prober, dnspython and the MMDB reader are imported where they
# are used: ``import wallwatch`` runs before every command, and most need none of them.

Format = Literal["wallwatch", "ooni", "satellite", "pcap", "dnstap"]


class _Collect(Journal):
    """A journal that keeps records in memory (``probe`` returns them; no file unless asked)."""

    def __init__(self, also: Journal | None) -> None:
        self.kept: list[Record] = []
        self._also = also

    def write(self, record: Record) -> None:
        self.kept.append(record)
        if self._also is not None:
            self._also.write(record)

    def write_lines(self, lines: bytes, count: int) -> None:
        self.kept.extend(decode(line) for line in lines.splitlines())
        if self._also is not None:
            self._also.write_lines(lines, count)

    def tick(self, now: float) -> None:
        if self._also is not None:
            self._also.tick(now)

    def flush(self) -> None:
        if self._also is not None:
            self._also.flush()

    def close(self) -> None:
        if self._also is not None:
            self._also.close()


def probe(
    names: str | Iterable[str],
    targets: str | Iterable[str | Target],
    *,
    control: str | Iterable[str] | None = None,
    qtypes: Iterable[str] = ("A",),
    engine: Engine | str = Engine.UDP,
    output: str | Path | None = None,
    **config: Any,
) -> list[Measurement]:
    """Ask every name of every target, keep every reply; return the measurements.

    ``targets`` are specs as on the command line (``8.8.8.8``, ``dark:203.0.113.7``,
    ``127.0.0.1:5300``); ``control`` is ``tcp:ADDR``, ``dot:ADDR`` or ``doh:URL``.
    ``config`` are :class:`~wallwatch.probe.engine.ProbeConfig` fields (``rate``,
    ``timeout``, ``window``, ``retries``, ``vantage``...). Records are also appended to
    ``output`` when given. Names that are not names raise ``ValueError``.
    """
    from wallwatch.probe.engine import ProbeConfig, Prober
    from wallwatch.probe.stream import parse_stream_server
    from wallwatch.probe.sweep import SweepPlan
    from wallwatch.wire import qtype_value

    name_list = [names] if isinstance(names, str) else list(names)
    parsed = [_name(n, i) for i, n in enumerate(name_list, 1)]
    target_list = [targets] if isinstance(targets, str) else list(targets)
    plan_targets = [t if isinstance(t, Target) else parse_target(t) for t in target_list]
    controls = [control] if isinstance(control, str) else list(control or [])
    plan = SweepPlan(
        parsed, plan_targets, [qtype_value(q) for q in qtypes],
        [parse_stream_server(c) for c in controls], Engine(engine),
    )  # fmt: skip
    sink = _Collect(Journal.open(output) if output is not None else None)
    try:
        Prober(ProbeConfig(**config), sink).run(plan.queries(skip=set()))
    finally:
        sink.close()
    return [r for r in sink.kept if isinstance(r, Measurement)]


def _name(text: str, line: int) -> QueryName:
    from wallwatch.names import QueryName, to_hostname

    hostname = to_hostname(text)
    return QueryName(hostname, None if hostname == text else text, "python", line)


def read(*sources: str | Path | IO[bytes], format: Format | None = None) -> Iterator[Record]:
    """Records from wallwatch JSONL, OONI (JSON/JSONL, gzip), Satellite directories, pcaps
    or dnstap files (a resolver's log: :mod:`wallwatch.interop.dnstap`).

    The format is detected from each source unless named. Lines or packets that cannot be
    read become :class:`~wallwatch.records.InputError` records naming the file and line, so
    nothing is dropped silently.
    """
    from wallwatch.interop import dnstap, ooni, pcap, satellite
    from wallwatch.interop.summary import ImportSummary

    summary = ImportSummary()
    for source in sources:
        if not isinstance(source, str | Path):
            with tempfile.TemporaryDirectory(prefix="ww-read-") as tmp:
                path = Path(tmp) / Path(str(getattr(source, "name", None) or "input")).name
                path.write_bytes(source.read())
                yield from read(path, format=format)
            continue
        path = Path(source)
        kind = format or detect(path)
        if kind == "satellite":
            yield from satellite.read_records(path, summary)
        elif kind == "pcap":
            yield from pcap.read_records(path, summary)
        elif kind == "dnstap":
            yield from dnstap.read_records(path, summary)
        elif kind == "ooni":
            yield from ooni.read_records(path, summary)
        else:
            yield from read_records(path)


def detect(path: Path) -> Format:
    """The format of a file or directory, from its first bytes (or its files)."""
    if path.is_dir():
        return "satellite"
    from wallwatch.interop.dnstap import is_dnstap
    from wallwatch.interop.pcap import is_capture

    with path.open("rb") as handle:
        head = handle.read(16)
    if is_capture(head[:4]):
        return "pcap"
    if is_dnstap(head):
        return "dnstap"
    opener: Any = gzip.open if head[:2] == b"\x1f\x8b" else open
    try:
        with opener(path, "rb") as handle:
            first = handle.readline(1 << 20)
    except (OSError, EOFError):
        return "ooni"
    try:
        doc = json.loads(first)
    except ValueError:
        return "ooni"  # pretty-printed or commented JSON: OONI's reader handles both
    if isinstance(doc, dict) and "record_type" in doc and "schema_version" in doc:
        return "wallwatch"
    return "ooni"


@dataclass(frozen=True, slots=True)
class ReplyVerdict:
    """One reply's verdict (a row of ``reply_verdicts``, its main columns)."""

    measurement_uid: str
    response_index: int | None
    hostname: str
    query_type: str
    vantage: str
    resolver_address: str
    ips: tuple[str, ...]
    rule_id: str
    outcome: Outcome
    evidence: Evidence


@dataclass(frozen=True, slots=True)
class NameAttribution:
    """Who tampered with one (name, query type), with why and what is missing."""

    hostname: str
    query_type: str
    attribution: Attribution
    confidence: str
    reasons: tuple[str, ...]
    bad_answers: tuple[str, ...]
    has_control: bool
    has_path_evidence: bool


class Analysis:
    """The analysis of some records: DuckDB relations, Arrow tables and typed rows.

    It owns an in-memory DuckDB store (or an open store file); ``close()`` it, or use it
    as a context manager, when done.
    """

    def __init__(self, con: Any, summary: AnalysisSummary) -> None:
        self.con = con
        self.summary = summary

    def __enter__(self) -> Analysis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.con.close()

    def relation(self, table: str) -> Any:
        """A table as a DuckDB relation (``.df()``, ``.pl()``, ``.fetchall()``, SQL on it)."""
        if table not in _TABLES:
            raise ValueError(f"no table {table!r}; tables: {', '.join(_TABLES)}")
        return self.con.table(table)

    @property
    def verdicts(self) -> Any:
        """``reply_verdicts``: one row per reply (and per silent query), every evidence column."""
        return self.relation("reply_verdicts")

    @property
    def attributions(self) -> Any:
        """``attributions``: one row per (hostname, query_type)."""
        return self.relation("attributions")

    @property
    def families(self) -> Any:
        """``injector_families``: injected replies grouped by fingerprint."""
        return self.relation("injector_families")

    def arrow(self, table: str = "attributions") -> Any:
        """A table as a ``pyarrow.Table`` (needs pyarrow installed)."""
        relation = self.relation(table)
        # DuckDB 2 names it to_arrow_table(); 1.x has fetch_arrow_table().
        fetch = getattr(relation, "to_arrow_table", None) or relation.fetch_arrow_table
        return fetch()

    def sql(self, query: str) -> Any:
        """Any SQL over the store and analysis tables, as a relation."""
        return self.con.sql(query)

    def verdict_rows(self) -> list[ReplyVerdict]:
        rows = self.con.execute(
            "SELECT measurement_uid, response_index, hostname, query_type, vantage, "
            "resolver_address, ips, rule_id, outcome, evidence FROM reply_verdicts "
            "ORDER BY measurement_uid, response_index"
        ).fetchall()
        return [ReplyVerdict(r[0], r[1], r[2], r[3], r[4], r[5], tuple(r[6] or ()), r[7],
                             Outcome(r[8]), Evidence(r[9]))
                for r in rows]  # fmt: skip

    def attribution_rows(self) -> list[NameAttribution]:
        rows = self.con.execute(
            "SELECT hostname, query_type, attribution, confidence, reasons, bad_answers, "
            "has_control, has_path_evidence FROM attributions ORDER BY hostname, query_type"
        ).fetchall()
        return [NameAttribution(r[0], r[1], Attribution(r[2]), r[3], tuple(r[4] or ()),
                                tuple(r[5] or ()), bool(r[6]), bool(r[7])) for r in rows]  # fmt: skip

    def explain(self, uid: str) -> str:
        from wallwatch.explain import explain_with

        return explain_with(lambda sql: self.con.execute(sql).fetchall(), uid, "the analysis")


_TABLES = ("measurements", "responses", "answers", "reply_verdicts", "attributions",
           "window_attributions", "injector_families", "analysis_rules", "known_addresses")  # fmt: skip


def load_encoded(data: bytes) -> Any:
    """An in-memory store holding records already encoded as JSON lines."""
    return _load(lambda handle: 0 if not data or data.isspace() else handle.write(data))


def load_records(records: Iterable[Record]) -> Any:
    """An in-memory store (DuckDB connection) holding ``records``; ValueError if none."""

    def write(handle: IO[bytes]) -> int:
        buffer = bytearray()
        count = 0
        for record in records:
            encode_into(record, buffer)
            count += 1
            if len(buffer) > 1 << 20:
                handle.write(buffer)
                buffer.clear()
        handle.write(buffer)
        return count

    return _load(write)


def _load(write: Callable[[IO[bytes]], int]) -> Any:
    """A store from the JSON lines ``write`` puts in a file (how many; 0 is an error)."""
    from wallwatch import store

    con = store.connect()
    with tempfile.TemporaryDirectory(prefix="ww-analyze-") as tmp:
        path = Path(tmp) / "records.jsonl"
        with path.open("wb") as handle:
            count = write(handle)
        if not count:
            con.close()
            raise ValueError("analyze: no records")
        store.ingest_into(con, [path])
    return con


def analyze(
    records_or_store: Iterable[Record] | str | Path,
    *,
    netinfo: Netinfo | None = None,
    mmdb: str | Path | None = None,
    baseline: str | Path | None = None,
    window: int = 60,
) -> Analysis:
    """Judge every reply and attribute every name, with the rules of ``wallwatch analyze``.

    Records (from :func:`probe` or :func:`read`) are loaded into an in-memory store; a
    path to a DuckDB store is analysed in place. Origin ASes come from ``netinfo``, else
    from ``mmdb`` snapshots and the bundled table.
    """
    from wallwatch import store
    from wallwatch.analysis.run import analyze_connection

    if isinstance(records_or_store, str | Path):
        con = store.connect(records_or_store)
    else:
        con = load_records(records_or_store)
    try:
        summary = analyze_connection(
            con, baseline=baseline, mmdb=mmdb, window=window, netinfo=netinfo
        )
    except Exception:
        con.close()
        raise
    return Analysis(con, summary)


def explain(analysis_or_store: Analysis | str | Path, uid: str) -> str:
    """One measurement in plain words, with every reply, the rule that judged it and the packet.

    ``uid`` is a wallwatch measurement ID or the source's own (an OONI measurement_uid).
    """
    if isinstance(analysis_or_store, Analysis):
        return analysis_or_store.explain(uid)
    from wallwatch.explain import explain as explain_store

    return explain_store(analysis_or_store, uid)


def locate(
    name: str,
    target: str | Target,
    *,
    qtype: str = "A",
    max_ttl: int = 32,
    source_port: int | None = None,
    window: float = 0.5,
    timeout: float = 1.0,
    output: str | Path | None = None,
) -> Location:
    """The hop where injection starts on the path to ``target`` (queries with rising IP TTL)."""
    from wallwatch.locate import locate as run_locate
    from wallwatch.wire import qtype_value

    where = target if isinstance(target, Target) else parse_target(target)
    return run_locate(
        _name(name, 1), where, qtype=qtype_value(qtype), max_ttl=max_ttl,
        source_port=source_port, window=window, timeout=timeout, output=output,
    )  # fmt: skip


def netinfo(
    *addresses: str, day: date | None = None, mmdb: str | Path | None = None
) -> list[AddressInfo]:
    """Origin AS, organisation and prefix of each address, naming the dataset that said so."""
    from wallwatch.analysis.netinfo import Netinfo

    source = Netinfo(mmdb)
    try:
        return [source.lookup(a, day) for a in addresses]
    finally:
        source.close()
