"""Issue 12 section 2 / issue 14 section 6: per-signer order limits. The adapter's buckets (ratelimit.py) on
virtual time: the worst answers first (a 429 with its Reset, headers that cannot be read, a tier endpoint that
fails, a tier that changes mid-burst), then the reservation that lets an exit verify after it holds its slot."""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from fakeclob import FakeClob
from telemetry.test_log_schema import load_schema, schema_problems

from exitguard import ExitEngine, ExitOutcome, ExitResult, InvalidValue, ManualClock, Position
from exitguard.exchange.polymarket.ratelimit import (
    MAX_BLOCK,
    SIGNER_TIERS,
    TIER_PATH,
    Family,
    Limit,
    RateLimited,
    RateLimits,
    Tier,
)
from exitguard.polymarket import PolymarketExchange, PolymarketSettings

pytestmark = pytest.mark.anyio


class VirtualTime:
    """The buckets' clock and sleep: a sleep moves the clock by exactly its length."""

    def __init__(self) -> None:
        self.clock = ManualClock(datetime(2026, 8, 10, tzinfo=UTC))
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    def limits(self, **options: Any) -> RateLimits:
        return RateLimits(now=self.clock.monotonic, sleep=self.sleep, wall=lambda: self.clock.wall().timestamp(),
                          **options)

    @property
    def unix(self) -> float:
        return self.clock.wall().timestamp()


@pytest.fixture
def time() -> VirtualTime:
    return VirtualTime()


def schema_ok(logs: Any, *events: str) -> None:
    schema = load_schema()
    for record in logs.records:
        if record["event"] in events:
            extra = {key: value for key, value in record.items() if key != "level"}
            assert schema_problems({"extra": extra, "level": record["level"]}, schema) == []


async def spend(limits: RateLimits, n: int) -> None:
    for _ in range(n):
        await limits.acquire(Family.ORDER)


# -- 429 -------------------------------------------------------------------------------------------

async def test_a_429_with_reset_stops_the_signer_bucket_until_reset(time: VirtualTime, logs: Any) -> None:
    limits = time.limits()
    headers = {"Poly-RateLimit-Remaining": "0", "Poly-RateLimit-Reset": str(int(time.unix) + 3),
               "Poly-RateLimit-Tier": "standard", "Retry-After": "1"}
    limits.observe(Family.ORDER, 429, headers)
    started = time.clock.monotonic()
    await limits.acquire(Family.ORDER)
    assert time.clock.monotonic() - started >= 3.0  # Reset, not Retry-After: the later of the two
    assert limits.rejected == 1
    (event,) = logs.named("rate_limited")
    assert (event["bucket"], event["family"], event["wait"]) == ("signer", "post-order", 3.0)
    schema_ok(logs, "rate_limited")


async def test_a_429_without_headers_empties_the_family_bucket(time: VirtualTime) -> None:
    limits = time.limits(limits={Family.BALANCE: Limit(10, 1.0)})
    limits.observe(Family.BALANCE, 429, {})
    await limits.acquire(Family.BALANCE)
    assert time.slept == [pytest.approx(0.1)]  # one token at 10/s, from empty
    assert limits.signer.tokens == 54  # the signer's bucket is untouched (Standard's 60 less the headroom)


async def test_a_429_on_an_order_without_signer_headers_is_the_ip_bucket(time: VirtualTime) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 429, {"Retry-After": "2"})
    assert limits.signer.tokens > 50
    await limits.acquire(Family.ORDER)
    assert sum(time.slept) >= 2.0


async def test_a_reset_an_hour_away_stops_the_bucket_at_most_max_block(time: VirtualTime, logs: Any) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 429, {"Poly-RateLimit-Reset": str(int(time.unix) + 3600),
                                       "Poly-RateLimit-Tier": "standard"})
    await limits.acquire(Family.ORDER)
    assert sum(time.slept) == pytest.approx(MAX_BLOCK)
    assert [e["header"] for e in logs.named("rate_limit_header_malformed")] == ["poly-ratelimit-reset"]


