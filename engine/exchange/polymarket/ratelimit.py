"""Client-side token buckets per endpoint family, so a burst of exits queues here instead of drawing
429s from the exchange (a 429 on a sell costs an attempt and a fresh verification).

Two layers limit an order, and both must let it through (docs.polymarket.com/api-reference/trading-rate-limits):
the IP-level family buckets (Cloudflare, `DOCUMENTED_LIMITS`) and, since July 2026, a per-signer order bucket
whose size is the signer's volume tier (`SIGNER_TIERS`). The exchange reports that bucket in the
`Poly-RateLimit-*` headers of its order replies; `RateLimits.observe` reads them.

The buckets themselves (exitguard.exchange.polymarket.buckets) wait on an injectable clock: tests drive them on
virtual time, without real sleeps.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from enum import StrEnum

import anyio

from exitguard.errors import TransientError
from exitguard.exchange.polymarket.buckets import Limit, RateLimited, TokenBucket, take_together
from exitguard.exchange.polymarket.secrets import mask_text
from exitguard.settings import parse_seconds
from exitguard.states import InvalidValue
from exitguard.telemetry.logs import emit

__all__ = ["DOCUMENTED_LIMITS", "SIGNER_TIERS", "Family", "Limit", "RateLimited", "RateLimits", "Tier", "TierLimit",
           "TokenBucket"]


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
    """Everything else (/version, API key derivation, the rate-limit tier)."""


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


class Tier(StrEnum):
    """A signer's volume tier, as the exchange names it (`Poly-RateLimit-Tier: standard`)."""

    STANDARD = "standard"
    COPPER = "copper"
    BRONZE = "bronze"
    SILVER = "silver"
    GOLD = "gold"
    PLATINUM = "platinum"
    DIAMOND = "diamond"
    ELITE = "elite"

    @classmethod
    def parse(cls, value: object) -> Tier | None:
        """The tier a header or setting names (any case), or None: an unknown name never widens a bucket."""
        if not isinstance(value, str):
            return None
        try:
            return cls(value.strip().lower())
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class TierLimit:
    order_rate: int
    """Orders per second the bucket refills."""
    order_burst: int
    """The bucket's capacity."""

    @property
    def limit(self) -> Limit:
        return Limit(self.order_burst, self.order_burst / self.order_rate)


SIGNER_TIERS: dict[Tier, TierLimit] = {
    Tier.STANDARD: TierLimit(40, 60),
    Tier.COPPER: TierLimit(60, 90),
    Tier.BRONZE: TierLimit(80, 120),
    Tier.SILVER: TierLimit(200, 300),
    Tier.GOLD: TierLimit(400, 600),
    Tier.PLATINUM: TierLimit(450, 675),
    Tier.DIAMOND: TierLimit(525, 787),
    Tier.ELITE: TierLimit(600, 900),
}
"""The per-signer order bucket of each tier: docs.polymarket.com/api-reference/trading-rate-limits, "Volume
tiers" (order rate and burst; as transcribed on 2026-08-05 in the polyoxide repository's
docs/specs/clob/trading-rate-limits.md; the docs page itself was only partly readable here). Tiers follow
30-day volume; Standard is the tightest and the one assumed until the exchange says otherwise."""

_RANK = {tier: rank for rank, tier in enumerate(SIGNER_TIERS)}

HEADROOM = 0.1
"""Share of the signer's burst this client leaves unused. Orders leave in slot order but reach the exchange a
balance read later, and those reads do not all take equally long: a few arrive closer together than their
slots. The exchange's bucket keeps these tokens for them: at Standard 6 tokens, 0.15 s of a burst's makespan
(bench/burst.py drew a 429 now and then with 3 on a loaded 2-core machine, none with 6)."""

MAX_BLOCK = 60.0
"""The longest a 429 may stop a bucket (seconds). A Reset further away is read as a wrong clock or header:
the bucket stops this long, and the adapter's own bounds decide whether an exit waits it out."""


TIER_PATH = "/v1/user/rate-limit-tier"
"""GET, L2: the tier of the credentials' signer (docs api-reference/account/get-rate-limit-tier). Its body's schema
is not in the docs found (tests/fakeclob/WIRE.md section 7a): an object with a string `tier`, or a bare JSON string,
is read; anything else is a failed read."""


def named_tier(answer: object) -> object:
    """What a tier endpoint's body names, as read (TIER_PATH): the `tier` of an object, else the body itself."""
    return answer.get("tier") if isinstance(answer, dict) else answer


MAX_RESERVE_WAIT = 30.0
"""Seconds `reserve` may wait for a slot before it gives up (nothing sent). The engine's `verify_timeout`, which
covers the reservation and the balance read, usually ends the wait first."""

RESERVATION_TTL = 30.0
"""Seconds a reserved order slot waits for its sell. An attempt that never sells (its verification failed, the
balance was 0) leaves its slot here; after this long it is forgotten. The token stays spent, as a conservative
pacer's would."""

