"""Client-side token buckets per endpoint family, so a burst of exits queues here instead of drawing
429s from the exchange (a 429 on a sell costs an attempt and a fresh verification).

The buckets wait on an injectable clock: tests drive them on virtual time, without real sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

import anyio

from states import InvalidValue


class Family(StrEnum):
    BALANCE = "balance-allowance"
    """GET /balance-allowance and GET /balance-allowance/update."""
    ORDER = "post-order"
    """POST /order."""
    DATA = "data"
    """Order and trade look-ups (/data/order, /data/trades)."""
    MARKET = "market"
    """Market look-ups made during warm-up (/book, /version, /tick-size, /neg-risk)."""


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int
    per_seconds: float

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int) or self.requests < 1:
            raise InvalidValue("requests", self.requests, "must be a positive integer")
        if isinstance(self.per_seconds, bool) or not isinstance(self.per_seconds, (int, float)) \
                or not self.per_seconds > 0:
            raise InvalidValue("per_seconds", self.per_seconds, "must be a positive number of seconds")

    def scaled(self, factor: float) -> Limit:
        """The same window with `factor` times the requests (benchmarks shorten runs this way)."""
        return Limit(max(1, int(self.requests * factor)), self.per_seconds)


DOCUMENTED_LIMITS: dict[Family, Limit] = {
    Family.BALANCE: Limit(200, 10.0),
    Family.ORDER: Limit(3_500, 10.0),
    Family.DATA: Limit(900, 10.0),
    Family.MARKET: Limit(1_500, 10.0),
}
"""Polymarket's documented limits (balance-allowance 200 / 10 s, POST /order 3,500 / 10 s burst; the
data and market families are under the general ones)."""


class TokenBucket:
    """`limit.requests` tokens, refilled continuously over `limit.per_seconds`. Starts full."""

    def __init__(self, limit: Limit, *, now: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        self.limit = limit
        self._now = now
        self._sleep = sleep
        self._tokens = float(limit.requests)
        self._rate = limit.requests / limit.per_seconds
        self._updated = now()
        self._lock = anyio.Lock()
        self.waited = 0.0
        """Seconds spent waiting for tokens, in total (an operator figure: time lost to the limit)."""

    async def acquire(self) -> None:
        # One waiter at a time refills and takes, so requests leave in arrival order.
        async with self._lock:
            while True:
                now = self._now()
                self._tokens = min(float(self.limit.requests), self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self._rate
                self.waited += wait
                await self._sleep(wait)


class RateLimits:
    def __init__(self, limits: dict[Family, Limit] | None = None, *, now: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        chosen = {**DOCUMENTED_LIMITS, **(limits or {})}
        for family, limit in chosen.items():
            if not isinstance(family, Family) or not isinstance(limit, Limit):
                raise InvalidValue("rate_limits", {family: limit}, "must map a Family to a Limit")
        self.buckets = {family: TokenBucket(limit, now=now, sleep=sleep) for family, limit in chosen.items()}

    async def acquire(self, family: Family) -> None:
        await self.buckets[family].acquire()
