"""The ``wallwatch`` command line.

Machine output (JSONL records) goes to stdout or ``-o``; progress and warnings go
to stderr, so ``wallwatch probe ... | jq`` works. Verbs follow the habits of
miniooni and zdns (names on stdin, ``-o``, ``-A key=value`` annotations).
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import click
from rich.console import Console

from wallwatch import __version__
from wallwatch.escape import console as console_text
from wallwatch.escape import terminal
from wallwatch.interop.dnstap import ClientPolicy
from wallwatch.journal import read_records
from wallwatch.names import BadLine, QueryName, parse_lines, read_names
from wallwatch.records import Measurement, Record
from wallwatch.render import RENDERERS, Format
from wallwatch.targets import Target, parse_target
from wallwatch.vocab import Axis, Engine
from wallwatch.wire import qtype_value

if TYPE_CHECKING:
    from wallwatch.dataset import Dataset
    from wallwatch.probe.engine import Stats
    from wallwatch.probe.stream import StreamServer

# The prober, the datasets and the progress bar are imported by the commands that use
# them: every command starts by importing this module (`import ooni` pays its start-up
# in bench/importer.py's ratio).

err = Console(stderr=True, soft_wrap=True)


#: Origin-AS data, read the same way by ``analyze`` and ``watch`` (analysis.netinfo).
mmdb_option = click.option(
    "--mmdb",
    default=None,
    type=click.Path(exists=True),
    help="Dated MMDB snapshots (YYYYMMDD-*.mmdb) or one file, for origin-AS matching.",
)


class _Main(click.Group):
    """The command group: every expected failure is one line naming the place and the cause.

    A full disk, a missing permission, a corrupt store or a bad scenario is the user's
    to fix, and a traceback hides the one line that says how; ``--debug`` (or
    ``WALLWATCH_DEBUG=1``) shows it for a bug report.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            if ctx.params.get("debug") or os.environ.get("WALLWATCH_DEBUG"):
                raise
            command = ctx.invoked_subcommand or ""
            raise click.ClickException(f"{command}: {_one_line(exc)}") from None


def _one_line(exc: BaseException) -> str:
    """The place and the cause of an error, on one line."""
    if isinstance(exc, OSError):
        where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
        cause = exc.strerror or str(exc)
        return f"{where}: {cause}" if where else cause
    text = " ".join(str(exc).split()) or type(exc).__name__
    kind = type(exc).__name__
    return text if kind in ("ValueError", "RuntimeError") else f"{kind}: {text}"


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wallwatch")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (for a bug report).")
def main(debug: bool) -> None:
    """Detect, measure and prove DNS tampering by national firewalls."""


class _Finite(click.ParamType[float, Any]):
    """A finite float in a range (click's FloatRange lets ``nan`` through)."""

    name = "number"

    def __init__(self, low: float, *, low_open: bool = False) -> None:
        self.low, self.low_open = low, low_open

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if number < self.low or (self.low_open and number == self.low):
            self.fail(f"{value} must be {'>' if self.low_open else '>='} {self.low:g}", param, ctx)
        return number


POSITIVE = _Finite(0.0, low_open=True)
NON_NEGATIVE = _Finite(0.0)


class _Url(click.ParamType[str, Any]):
    """An http(s) URL with a host, checked before anything runs (alerts are POSTed to it)."""

    name = "url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(str(value))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(f"{value!r} is not an http(s) URL with a host", param, ctx)
        return str(value)


def _targets(specs: tuple[str, ...], files: tuple[str, ...]) -> list[Target]:
    out = []
    for spec in specs:
        try:
            out.append(parse_target(spec))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--target") from None
    for path in files:
        for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                out.append(parse_target(text))
            except ValueError as exc:
                raise click.BadParameter(
                    f"{path}:{number}: {exc}", param_hint="--targets"
                ) from None
    if not out:
        raise click.UsageError("give at least one target (-t ADDRESS or --targets FILE)")
    return out


def _names(files: tuple[str, ...], names: tuple[str, ...]) -> tuple[list[QueryName], list[BadLine]]:
    good: list[QueryName] = []
    bad: list[BadLine] = []
    sources = [parse_lines(names, "--name")] if names else []
    sources += [read_names(f) for f in files or (("-",) if not names else ())]
    for source in sources:
        for item in source:
            (good if isinstance(item, QueryName) else bad).append(item)  # type: ignore[arg-type]
    return good, bad


def _pairs(values: tuple[str, ...], hint: str) -> dict[str, str]:
    """``KEY=VALUE`` options (``-A``, ``--storage-option``) as a dict."""
    out = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{value!r} is not KEY=VALUE", param_hint=hint)
        out[key] = text
    return out


