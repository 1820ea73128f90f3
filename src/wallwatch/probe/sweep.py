"""A sweep: names x targets x query types (plus a control per name), sharded and resumable.

The plan is expanded lazily, one :class:`~wallwatch.probe.engine.Query` at a
time, so a sweep of millions of names costs no memory beyond the names. With
``procs > 1`` each worker process takes every N-th name (so one name's queries
stay together in one worker) and appends to the same output file; the kernel
serialises whole-buffer appends. ``resume`` skips every query whose measurement
is already complete in the output (see :mod:`wallwatch.journal`).
"""

from __future__ import annotations

import itertools
import multiprocessing
import operator
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields

from wallwatch import records
from wallwatch.journal import Journal, recover
from wallwatch.names import BadLine, QueryName
from wallwatch.probe.engine import ProbeConfig, Prober, Query, Stats, make_report_id
from wallwatch.probe.stream import StreamServer
from wallwatch.records import InputError
from wallwatch.supervise import die_with_parent
from wallwatch.targets import Target
from wallwatch.vocab import Engine, TargetKind
from wallwatch.wire import qtype_text

Key = tuple[str, str, str, str]


@dataclass(frozen=True, slots=True)
class SweepPlan:
    """What to measure."""

    names: Sequence[QueryName]
    targets: Sequence[Target]
    qtypes: Sequence[int] = (1,)
    #: Trusted control lookups, one per name and qtype (TCP, DoT or DoH).
    controls: Sequence[StreamServer] = ()
    #: ``udp`` (default) or ``tcp`` for every target query.
    engine: Engine = Engine.UDP
    ip_ttl: int | None = None
    source_port: int | None = None
    #: Input lines that were not names; written as ``input_error`` records.
    bad_lines: Sequence[BadLine] = ()

    def size(self) -> int:
        """How many queries the full plan holds."""
        return len(self.names) * len(self.qtypes) * (len(self.targets) + len(self.controls))

    def queries(
        self, shard: int = 0, shards: int = 1, skip: set[Key] | None = None
    ) -> Iterator[Query]:
        """The plan's queries for one shard, leaving out keys in ``skip``."""
        skip = skip or set()
        qtypes = [(qtype, qtype_text(qtype)) for qtype in self.qtypes]
        targets = [(target, target.resolver_address) for target in self.targets]
        controls = [(control, control.resolver_address) for control in self.controls]
        udp = self.engine == Engine.UDP
        # Per target, the Query's fields after (name, qtype): a Query is then one C-level
        # tuple build (NamedTuple's __new__ is a Python function, a fifth of the C loop's
        # cost per query).
        rests = [
            (address, (target, self.engine,
                               None if udp else StreamServer(self.engine, target.address, target.port),
                               target.kind, self.ip_ttl, self.source_port))
            for target, address in targets
        ]  # fmt: skip
        names = itertools.islice(self.names, shard, None, shards)
        if not controls and not skip:
            # The common plan (no controls, nothing to skip): the queries come from an
            # iterator built of itertools alone, with no Python frame per query (the
            # generator below cost about a tenth of a native sweep's CPU).
            combos = [(qtype, *rest) for qtype, _ in qtypes for _, rest in rests]
            if not combos:
                return iter(())
            pairs = (
                zip(zip(names), itertools.repeat(combos[0]))
                if len(combos) == 1
                else itertools.product(zip(names), combos)
            )
            return map(
                tuple.__new__, itertools.repeat(Query), itertools.starmap(operator.add, pairs)
            )
        return self._each_query(names, qtypes, controls, rests, skip)

    def _each_query(
        self,
        names: Iterator[QueryName],
        qtypes: list[tuple[int, str]],
        controls: list[tuple[StreamServer, str]],
        rests: Sequence[tuple[str, tuple[object, ...]]],
        skip: set[Key],
    ) -> Iterator[Query]:
        """:meth:`queries` one by one, for a plan with controls or keys to skip."""
        make = tuple.__new__
        for name in names:
            host = name.hostname
            for qtype, qtext in qtypes:
                for control, address in controls:
                    if skip and (host, address, qtext, control.engine) in skip:
                        continue
                    yield Query(
                        name, qtype, engine=control.engine, stream=control,
                        kind=TargetKind.CONTROL,
                    )  # fmt: skip
                for address, rest in rests:
                    if skip and (host, address, qtext, self.engine) in skip:
                        continue
                    yield make(Query, (name, qtype, *rest))


@dataclass(slots=True)
class SweepResult:
    """Totals over all workers."""

    stats: Stats
    report_id: str
    skipped: int = 0
    failed_workers: list[tuple[int, int]] = field(default_factory=list)


_STAT_FIELDS = [f.name for f in fields(Stats)]


