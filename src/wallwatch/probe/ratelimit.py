"""A token bucket: the prober's ``--rate``.

Sending in bursts of at most ``burst`` queries keeps the per-packet system-call
cost amortised (the batch loop of docs/performance.md) while the long-run rate never
exceeds ``rate``: a censorship measurement must not look like, or be, a flood.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` banked.

    >>> b = TokenBucket(rate=100.0, burst=10, now=0.0)
    >>> b.take(0.0, 64)
    10
    >>> b.take(0.05, 64)
    5
    """

    __slots__ = ("rate", "burst", "_tokens", "_last")

    def __init__(self, rate: float | None, burst: int = 64, *, now: float = 0.0) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive (or None for unlimited)")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float, want: int) -> int:
        """Take up to ``want`` whole tokens; return how many were granted."""
        if self.rate is None:
            return min(want, self.burst)
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        granted = min(want, int(self._tokens))
        self._tokens -= granted
        return granted

    def wait_time(self) -> float:
        """Seconds until at least one token is available (0 when one is)."""
        if self.rate is None or self._tokens >= 1.0:
            return 0.0
        return (1.0 - self._tokens) / self.rate