@main.command()
@click.option(
    "-f",
    "--names",
    "name_files",
    multiple=True,
    metavar="FILE",
    help="File of names, one per line ('-' = stdin; the default without -n).",
)
@click.option("-n", "--name", "names", multiple=True, help="A name to query (repeatable).")
@click.option(
    "-t",
    "--target",
    "target_specs",
    multiple=True,
    metavar="[KIND:]ADDR[:PORT]",
    help="Where to send queries; KIND is resolver (default), dark, authoritative.",
)
@click.option(
    "--targets",
    "target_files",
    multiple=True,
    metavar="FILE",
    help="File of targets, one spec per line.",
)
@click.option(
    "-q",
    "--qtype",
    "qtypes",
    multiple=True,
    default=("A",),
    show_default=True,
    help="Query type (repeatable).",
)
@click.option(
    "--control",
    "controls",
    multiple=True,
    metavar="ENGINE:SERVER",
    help="Trusted control per name: tcp:ADDR, dot:ADDR[#tls-name] or doh:URL.",
)
@click.option(
    "--stream-workers", type=click.IntRange(1, 1024), default=8, show_default=True,
    help="TCP/DoT/DoH lookups (controls, truncation retries) in flight at once.",
)  # fmt: skip
@click.option("--engine", type=click.Choice(["udp", "tcp"]), default="udp", show_default=True)
@click.option(
    "--rate",
    type=NON_NEGATIVE,
    default=1000.0,
    show_default=True,
    help="Queries per second over all workers (0 = unlimited).",
)
@click.option(
    "--max-inflight",
    type=click.IntRange(1, 1_000_000),
    default=2000,
    show_default=True,
    help="Queries awaiting a first reply, per worker.",
)
@click.option(
    "--timeout",
    type=POSITIVE,
    default=2.0,
    show_default=True,
    help="Seconds of silence before a retry.",
)
@click.option(
    "--window",
    type=NON_NEGATIVE,
    default=1.0,
    show_default=True,
    help="Seconds to keep listening after the first reply.",
)
@click.option("--retries", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--rd/--no-rd", default=True, show_default=True, help="Ask for recursion.")
@click.option(
    "--edns-payload",
    type=click.IntRange(0, 65535),
    default=1232,
    show_default=True,
    help="EDNS UDP size to advertise; 0 sends no OPT record.",
)
@click.option(
    "--ip-ttl",
    type=click.IntRange(1, 255),
    default=None,
    help="IP TTL / hop limit of outgoing queries.",
)
@click.option(
    "--source-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Send every query from this local port.",
)
@click.option(
    "--ports",
    type=click.IntRange(1, 256),
    default=1,
    show_default=True,
    help="Spread queries over this many local ports.",
)
@click.option(
    "--tcp-fallback/--no-tcp-fallback",
    default=True,
    show_default=True,
    help="Retry truncated replies over TCP.",
)
@click.option(
    "--procs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Worker processes (shards of the name list).",
)
@click.option("-o", "--output", default="-", show_default=True, help="JSONL output file.")
@click.option("--resume", is_flag=True, help="Skip queries already complete in --output.")
@click.option("--vantage", default=None, help="Vantage name written into records.")
@click.option("-A", "--annotation", "annotations", multiple=True, metavar="KEY=VALUE")
@click.option(
    "--raw-capture",
    is_flag=True,
    help="Also record IP ID and DF of replies (packet socket; needs root).",
)
@click.option(
    "--columns/--no-columns",
    default=None,
    help="Also write a Parquet twin of --output (OUTPUT.columns/) so ingest reads columns "
    "[default: when DuckDB is installed].",
)
@click.option("--quiet", is_flag=True, help="No progress display.")
def probe(
    name_files: tuple[str, ...], names: tuple[str, ...], target_specs: tuple[str, ...],
    target_files: tuple[str, ...], qtypes: tuple[str, ...], controls: tuple[str, ...],
    stream_workers: int, engine: str, rate: float, max_inflight: int, timeout: float, window: float, retries: int,
    rd: bool, edns_payload: int, ip_ttl: int | None, source_port: int | None, ports: int,
    tcp_fallback: bool, procs: int, output: str, resume: bool, vantage: str | None,
    annotations: tuple[str, ...], raw_capture: bool, columns: bool | None, quiet: bool,
) -> None:  # fmt: skip
    """Sweep names x targets x qtypes, keeping every reply to every query."""
    from wallwatch.probe.engine import ProbeConfig
    from wallwatch.probe.stream import parse_stream_server
    from wallwatch.probe.sweep import SweepPlan, run_sweep

    targets = _targets(target_specs, target_files)
    try:
        types = [qtype_value(q) for q in qtypes]
        streams: list[StreamServer] = [parse_stream_server(c) for c in controls]
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    good, bad = _names(name_files, names)
    plan = SweepPlan(good, targets, types, streams, Engine(engine), ip_ttl, source_port, bad)
    config_args: dict[str, object] = dict(
        rate=rate or None, max_inflight=max_inflight, timeout=timeout, window=window,
        retries=retries, rd=rd, edns_payload=edns_payload or None, ports=ports,
        tcp_fallback=tcp_fallback, annotations=_pairs(annotations, "-A"), raw_capture=raw_capture,
        stream_workers=max(1, stream_workers),
    )  # fmt: skip
    if vantage:
        config_args["vantage"] = vantage
    config = ProbeConfig(**config_args)  # type: ignore[arg-type]
    with _progress(quiet) as show:
        try:
            result = run_sweep(
                plan, config, output, resume=resume, procs=procs, progress=show, twin=columns,
                warn=lambda text: err.print(f"[yellow]{console_text(text)}[/]", highlight=False),
            )  # fmt: skip
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    s = result.stats
    err.print(
        f"report {result.report_id}: {s.measurements} measurements, {s.responses} replies, "
        f"{s.strays} stray ({s.unmatched} unmatched"
        + (
            f", {s.strays_unkept} over their source's budget: counted, not kept"
            if s.strays_unkept
            else ""
        )
        + f"), {s.timeouts} timeouts, "
        f"{s.parse_failures} unparseable, {s.kernel_drops} kernel drops"
        + (f", {result.skipped} skipped (resume)" if result.skipped else "")
        + (f", {len(bad)} bad input lines" if bad else ""),
        highlight=False,
    )
    if result.failed_workers:
        for shard, code in result.failed_workers:
            err.print(f"[red]worker {shard} failed with exit code {code}; rerun with --resume[/]")
        sys.exit(1)


class _progress:
    """A rich progress bar on stderr driven by the prober's callbacks."""

    def __init__(self, quiet: bool) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.quiet = quiet or not err.is_terminal
        self.bar = Progress(
            TextColumn("[bold]probe"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("{task.fields[detail]}"), console=err, auto_refresh=False,
        )  # fmt: skip
        self.task = self.bar.add_task("probe", total=None, detail="")

    def __enter__(self) -> _progress:
        if not self.quiet:
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.quiet:
            self.bar.stop()

    def __call__(self, stats: Stats, total: int) -> None:
        if self.quiet:
            return
        detail = f"{stats.responses} replies, {stats.timeouts} timeouts, {stats.strays} stray"
        self.bar.update(self.task, completed=stats.measurements, total=total, detail=detail)
        self.bar.refresh()


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice([f.value for f in Format]),
    default="dig",
    show_default=True,
)
@click.option("--uid", "uids", multiple=True, help="Only these measurement_uids.")
@click.option("--hostname", "hostnames", multiple=True, help="Only these query names.")
@click.option("--limit", type=int, default=None, help="Stop after this many records.")
def show(
    files: tuple[str, ...], fmt: str, uids: tuple[str, ...], hostnames: tuple[str, ...],
    limit: int | None,
) -> None:  # fmt: skip
    """Render records of JSONL files dig-style, one line each, or as JSON."""
    render = RENDERERS[Format(fmt)]
    shown = 0
    for path in files:
        try:
            for record in read_records(path):
                if not _wanted(record, uids, hostnames):
                    continue
                # JSON escapes what it must and stays valid JSON; text for people is shown safe.
                text = render(record)
                click.echo(text if fmt == Format.JSON else terminal(text))
                shown += 1
                if limit is not None and shown >= limit:
                    return
        except ValueError as exc:
            raise click.ClickException(str(exc)) from None


def _wanted(record: Record, uids: tuple[str, ...], hostnames: tuple[str, ...]) -> bool:
    if uids and getattr(record, "measurement_uid", None) not in uids:
        return False
    if hostnames:
        return isinstance(record, Measurement) and record.hostname in hostnames
    return True


dataset_options = [
    click.option("--dataset", default=None, metavar="DIR|URL",
                 help="A partitioned Parquet dataset (a directory, or s3://bucket/prefix)."),
    click.option("--storage-option", "storage_option", multiple=True, metavar="KEY=VALUE",
                 help="For the dataset's object store (s3fs: endpoint_url, key, secret)."),
]  # fmt: skip


def with_dataset_options(f: Any) -> Any:
    for option in reversed(dataset_options):
        f = option(f)
    return f


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--db", default=None,
              help="DuckDB file [default: wallwatch.duckdb; none with --dataset].")  # fmt: skip
@click.option("--parquet", "parquet_dir", default=None, help="Also write tables as Parquet here.")
@with_dataset_options
@click.option("--buckets", type=click.IntRange(1, 4096), default=None,
              help="Name buckets of a new dataset [default: 64]; an existing one keeps its own.")  # fmt: skip
@click.option("--columns/--no-columns", default=True, show_default=True,
              help="Read a file's Parquet twin (FILE.columns/, written by probe) where it holds "
                   "the file's bytes.")  # fmt: skip