async def test_a_post_that_cannot_wait_for_the_reset_takes_nothing(time: VirtualTime) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 429, {"Poly-RateLimit-Reset": str(int(time.unix) + 5),
                                       "Poly-RateLimit-Remaining": "0"})
    with pytest.raises(RateLimited):
        await limits.acquire(Family.ORDER, max_wait=0.5)
    assert time.slept == [] and limits.granted[Family.ORDER] == 0


# -- headers that cannot be read ---------------------------------------------------------------------

@pytest.mark.parametrize("headers", [
    {"Poly-RateLimit-Remaining": "many"},
    {"Poly-RateLimit-Remaining": "NaN"},
    {"Poly-RateLimit-Remaining": "1e999"},
    {"Poly-RateLimit-Reset": "soon", "Poly-RateLimit-Tier": "standard"},
    {"Poly-RateLimit-Tier": "platinium"},
    {"Poly-RateLimit-Tier": ""},
    {"Poly-RateLimit-Warning": "maybe"},
])
async def test_a_header_that_cannot_be_read_is_logged_once_and_ignored(time: VirtualTime, logs: Any,
                                                                       headers: dict[str, str]) -> None:
    limits = time.limits()
    before = limits.signer.tokens
    for _ in range(3):
        limits.observe(Family.ORDER, 200, headers)
    assert limits.tier is Tier.STANDARD and limits.signer.tokens == before
    (event,) = logs.named("rate_limit_header_malformed")
    assert event["header"] in {name.lower() for name in headers}
    schema_ok(logs, "rate_limit_header_malformed")
    limits.observe(Family.ORDER, 429, headers)  # on a 429 too: the bucket stops, nothing raises
    await limits.acquire(Family.ORDER)


async def test_a_retry_after_that_cannot_be_read_is_logged_once_and_the_429_still_stops(time: VirtualTime,
                                                                                        logs: Any) -> None:
    limits = time.limits(limits={Family.BALANCE: Limit(10, 1.0)})
    for _ in range(3):
        limits.observe(Family.BALANCE, 429, {"Retry-After": "later"})
    assert [e["header"] for e in logs.named("rate_limit_header_malformed")] == ["retry-after"]
    await limits.acquire(Family.BALANCE)
    assert time.slept == [pytest.approx(0.1)]  # emptied: one token at 10/s


async def test_a_retry_after_given_as_a_date_is_read(time: VirtualTime) -> None:
    limits = time.limits(limits={Family.BALANCE: Limit(10, 1.0)})
    limits.observe(Family.BALANCE, 429, {"Retry-After": "Mon, 10 Aug 2026 00:00:04 GMT"})  # RFC 9110 allows a date
    await limits.acquire(Family.BALANCE)
    assert sum(time.slept) == pytest.approx(4.0)


@pytest.mark.parametrize("headers", [None, 42, {"Poly-RateLimit-Remaining": None}, {b"x": b"y"}])
async def test_headers_that_are_no_mapping_of_text_never_raise(time: VirtualTime, headers: Any) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 200, headers)
    limits.observe(Family.ORDER, 429, headers)
    await limits.acquire(Family.ORDER)


async def test_absent_headers_change_nothing(time: VirtualTime, logs: Any) -> None:
    limits = time.limits()
    await spend(limits, 5)
    before = limits.signer.tokens
    limits.observe(Family.ORDER, 200, {"Content-Type": "application/json"})
    limits.observe(Family.BALANCE, 200, {"Poly-RateLimit-Remaining": "0"})  # not an order reply: not the signer's
    assert limits.signer.tokens == before and logs.records == []


