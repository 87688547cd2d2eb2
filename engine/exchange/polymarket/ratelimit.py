"""Client-side token buckets per endpoint family, so a burst of exits queues here instead of drawing
429s from the exchange (a 429 on a sell costs an attempt and a fresh verification).

The buckets wait on an injectable clock: tests drive them on virtual time, without real sleeps.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import anyio

from exitguard.settings import parse_count, parse_seconds
from exitguard.states import InvalidValue


class Family(StrEnum):
    BALANCE = "balance-allowance"
    """GET /balance-allowance."""
    BALANCE_UPDATE = "balance-allowance-update"
    """GET /balance-allowance/update (the cache refresh)."""
    ORDER = "post-order"
    """POST /order."""
    ORDER_LOOKUP = "order-lookup"
    """GET /data/order/{id}."""
    TRADES = "trades"
    """GET /data/trades."""
    BOOK = "book"
    """GET /book (warm-up: tick size, minimum size, neg-risk)."""
    GENERAL = "general"
    """Everything else (/version, API key derivation)."""


@dataclass(frozen=True, slots=True)
class Limit:
    requests: int
    per_seconds: float

    def __post_init__(self) -> None:
        parse_count(self.requests, "requests")
        parse_seconds(self.per_seconds, "per_seconds")

    def scaled(self, factor: float) -> Limit:
        """The same window with `factor` times the requests (benchmarks shorten runs this way)."""
        return Limit(max(1, int(self.requests * factor)), self.per_seconds)


DOCUMENTED_LIMITS: dict[Family, Limit] = {
    Family.BALANCE: Limit(200, 10.0),
    Family.BALANCE_UPDATE: Limit(50, 10.0),
    Family.ORDER: Limit(3_500, 10.0),
    Family.ORDER_LOOKUP: Limit(900, 10.0),
    Family.TRADES: Limit(500, 10.0),
    Family.BOOK: Limit(1_500, 10.0),
    Family.GENERAL: Limit(9_000, 10.0),
}
"""Polymarket's documented limits (docs.polymarket.com, API reference, rate limits; see
tests/fakeclob/WIRE.md section 7). POST /order is the 10 s burst figure."""


class RateLimited(Exception):
    """The next token comes later than the caller can wait."""

    def __init__(self, limit: Limit, wait: float) -> None:
        self.wait = wait
        super().__init__(f"rate limit {limit.requests} / {limit.per_seconds:g} s: next slot in {wait:.3f} s")


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

    async def acquire(self, max_wait: float | None = None) -> None:
        """Take a token, waiting for the refill if needed. With `max_wait`, raise `RateLimited` instead of
        waiting longer than that (nothing is taken)."""
        # One waiter at a time refills and takes, so requests leave in arrival order.
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                wait = (1 - self._tokens) / self._rate
                if max_wait is not None and wait > max_wait:
                    raise RateLimited(self.limit, wait)
                self.waited += wait
                await self._sleep(wait)
                self._refill()
                # The wait was computed to reach one token; float rounding must not turn it into a loop.
                self._tokens = max(self._tokens, 1.0)
            self._tokens -= 1

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(float(self.limit.requests), self._tokens + (now - self._updated) * self._rate)
        self._updated = now


class RateLimits:
    def __init__(self, limits: dict[Family, Limit] | None = None, *, now: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep) -> None:
        chosen = {**DOCUMENTED_LIMITS, **(limits or {})}
        for family, limit in chosen.items():
            if not isinstance(family, Family) or not isinstance(limit, Limit):
                raise InvalidValue("rate_limits", {family: limit}, "must map a Family to a Limit")
        self.buckets = {family: TokenBucket(limit, now=now, sleep=sleep) for family, limit in chosen.items()}

    async def acquire(self, family: Family, max_wait: float | None = None) -> None:
        await self.buckets[family].acquire(max_wait)

    def observe(self, family: Family, status: int | None, headers: Mapping[str, str]) -> None:
        """What one answer's status and headers teach the buckets (`Poly-RateLimit-*`, a 429). The transport
        calls it after every answer it receives; reading the headers is issue 12's per-signer work."""