def ingest(files: tuple[str, ...], db: str | None, parquet_dir: str | None, dataset: str | None,
           storage_option: tuple[str, ...], buckets: int | None, columns: bool) -> None:  # fmt: skip
    """Load JSONL records into the DuckDB store (and Parquet, or a partitioned dataset)."""
    from wallwatch import store
    from wallwatch.dataset import write

    if dataset is None and (buckets is not None or storage_option):
        raise click.UsageError("--buckets and --storage-option go with --dataset")
    if dataset is None or db is not None:
        db = db or "wallwatch.duckdb"
        try:
            report = store.ingest(list(files), db, parquet_dir=parquet_dir, twin=columns)
        except (ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from None
        twin = (f" ({report.twin_bytes / report.file_bytes:.0%} read from their Parquet twin)"
                if report.twin_bytes else "")  # fmt: skip
        err.print(
            f"{db}: +{report.measurements} measurements, +{report.responses} replies "
            f"from {report.records} records in {report.files} file(s){twin}",
            highlight=False,
        )
    if dataset is None:
        return
    from wallwatch.dataset import Dataset

    target = Dataset(dataset, _pairs(storage_option, "--storage-option"))
    con = store.connect()
    try:
        report = store.ingest_into(con, list(files), twin=columns)
        added = write(con, target, buckets=buckets)
    except (ValueError, RuntimeError, OSError) as exc:
        raise click.ClickException(f"{console_text(dataset)}: {exc}") from None
    finally:
        con.close()
    err.print(
        f"{console_text(dataset)}: +{added.get('measurements', 0)} measurements, "
        f"+{added.get('responses', 0)} replies from {report.records} records in "
        f"{report.files} file(s)",
        highlight=False,
    )


@main.command()
@click.option(
    "--db", default="wallwatch.duckdb", show_default=True, help="DuckDB store (see ingest)."
)
@click.option("--json", "as_json_out", is_flag=True, help="Print the attributions as JSON lines.")
@click.option(
    "--baseline",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="An earlier store of the same names (to tell a changed authoritative).",
)
@mmdb_option
@click.option(
    "--window",
    type=click.IntRange(1, 86400),
    default=60,
    show_default=True,
    help="Seconds per time window of window_attributions.",
)
@click.option("--dask", "dask_spec", default=None, metavar="local[:N]|ADDRESS",
              help="Run on a Dask cluster over --dataset: local:N worker processes here, or "
                   "a scheduler's address (tcp://host:8786).")  # fmt: skip
@with_dataset_options
@click.option("--out", "out", default=None, metavar="DIR|URL",
              help="Where --dask writes the analysis tables [default: DATASET/analysis].")  # fmt: skip
def analyze(
    db: str, as_json_out: bool, baseline: str | None, mmdb: str | None, window: int,
    dask_spec: str | None, dataset: str | None, storage_option: tuple[str, ...],
    out: str | None,
) -> None:  # fmt: skip
    """Judge every reply in the store and attribute each name (tables reply_verdicts, attributions)."""
    import json

    from wallwatch import store
    from wallwatch.analysis.run import AnalysisSummary
    from wallwatch.analysis.run import analyze as run_analysis

    if dask_spec is not None or dataset is not None:
        summary, rows = _analyze_dask(dask_spec, dataset, storage_option, out, baseline, mmdb,
                                      window, as_json_out)  # fmt: skip
    else:
        if not Path(db).exists():
            raise click.ClickException(
                f"{db}: no such store; load records with 'wallwatch ingest' first"
            )
        try:
            summary = run_analysis(db, baseline=baseline, mmdb=mmdb, window=window)
        except Exception as exc:  # DuckDB raises its own types; name the store in the message
            raise click.ClickException(f"{db}: analysis failed: {exc}") from None
        rows = []
        if as_json_out:
            sql = (
                f"SELECT {', '.join(_JSON_COLUMNS)} FROM attributions ORDER BY hostname, query_type"
            )
            rows = store.query(db, sql)
    assert isinstance(summary, AnalysisSummary)
    names = sum(summary.attributions.values())
    err.print(
        f"{summary.replies} reply verdicts (rules v{summary.rules_version}, pools "
        f"{summary.pools_version}, netinfo {'; '.join(summary.netinfo_versions) or 'none'}); "
        f"{names} names: "
        + ", ".join(f"{count} {name}" for name, count in sorted(summary.attributions.items())),
        highlight=False,
    )
    for row in rows:
        click.echo(json.dumps(dict(zip(_JSON_COLUMNS, row, strict=True))))


@main.command()
@click.option("--db", default="wallwatch.duckdb", show_default=True,
              help="The analysed DuckDB store (see analyze).")  # fmt: skip
@click.option("--axis", "axes", multiple=True, type=click.Choice([a.value for a in Axis]),
              help="What to count by; once or twice [default: vantage].")  # fmt: skip
@click.option("--grain", type=click.Choice(["minute", "hour", "day"]), default="hour",
              show_default=True)  # fmt: skip
@click.option("--since", default=None, help="From this time (UTC, e.g. 2014-01-21 07:00).")
@click.option("--until", default=None, help="Before this time (UTC).")
@click.option("--vantage", default=None, help="Only this vantage.")
@click.option("--window", type=click.IntRange(1, 86400), default=60, show_default=True,
              help="The analysis's --window (the attribution axis reads its windows).")  # fmt: skip
@click.option("--format", "fmt", type=click.Choice(["json", "csv"]), default="json",
              show_default=True)  # fmt: skip
@click.option(
    "--dask",
    "dask_spec",
    default=None,
    metavar="local[:N]|ADDRESS",
    help="Count over --dataset on a Dask cluster (after analyze --dask).",
)
@with_dataset_options
@click.option("--analysis", default=None, metavar="DIR|URL",
              help="Where analyze --dask wrote its tables [default: DATASET/analysis].")  # fmt: skip
def aggregate(db: str, axes: tuple[str, ...], grain: str, since: str | None, until: str | None,
              vantage: str | None, window: int, fmt: str, dask_spec: str | None,
              dataset: str | None, storage_option: tuple[str, ...],
              analysis: str | None) -> None:  # fmt: skip
    """Measurements (and replies) counted by one or two axes per time grain: the API's
    aggregation over an analysed store, or over a dataset on a cluster."""
    import csv
    import json
    from datetime import datetime

    from wallwatch import store
    from wallwatch.analysis.aggregate import Grain, aggregate_sql, check_axes

    for value, name in ((since, "--since"), (until, "--until")):
        if value is not None:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise click.BadParameter(f"{value!r}: a time such as 2014-01-21 07:00",
                                         param_hint=name) from None  # fmt: skip
    chosen = check_axes([Axis(a) for a in axes])
    sql = aggregate_sql(chosen, cast(Grain, grain), since=since, until=until, vantage=vantage,
                        window=window)  # fmt: skip
    names = ["t", *(a.value for a in chosen), "measurements", "replies"]
    if dask_spec is not None or dataset is not None:
        from wallwatch.analysis import scale

        spec, source, tables = _on_cluster(dask_spec, dataset, storage_option, analysis)
        try:
            source.buckets()
            if not tables.glob("reply_verdicts", "*", "*.parquet"):
                raise ValueError(f"{tables.root}: no analysis here; run analyze --dask first")
            with scale.client(spec) as dask:
                rows = scale.aggregate(source, tables, dask, sql, [a.value for a in chosen])
        except (ValueError, OSError) as exc:
            raise click.ClickException(f"{console_text(source.root)}: {exc}") from None
    else:
        if not Path(db).exists():
            raise click.ClickException(f"{db}: no such store; ingest and analyze first")
        try:
            rows = store.query(db, sql)
        except Exception as exc:  # DuckDB's own types: a store not analysed yet, say
            raise click.ClickException(f"{db}: aggregation failed (analyzed yet?): {exc}") from None
    records = [dict(zip(names, (str(r[0]), *r[1:]), strict=True)) for r in rows]
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    else:
        for record in records:
            click.echo(json.dumps(record))


_JSON_COLUMNS = ("hostname", "query_type", "attribution", "confidence", "reasons", "bad_answers")


def _on_cluster(spec: str | None, root: str | None, storage_option: tuple[str, ...],
                analysis: str | None) -> tuple[str, Dataset, Dataset]:  # fmt: skip
    """``--dask`` with ``--dataset`` checked; (the scheduler, the dataset, where its
    analysis tables are: ``analysis``, or DATASET/analysis)."""
    from wallwatch.analysis import scale
    from wallwatch.dataset import Dataset

    if spec is None or root is None:
        raise click.UsageError("--dask and --dataset go together (the cluster reads the dataset)")
    try:
        scale.parse_scheduler(spec)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--dask") from None
    options = _pairs(storage_option, "--storage-option")
    source = Dataset(root, options)
    return spec, source, Dataset(analysis or source.path("analysis"), options)


def _analyze_dask(spec: str | None, root: str | None, storage_option: tuple[str, ...],
                  out: str | None, baseline: str | None, mmdb: str | None, window: int,
                  as_json_out: bool) -> tuple[Any, list[tuple[Any, ...]]]:  # fmt: skip
    """``analyze --dask``: the rules over a dataset on a cluster (:mod:`wallwatch.analysis.scale`)."""
    from wallwatch import store
    from wallwatch.analysis import scale
    from wallwatch.dataset import parquet_sql

    scheduler, source, target = _on_cluster(spec, root, storage_option, out)
    steps: dict[str, int] = {}

    def progress(stage: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        if done == total or done // step > steps.get(stage, 0):
            steps[stage] = done // step
            err.print(f"analyze: {stage} {done}/{total} buckets", highlight=False)

    try:
        source.buckets()
        with scale.client(scheduler) as dask:
            result = scale.analyze_dataset(
                source, target, dask, mmdb=Path(mmdb).resolve() if mmdb else None, window=window,
                baseline=Path(baseline).resolve() if baseline else None, progress=progress)  # fmt: skip
    except (ValueError, OSError) as exc:
        raise click.ClickException(f"{console_text(source.root)}: {exc}") from None
    except Exception as exc:  # a worker's DuckDB error, a lost scheduler: name the dataset
        raise click.ClickException(f"{console_text(source.root)}: analysis failed: {exc}") from None
    err.print(f"{console_text(target.root)}: {result.buckets} buckets on {result.workers} "
              "workers, " + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()),
              highlight=False)  # fmt: skip
    rows: list[tuple[Any, ...]] = []
    if as_json_out:
        con = store.connect()
        try:
            target.register(con)
            files = target.glob("attributions", "*", "*.parquet")
            rows = con.execute(f"SELECT {', '.join(_JSON_COLUMNS)} FROM {parquet_sql(files)} "
                               "ORDER BY hostname, query_type").fetchall()  # fmt: skip
        finally:
            con.close()
    return result.analysis, rows


@main.group(name="import")
def import_() -> None:
    """Read other tools' measurements into wallwatch records (then ingest and analyze)."""


def _import_run(records: Any, output: str, summary: Any, what: str) -> None:
    """Write the records; always print the summary; exit 1 when nothing at all was imported."""
    from wallwatch.journal import Journal
    from wallwatch.records import InputError

    # No Parquet twin: an importer writes its JSONL faster than the twin's one-thread
    # DuckDB converts it, so the twin would hold the import back at its end (0.4 s and 150 MB
    # more for 300 MB of OONI) or miss most of the file; ingest parses the JSON instead.
    journal = Journal.open(None if output == "-" else output, twin=False)
    err = Console(stderr=True)
    try:
        for record in records:
            journal.write(record)
            if isinstance(record, InputError):
                # One line per skip, never wrapped: people grep for file:line.
                err.print(f"[yellow]{console_text(record.source)}:{record.line}: skipped: "
                          f"{console_text(record.error)}[/]", highlight=False, soft_wrap=True)  # fmt: skip
    finally:
        journal.close()
        err.print(f"import {what}: {summary.line()}", highlight=False, soft_wrap=True)
    if summary.measurements == 0:
        err.print(f"import {what}: nothing was imported", highlight=False)
        sys.exit(1)


@import_.command("ooni")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default="-", show_default=True, help="JSONL output file.")
def import_ooni(files: tuple[str, ...], output: str) -> None:
    """OONI measurements (JSON or JSONL, plain or gzip; API envelopes too)."""
    from itertools import chain

    from wallwatch.interop import ooni
    from wallwatch.interop.summary import ImportSummary

    summary = ImportSummary()
    _import_run(chain.from_iterable(ooni.read_records(f, summary) for f in files), output,
                summary, "ooni")  # fmt: skip