async def test_a_lower_remaining_drains_the_bucket_and_a_higher_one_does_not_fill_it(time: VirtualTime) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Remaining": "80"})
    assert limits.signer.tokens == SIGNER_TIERS[Tier.STANDARD].order_burst - 6  # ours: the burst less headroom
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Remaining": "2"})
    assert limits.signer.tokens == 2
    await spend(limits, 3)
    assert sum(time.slept) == pytest.approx(1 / 40)  # the third waits one token at Standard's 40/s


async def test_a_warning_drains_the_bucket_and_is_logged_once_per_change(time: VirtualTime, logs: Any) -> None:
    limits = time.limits()
    warned = {"Poly-RateLimit-Warning": "true", "Poly-RateLimit-Remaining": "0", "Poly-RateLimit-Tier": "standard"}
    calm = {"Poly-RateLimit-Remaining": "30", "Poly-RateLimit-Tier": "standard"}
    for headers in (warned, warned, warned, calm, calm, warned):
        limits.observe(Family.ORDER, 200, headers)
    assert [e["warning"] for e in logs.named("rate_limit_warning")] == [True, False, True]
    assert limits.signer.tokens <= 0
    schema_ok(logs, "rate_limit_warning")


# -- tiers --------------------------------------------------------------------------------------------

async def test_a_tier_header_resizes_the_signer_bucket_mid_burst_without_a_fresh_burst(time: VirtualTime,
                                                                                       logs: Any) -> None:
    limits = time.limits()
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Tier": "Silver"})
    assert limits.tier is Tier.SILVER and limits.signer.limit.requests == 270
    await spend(limits, 10)  # up a tier: the tokens carry over, the wider burst is earned at the new rate
    assert time.slept == [] and limits.signer.tokens == pytest.approx(44)
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Tier": "standard", "Poly-RateLimit-Remaining": "40"})
    assert limits.tier is Tier.STANDARD and limits.signer.tokens == 40
    time.clock.advance(60)
    assert limits.signer.tokens == 54  # capped at Standard's burst less headroom
    assert [(e["tier"], e["previous"], e["source"]) for e in logs.named("rate_tier_set")] == [
        ("silver", "standard", "header"), ("standard", "silver", "header")]
    schema_ok(logs, "rate_tier_set")


async def test_a_set_tier_caps_what_headers_may_raise(time: VirtualTime) -> None:
    limits = time.limits(tier=Tier.COPPER)
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Tier": "elite"})
    assert limits.tier is Tier.COPPER
    limits.observe(Family.ORDER, 200, {"Poly-RateLimit-Tier": "standard"})
    assert limits.tier is Tier.STANDARD  # lower is always believed


def test_the_documented_tiers() -> None:
    assert {t: (s.order_rate, s.order_burst) for t, s in SIGNER_TIERS.items()} == {
        Tier.STANDARD: (40, 60), Tier.COPPER: (60, 90), Tier.BRONZE: (80, 120), Tier.SILVER: (200, 300),
        Tier.GOLD: (400, 600), Tier.PLATINUM: (450, 675), Tier.DIAMOND: (525, 787), Tier.ELITE: (600, 900)}
    assert [Tier.parse(v) for v in ("GOLD", " elite ", "gold-ish", None, 3)] == [Tier.GOLD, Tier.ELITE, None, None,
                                                                               None]


async def test_an_order_takes_both_the_ip_and_the_signer_bucket(time: VirtualTime) -> None:
    limits = time.limits(limits={Family.ORDER: Limit(5, 1.0)})  # the IP bucket binds first
    await spend(limits, 6)
    assert time.slept == [pytest.approx(0.2)] and limits.signer.tokens == pytest.approx(53)  # refilled to 54 meanwhile
    limits = time.limits()  # documented IP limit 3,500 / 10 s: the signer binds
    time.slept.clear()
    await spend(limits, 55)
    assert time.slept == [pytest.approx(1 / 40)]


