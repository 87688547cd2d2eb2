"""Token buckets: the shape of every rate limit the adapter keeps (exitguard.exchange.polymarket.ratelimit holds
which ones). They wait on an injectable clock, so tests drive them on virtual time, without real sleeps."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass

import anyio

from exitguard.settings import parse_count, parse_seconds


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
        self._blocked_until = -math.inf
        self._lock = anyio.Lock()
        self.waited = 0.0
        """Seconds spent waiting for tokens, in total (an operator figure: time lost to the limit)."""

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    async def acquire(self, max_wait: float | None = None) -> None:
        """Take a token, waiting for the refill if needed. With `max_wait`, raise `RateLimited` instead of
        waiting longer than that (nothing is taken)."""
        await take_together((self,), max_wait)

    def retune(self, limit: Limit) -> None:
        """Another size and rate (a tier change). The tokens carry over, capped at the new capacity: moving
        down never grants a fresh burst, moving up earns the wider one at the new rate."""
        self._refill()
        self.limit = limit
        self._rate = limit.requests / limit.per_seconds
        self._tokens = min(self._tokens, float(limit.requests))

    def drain(self, tokens: float, until: float | None = None) -> None:
        """The exchange knows better: at most `tokens` are left (it may be below 0), and with `until`
        (monotonic) none is handed out before then."""
        self._refill()
        self._tokens = min(self._tokens, tokens)
        if until is not None:
            self._blocked_until = max(self._blocked_until, until)

    def _wait(self) -> float:
        """Seconds until one token can be taken."""
        self._refill()
        blocked = max(0.0, self._blocked_until - self._now())
        return max(blocked, (1 - self._tokens) / self._rate if self._tokens < 1 else 0.0)

    def _take(self) -> None:
        self._refill()
        # A wait computed to reach one token must not turn float rounding into a second wait.
        self._tokens = max(self._tokens, 1.0) - 1

    def _refill(self) -> None:
        now = self._now()
        self._tokens = min(float(self.limit.requests), self._tokens + (now - self._updated) * self._rate)
        self._updated = now


async def take_together(buckets: tuple[TokenBucket, ...], max_wait: float | None = None) -> None:
    """One token from every bucket, taken at the same moment, or none (`RateLimited` beyond `max_wait`).

    One waiter at a time per bucket, so requests leave in arrival order. The locks are taken in the order the
    buckets are given, and every caller gives the IP bucket before the signer's: two callers never hold one
    lock each while waiting for the other's."""
    async with AsyncExitStack() as held:
        for bucket in buckets:
            await held.enter_async_context(bucket._lock)
        while True:
            wait = max(bucket._wait() for bucket in buckets)
            if wait <= _EPSILON:
                break
            if max_wait is not None and wait > max_wait:
                slowest = max(buckets, key=lambda bucket: bucket._wait())
                raise RateLimited(slowest.limit, wait)
            for bucket in buckets:
                bucket.waited += wait
            await buckets[0]._sleep(wait)
            # Waited for one token: the loop asks again, since a 429 observed meanwhile may have drained it.
            if max_wait is not None:
                max_wait = max(0.0, max_wait - wait)
        for bucket in buckets:
            bucket._take()


_EPSILON = 1e-9
"""Seconds: a wait computed to reach one token may come back this short from float rounding; it is none."""