def run_sweep(
    plan: SweepPlan,
    config: ProbeConfig,
    output: str | None,
    *,
    resume: bool = False,
    procs: int = 1,
    progress: Callable[[Stats, int], None] | None = None,
    warn: Callable[[str], None] = lambda text: print(text, file=sys.stderr),
    twin: bool | None = None,
) -> SweepResult:
    """Run the whole plan; records go to ``output`` (a path, or None for stdout), with its
    Parquet twin when ``twin`` (by default, when DuckDB is installed: ``Journal.open``)."""
    if procs > 1 and (output is None or output == "-"):
        raise ValueError("--procs > 1 needs an output file (-o): workers append to it")
    done: set[Key] = set()
    seen_errors: set[tuple[str, int]] = set()
    dropped: list[tuple[int, str]] = []
    if resume:
        if output is None or output == "-":
            raise ValueError("--resume needs an output file (-o)")
        recovered = recover(output)
        done, seen_errors, dropped = recovered.done, recovered.input_errors, recovered.dropped
        for number, reason in dropped:
            warn(f"{output}:{number}: dropped a torn record ({reason}); it will be re-measured")
    report_id = make_report_id(config.vantage, time.time_ns())
    journal = Journal.open(output, twin=twin)
    for bad in plan.bad_lines:
        if (bad.source, bad.line) in seen_errors:
            continue
        warn(f"{bad.source}:{bad.line}: skipped {bad.text!r}: {bad.error}")
        journal.write(
            InputError(
                schema_version=records.SCHEMA_VERSION, report_id=report_id,
                source=bad.source, line=bad.line, text=bad.text, error=bad.error,
            )
        )  # fmt: skip
    journal.flush()
    total = plan.size() - len(done)
    result = SweepResult(Stats(), report_id, skipped=len(done))
    if procs <= 1:
        prober = Prober(
            config, journal, report_id=report_id,
            progress=(lambda s: progress(s, total)) if progress else None,
        )  # fmt: skip
        try:
            result.stats = prober.run(plan.queries(skip=done))
        finally:
            journal.close()
        return result
    journal.close()
    return _run_sharded(
        plan, config, output or "-", procs, done, report_id, total, progress, result, twin
    )


def _run_sharded(
    plan: SweepPlan,
    config: ProbeConfig,
    output: str,
    procs: int,
    done: set[Key],
    report_id: str,
    total: int,
    progress: Callable[[Stats, int], None] | None,
    result: SweepResult,
    twin: bool | None,
) -> SweepResult:
    ctx = multiprocessing.get_context("fork")
    counters = ctx.Array("q", procs * len(_STAT_FIELDS), lock=False)
    shard_rate = config.rate / procs if config.rate else None
    shard_config = _replace_rate(config, shard_rate)
    workers = []
    parent = os.getpid()
    for shard in range(procs):
        worker = ctx.Process(
            target=_worker,
            args=(
                plan,
                shard_config,
                output,
                shard,
                procs,
                done,
                report_id,
                counters,
                parent,
                twin,
            ),
            name=f"ww-probe-{shard}",
        )
        worker.start()
        workers.append(worker)
    while any(w.is_alive() for w in workers):
        for w in workers:
            w.join(timeout=0.5 / procs)
        if progress:
            progress(_sum(counters, procs), total)
    result.stats = _sum(counters, procs)
    result.failed_workers = [(i, w.exitcode or 0) for i, w in enumerate(workers) if w.exitcode]
    return result


def _replace_rate(config: ProbeConfig, rate: float | None) -> ProbeConfig:
    values = {f.name: getattr(config, f.name) for f in fields(ProbeConfig)}
    values["rate"] = rate
    return ProbeConfig(**values)


def _sum(counters: Sequence[int], procs: int) -> Stats:
    width = len(_STAT_FIELDS)
    totals = [sum(counters[p * width + i] for p in range(procs)) for i in range(width)]
    return Stats(**dict(zip(_STAT_FIELDS, totals, strict=True)))


def _worker(
    plan: SweepPlan,
    config: ProbeConfig,
    output: str,
    shard: int,
    procs: int,
    done: set[Key],
    report_id: str,
    counters: list[int],
    parent: int,
    twin: bool | None,
) -> None:
    # A worker outliving a killed parent would race the resumed sweep (doubled records).
    die_with_parent(parent)
    width = len(_STAT_FIELDS)

    def publish(stats: Stats) -> None:
        for i, name in enumerate(_STAT_FIELDS):
            counters[shard * width + i] = getattr(stats, name)

    journal = Journal.open(output, twin=twin)
    try:
        stats = Prober(config, journal, report_id=report_id, progress=publish).run(
            plan.queries(shard, procs, done)
        )
        publish(stats)
    finally:
        journal.close()
    os._exit(0)  # skip atexit handlers inherited from the parent