async def test_a_burst_is_paced_to_the_standard_tier(time: VirtualTime) -> None:
    limits = time.limits()
    granted: list[float] = []
    for _ in range(150):
        await limits.acquire(Family.ORDER)
        granted.append(time.clock.monotonic() - 1_000.0)
    # Never more than the exchange's bucket allows: at most 60 + 40 t orders by any time t.
    assert all(i + 1 <= 60 + 40 * at + 1e-9 for i, at in enumerate(granted))
    assert granted[-1] == pytest.approx((150 - 54) / 40)


# -- reservations -----------------------------------------------------------------------------------

async def test_a_reserved_slot_is_used_by_its_sell_without_a_second_token(time: VirtualTime) -> None:
    limits = time.limits(limits={Family.ORDER: Limit(2, 1.0)})
    await limits.reserve("a1")
    await limits.reserve("a1")  # idempotent: one slot per attempt
    await limits.reserve("a2")
    assert limits.granted[Family.ORDER] == 2 and time.slept == []
    await limits.acquire_order("a1", max_wait=0.0)
    await limits.acquire_order("a2", max_wait=0.0)
    assert limits.granted[Family.ORDER] == 2 and time.slept == []
    with pytest.raises(RateLimited):  # no reservation left: a new slot, and none is free
        await limits.acquire_order("a1", max_wait=0.1)


async def test_a_reservation_waits_its_turn_and_an_unused_one_expires(time: VirtualTime) -> None:
    limits = time.limits(limits={Family.ORDER: Limit(1, 1.0)}, reservation_ttl=5.0)
    await limits.reserve("a1")
    await limits.reserve("a2")
    assert time.slept == [pytest.approx(1.0)]
    time.clock.advance(3.5)
    assert limits.reserved("a1") and limits.reserved("a2")
    time.clock.advance(1.0)
    assert not limits.reserved("a1") and limits.reserved("a2")  # a1 is 5.5 s old, a2 4.5 s
    await limits.acquire_order("a1", max_wait=0.0)  # its reservation is gone: a slot of its own
    assert limits.granted[Family.ORDER] == 3


async def test_a_reserved_slot_still_waits_out_a_429(time: VirtualTime) -> None:
    limits = time.limits()
    await limits.reserve("a1")
    limits.observe(Family.ORDER, 429, {"Poly-RateLimit-Reset": str(int(time.unix) + 2),
                                       "Poly-RateLimit-Tier": "standard"})
    with pytest.raises(RateLimited):
        await limits.acquire_order("a1", max_wait=0.5)
    assert limits.reserved("a1")  # kept: the slot was paid for
    await limits.acquire_order("a1", max_wait=5.0)
    assert sum(time.slept) == pytest.approx(2.0) and limits.granted[Family.ORDER] == 1


# -- through the real client, against the fake CLOB's per-signer buckets --------------------------------

TOKEN_BASE = 71321045679252212594626385532706912750332728571942532289631379312455583992563
"""CTF token ids near a real one (small integers read as V2 position ids)."""


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        yield fake


class Virtual:
    """One virtual time for the adapter's buckets and the fake's. A sleep moves it only once every order whose
    slot was handed out has reached the fake: time stands still while requests are on the wire, as if the
    network were instant, so the fake sees each order at the moment its slot was granted."""

    def __init__(self, clob: FakeClob) -> None:
        self.clock = ManualClock(datetime(2026, 8, 10, tzinfo=UTC))
        self.clob = clob
        self.exchange: PolymarketExchange | None = None
        clob.set_signer_clock(self.clock)

    async def sleep(self, seconds: float) -> None:
        assert self.exchange is not None
        with anyio.move_on_after(2):  # real seconds; only an order that never leaves waits this out
            while self.clob.count("POST", "/order") < self.exchange.limits.granted[Family.ORDER]:
                await anyio.sleep(0.001)
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()

    def polymarket(self, **options: Any) -> PolymarketExchange:
        self.exchange = PolymarketExchange(self.clob.client(), clock=self.clock, sleep=self.sleep, **options)
        return self.exchange


