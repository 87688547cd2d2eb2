"""Numbers an operator watches: verification and sell latency, outcomes, refreshes."""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field


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


class LatencyRecorder:
    """Bounded memory: a long-running engine keeps the last `window` samples for percentiles."""

    def __init__(self, window: int = 100_000) -> None:
        self._samples: deque[float] = deque(maxlen=window)
        self._count = 0
        self._max: float | None = None

    def record(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._count += 1
        if self._max is None or seconds > self._max:
            self._max = seconds

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
        }