@import_.command("satellite")
@click.argument(
    "directories", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False)
)
@click.option("-o", "--output", default="-", show_default=True, help="JSONL output file.")
def import_satellite(directories: tuple[str, ...], output: str) -> None:
    """Censored Planet Satellite scans (v1, v2.1, v2.2), one directory each."""
    from itertools import chain

    from wallwatch.interop import satellite
    from wallwatch.interop.summary import ImportSummary

    summary = ImportSummary()
    _import_run(chain.from_iterable(satellite.read_records(d, summary) for d in directories),
                output, summary, "satellite")  # fmt: skip


@import_.command("pcap")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("-o", "--output", default="-", show_default=True, help="JSONL output file.")
@click.option("--dark", multiple=True, metavar="ADDRESS",
              help="An address that runs no DNS server (its replies are injected).")  # fmt: skip
@click.option("--port", "ports", multiple=True, type=int, default=(53,), show_default=True,
              help="A server port that carries DNS (repeatable).")  # fmt: skip
def import_pcap(
    files: tuple[str, ...], output: str, dark: tuple[str, ...], ports: tuple[int, ...]
) -> None:
    """DNS queries and every reply to them from pcap/pcapng captures."""
    from itertools import chain

    from wallwatch.interop import pcap
    from wallwatch.interop.summary import ImportSummary

    summary = ImportSummary()
    _import_run(chain.from_iterable(pcap.read_records(f, summary, dark=frozenset(dark), ports=frozenset(ports))
                                    for f in files), output, summary, "pcap")  # fmt: skip


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["ooni", "zdns", "parquet", "pcapng"]),
              required=True)  # fmt: skip
@click.option("-o", "--output", required=True,
              help="Output file (a directory for parquet).")  # fmt: skip
def export(files: tuple[str, ...], fmt: str, output: str) -> None:
    """Write wallwatch records as OONI (dnsping), zdns, Parquet or pcapng."""
    from wallwatch.interop.export import ExportFormat
    from wallwatch.interop.export import export as run_export

    try:
        count = run_export([Path(f) for f in files], ExportFormat(fmt), Path(output))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"export {fmt}: {count} {'packets' if fmt == 'pcapng' else 'measurements'} -> {output}",
               err=True)  # fmt: skip


@main.command()
@click.option("-f", "--names", "names_file", required=True,
              type=click.Path(exists=True, dir_okay=False), help="The panel: one name per line.")  # fmt: skip
@click.option("-o", "--out", "out_dir", required=True, help="Directory for rounds, alerts, events.")
@click.option("-V", "--vantage", "vantages", multiple=True, required=True,
              metavar="NAME=TARGET[,TARGET...][,control=SPEC]",
              help="A vantage and what it asks each round (repeatable); targets as for probe -t.")  # fmt: skip
@click.option("--lab", is_flag=True,
              help="Vantages are lab nodes (run in ww-lab-NAME); times on the scenario clock.")  # fmt: skip
@click.option("--every", type=POSITIVE, default=60.0, show_default=True,
              help="Seconds between rounds (scenario seconds with --lab).")  # fmt: skip