def markets(clob: FakeClob, n: int) -> list[str]:
    tokens = [str(TOKEN_BASE + i) for i in range(n)]
    for token in tokens:
        clob.add_market(token)
        clob.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
        clob.set_balance(token, Decimal("10"))
    return tokens


async def burst(engine: ExitEngine, keys: list[str]) -> dict[str, ExitResult]:
    results: dict[str, ExitResult] = {}

    async def one(key: str) -> None:
        results[key] = await engine.exit(key, reason="burst", limit_price=Decimal("0.55"))

    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(one, key)
    return results


async def test_a_tier_endpoint_that_fails_keeps_standard_and_says_so(clob: FakeClob, logs: Any) -> None:
    clob.set_signer_tier("gold")
    clob.fail_next(1, 500, path=TIER_PATH)
    exchange = PolymarketExchange(clob.client())
    (token,) = markets(clob, 1)
    await exchange.warm_up(token)
    await exchange.warm_up(token)
    assert exchange.limits.tier is Tier.STANDARD
    assert clob.count("GET", TIER_PATH) == 1  # read once, even when it failed
    (event,) = logs.named("rate_tier_read_failed")
    assert event["tier"] == "standard" and "500" in event["error"]
    schema_ok(logs, "rate_tier_read_failed")
    await exchange.aclose()


@pytest.mark.parametrize("body", ["<!doctype html><html><body>Just a moment...</body></html>",
                                  {"tier": "unobtainium"}, {"rate_limit_tier": 3}, ["gold"]])
async def test_a_tier_endpoint_that_answers_no_tier_keeps_standard(clob: FakeClob, logs: Any, body: object) -> None:
    clob.set_signer_tier("gold")
    clob.fail_next(1, 200, path=TIER_PATH, body=body)  # type: ignore[arg-type]
    exchange = PolymarketExchange(clob.client())
    (token,) = markets(clob, 1)
    await exchange.warm_up(token)
    assert exchange.limits.tier is Tier.STANDARD and len(logs.named("rate_tier_read_failed")) == 1
    await exchange.aclose()


async def test_the_tier_is_read_at_warm_up_and_a_set_tier_replaces_the_read(clob: FakeClob, logs: Any) -> None:
    clob.set_signer_tier("gold")
    (token,) = markets(clob, 1)
    read = PolymarketExchange(clob.client())
    await read.warm_up(token)
    assert read.limits.tier is Tier.GOLD and read.limits.signer.limit.requests == 540
    assert [(e["tier"], e["source"]) for e in logs.named("rate_tier_set")] == [("gold", "endpoint")]
    schema_ok(logs, "rate_tier_set")
    clob.reset_requests()
    pinned = PolymarketExchange(clob.client(), rate_tier="copper")
    await pinned.warm_up(token)
    assert pinned.limits.tier is Tier.COPPER and clob.count("GET", TIER_PATH) == 0
    with pytest.raises(InvalidValue, match="rate_tier"):
        PolymarketExchange(clob.client(), rate_tier="golden")
    for exchange in (read, pinned):
        await exchange.aclose()


def test_the_tier_setting_reaches_the_adapter(clob: FakeClob) -> None:
    env = {"POLYMARKET_PRIVATE_KEY": clob.private_key, "POLYMARKET_HOST": str(clob.host),
           "POLYMARKET_RATE_TIER": "Silver"}
    exchange = PolymarketExchange.from_settings(PolymarketSettings.from_env(env))
    assert exchange.limits.tier is exchange.limits.pinned is Tier.SILVER
    with pytest.raises(InvalidValue) as refused:
        PolymarketSettings.from_env({**env, "POLYMARKET_RATE_TIER": "vip"})
    assert refused.value.field == "POLYMARKET_RATE_TIER" and "vip" in str(refused.value)


