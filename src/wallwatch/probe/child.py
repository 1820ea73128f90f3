"""One sweep in a child process, from a JSON spec: the entry point ``watch`` runs per vantage.

Why a child process at all: a vantage inside a lab network namespace must be entered with
``ip netns exec``, which only a new process can do, and each vantage's sweep must not
share a socket loop with the others. Why a spec and not the command line's options: the
watch and the sweep then share one definition of the sweep (:class:`SweepSpec`, turned
into the library's :class:`~wallwatch.probe.sweep.SweepPlan` and
:class:`~wallwatch.probe.engine.ProbeConfig`), and a change of a CLI flag cannot break
the watch.

    python -m wallwatch.probe.child SPEC.json
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec

from wallwatch.names import BadLine, QueryName, read_names
from wallwatch.probe.engine import ProbeConfig
from wallwatch.probe.stream import parse_stream_server
from wallwatch.probe.sweep import SweepPlan, run_sweep
from wallwatch.targets import parse_target
from wallwatch.wire import qtype_value


class SweepSpec(msgspec.Struct, forbid_unknown_fields=True):
    """What one vantage sweeps in one round."""

    names: str
    output: str
    targets: list[str]
    controls: list[str] = []
    qtypes: list[str] = msgspec.field(default_factory=lambda: ["A"])
    vantage: str = "wallwatch"
    rate: float | None = 2000.0
    timeout: float = 0.6
    window: float = 0.3
    retries: int = 0
    stream_workers: int = 64
    annotations: dict[str, str] = {}


def run(spec: SweepSpec) -> int:
    """Run the sweep; the exit status (1 when a worker failed)."""
    good: list[QueryName] = []
    bad: list[BadLine] = []
    for item in read_names(spec.names):
        if isinstance(item, QueryName):
            good.append(item)
        else:
            bad.append(item)
    plan = SweepPlan(
        good, [parse_target(t) for t in spec.targets], [qtype_value(q) for q in spec.qtypes],
        [parse_stream_server(c) for c in spec.controls], bad_lines=bad,
    )  # fmt: skip
    config = ProbeConfig(
        rate=spec.rate, timeout=spec.timeout, window=spec.window, retries=spec.retries,
        vantage=spec.vantage, annotations=spec.annotations, stream_workers=spec.stream_workers,
    )  # fmt: skip
    result = run_sweep(plan, config, spec.output, warn=lambda text: print(text, file=sys.stderr))
    return 1 if result.failed_workers else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m wallwatch.probe.child SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = msgspec.json.decode(Path(args[0]).read_bytes(), type=SweepSpec)
        return run(spec)
    except (OSError, ValueError, msgspec.DecodeError) as exc:
        print(f"{args[0]}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
