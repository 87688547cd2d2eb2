"""Numbers an operator watches: verification and sell latency, outcomes, refreshes."""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate

DEFAULT_LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 15.0,
)
"""Upper bounds in seconds: fine around one Polymarket round trip (50-300 ms), coarse out to the
default sell timeout (15 s). The paper exchange's in-process exits land in the first buckets."""


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Seconds. Percentiles are nearest-rank over the most recent `window` samples; max is all-time."""

    count: int
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None

    def as_ms(self) -> dict[str, float | int | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 3)

        return {"count": self.count, "p50_ms": ms(self.p50), "p95_ms": ms(self.p95),
                "p99_ms": ms(self.p99), "max_ms": ms(self.max)}


@dataclass(frozen=True, slots=True)
class LatencyHistogram:
    """All-time, Prometheus-style: `cumulative[i]` samples took at most `bounds[i]` seconds; `count`
    is every sample (the +Inf bucket) and `sum` their total in seconds."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    count: int
    sum: float


class LatencyRecorder:
    """Bounded memory: a long-running engine keeps the last `window` samples for percentiles, and
    all-time counts per histogram bucket (`buckets`: ascending upper bounds in seconds)."""

    def __init__(self, window: int = 100_000, *, buckets: tuple[float, ...] = DEFAULT_LATENCY_BUCKETS) -> None:
        bounds = tuple(buckets)
        if not bounds or any(not (math.isfinite(b) and b > 0) for b in bounds) or any(
                a >= b for a, b in zip(bounds, bounds[1:], strict=False)):
            raise ValueError(f"buckets={buckets!r}: must be finite positive seconds in strictly ascending order")
        self._samples: deque[float] = deque(maxlen=window)
        self._count = 0
        self._max: float | None = None
        self._sum = 0.0
        self._bounds = bounds
        self._in_bucket = [0] * (len(bounds) + 1)
        """Samples per bucket, not cumulative; the last one is above every bound."""

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._count += 1
        self._sum += seconds
        self._in_bucket[bisect_left(self._bounds, seconds)] += 1
        if self._max is None or seconds > self._max:
            self._max = seconds

    def histogram(self) -> LatencyHistogram:
        cumulative = tuple(accumulate(self._in_bucket))
        return LatencyHistogram(self._bounds, cumulative[:-1], cumulative[-1], self._sum)

    def summary(self) -> LatencySummary:
        if not self._samples:
            return LatencySummary(self._count, None, None, None, self._max)
        ordered = sorted(self._samples)
        return LatencySummary(
            count=self._count,
            p50=_nearest_rank(ordered, 50),
            p95=_nearest_rank(ordered, 95),
            p99=_nearest_rank(ordered, 99),
            max=self._max,
        )


def _nearest_rank(ordered: list[float], percentile: float) -> float:
    rank = max(1, math.ceil(percentile / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class EngineMetrics:
    verify_latency_recorder: LatencyRecorder = field(default_factory=LatencyRecorder)
    sell_latency_recorder: LatencyRecorder = field(default_factory=LatencyRecorder)
    outcomes: Counter[str] = field(default_factory=Counter)
    balance_refreshes: int = 0
    verify_failures: int = 0
    paused: bool = False
    """The kill switch is on (`ExitEngine.pause`): new exits are refused until `resume()`."""
    unresolved_age: Callable[[], float] = field(default=lambda: 0.0)
    """Seconds since the oldest unresolved sell outcome became unknown (0 when none), read live: the
    engine's background resolver keeps it (an age that only grows means lookups keep failing)."""

    user_channel_connected: bool | None = None
    """The exchange's push channel (exitguard.fills): True while connected, False while down (polling alone then),
    None when the exchange has none."""
    user_channel_event_age: Callable[[], float | None] = field(default=lambda: None)
    """Seconds since the channel's last notice (None before the first), read live."""

    @property
    def oldest_unresolved_age(self) -> float:
        return self.unresolved_age()

    @property
    def verify_latency(self) -> LatencySummary:
        return self.verify_latency_recorder.summary()

    @property
    def sell_latency(self) -> LatencySummary:
        return self.sell_latency_recorder.summary()

    def snapshot(self) -> dict[str, object]:
        return {
            "verify_latency": self.verify_latency.as_ms(),
            "sell_latency": self.sell_latency.as_ms(),
            "outcomes": dict(self.outcomes),
            "balance_refreshes": self.balance_refreshes,
            "verify_failures": self.verify_failures,
            "paused": self.paused,
            "oldest_unresolved_age_s": round(self.oldest_unresolved_age, 3),
            "user_channel_connected": self.user_channel_connected,
            "user_channel_event_age_s": None if (age := self.user_channel_event_age()) is None else round(age, 3),
        }