@click.option(
    "--rounds", type=click.IntRange(1), default=None, help="Stop after this many rounds in all."
)
@click.option("--until", default=None, help="Stop at this ISO time (scenario time with --lab).")
@click.option("--rate", type=NON_NEGATIVE, default=2000.0, show_default=True)
@click.option("--timeout", type=POSITIVE, default=0.6, show_default=True)
@click.option("--window", type=NON_NEGATIVE, default=0.3, show_default=True)
@click.option(
    "--post", default=None, type=_Url(), metavar="URL", help="Also POST each alert (JSON) here."
)
@click.option("--delta", type=POSITIVE, default=0.5, show_default=True,
              help="CUSUM: the step in a share to detect.")  # fmt: skip
@click.option("--edd", type=POSITIVE, default=2.0, show_default=True,
              help="CUSUM: expected detection delay, in rounds.")  # fmt: skip
@click.option("--upload", "upload_url", default=None, metavar="URL",
              help="Ship each round to a collector as it closes (http(s)://HOST:PORT or unix:PATH).")  # fmt: skip
@click.option("--token", "upload_token", default=None, envvar="WALLWATCH_TOKEN",
              help="The vantage's upload token (or $WALLWATCH_TOKEN).")  # fmt: skip
@click.option("--warmup", type=click.IntRange(0, 1000), default=3, show_default=True,
              help="Rounds that set each stream's baseline before it may alarm.")  # fmt: skip
@mmdb_option
def watch(
    names_file: str, out_dir: str, vantages: tuple[str, ...], lab: bool, every: float,
    rounds: int | None, until: str | None, rate: float, timeout: float, window: float,
    post: str | None, delta: float, edd: float, warmup: int, mmdb: str | None,
    upload_url: str | None, upload_token: str | None,
) -> None:  # fmt: skip
    """Sweep a panel every minute and print one JSON line per event change.

    Restarting with the same --out resumes: rounds already on disk are judged again
    (silently), nothing is measured twice, and the next round starts at the next slot.
    """
    from datetime import datetime

    from wallwatch.watch import Clock, Vantage, Watch, WatchConfig

    try:
        parsed = [Vantage.parse(v, lab=lab) for v in vantages]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--vantage") from None
    clock = Clock.lab() if lab else Clock(real0=0.0, scale=1.0, at0=0.0)
    stop_at = None
    if until is not None:
        try:
            stop_at = datetime.fromisoformat(until).timestamp()
        except ValueError:
            raise click.BadParameter(f"not an ISO time: {until!r}", param_hint="--until") from None
    if bool(upload_url) != bool(upload_token):
        raise click.UsageError("--upload and --token go together")
    if upload_url:
        from urllib.parse import urlsplit

        if urlsplit(upload_url).scheme not in ("http", "https", "unix"):
            raise click.BadParameter(
                f"{upload_url!r}: http(s)://HOST:PORT or unix:PATH", param_hint="--upload"
            )
    config = WatchConfig(names=Path(names_file), out=Path(out_dir), vantages=parsed, every=every,
                         rounds=rounds, until=stop_at, rate=rate, timeout=timeout, window=window,
                         post=post, clock=clock, delta=delta, edd=edd, warmup=warmup,
                         mmdb=Path(mmdb) if mmdb else None, upload=upload_url,
                         upload_token=upload_token)  # fmt: skip
    try:
        Watch(config).run()
    except KeyboardInterrupt:
        click.echo("watch: stopped; restart with the same --out to resume", err=True)


@main.command()
@click.argument("out_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--html", "html_path", default=None, help="Where to write the page [OUT_DIR/report.html]."
)
@click.option(
    "--json", "json_path", default=None, help="Where to write the data [OUT_DIR/report.json]."
)
@click.option("--connections", "connections_file", default=None,
              type=click.Path(exists=True, dir_okay=False),
              help="Connections the hosts counted per second and address (JSON; the lab's "
                   "sink writes it): each event's flood is then measured.")  # fmt: skip
def report(out_dir: str, html_path: str | None, json_path: str | None,
           connections_file: str | None) -> None:  # fmt: skip
    """Write the evidence report (HTML + JSON + pcap) of a watch directory."""
    from wallwatch import flood
    from wallwatch import report as report_module

    out = Path(out_dir)
    try:
        connections = flood.load(Path(connections_file)) if connections_file else None
    except flood.FloodError as exc:
        raise click.BadParameter(str(exc), param_hint="--connections") from None
    data = report_module.write(out, html_path=Path(html_path) if html_path else None,
                               json_path=Path(json_path) if json_path else None,
                               connections=connections)  # fmt: skip
    for line in data["missing"]:
        click.echo(f"report: {line}", err=True)
    click.echo(f"{len(data['events'])} event(s); {html_path or out / 'report.html'}")


@main.command()
@click.option(
    "--out",
    "out_dir",
    default="demo-out",
    show_default=True,
    help="Directory for the records, the store and the Parquet files.",
)
@click.option("--rate", type=NON_NEGATIVE, default=2000.0, show_default=True)
@click.option("--loopback", is_flag=True, help="Use the loopback miniature even as root.")
def demo(out_dir: str, rate: float, loopback: bool) -> None:
    """Replay 21 January 2014 in the lab, watch it happen, and write the report.

    As root: the namespace lab with BIND9, Unbound and the border injector; `watch`
    runs through the scenario and OUT/report.html and OUT/report.json are written.
    Otherwise (or with --loopback): the loopback miniature.
    """
    from wallwatch.demo import run_demo, run_loopback_demo

    run = run_loopback_demo if loopback else run_demo
    run(Path(out_dir), rate=rate, console=Console())


@main.command()
@click.option("-n", "--name", "name", required=True, help="A name the injector reacts to.")
@click.option(
    "-t",
    "--target",
    "target_spec",
    required=True,
    metavar="[KIND:]ADDR[:PORT]",
    help="Where to send the probes (a dark host or a resolver across the border).",
)
@click.option("-q", "--qtype", default="A", show_default=True)
@click.option("--max-ttl", type=click.IntRange(1, 64), default=32, show_default=True)
@click.option(
    "--source-port",
    type=click.IntRange(1, 65535),
    default=None,
    help="Keep the 4-tuple fixed (load-balanced paths may differ per port).",
)
@click.option("-o", "--output", default=None, help="Also keep every probe's record (JSONL).")
@click.option("--json", "as_json_out", is_flag=True, help="Print the result as JSON.")
def locate(
    name: str, target_spec: str, qtype: str, max_ttl: int, source_port: int | None,
    output: str | None, as_json_out: bool,
) -> None:  # fmt: skip
    """Find the hop where injection starts: the same query with IP TTL 1, 2, 3, ..."""
    import json
    from dataclasses import asdict

    from wallwatch.locate import locate as run_locate
    from wallwatch.names import to_hostname

    try:
        target = parse_target(target_spec)
        host = to_hostname(name)
        qvalue = qtype_value(qtype)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    found = run_locate(QueryName(host, None, "--name", 1), target, qtype=qvalue, max_ttl=max_ttl,
                       source_port=source_port, output=output)  # fmt: skip
    if as_json_out:
        click.echo(json.dumps(asdict(found)))
        return
    for seen in found.observations:
        replies = ", ".join(
            f"IP TTL {t} -> {a}" for t, a in zip(seen.reply_ttls, seen.answers, strict=False)
        )
        click.echo(f"TTL {seen.probe_ttl:2d}: {replies or '-'}")
    click.echo(found.explain())


