"""The Polymarket adapter through the real py-clob-client-v2, over loopback HTTP, against the fake CLOB."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import pytest
from fakeclob import FakeClob

from exitguard import DivergenceKind, ExitEngine, ExitOutcome, ManualClock, Position, SettlementStatus
from exitguard.exchange.polymarket.ratelimit import DOCUMENTED_LIMITS, Family, Limit, RateLimits
from exitguard.polymarket import PolymarketExchange

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
OTHER = "52114319501245915516055106046884209969926127482827954674443846427813813222426"


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        for token in (TOKEN, OTHER):
            fake.stock(token)
        yield fake


@pytest.fixture
def exchange(clob: FakeClob) -> PolymarketExchange:
    return PolymarketExchange(clob.client(), call_timeout=5.0)


@pytest.fixture
async def engine(exchange: PolymarketExchange) -> AsyncIterator[ExitEngine]:
    async with ExitEngine(exchange, settlement_poll_interval=None) as running:
        yield running


async def tracked(engine: ExitEngine, exchange: PolymarketExchange, key: str = "p1", token: str = TOKEN,
                  shares: str = "10", **extra: object) -> None:
    engine.track(Position(key=key, token_id=token, shares=Decimal(shares), **extra))  # type: ignore[arg-type]
    await exchange.warm_up(token)  # joins the background warm-up the engine started


def exit_requests(clob: FakeClob) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in clob.requests]


def posted_maker_amounts(clob: FakeClob) -> list[str]:
    return [body["order"]["makerAmount"] for body in clob.posted_orders if isinstance(body, dict)]


pytestmark = pytest.mark.anyio


# -- the original request: balance matches, mismatches, is zero ------------------------------------

async def test_balance_matches_sells_exactly_it_in_two_round_trips(clob: FakeClob, exchange: PolymarketExchange,
                                                                   engine: ExitEngine, logs) -> None:  # noqa: ANN001
    await tracked(engine, exchange)
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("10")
    assert exit_requests(clob) == [("GET", "/balance-allowance"), ("POST", "/order")]
    assert posted_maker_amounts(clob) == ["10000000"]
    assert clob.chain_balance(TOKEN) == 0
    assert result.order_id in clob.orders


async def test_balance_mismatch_sells_the_actual_balance_exactly(clob: FakeClob, exchange: PolymarketExchange,
                                                                 engine: ExitEngine, logs) -> None:  # noqa: ANN001
    clob.add_market(TOKEN, tick_size="0.01", min_order_size="1")
    clob.set_balance(TOKEN, Decimal("4.35"))
    engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("5")))
    result = await engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))
    # 4.35 in the client's float builder would have been signed as 4.34.
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("4.35")
    assert posted_maker_amounts(clob) == ["4350000"]
    mismatch = logs.named("exit_balance_mismatch")[0]
    assert (mismatch["expected"], mismatch["actual"], mismatch["difference"]) == (
        Decimal("5"), Decimal("4.35"), Decimal("-0.65"))
    assert engine.divergence.by_kind[DivergenceKind.BALANCE_MISMATCH] == 1


async def test_balance_zero_cleans_up_without_any_order(clob: FakeClob, exchange: PolymarketExchange,
                                                        engine: ExitEngine, logs) -> None:  # noqa: ANN001
    clob.set_balance(TOKEN, Decimal("0"))
    await tracked(engine, exchange)
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.ALREADY_EXITED and engine.state("p1") == "RECONCILED"
    # A zero ends the position without a sale: the cache is refreshed and read again before it is believed, even
    # outside the settlement window (states.refresh: Reading.ZERO). A reading below but above zero is sold as read.
    assert exit_requests(clob) == [("GET", "/balance-allowance"), ("GET", "/balance-allowance/update"),
                                   ("GET", "/balance-allowance")]
    assert clob.posted_orders == [] and logs.named("exit_already_complete")


async def test_balance_lagging_a_fresh_buy_is_refreshed_not_taken_for_an_exit(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    clob.set_balance(TOKEN, Decimal("0"))
    clob.credit(TOKEN, Decimal("10"))  # on chain, not yet in the exchange's cache
    assert clob.cached_balance(TOKEN) == 0
    await tracked(engine, exchange, last_buy_at=datetime.now(UTC))
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("10")
    assert engine.metrics.balance_refreshes == 1


# -- answers from POST /order ----------------------------------------------------------------------

async def test_killed_fok_leaves_the_position_open_and_sold_nothing(clob: FakeClob, exchange: PolymarketExchange,
                                                                    engine: ExitEngine) -> None:
    clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("3"))])
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.NOT_FILLED and engine.state("p1") == "OPEN"
    assert "fully filled" in (result.error or "") and clob.chain_balance(TOKEN) == 10


@pytest.mark.parametrize(("status", "body", "fragment"), [
    (429, None, "429"),
    (425, None, "425"),
    (503, None, "503"),
    (400, {"error": "not enough balance / allowance: the balance is not enough -> balance: 0, order amount: 10000000"},
     "not enough balance"),
])
async def test_definite_refusals_are_not_filled_and_never_reposted(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine, status: int, body: object,
        fragment: str) -> None:
    await tracked(engine, exchange)
    clob.fail_next(1, status, path="/order", body=body)  # type: ignore[arg-type]
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.NOT_FILLED and engine.state("p1") == "OPEN"
    assert fragment in (result.error or "")
    assert clob.count("POST", "/order") == 1
    again = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert again.outcome is ExitOutcome.CLOSED and clob.count("POST", "/order") == 2


async def test_not_enough_balance_is_a_divergence_and_refreshes_before_the_next_read(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    clob.fail_next(1, 400, path="/order", body={"error": "not enough balance / allowance"})
    await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert engine.divergence.by_kind[DivergenceKind.INSUFFICIENT_BALANCE] == 1
    clob.reset_requests()
    await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert exit_requests(clob)[0] == ("GET", "/balance-allowance/update")


async def test_a_tick_size_change_is_rejected_and_the_rules_looked_up_again(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    clob.add_market(TOKEN, tick_size="0.1", min_order_size="5")
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.NOT_FILLED and "tick size" in (result.error or "")
    assert (await exchange.market_rules(TOKEN)).tick_size == Decimal("0.1")


async def test_a_raised_minimum_size_is_rejected_with_the_exchanges_words(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    clob.add_market(TOKEN, tick_size="0.01", min_order_size="15")
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.NOT_FILLED and "minimum" in (result.error or "")
    assert clob.chain_balance(TOKEN) == 10


@pytest.mark.parametrize(("status", "body"), [
    (500, {"error": "could not run the execution"}),
    (502, "Bad Gateway"),
    (400, {"error": "order 0xabc is invalid. Duplicated."}),
])
async def test_answers_that_may_hide_a_fill_are_unknown_and_settled_by_lookup(
        clob: FakeClob, exchange: PolymarketExchange, status: int, body: object) -> None:
    clock = ManualClock(datetime.now(UTC))
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        await tracked(engine, exchange)
        clob.fail_next(1, status, path="/order", body=body)  # type: ignore[arg-type]
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.UNKNOWN and engine.unresolved() == ["p1"]
        assert clob.count("POST", "/order") == 1
        # The injected answer came before execution: no order and no trade. So soon after it left, that
        # proves nothing (it may still arrive); past the lookup horizon it does, and the shares are still there.
        early = await engine.reconcile("p1")
        assert early.outcome is ExitOutcome.UNKNOWN and engine.state("p1") == "SELLING"
        clock.advance(31)
        settled = await engine.reconcile("p1")
        assert settled.outcome is ExitOutcome.NOT_FILLED and engine.state("p1") == "OPEN"
        assert clob.count("POST", "/order") == 1


async def test_a_lost_response_is_never_reposted_and_the_lookup_finds_the_fill(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    clob.lose_next_response("/order")
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.UNKNOWN
    assert clob.count("POST", "/order") == 1 and clob.chain_balance(TOKEN) == 0
    # exit() of the unknown outcome looks the order up at once (issue 11 A.3) and never posts again.
    settled = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert settled.outcome is ExitOutcome.CLOSED and engine.state("p1") == "CLOSED"
    assert settled.order_id in clob.orders and clob.count("POST", "/order") == 1


async def test_a_post_that_outlives_the_deadline_is_unknown(clob: FakeClob) -> None:
    exchange = PolymarketExchange(clob.client(), call_timeout=0.2)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        await tracked(engine, exchange)
        clob.latency = 0.5
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.VERIFY_FAILED  # the balance read timed out: nothing sent
        assert clob.count("POST", "/order") == 0
    exchange = PolymarketExchange(clob.client(), call_timeout=0.2)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        clob.latency = 0.0
        await tracked(engine, exchange, key="p2", token=OTHER)
        original = exchange.transport.request

        async def slow_post(method: str, path: str, **options: Any) -> object:  # the post alone gets no answer in time
            clob.latency = 0.5 if path == "/order" else 0.0
            try:
                return await original(method, path, **options)
            finally:
                clob.latency = 0.0

        exchange.transport.request = slow_post  # type: ignore[method-assign]
        result = await engine.exit("p2", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.UNKNOWN and "may have executed" in (result.error or "")
        assert clob.count("POST", "/order") == 1


# -- settlement on chain ---------------------------------------------------------------------------

async def test_a_matched_fill_is_followed_until_confirmed(clob: FakeClob, exchange: PolymarketExchange,
                                                          engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == ["p1"]
    assert await engine.check_settlements() == {"p1": SettlementStatus.PENDING}
    clob.settle_trades("MINED")
    assert await engine.check_settlements() == {"p1": SettlementStatus.SETTLED}
    assert engine.unsettled() == []
    engine.forget("p1")


async def test_a_failed_settlement_is_caught_and_the_returned_shares_exited(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine, logs) -> None:  # noqa: ANN001
    await tracked(engine, exchange)
    await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    clob.settle_trades("FAILED")
    assert clob.chain_balance(TOKEN) == 10  # the shares came back
    assert await engine.check_settlements() == {"p1": SettlementStatus.FAILED}
    assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1
    failed = logs.named("exit_settlement_failed")[0]
    returned = failed["returned_position"]
    assert failed["returned"] == Decimal("10") and engine.state(returned) == "OPEN"
    clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
    again = await engine.exit(returned, reason="settlement_failed", limit_price=Decimal("0.55"))
    assert again.outcome is ExitOutcome.CLOSED and again.shares_sold == Decimal("10")
    assert clob.chain_balance(TOKEN) == 0


async def test_instant_settlement_needs_no_follow_up(clob: FakeClob, exchange: PolymarketExchange,
                                                     engine: ExitEngine) -> None:
    clob.settlement = "instant"
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == []


# -- warm-up ---------------------------------------------------------------------------------------

async def test_warm_up_happens_at_track_and_a_failed_one_only_costs_the_first_exit(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine, logs) -> None:  # noqa: ANN001
    clob.fail_next(1, 503, path="/book")
    engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
    for _ in range(200):
        if logs.named("market_warm_up_failed"):
            break
        await anyio.sleep(0.005)
    assert logs.named("market_warm_up_failed")
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED
    # The cold path: the market and order version looked up on the exit's own time, beside the balance read
    # (issue 14: the rules and the balance are read in parallel), and the post only after all of them.
    # The order version was read beside the failed warm-up's book (the adapter's first market), and is not
    # asked again.
    requests = exit_requests(clob)
    assert sorted(requests[:-1]) == [("GET", "/balance-allowance"), ("GET", "/book")]
    assert requests[-1] == ("POST", "/order")


# -- rate limits -----------------------------------------------------------------------------------

async def test_a_burst_of_exits_stays_inside_every_rate_limit(clob: FakeClob) -> None:
    virtual = ManualClock()
    granted: list[tuple[Family, float]] = []

    async def virtual_sleep(seconds: float) -> None:
        virtual.advance(seconds)
        await anyio.lowlevel.checkpoint()

    limits = {Family.BALANCE: Limit(4, 1.0), Family.ORDER: Limit(3, 1.0), Family.BALANCE_UPDATE: Limit(2, 1.0)}
    # Posts may wait here as long as the buckets make them: this test is about the buckets themselves.
    exchange = PolymarketExchange(clob.client(), rate_limits=limits, clock=virtual, sleep=virtual_sleep,
                                  max_order_wait=60.0)
    original = exchange.limits.acquire

    async def recording(family: Family, max_wait: float | None = None) -> None:
        await original(family, max_wait)
        granted.append((family, virtual.monotonic()))

    exchange.limits.acquire = recording  # type: ignore[method-assign]
    tokens = [f"{TOKEN[:-3]}{900 + i}" for i in range(12)]  # CTF token ids (small integers read as V2 ids)
    for token in tokens:
        clob.add_market(token)
        clob.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
        clob.set_balance(token, Decimal("10"))
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for i, token in enumerate(tokens):
            await tracked(engine, exchange, key=f"p{i}", token=token)
        clob.reset_requests()
        results: list[ExitOutcome] = []

        async def one(key: str) -> None:
            results.append((await engine.exit(key, reason="burst", limit_price=Decimal("0.55"))).outcome)

        async with anyio.create_task_group() as tg:
            for i in range(len(tokens)):
                tg.start_soon(one, f"p{i}")
    assert results == [ExitOutcome.CLOSED] * len(tokens)
    for family, limit in limits.items():
        times = [at for f, at in granted if f is family]
        for i, start in enumerate(times):
            assert sum(1 for t in times[i:] if t < start + limit.per_seconds) <= 2 * limit.requests
        assert all(b - a >= 0 for a, b in itertools.pairwise(times))
    # Every request the exchange saw went through its bucket.
    assert clob.count("GET", "/balance-allowance") == sum(1 for f, _ in granted
                                                          if f in (Family.BALANCE, Family.BALANCE_UPDATE))
    assert clob.count("POST", "/order") == sum(1 for f, _ in granted if f is Family.ORDER) == len(tokens)
    burst = [at for f, at in granted if f is Family.BALANCE]
    assert burst[-1] - burst[0] >= (len(tokens) - limits[Family.BALANCE].requests) / 4 - 1e-6


def test_documented_limits_are_the_defaults() -> None:
    limits = RateLimits(now=lambda: 0.0)
    assert limits.buckets[Family.BALANCE].limit == DOCUMENTED_LIMITS[Family.BALANCE] == Limit(200, 10.0)
    assert limits.buckets[Family.ORDER].limit == Limit(3_500, 10.0)


# -- secrets ---------------------------------------------------------------------------------------

async def test_secrets_never_reach_reprs_logs_or_errors(clob: FakeClob, exchange: PolymarketExchange,
                                                        engine: ExitEngine, logs) -> None:  # noqa: ANN001
    await tracked(engine, exchange)
    clob.fail_next(1, 500, path="/order", body={"error": "boom"})
    result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    secrets = [clob.private_key, clob.private_key[2:], clob.creds.api_secret, clob.creds.api_passphrase]
    texts = [repr(exchange), str(exchange), repr(result), str(result.error)] + [repr(r) for r in logs.records]
    for text in texts:
        for secret in secrets:
            assert secret not in text


async def test_a_post_that_would_wait_too_long_for_the_order_limit_sends_nothing(clob: FakeClob) -> None:
    virtual = ManualClock()

    async def virtual_sleep(seconds: float) -> None:
        virtual.advance(seconds)
        await anyio.lowlevel.checkpoint()

    exchange = PolymarketExchange(clob.client(), rate_limits={Family.ORDER: Limit(1, 60.0)}, clock=virtual,
                                  sleep=virtual_sleep, max_order_wait=0.5)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        await tracked(engine, exchange)
        await tracked(engine, exchange, key="p2", token=OTHER)
        first = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        second = await engine.exit("p2", reason="take_profit", limit_price=Decimal("0.55"))
    assert first.outcome is ExitOutcome.CLOSED
    # Issue 12: the slot is reserved before the balance is read (reserve_sell), so the attempt that cannot get one
    # fails its verification, with nothing read and nothing sent (it was NOT_FILLED from inside `sell` before).
    assert second.outcome is ExitOutcome.VERIFY_FAILED and "nothing sent" in (second.error or "")
    assert clob.count("POST", "/order") == 1 and engine.state("p2") == "OPEN"
    assert clob.count("GET", "/balance-allowance") == 1
