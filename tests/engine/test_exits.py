"""Exit behaviour beyond the acceptance criteria: races, concurrency, retries, unknown outcomes,
cancellation, the settlement window and permit freshness."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import anyio
import pytest
from freezegun import freeze_time

from exitguard import (
    DivergenceKind,
    ExitEngine,
    ExitOutcome,
    InsufficientBalance,
    ManualClock,
    Position,
    RetryPolicy,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.states import SellPermit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


def operations(exchange: PaperExchange, name: str) -> int:
    return sum(1 for call in exchange.calls if call.operation == name)


# -- races and concurrency --------------------------------------------------------------------------

async def test_racing_exits_on_one_position_one_proceeds_the_other_is_refused_without_io(
        exchange: PaperExchange, clock: ManualClock, logs) -> None:
    results = []
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        async def exit_once() -> None:
            results.append(await engine.exit("p1", reason="take_profit", limit_price=P))

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(exit_once)

    assert sorted(result.outcome for result in results) == sorted(
        [ExitOutcome.CLOSED, ExitOutcome.IN_PROGRESS, ExitOutcome.IN_PROGRESS])
    assert len(exchange.sells) == 1
    assert operations(exchange, "get_balance") == 1
    assert len(logs.named("exit_in_progress_refused")) == 2


async def test_different_positions_exit_concurrently_up_to_the_limit(clock: ManualClock) -> None:
    class GatedExchange(PaperExchange):
        """Balance reads wait at a gate so the test sees how many exits are verifying at once."""

        def __init__(self) -> None:
            super().__init__(clock=clock)
            self.active = 0
            self.peak = 0
            self.gate = anyio.Event()

        async def get_balance(self, token_id: str) -> object:
            self.active += 1
            self.peak = max(self.peak, self.active)
            await self.gate.wait()
            self.active -= 1
            return await super().get_balance(token_id)

    exchange = GatedExchange()
    for index in range(6):
        exchange.set_balance(f"t{index}", Decimal("10"))
        exchange.set_bids(f"t{index}", [(Decimal("0.60"), Decimal("100"))])
    results = []
    async with ExitEngine(exchange, clock=clock, max_concurrent_exits=3) as engine:
        for index in range(6):
            engine.track(Position(f"p{index}", f"t{index}", Decimal("10")))

        async def exit_one(key: str) -> None:
            results.append(await engine.exit(key, reason="r", limit_price=P))

        async with anyio.create_task_group() as group:
            for index in range(6):
                group.start_soon(exit_one, f"p{index}")
            while exchange.active < 3:
                await anyio.lowlevel.checkpoint()
            for _ in range(10):
                await anyio.lowlevel.checkpoint()
            assert exchange.active == 3
            exchange.gate.set()

    assert exchange.peak == 3
    assert [result.outcome for result in results] == [ExitOutcome.CLOSED] * 6


# -- killed FOKs and retries ------------------------------------------------------------------------

async def test_killed_fok_reopens_and_the_next_exit_verifies_again(exchange: PaperExchange,
                                                                    clock: ManualClock) -> None:
    exchange.set_bids("tok", [(Decimal("0.40"), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        first = await engine.exit("p1", reason="take_profit", limit_price=P)
        assert (first.outcome, engine.state("p1")) == (ExitOutcome.NOT_FILLED, "OPEN")

        exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
        second = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert second.outcome is ExitOutcome.CLOSED
    assert operations(exchange, "get_balance") == 2
    assert [sell.status for sell in exchange.sells] == [SellStatus.KILLED, SellStatus.FILLED]


async def test_retry_steps_the_price_down_by_ticks_with_a_fresh_verification_each_time(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_bids("tok", [(Decimal("0.53"), Decimal("100"))])
    policy = RetryPolicy(max_attempts=5, step_ticks=1, max_slippage=Decimal("0.05"))
    async with ExitEngine(exchange, clock=clock, retry=policy) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="stop_loss", limit_price=P)

    assert result.outcome is ExitOutcome.CLOSED
    assert result.attempts == 3
    assert [sell.limit_price for sell in exchange.sells] == [Decimal("0.55"), Decimal("0.54"), Decimal("0.53")]
    assert operations(exchange, "get_balance") == 3


async def test_retry_never_goes_below_the_maximum_slippage(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_bids("tok", [(Decimal("0.40"), Decimal("100"))])
    policy = RetryPolicy(max_attempts=10, step_ticks=1, max_slippage=Decimal("0.02"))
    async with ExitEngine(exchange, clock=clock, retry=policy) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="stop_loss", limit_price=P)

    assert result.outcome is ExitOutcome.NOT_FILLED
    assert engine.state("p1") == "OPEN"
    assert [sell.limit_price for sell in exchange.sells] == [Decimal("0.55"), Decimal("0.54"), Decimal("0.53")]


async def test_default_policy_makes_one_attempt(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_bids("tok", [(Decimal("0.40"), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        result = await engine.exit("p1", reason="stop_loss", limit_price=P)
    assert (result.outcome, result.attempts, len(exchange.sells)) == (ExitOutcome.NOT_FILLED, 1, 1)


@pytest.mark.parametrize("error", [TransientError("rate limited", status=429),
                                   InsufficientBalance("not enough balance / allowance", status=400)],
                         ids=["transient", "insufficient_balance"])
async def test_definite_refusals_of_a_sell_reopen_the_position_without_retrying(
        exchange: PaperExchange, clock: ManualClock, error: Exception) -> None:
    exchange.fail_next("sell", error=error)  # type: ignore[arg-type]
    async with ExitEngine(exchange, clock=clock, retry=RetryPolicy(max_attempts=3)) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        result = await engine.exit("p1", reason="stop_loss", limit_price=P)
        assert (result.outcome, engine.state("p1"), result.attempts) == (ExitOutcome.NOT_FILLED, "OPEN", 1)
        kinds = engine.divergence.by_kind
    assert exchange.balance("tok") == Decimal("10")
    assert (DivergenceKind.INSUFFICIENT_BALANCE in kinds) == isinstance(error, InsufficientBalance)


# -- unknown outcomes -------------------------------------------------------------------------------

async def test_lost_response_is_never_resent_and_is_settled_by_lookup(exchange: PaperExchange,
                                                                        clock: ManualClock, logs) -> None:
    exchange.lose_next_sell_response()
    async with ExitEngine(exchange, clock=clock, retry=RetryPolicy(max_attempts=3)) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        unknown = await engine.exit("p1", reason="stop_loss", limit_price=P)
        assert (unknown.outcome, engine.state("p1"), engine.unresolved()) == (ExitOutcome.UNKNOWN, "SELLING", ["p1"])

        # Issue 11 A.3: exit() of an unresolved position looks the order up at once (it used to answer
        # IN_PROGRESS): the lost answer had filled, so it reports the fill and sends nothing.
        settled = await engine.exit("p1", reason="stop_loss", limit_price=P)

    assert (settled.outcome, settled.state, settled.shares_sold) == (ExitOutcome.CLOSED, "CLOSED", Decimal("10"))
    assert len(exchange.sells) == 1
    assert logs.named("exit_outcome_unknown")[0]["key"] == "p1"


async def test_unknown_outcome_that_never_reached_the_exchange_reopens(exchange: PaperExchange,
                                                                        clock: ManualClock) -> None:
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        # Found nowhere so soon after it left, it may still arrive: unknown until the lookup horizon has passed.
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
        clock.advance(31)

        settled = await engine.reconcile("p1")

        assert (settled.outcome, engine.state("p1")) == (ExitOutcome.NOT_FILLED, "OPEN")
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.CLOSED
    assert len(exchange.sells) == 1


async def test_unknown_outcome_with_no_order_and_no_balance_is_reconciled(exchange: PaperExchange,
                                                                           clock: ManualClock) -> None:
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        exchange.set_balance("tok", Decimal("0"))  # sold by someone else meanwhile
        clock.advance(31)  # past the lookup horizon: the order can no longer arrive

        settled = await engine.reconcile("p1")

    assert (settled.outcome, settled.state) == (ExitOutcome.ALREADY_EXITED, "RECONCILED")
    assert engine.divergence.by_kind[DivergenceKind.BALANCE_MOVED_WITHOUT_FILL] == 1


async def test_failed_lookup_keeps_the_outcome_unknown(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.lose_next_sell_response()
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        exchange.fail_next("lookup_sell")

        result = await engine.reconcile("p1")

        assert (result.outcome, engine.state("p1"), engine.unresolved()) == (ExitOutcome.UNKNOWN, "SELLING", ["p1"])


async def test_a_sell_that_times_out_is_an_unknown_outcome(clock: ManualClock) -> None:
    class TimingOutExchange(PaperExchange):
        async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # type: ignore[override]
            raise TimeoutError

    exchange = TimingOutExchange(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        result = await engine.exit("p1", reason="r", limit_price=P)
    assert (result.outcome, result.state) == (ExitOutcome.UNKNOWN, "SELLING")


async def test_cancelling_an_exit_during_the_sell_leaves_an_unknown_outcome(clock: ManualClock, logs) -> None:
    class HangingExchange(PaperExchange):
        def __init__(self) -> None:
            super().__init__(clock=clock)
            self.sell_started = anyio.Event()

        async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # type: ignore[override]
            self.sell_started.set()
            await anyio.sleep_forever()

    exchange = HangingExchange()
    exchange.set_balance("tok", Decimal("10"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.exit("p1", reason="r", limit_price=P))
            await exchange.sell_started.wait()
            group.cancel_scope.cancel()

        assert (engine.state("p1"), engine.unresolved()) == ("SELLING", ["p1"])
    assert logs.named("exit_interrupted")[0]["unresolved"] is True


async def test_cancelling_an_exit_during_verification_reopens_with_nothing_sent(clock: ManualClock) -> None:
    class HangingBalance(PaperExchange):
        def __init__(self) -> None:
            super().__init__(clock=clock)
            self.asked = anyio.Event()

        async def get_balance(self, token_id: str) -> object:
            self.asked.set()
            await anyio.sleep_forever()

    exchange = HangingBalance()
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.exit("p1", reason="r", limit_price=P))
            await exchange.asked.wait()
            group.cancel_scope.cancel()
        assert engine.state("p1") == "OPEN"
    assert exchange.sells == []


# -- settlement window and balance cache lag ----------------------------------------------------------

async def test_zero_balance_inside_the_settlement_window_is_not_taken_as_already_exited(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_balance("tok", Decimal("0"))
    position = Position("p1", "tok", Decimal("10"), last_buy_at=clock.wall() - timedelta(seconds=5))
    async with ExitEngine(exchange, clock=clock, settlement_window=timedelta(seconds=30)) as engine:
        engine.track(position)

        inside = await engine.exit("p1", reason="r", limit_price=P)
        assert (inside.outcome, engine.state("p1")) == (ExitOutcome.VERIFY_FAILED, "OPEN")
        assert operations(exchange, "refresh_balance") == 1

        clock.advance(30)
        after = await engine.exit("p1", reason="r", limit_price=P)
    assert after.outcome is ExitOutcome.ALREADY_EXITED


async def test_a_balance_cache_lagging_a_buy_is_refreshed_before_it_counts(exchange: PaperExchange,
                                                                           clock: ManualClock) -> None:
    exchange.set_balance("tok", Decimal("0"))
    exchange.lag_balance("tok", delay=None)
    exchange.set_balance("tok", Decimal("10"))  # the buy landed; the cache still says 0
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10"), last_buy_at=clock.wall()))

        result = await engine.exit("p1", reason="r", limit_price=P)

        assert engine.metrics.balance_refreshes == 1
    assert (result.outcome, result.shares_sold) == (ExitOutcome.CLOSED, Decimal("10"))


# -- permit freshness (freezegun drives the engine's system clock) ------------------------------------

async def test_a_permit_older_than_its_max_age_is_not_used(exchange: PaperExchange, logs) -> None:
    with freeze_time("2026-11-24 12:00:00", auto_tick_seconds=1.5):  # every clock read moves 1.5 s on
        exchange.clock = ManualClock()
        async with ExitEngine(exchange, permit_max_age=1.0) as engine:
            engine.track(Position("p1", "tok", Decimal("10")))
            result = await engine.exit("p1", reason="r", limit_price=P)
            state = engine.state("p1")

    assert (result.outcome, state) == (ExitOutcome.NOT_FILLED, "OPEN")
    assert exchange.sells == []
    assert logs.named("exit_permit_expired")


async def test_a_fresh_permit_under_a_frozen_clock_is_used(exchange: PaperExchange) -> None:
    with freeze_time("2026-11-24 12:00:00"):
        async with ExitEngine(exchange) as engine:
            engine.track(Position("p1", "tok", Decimal("10")))
            result = await engine.exit("p1", reason="r", limit_price=P)
    assert result.outcome is ExitOutcome.CLOSED
    assert result.verify_latency == 0


async def test_leaving_the_engine_waits_for_exits_in_flight(exchange: PaperExchange, clock: ManualClock) -> None:
    results = []
    async with anyio.create_task_group() as group:
        async with ExitEngine(exchange, clock=clock) as engine:
            engine.track(Position("p1", "tok", Decimal("10")))

            async def exit_later() -> None:
                results.append(await engine.exit("p1", reason="r", limit_price=P))

            group.start_soon(exit_later)
            await anyio.lowlevel.checkpoint()
        assert [result.outcome for result in results] == [ExitOutcome.CLOSED]


async def test_after_not_enough_balance_the_next_verification_refreshes_the_cache_first(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.lag_balance("tok", delay=None)
    exchange.set_balance("tok", Decimal("6"))  # sold elsewhere; the cache still shows 10
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        refused = await engine.exit("p1", reason="r", limit_price=P)
        assert refused.outcome is ExitOutcome.NOT_FILLED

        retried = await engine.exit("p1", reason="r", limit_price=P)

    assert (retried.outcome, retried.shares_sold) == (ExitOutcome.CLOSED, Decimal("6"))
    assert [sell.status for sell in exchange.sells] == [SellStatus.REJECTED, SellStatus.FILLED]