@main.command()
@click.argument("uid")
@click.option("--db", default="wallwatch.duckdb", show_default=True, help="An analysed store.")
def explain(uid: str, db: str) -> None:
    """Explain measurement UID: who did it, why, and the packets behind it."""
    from wallwatch.explain import explain as run_explain

    try:
        click.echo(terminal(run_explain(db, uid)), nl=False)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.argument("addresses", nargs=-1, required=True)
@mmdb_option
@click.option("--day", default=None, metavar="YYYY-MM-DD",
              help="Look up as of this day (picks the MMDB snapshot; default today).")  # fmt: skip
@click.option("--json", "as_json_out", is_flag=True, help="One JSON object per address.")
def netinfo(
    addresses: tuple[str, ...], mmdb: str | None, day: str | None, as_json_out: bool
) -> None:
    """Origin AS, organisation and prefix of each ADDRESS, and the dataset that says so."""
    import ipaddress
    import json
    from datetime import date

    from wallwatch import _api

    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise click.BadParameter(
                f"{address!r} is not an IP address", param_hint="ADDRESS"
            ) from None
    try:
        when = date.fromisoformat(day) if day else None
        found = _api.netinfo(*addresses, day=when, mmdb=mmdb)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    except FileNotFoundError as exc:
        raise click.ClickException(str(exc)) from None
    for info in found:
        if as_json_out:
            click.echo(json.dumps(info._asdict()))
        elif info.asn is None:
            click.echo(f"{info.address}\tno origin AS (unrouted, private or reserved)")
        else:
            click.echo(
                terminal(f"{info.address}\tAS{info.asn}\t{info.org}\t{info.prefix}\t{info.dataset}")
            )


@main.command()
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="The collector's directory (store, minute log, tokens).")  # fmt: skip
@click.option("--listen", default="127.0.0.1:8040", show_default=True, metavar="HOST:PORT")
@click.option("--uds", default=None, metavar="PATH", help="Listen on this Unix socket instead.")
@click.option("--webhook", "webhooks", multiple=True, type=_Url(), metavar="URL",
              help="POST every alert here (repeatable; retried, logged).")  # fmt: skip
@click.option("--private", is_flag=True, help="Reading needs a token too.")
@click.option("--grace", type=POSITIVE, default=90.0, show_default=True,
              help="Seconds without new data after which pending minutes are judged.")  # fmt: skip
@click.option("--rate-limit", "budget", type=POSITIVE, default=60.0, show_default=True,
              help="Server seconds each client (token or address) may use per minute (429 past it).")  # fmt: skip
@click.option("--panel", default=None, type=click.Path(exists=True, dir_okay=False),
              help="The names the vantages ask (for the shares of an event).")  # fmt: skip
@click.option("--local", "locals_", multiple=True, metavar="VANTAGE=ADDRESS",
              help="A vantage's own address, for the evidence pcap (repeatable).")  # fmt: skip
@click.option("--public-url", default=None, type=_Url(), metavar="URL",
              help="Where readers reach this collector (alerts' permalinks); default: --listen.")  # fmt: skip
@click.option("--connections", "connections_file", default=None, type=click.Path(dir_okay=False),
              help="A file of the connections hosts counted per second and address (the "
                   "lab's sink, on the events' clock), served at /api/v1/connections.")  # fmt: skip
@with_dataset_options
def serve(data_dir: str, listen: str, uds: str | None, webhooks: tuple[str, ...], private: bool,
          grace: float, budget: float, panel: str | None, locals_: tuple[str, ...],
          public_url: str | None, connections_file: str | None, dataset: str | None,
          storage_option: tuple[str, ...]) -> None:  # fmt: skip
    """The observatory: collector, API and live dashboard in one process."""
    import uvicorn

    from wallwatch.observatory.app import create_app
    from wallwatch.observatory.collector import Collector
    from wallwatch.observatory.tokens import Tokens

    host, _, port = listen.rpartition(":")
    if not uds and (not host or not port.isdigit() or not 0 < int(port) < 65536):
        raise click.BadParameter(f"{listen!r}: HOST:PORT", param_hint="--listen")
    data = Path(data_dir)
    local = {}
    for item in locals_:
        name, sep, address = item.partition("=")
        if not sep or not name or not address:
            raise click.BadParameter(f"{item!r}: VANTAGE=ADDRESS", param_hint="--local")
        local[name] = address
    where = f"unix:{uds}" if uds else f"http://{listen}/"
    target = None
    if dataset is not None:
        from wallwatch.dataset import Dataset

        target = Dataset(dataset, _pairs(storage_option, "--storage-option"))
        try:
            target.meta()  # reachable, and a wallwatch dataset if anything is there
        except (ValueError, OSError) as exc:
            raise click.ClickException(f"{console_text(dataset)}: {exc}") from None
    elif storage_option:
        raise click.UsageError("--storage-option goes with --dataset")
    collector = Collector(data, webhooks=list(webhooks), grace=grace,
                          panel=Path(panel) if panel else None, local=local,
                          public_url=public_url or (None if uds else where),
                          dataset=target)  # fmt: skip
    app = create_app(collector, Tokens(data), private=private, budget=budget,
                     connections=Path(connections_file) if connections_file else None)  # fmt: skip
    err.print(f"wallwatch serve: {data} on {where}", highlight=False)
    # uvicorn re-raises the SIGTERM it caught once it has stopped; as an exception here,
    # it lets the collector judge what is pending and save before the process ends.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        if uds:
            uvicorn.run(app, uds=uds, log_level="warning")
        else:
            uvicorn.run(app, host=host.strip("[]"), port=int(port), log_level="warning")
    finally:
        collector.close()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(0)


@main.group()
def token() -> None:
    """Upload tokens of a collector (one vantage each, stored hashed)."""


@token.command("new")
@click.argument("vantage")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False))
def token_new(vantage: str, data_dir: str) -> None:
    """A new upload token for VANTAGE, printed alone on the last line."""
    from wallwatch.observatory.tokens import Tokens

    try:
        value = Tokens(Path(data_dir)).new(vantage)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="VANTAGE") from None
    err.print(
        f"token for {console_text(vantage)} (shown once; only its hash is kept):", highlight=False
    )
    click.echo(value)


@token.command("list")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
def token_list(data_dir: str) -> None:
    """Tokens: id, vantage, created, revoked."""
    import datetime

    from wallwatch.observatory.tokens import Tokens

    for t in Tokens(Path(data_dir)).list():
        when = datetime.datetime.fromtimestamp(t.created, datetime.UTC).isoformat(
            timespec="seconds"
        )
        click.echo(
            terminal(f"{t.ident}\t{t.vantage}\t{when}\t{'revoked' if t.revoked else 'active'}")
        )


@token.command("revoke")
@click.argument("ident")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
def token_revoke(ident: str, data_dir: str) -> None:
    """Revoke a token by its id (from ``token list``) or every token of a vantage."""
    from wallwatch.observatory.tokens import Tokens

    try:
        count = Tokens(Path(data_dir)).revoke(ident)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="IDENT") from None
    if not count:
        raise click.ClickException(f"no active token matches {ident!r}")
    err.print(f"revoked {count} token(s)", highlight=False)


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True))
@click.option(
    "--to",
    "url",
    required=True,
    metavar="URL",
    help="The collector: http(s)://HOST:PORT or unix:PATH.",
)
@click.option(
    "--token",
    "token_value",
    required=True,
    envvar="WALLWATCH_TOKEN",
    help="Upload token (or $WALLWATCH_TOKEN).",
)
@click.option("--spool", default=None, type=click.Path(file_okay=False),
              help="Spool directory (default: a .wallwatch-spool beside the first path).")  # fmt: skip