async def test_a_429_with_reset_stops_the_orders_until_reset_and_the_retries_pass(clob: FakeClob, logs: Any) -> None:
    virtual = Virtual(clob)
    exchange = virtual.polymarket()
    tokens = markets(clob, 20)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for i, token in enumerate(tokens):
            engine.track(Position(key=f"p{i}", token_id=token, shares=Decimal("10")))
            await exchange.warm_up(token)
        clob.drain_signer()  # another bot on the same signer spent the bucket: our view of it is wrong
        reset = math.ceil(virtual.clock.wall().timestamp() + 1 / 40)  # what the fake's 429 names
        first = await burst(engine, [f"p{i}" for i in range(20)])
        refused = [key for key, result in first.items() if result.outcome is not ExitOutcome.CLOSED]
        assert clob.signer_rejections >= 1 and len(refused) >= clob.signer_rejections
        # Refused by the exchange (429), or by the adapter, which stopped posting on the first 429: nothing sent.
        assert all(first[key].state == "OPEN" and ("429" in (first[key].error or "") or "nothing sent" in (
            first[key].error or "")) for key in refused)
        rejected = clob.signer_rejections
        again = await burst(engine, refused)
    assert all(result.outcome is ExitOutcome.CLOSED for result in again.values())
    assert clob.signer_rejections == rejected  # none of the retries was refused: they waited out the Reset
    assert virtual.clock.wall().timestamp() >= reset
    assert {e["bucket"] for e in logs.named("rate_limited")} == {"signer"}
    schema_ok(logs, "rate_limited")


async def test_a_tier_that_drops_mid_burst_is_followed_from_the_next_reply(clob: FakeClob) -> None:
    virtual = Virtual(clob)
    clob.set_signer_tier("silver")
    clob.set_signer_tier("standard", after_orders=30)  # a tier refresh lands in the middle of the burst
    exchange = virtual.polymarket()
    tokens = markets(clob, 100)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for i, token in enumerate(tokens):
            engine.track(Position(key=f"p{i}", token_id=token, shares=Decimal("10")))
            await exchange.warm_up(token)
        assert exchange.limits.tier is Tier.SILVER
        first = await burst(engine, [f"p{i}" for i in range(100)])
        refused = [key for key, result in first.items() if result.outcome is not ExitOutcome.CLOSED]
        # Only orders already on their way when the tier dropped: 30 at Silver, then Standard's 60.
        assert len(refused) == clob.signer_rejections <= 100 - 30 - 60
        assert exchange.limits.tier is Tier.STANDARD
        again = await burst(engine, refused)
    assert all(result.outcome is ExitOutcome.CLOSED for result in again.values())
    assert clob.signer_rejections == len(refused)
    assert clob.count("POST", "/order") == 100 + len(refused)


async def test_a_burst_of_150_exits_under_the_standard_tier_draws_no_429(clob: FakeClob, logs: Any) -> None:
    virtual = Virtual(clob)
    exchange = virtual.polymarket()
    tokens = markets(clob, 150)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for i, token in enumerate(tokens):
            engine.track(Position(key=f"p{i}", token_id=token, shares=Decimal("10")))
            await exchange.warm_up(token)
        assert exchange.limits.tier is Tier.STANDARD
        clob.reset_requests()
        started = virtual.clock.monotonic()
        results = await burst(engine, [f"p{i}" for i in range(150)])
        makespan = virtual.clock.monotonic() - started
    assert all(result.outcome is ExitOutcome.CLOSED for result in results.values())
    assert clob.signer_rejections == 0
    # Fresh permits: one balance read and one post per exit, none expired while it waited for a slot.
    assert clob.count("GET", "/balance-allowance") == clob.count("POST", "/order") == 150
    assert logs.named("exit_permit_expired") == [] and logs.named("rate_limited") == []
    bound = (150 - 60) / 40  # Standard: a burst of 60, then 40 orders/s
    headroom = (60 - exchange.limits.signer.limit.requests) / 40  # the tokens left for jitter (ratelimit.HEADROOM)
    assert bound <= makespan <= bound + headroom + 1e-9
