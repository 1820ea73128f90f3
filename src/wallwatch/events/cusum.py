"""A streaming two-sided CUSUM that knows whether it is in an event.

Why CUSUM: a mass redirection is a *step* in a per-minute share (0.05 -> 1.0 in 2014,
[gfwatch-2021]; [greatfire-2014]), and Page's cumulative sum is the optimal detector of a step of
known size in noise (Basseville & Nikiforov 1993, section 2.2). It needs no training
set, its two parameters read as "how big a step" and "how sure", and each step can be
traced for the report. ooni/data runs the same kind of detector on hourly buckets
(``analysis/detector.py``); minutes are what an outage of 24 minutes needs.

The upward sum ``S+ = max(0, S+ + x - mu0 - k)`` runs while the stream is normal; an
alarm is raised when it exceeds ``h``, and the change time is estimated as the first
bucket after ``S+`` last stood at 0. In alarm, the level ``mu1`` is the running mean
of the alarmed buckets and a downward sum ``S- = max(0, S- + mu1 - k - x)`` watches
for the return; crossing ``h`` ends the alarm. With ``k = delta / 2`` and ``h = edd *
delta / 2`` a step of ``delta`` is found after about ``edd`` buckets.

The baseline ``mu0`` is learnt, not assumed: the median of the first ``warmup``
buckets, then an exponentially weighted mean of the normal buckets, so that steady
censorship (a few blocked names on a few forged addresses) *is* the baseline. Missing
buckets (a vantage that stopped reporting) change nothing; after a gap longer than
``gap`` buckets the sums decay by half per ``gap`` buckets, as OONI's detector does
after long gaps.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class CusumStep:
    """One bucket as the detector saw it (the trace the report draws)."""

    bucket: int
    x: float
    mu0: float
    upper: float
    lower: float
    alarm: bool


@dataclass(slots=True)
class Cusum:
    """Page's CUSUM on one stream of per-bucket values in [0, 1]."""

    #: The step size to find (in the units of ``x``).
    delta: float = 0.5
    #: Expected detection delay, in buckets, for a step of ``delta``.
    edd: float = 2.0
    #: Buckets used to learn the baseline before any alarm may be raised.
    warmup: int = 3
    #: Weight of a new normal bucket in the baseline (EWMA).
    adapt: float = 0.1
    #: Buckets after which a gap starts to decay the sums.
    gap: int = 10
    trace: bool = False

    mu0: float | None = None
    mu1: float = 0.0
    upper: float = 0.0
    lower: float = 0.0
    alarm: bool = False
    #: First bucket of the current rise (the change-time estimate) and of the alarm.
    rise_start: int | None = None
    onset: int | None = None
    seen: int = 0
    last_bucket: int | None = None
    _alarm_values: list[float] = field(default_factory=list)
    _warm: list[float] = field(default_factory=list)
    steps: list[CusumStep] = field(default_factory=list)

    @property
    def k(self) -> float:
        return self.delta / 2

    @property
    def h(self) -> float:
        return self.edd * self.delta / 2

    def update(self, bucket: int, x: float) -> str | None:
        """Feed one bucket; return ``"start"`` or ``"end"`` when the alarm changes."""
        if self.last_bucket is not None and bucket - self.last_bucket > self.gap:
            halvings = (bucket - self.last_bucket) / self.gap
            self.upper *= 0.5**halvings
            self.lower *= 0.5**halvings
        self.last_bucket = bucket
        self.seen += 1
        change: str | None = None
        seen_upper = seen_lower = None
        if self.mu0 is None or self.seen <= self.warmup:
            self._warm.append(x)
            self.mu0 = statistics.median(self._warm)
        elif not self.alarm:
            self.upper = max(0.0, self.upper + x - self.mu0 - self.k)
            if self.upper == 0.0:
                self.rise_start = None
            elif self.rise_start is None:
                self.rise_start = bucket
            if self.upper > self.h:
                self.alarm, change = True, "start"
                self.onset = self.rise_start if self.rise_start is not None else bucket
                self._alarm_values = [x]
                self.mu1 = x
                self.lower = 0.0
            else:
                self.mu0 += self.adapt * (x - self.mu0)
        else:
            self.lower = max(0.0, self.lower + self.mu1 - self.k - x)
            if self.lower > self.h:
                self.alarm, change = False, "end"
                seen_upper, seen_lower = self.upper, self.lower  # the trace shows the crossing
                self.upper = self.lower = 0.0
                self.rise_start = None
            else:
                self._alarm_values.append(x)
                self.mu1 = statistics.fmean(self._alarm_values)
        if self.trace:
            assert self.mu0 is not None
            upper = self.upper if seen_upper is None else seen_upper
            lower = self.lower if seen_lower is None else seen_lower
            self.steps.append(CusumStep(bucket, x, self.mu0, upper, lower, self.alarm))
        return change