def upload(paths: tuple[str, ...], url: str, token_value: str, spool: str | None) -> None:
    """Ship records made offline (probe output, imports, watch directories) to a collector."""
    from urllib.parse import urlsplit

    from wallwatch.observatory.agent import Spool, files_of

    if urlsplit(url).scheme not in ("http", "https", "unix"):
        raise click.BadParameter(f"{url!r}: http(s)://HOST:PORT or unix:PATH", param_hint="--to")
    files = files_of([Path(p) for p in paths])
    where = Path(spool) if spool else Path(paths[0]).resolve().parent / ".wallwatch-spool"
    queue = Spool(
        where, url, token_value, warn=lambda text: err.print(console_text(text), highlight=False)
    )
    for path in files:
        with open(path, "rb") as handle:
            queue.add(handle)
    if not queue.drain(retry=False):
        left = len(queue.pending())
        raise click.ClickException(f"{url}: not reachable; {left} batch(es) kept in {where}, "
                                   "sent by the next 'wallwatch upload'")  # fmt: skip
    err.print(f"upload: {len(files)} file(s): {queue.stored} measurements stored, "
              f"{queue.duplicates} already there", highlight=False)  # fmt: skip


@main.command()
@click.option("--dnstap", "dnstaps", multiple=True, metavar="FILE|unix:PATH",
              help="A dnstap file, or a Unix socket to receive a resolver's dnstap on (repeatable).")  # fmt: skip
@click.option("--pcap", "pcaps", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="A capture of the resolver's DNS (its upstream side shows the race).")  # fmt: skip
@click.option("--interface", default=None, metavar="IF",
              help="Capture the resolver's upstream side live on this interface (root).")  # fmt: skip
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Where the measurements, series, events and alerts go (as watch's).")  # fmt: skip
@click.option("--vantage", default="passive", show_default=True,
              help="The name this resolver's streams carry (a collector token's vantage).")  # fmt: skip
@click.option("--clients", type=click.Choice([p.value for p in ClientPolicy]),
              default=ClientPolicy.DROP.value, show_default=True,
              help="Users' addresses: dropped, a keyed hash, or kept.")  # fmt: skip
@click.option("--client-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The HMAC key for --clients hash (default: a new one per run).")  # fmt: skip
@click.option("--duration", type=POSITIVE, default=None,
              help="Seconds to listen on a dnstap socket (default: until interrupted).")  # fmt: skip
@click.option("--lab", is_flag=True,
              help="The lab's ISP resolver: its dnstap socket by default, the scenario's clock.")  # fmt: skip
@click.option("--upload", "upload_url", default=None, metavar="URL",
              help="Ship each closed minute to this collector.")  # fmt: skip
@click.option("--token", "upload_token", default=None, envvar="WALLWATCH_TOKEN",
              help="The vantage's upload token (or $WALLWATCH_TOKEN).")  # fmt: skip
def passive(dnstaps: tuple[str, ...], pcaps: tuple[str, ...], interface: str | None,
            out_dir: str, vantage: str, clients: str, client_key: str | None,
            duration: float | None, lab: bool, upload_url: str | None,
            upload_token: str | None) -> None:  # fmt: skip
    """Detect mass redirection in a resolver's own traffic (dnstap, packets)."""
    from wallwatch.interop import dnstap
    from wallwatch.passive import Passive
    from wallwatch.watch import Clock

    clock = Clock()
    netns_name = None
    if lab:
        from wallwatch.lab import netns, topology

        try:
            clock = Clock.lab()
        except (OSError, ValueError, KeyError) as exc:
            raise click.ClickException(
                f"no lab is up ({exc}); start one with 'wallwatch lab up'"
            ) from None
        dnstaps = dnstaps or (f"unix:{topology.dnstap_socket()}",)
        # The ISP node's one interface carries both sides; its upstream side is kept.
        interface = interface or "eth0"
        netns_name = netns.ns_name("isp")
    if not dnstaps and not pcaps and not interface:
        raise click.UsageError("give --dnstap FILE|unix:PATH, --pcap FILE or --interface IF")
    if bool(upload_url) != bool(upload_token):
        raise click.UsageError("--upload and --token go together")
    policy = ClientPolicy(clients)
    # One key for every source of the run, so a user's hash is the same in all of them.
    key = Path(client_key).read_bytes() if client_key else os.urandom(32)
    hide = dnstap.Converter(vantage=vantage, clients=policy, key=key).client
    engine = Passive(Path(out_dir), upload=upload_url, token=upload_token,
                     emit=lambda line: click.echo(line), clock=clock)  # fmt: skip
    capture = None
    if interface:
        from wallwatch.interop.capture import Capture, CaptureError

        try:
            capture = Capture(interface, netns=netns_name)
        except CaptureError as exc:
            raise click.BadParameter(str(exc), param_hint="--interface") from None
    for path in pcaps:
        engine.read_pcap(path, vantage=vantage, clients=policy, hide=hide,
                         errors=lambda e: err.print(
                             console_text(f"passive: {e.source}:{e.line}: {e.error}"),
                             highlight=False))  # fmt: skip
    sockets = [d.removeprefix("unix:") for d in dnstaps if d.startswith("unix:")]
    for path in (d for d in dnstaps if not d.startswith("unix:")):
        if not Path(path).is_file():
            raise click.BadParameter(
                f"{path!r}: not a file (a socket is unix:PATH)", param_hint="--dnstap"
            )
        converter = dnstap.Converter(vantage=vantage, clients=policy, key=key, source=path,
                                     upstream=capture is None)  # fmt: skip
        engine.read_dnstap(path, converter, errors=lambda e: err.print(
            console_text(f"passive: {e.source}:{e.line}: {e.error}"), highlight=False))  # fmt: skip
    if len(sockets) > 1:
        raise click.BadParameter("one dnstap socket at a time", param_hint="--dnstap")
    stopping: list[int] = []
    started = time.monotonic()

    def stop() -> bool:
        engine.tick()  # the journal written even while the resolver is quiet
        return bool(stopping) or (duration is not None and time.monotonic() > started + duration)

    listener = None
    if capture is not None:
        live = capture

        def listen() -> None:
            engine.listen(live, stop, vantage=vantage, clients=policy, hide=hide)

        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        listener = threading.Thread(target=listen, name="wallwatch-capture", daemon=True)
        listener.start()
        err.print(f"passive: capturing the upstream side on {interface}", highlight=False)
    if sockets:
        converter = dnstap.Converter(vantage=vantage, clients=policy, key=key, source=sockets[0],
                                     clock=clock.at, upstream=capture is None)  # fmt: skip
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))

        def take(payload: bytes) -> None:
            engine.offer(payload, converter)

        err.print(f"passive: listening for dnstap on {sockets[0]}", highlight=False)
        with contextlib.suppress(KeyboardInterrupt):
            dnstap.receive(
                sockets[0],
                take,
                stop=stop,
                on_frames=lambda data: engine.take_frames(data, converter),
            )
    if listener is not None:
        with contextlib.suppress(KeyboardInterrupt):
            while listener.is_alive() and not stop():
                listener.join(0.2)
        stopping.append(1)
        listener.join(5.0)
        live.close()
    summary = engine.close()
    events = summary["events"]
    assert isinstance(events, list)
    err.print(f"passive: {summary['answers']} answers, {summary['minutes_judged']} minutes judged, "
              f"{len(events)} event(s), {summary['raced_queries']} raced queries; "
              f"{out_dir}/passive.json", highlight=False)  # fmt: skip


