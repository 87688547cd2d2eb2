"""Issue 12 point 4: an exit on a market that no longer trades (closed, resolved, its order book gone) ends
MARKET_CLOSED, with a log event and the hint to redeem; never NOT_FILLED, never a retry, and no later exit of the
token sends anything. On the paper exchange (`close_market`); through the real client: tests/exchange/
test_polymarket_market_closed.py."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio.lowlevel
import pytest

from exitguard import (
    ExitEngine,
    ExitOutcome,
    ManualClock,
    MarketClosed,
    OrderRejected,
    PaperExchange,
    Position,
    RetryPolicy,
)
from exitguard.states import REDEEM_HINT

pytestmark = pytest.mark.anyio

P = Decimal("0.55")
RETRIES = RetryPolicy(max_attempts=3, step_ticks=1, max_slippage=Decimal("0.05"))


def engine_of(exchange: PaperExchange, clock: ManualClock, **options: object) -> ExitEngine:
    return ExitEngine(exchange, clock=clock, settlement_poll_interval=None, **options)  # type: ignore[arg-type]


def operations(exchange: PaperExchange) -> list[str]:
    return [call.operation for call in exchange.calls]


async def warmed(logs: object, token: str) -> None:
    """Yield until the engine's warm-up of `token` has failed (and been logged)."""
    for _ in range(200):
        if any(r["token"] == token for r in logs.named("market_warm_up_failed")):  # type: ignore[attr-defined]
            return
        await anyio.lowlevel.checkpoint()
    raise AssertionError(f"the warm-up of {token} never failed")


async def let_warm_ups_run() -> None:
    """The engine's warm-ups run in its background task group: let them finish while the market still trades."""
    for _ in range(20):
        await anyio.lowlevel.checkpoint()


def assert_market_closed(result: object, logs: object) -> None:
    assert result.outcome is ExitOutcome.MARKET_CLOSED  # type: ignore[attr-defined]
    assert result.state == "OPEN" and result.shares_sold == 0  # type: ignore[attr-defined]
    assert result.error.endswith(REDEEM_HINT)  # type: ignore[attr-defined]
    [event] = logs.named("exit_market_closed")  # type: ignore[attr-defined]
    assert event["hint"] == REDEEM_HINT and event["error_type"] == "MarketClosed" and event["level"] == "WARNING"
    assert logs.named("exit_not_filled") == [] and logs.named("exit_retrying") == []  # type: ignore[attr-defined]


async def test_a_market_closed_at_warm_up_ends_market_closed_with_nothing_read_or_sent(
        exchange: PaperExchange, clock: ManualClock, logs: object) -> None:
    exchange.close_market("tok")
    async with engine_of(exchange, clock, retry=RETRIES) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await warmed(logs, "tok")

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert_market_closed(result, logs)
        assert engine.state("p1") == "OPEN"
    assert operations(exchange) == [], "a market known closed at warm-up: no rules read, no balance, no sell"
    assert exchange.balance("tok") == Decimal(10)


async def test_a_market_found_closed_by_the_attempts_rules_read_sends_nothing(
        exchange: PaperExchange, clock: ManualClock, logs: object) -> None:
    async with engine_of(exchange, clock, retry=RETRIES) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await let_warm_ups_run()
        exchange.close_market("tok")  # after the warm-up, before the exit reads the rules

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert_market_closed(result, logs)
    # The closed book ends the attempt: no sell (a cold attempt may read the balance beside the rules).
    assert "sell" not in operations(exchange) and operations(exchange).count("market_rules") == 1


async def test_a_book_that_vanishes_between_verification_and_sell_is_refused_once_with_no_retry(
        exchange: PaperExchange, clock: ManualClock, logs: object) -> None:
    async with engine_of(exchange, clock, retry=RETRIES) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await let_warm_ups_run()
        await engine.market("tok")  # the rules are known (as after a warm-up) while the market still trades
        exchange.close_market("tok")

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert_market_closed(result, logs)
        assert result.attempts == 1 and result.verified_balance == Decimal(10)
        assert engine.state("p1") == "OPEN" and engine.unresolved() == []
    assert operations(exchange).count("sell") == 1, "retries are configured, yet exactly one post"
    assert exchange.sells == [] and exchange.balance("tok") == Decimal(10)


async def test_a_second_exit_of_a_closed_market_sends_nothing(exchange: PaperExchange, clock: ManualClock,
                                                              logs: object) -> None:
    async with engine_of(exchange, clock, retry=RETRIES) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await let_warm_ups_run()
        await engine.market("tok")
        exchange.close_market("tok")
        assert (await engine.exit("p1", reason="take_profit", limit_price=P)).outcome is ExitOutcome.MARKET_CLOSED
        before = list(exchange.calls)

        again = await engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.40"))
        rules = engine.market("tok")

        assert again.outcome is ExitOutcome.MARKET_CLOSED and again.state == "OPEN"
        assert "known closed" in (again.error or "")
        with pytest.raises(MarketClosed):
            await rules
    assert exchange.calls == before, "a token known closed: nothing read, nothing sent"
    assert len(logs.named("exit_market_closed")) == 2  # type: ignore[attr-defined]


async def test_a_refusal_that_is_no_closed_market_stays_not_filled_and_marks_nothing(
        exchange: PaperExchange, clock: ManualClock, logs: object) -> None:
    """MARKET_NOT_READY ("not yet ready to process new orders") is a market not open yet: a plain refusal."""
    async with engine_of(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        exchange.fail_next("sell", error=OrderRejected("the market is not yet ready to process new orders",
                                                       status=400))
        first = await engine.exit("p1", reason="take_profit", limit_price=P)
        second = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert first.outcome is ExitOutcome.NOT_FILLED
    assert second.outcome is ExitOutcome.CLOSED
    assert logs.named("exit_market_closed") == []  # type: ignore[attr-defined]


async def test_a_closed_market_is_journaled_and_the_position_stays_open_across_a_restart(
        exchange: PaperExchange, clock: ManualClock, tmp_path: Path, logs: object) -> None:
    journal = tmp_path / "exits.journal"
    async with engine_of(exchange, clock, journal=journal) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await let_warm_ups_run()
        await engine.market("tok")
        exchange.close_market("tok")
        assert (await engine.exit("p1", reason="take_profit", limit_price=P)).outcome is ExitOutcome.MARKET_CLOSED
        triggers = [row.trigger for row in engine.journal.history("p1")]  # type: ignore[union-attr]
    assert triggers[-1] == "market_closed"
    async with engine_of(exchange, clock, journal=journal) as engine:
        # A new engine learns the market's state afresh: the rules read finds the book gone, nothing is sent.
        assert engine.state("p1") == "OPEN"
        sells = operations(exchange).count("sell")
        assert (await engine.exit("p1", reason="take_profit", limit_price=P)).outcome is ExitOutcome.MARKET_CLOSED
    assert operations(exchange).count("sell") == sells