REMAINING = "poly-ratelimit-remaining"
RESET = "poly-ratelimit-reset"
TIER = "poly-ratelimit-tier"
WARNING = "poly-ratelimit-warning"
RETRY_AFTER = "retry-after"
_SIGNER_HEADERS = (REMAINING, RESET, TIER, WARNING)


class RateLimits:
    """The IP-level bucket of every family and the signer's order bucket, which POST /order takes together."""

    def __init__(self, limits: dict[Family, Limit] | None = None, *, now: Callable[[], float],
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep, wall: Callable[[], float] | None = None,
                 tier: Tier | str | None = None, reservation_ttl: float = RESERVATION_TTL) -> None:
        chosen = {**DOCUMENTED_LIMITS, **(limits or {})}
        for family, limit in chosen.items():
            if not isinstance(family, Family) or not isinstance(limit, Limit):
                raise InvalidValue("rate_limits", {family: limit}, "must map a Family to a Limit")
        pinned = None if tier is None else Tier.parse(tier)
        if tier is not None and pinned is None:
            raise InvalidValue("rate_tier", tier, f"must be one of {', '.join(SIGNER_TIERS)}")
        self._now = now
        self._sleep = sleep
        self._wall = wall or _unix_now
        self.buckets = {family: TokenBucket(limit, now=now, sleep=sleep) for family, limit in chosen.items()}
        self.tier = Tier.STANDARD
        """The signer's tier the order bucket is sized for."""
        self.pinned = pinned
        """The tier the operator set (`rate_tier`, POLYMARKET_RATE_TIER): no header raises the bucket above it."""
        self.signer = TokenBucket(_paced(self.tier), now=now, sleep=sleep)
        self.reservation_ttl = parse_seconds(reservation_ttl, "reservation_ttl")
        self.granted: Counter[Family] = Counter()
        """Slots handed out per family (an operator figure; tests compare it with what the exchange received)."""
        self.rejected = 0
        """429s observed."""
        self._reserved: dict[str, float] = {}
        self._warning = False
        self._malformed: dict[str, str] = {}
        self._tier_read = False
        if pinned is not None:
            self.set_tier(pinned, "setting", announce=True)

    # -- slots -----------------------------------------------------------------------------------------

    async def acquire(self, family: Family, max_wait: float | None = None) -> None:
        if family is Family.ORDER:
            await take_together((self.buckets[family], self.signer), max_wait)
        else:
            await self.buckets[family].acquire(max_wait)
        self.granted[family] += 1

    async def reserve(self, key: str, max_wait: float | None = MAX_RESERVE_WAIT) -> None:
        """Take an order slot now (IP and signer), kept for `key` until `acquire_order(key)` or the TTL. Raises
        TransientError (nothing taken, nothing sent) when the slot comes later than `max_wait`."""
        self._expire()
        if key in self._reserved:
            return
        try:
            await self.acquire(Family.ORDER, max_wait)
        except RateLimited as err:
            raise TransientError(f"order slot for attempt {key}: {err}; nothing sent") from None
        self._reserved[key] = self._now()

    async def acquire_order(self, key: str | None, max_wait: float | None = None) -> None:
        """POST /order's slot: the one reserved for `key` if it is still held, else a new one. A reserved slot
        still waits out a 429's stop (its Reset): the exchange said no request is welcome before then."""
        self._expire()
        if key is None or self._reserved.pop(key, None) is None:
            await self.acquire(Family.ORDER, max_wait)
            return
        wait = max(0.0, *(bucket._blocked_until - self._now() for bucket in (self.buckets[Family.ORDER], self.signer)))
        if wait > 0:
            if max_wait is not None and wait > max_wait:
                self._reserved[key] = self._now()  # kept for a later try: the slot was paid for
                raise RateLimited(self.signer.limit, wait)
            await self._sleep(wait)

    def reserved(self, key: str) -> bool:
        self._expire()
        return key in self._reserved

    def _expire(self) -> None:
        if not self._reserved:
            return
        oldest = self._now() - self.reservation_ttl
        for key in [key for key, at in self._reserved.items() if at < oldest]:
            del self._reserved[key]

    # -- the signer's tier -------------------------------------------------------------------------------

    def begin_tier_read(self) -> bool:
        """Whether to read the tier endpoint now: once per adapter, never when the tier was set."""
        due = self.pinned is None and not self._tier_read
        self._tier_read = True
        return due

    def tier_read(self, answer: object) -> None:
        """The tier endpoint's answer (its body, or the error the read raised). A failed read keeps the tier in
        use (Standard, the tightest, unless a header said otherwise meanwhile)."""
        tier = None if isinstance(answer, Exception) else Tier.parse(named_tier(answer))
        if tier is not None:
            self.set_tier(tier, "endpoint", announce=True)
            return
        error = str(answer) if isinstance(answer, Exception) else f"no tier in the answer {answer!r:.80}"
        emit("rate_tier_read_failed", tier=str(self.tier), error=mask_text(error[:200]))

    def set_tier(self, tier: Tier, source: str, *, announce: bool = False) -> None:
        """Size the signer's bucket for `tier` (from the tier endpoint or a header). A pinned tier caps it.
        `announce`: log it even when it is the tier in use (a read that confirms it)."""
        if self.pinned is not None and _RANK[tier] > _RANK[self.pinned]:
            tier = self.pinned
        if tier is self.tier and not announce:
            return
        previous, self.tier = self.tier, tier
        self.signer.retune(_paced(tier))
        emit("rate_tier_set", tier=str(tier), previous=str(previous), source=source,
             order_rate=SIGNER_TIERS[tier].order_rate, order_burst=SIGNER_TIERS[tier].order_burst)

    # -- what the answers say ----------------------------------------------------------------------------

    def observe(self, family: Family, status: int | None, headers: Mapping[str, str]) -> None:
        """What one answer's status and headers teach the buckets. The transport calls it after every answer
        it receives. A header that cannot be read is logged (once per value) and ignored, never raised."""
        try:
            seen = {str(name).lower(): str(value) for name, value in headers.items()} \
                if isinstance(headers, Mapping) else {}
        except Exception:  # noqa: BLE001 - a header object we cannot even iterate teaches nothing
            seen = {}
        signer = family is Family.ORDER and any(name in seen for name in _SIGNER_HEADERS)
        remaining: float | None = None
        if signer:
            tier = seen.get(TIER)
            if tier is not None:
                parsed = Tier.parse(tier)
                if parsed is None:
                    self._malformed_header(TIER, tier)
                else:
                    self.set_tier(parsed, "header")
            if REMAINING in seen:
                remaining = self._number(REMAINING, seen[REMAINING])
                if remaining is not None:
                    self.signer.drain(remaining)
            if RESET in seen and status != 429:
                self._number(RESET, seen[RESET])  # read on a 429 only; checked here so that a bad one is seen
            self._observe_warning(seen.get(WARNING), remaining)
        if status == 429:
            self._observe_429(family, seen, signer, remaining)

    def _observe_warning(self, value: str | None, remaining: float | None) -> None:
        warning = False
        if value is not None:
            text = value.strip().lower()
            if text not in ("true", "false"):
                self._malformed_header(WARNING, value)
                return
            warning = text == "true"
        if warning:
            # Warning mode: enforcement would have refused this order, so the bucket held less than one token.
            self.signer.drain(0.0)
        if warning != self._warning:
            self._warning = warning
            emit("rate_limit_warning", warning=warning, tier=str(self.tier),
                 remaining=None if remaining is None else int(remaining))

    def _observe_429(self, family: Family, seen: dict[str, str], signer: bool, remaining: float | None) -> None:
        self.rejected += 1
        now = self._now()
        until = now
        if RESET in seen:
            reset = self._number(RESET, seen[RESET])
            if reset is not None:
                until = max(until, now + reset - self._wall())
        if RETRY_AFTER in seen:
            after = self._retry_after(seen[RETRY_AFTER])
            if after is not None:
                until = max(until, now + after)
        if until - now > MAX_BLOCK:
            self._malformed_header(RESET if RESET in seen else RETRY_AFTER, f"{until - now:.0f} s away")
            until = now + MAX_BLOCK
        bucket = self.signer if signer else self.buckets[family]
        bucket.drain(min(0.0, remaining) if remaining is not None else 0.0, until)
        emit("rate_limited", family=str(family), bucket="signer" if signer else "ip", wait=round(until - now, 3),
             tier=str(self.tier))

    def _number(self, header: str, value: str) -> float | None:
        try:
            number = float(value.strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            self._malformed_header(header, value)
            return None
        return number

    def _retry_after(self, value: str) -> float | None:
        """Seconds, or an HTTP date (RFC 9110 allows both; the docs name seconds)."""
        try:
            return float(value.strip()) if value.strip().isdigit() else \
                parsedate_to_datetime(value).timestamp() - self._wall()
        except (TypeError, ValueError, IndexError, OverflowError):
            self._malformed_header(RETRY_AFTER, value)
            return None

    def _malformed_header(self, header: str, value: str) -> None:
        shown = value[:40]
        if self._malformed.get(header) != shown:
            self._malformed[header] = shown
            emit("rate_limit_header_malformed", header=header, value=shown)


def _paced(tier: Tier) -> Limit:
    """The signer bucket this client paces to: the tier's rate, its burst less the headroom."""
    spec = SIGNER_TIERS[tier]
    burst = max(1, spec.order_burst - max(1, math.ceil(spec.order_burst * HEADROOM)))
    return Limit(burst, burst / spec.order_rate)


def _unix_now() -> float:
    return time.time()