@main.group()
def lab() -> None:
    """The lab: an emulated firewall, real DNS servers, in network namespaces (root)."""


@lab.command("up")
@click.argument("scenario")
def lab_up(scenario: str) -> None:
    """Build the lab for SCENARIO (a shipped name or a .toml file)."""
    from wallwatch.lab import scenario as scenarios
    from wallwatch.lab import topology
    from wallwatch.lab.netns import LabError

    try:
        loaded = scenarios.load(scenario)
        state = topology.up(loaded, log=lambda text: err.print(text, highlight=False))
    except (ValueError, LabError) as exc:
        raise click.ClickException(str(exc)) from None
    err.print(
        f"lab '{state.scenario}' is up: {len(state.nodes)} nodes, {state.names} names; "
        f"state in {topology.state_dir()}",
        highlight=False,
    )


@lab.command("down")
def lab_down() -> None:
    """Remove every lab namespace and process (also after a crash)."""
    from wallwatch.lab import topology

    removed = topology.down()
    err.print(f"removed {len(removed)} namespaces" if removed else "no lab was up")


@lab.command("status")
def lab_status() -> None:
    """Show the lab's namespaces, processes and counters (JSON); exit 1 unless every process runs."""
    import json

    from wallwatch.lab import topology

    found = topology.status()
    click.echo(json.dumps(found, indent=2))
    if not found["healthy"]:
        why = "; ".join(found["dead"]) or "no lab is up"
        raise click.ClickException(f"lab unhealthy: {why}")


@lab.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("node")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def lab_exec(node: str, command: tuple[str, ...]) -> None:
    """Run COMMAND inside lab NODE (e.g. lab exec client1 -- dig @8.8.8.8 www.example.com)."""
    import os

    from wallwatch.lab import netns

    ns = netns.ns_name(node)
    if ns not in netns.ours():
        raise click.ClickException(
            f"no lab node {node!r} (up: {', '.join(netns.ours()) or 'none'})"
        )
    os.execvp("ip", ["ip", "netns", "exec", ns, *command])


if __name__ == "__main__":  # pragma: no cover
    main()


@main.command()
@click.option("--listen", default="127.0.0.1:53", show_default=True, metavar="ADDR:PORT",
              help="Where users' queries come in, over UDP and TCP (loopback by default).")  # fmt: skip
@click.option("--upstream", required=True, metavar="ADDR[:PORT]",
              help="The resolver asked over UDP (e.g. 8.8.8.8).")  # fmt: skip
@click.option("--secure", default=None, metavar="doh:URL|dot:ADDR",
              help="A channel an injector cannot race, asked when no UDP reply passes.")  # fmt: skip
@click.option("--race", is_flag=True,
              help="Ask the secure channel at once, beside UDP (costs it on every lookup).")  # fmt: skip
@click.option("--allow", "allow", multiple=True, metavar="CIDR",
              help="Networks allowed to use the shield besides loopback (repeatable); "
                   "required to listen off loopback.")  # fmt: skip
@click.option("--cache-size", type=click.IntRange(min=0), default=10000, show_default=True,
              help="Answers kept (0: no cache).")  # fmt: skip
@click.option("--max-pending", type=click.IntRange(min=1), default=10000, show_default=True,
              help="Upstream queries in flight at once; beyond it users get SERVFAIL.")  # fmt: skip
@click.option("--workers", type=click.IntRange(min=1, max=64), default=1, show_default=True,
              help="Processes sharing the listening port (one per core for a busy network).")  # fmt: skip
@click.option("-o", "--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Write every upstream query as a measurement, every decision, and the "
                   "learned state here.")  # fmt: skip
@click.option("--vantage", default="shield", show_default=True,
              help="The name the measurements carry (a collector token's vantage).")  # fmt: skip
@click.option("--duration", type=POSITIVE, default=None,
              help="Seconds to serve (default: until interrupted).")  # fmt: skip
@click.option("--upload", "upload_url", default=None, metavar="URL",
              help="Ship the measurements to this collector as they close.")  # fmt: skip
@click.option("--token", "upload_token", default=None, envvar="WALLWATCH_TOKEN",
              help="The vantage's upload token (or $WALLWATCH_TOKEN).")  # fmt: skip
def shield(listen: str, upstream: str, secure: str | None, race: bool, allow: tuple[str, ...],
           cache_size: int, max_pending: int, workers: int, out_dir: str | None, vantage: str,
           duration: float | None, upload_url: str | None,
           upload_token: str | None) -> None:  # fmt: skip
    """A stub resolver that waits out the injector: only replies that pass the checks."""
    import asyncio
    import dataclasses
    import ipaddress

    from wallwatch.probe.stream import parse_stream_server
    from wallwatch.shield import Shield, ShieldConfig
    from wallwatch.targets import parse_target

    try:
        bind = parse_target(listen)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--listen") from None
    try:
        up = parse_target(upstream)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--upstream") from None
    try:
        channel = parse_stream_server(secure) if secure else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--secure") from None
    try:
        nets = tuple(ipaddress.ip_network(a, strict=False) for a in allow)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--allow") from None
    if bool(upload_url) != bool(upload_token):
        raise click.UsageError("--upload and --token go together")
    out = Path(out_dir) if out_dir else None
    if upload_url and out is None:
        raise click.UsageError("--upload needs --out (the spool is kept there)")
    config = ShieldConfig(upstream=(up.address, up.port), listen=(bind.address, bind.port),
                          secure=channel, race=race, allow=nets, cache_size=cache_size,
                          max_pending=max_pending, out=out, vantage=vantage,
                          reuse_port=workers > 1)  # fmt: skip
    try:
        config.check()
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    children: list[int] = []
    if workers > 1:
        # One process per core, sharing the port (SO_REUSEPORT): each learns the path
        # on its own and writes under OUT/worker-N.
        for index in range(workers):
            pid = os.fork()
            if pid == 0:
                children.clear()
                if out is not None:
                    config = dataclasses.replace(config, out=out / f"worker-{index}")
                    out = config.out
                break
            children.append(pid)
        if children:

            def forward(*_args: object) -> None:
                for c in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(c, signal.SIGTERM)

            signal.signal(signal.SIGTERM, forward)
            signal.signal(signal.SIGINT, forward)
            failed = 0
            for child in children:
                while True:
                    try:
                        _pid, status = os.waitpid(child, 0)
                        break
                    except InterruptedError:
                        continue
                failed += os.waitstatus_to_exitcode(status) != 0
            if failed:
                raise click.ClickException(f"{failed} of {workers} shield workers failed")
            return
    spool = None
    if upload_url and upload_token and out is not None:
        from wallwatch.observatory.agent import Spool

        spool = Spool(out / "spool", upload_url, upload_token).start()
    try:
        server = Shield(config, log=lambda text: err.print(console_text(text), highlight=False),
                        spool=spool)  # fmt: skip
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, server.stop)
        if duration is not None:
            loop.call_later(duration, server.stop)

        def ready(where: tuple[str, int]) -> None:
            state = server.state()["path"]
            err.print(f"shield: listening on {where[0]}:{where[1]} (UDP, TCP), upstream "
                      f"{up.address}:{up.port}; learned path {state}", highlight=False)  # fmt: skip

        await server.serve(ready)

    try:
        asyncio.run(run())
    except OSError as exc:
        raise click.ClickException(f"--listen {listen}: {exc.strerror or exc}") from None
    if spool is not None:
        spool.close()
    state = server.state()
    err.print(f"shield: {state['queries']} queries; {state['decisions']}; drops {state['drops']}",
              highlight=False)  # fmt: skip
