"""Issue 14 section 5: the exchange's balance cache is refreshed only where a lag is plausible (the settlement
window of the last buy, our own fill on the token, a sell refused for lack of balance). Anywhere else a reading
below the tracked shares is the truth (a buy pays its fee in shares) and is sold: two calls per warm exit."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from exitguard import ExitEngine, ExitOutcome, ManualClock, Position
from exitguard.errors import InsufficientBalance
from exitguard.exchange.paper import PaperExchange
from exitguard.states import AFTER_THE_FIRST_READ, Reading, RefreshReason

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


def market(clock: ManualClock, balance: str) -> PaperExchange:
    paper = PaperExchange(clock=clock)
    paper.set_balance("tok", Decimal(balance))
    paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    return paper


def engine_on(paper: PaperExchange, clock: ManualClock) -> ExitEngine:
    return ExitEngine(paper, clock=clock, settlement_poll_interval=None, settlement_window=timedelta(seconds=60))


async def exit_calls(paper: PaperExchange, engine: ExitEngine, position: Position) -> tuple[list[str], object]:
    engine.track(position)
    await engine.market("tok")  # warm: the rules are known, as after the warm-up
    start = len(paper.calls)
    result = await engine.exit(position.key, reason="tp", limit_price=P)
    return [call.operation for call in paper.calls[start:]], result


def test_the_decision_table_covers_every_reading_inside_and_outside_the_window() -> None:
    assert set(AFTER_THE_FIRST_READ) == {(reading, settling) for reading in Reading for settling in (True, False)}
    assert AFTER_THE_FIRST_READ[Reading.BELOW, False] is None
    assert AFTER_THE_FIRST_READ[Reading.BELOW, True] is RefreshReason.BELOW_EXPECTED


async def test_a_fee_paid_in_shares_is_sold_as_read_in_two_calls(clock: ManualClock) -> None:
    paper = market(clock, "9.98")  # bought 10, the fee took 0.02 in shares
    async with engine_on(paper, clock) as engine:
        calls, result = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10"),
                                                                 last_buy_at=clock.wall() - timedelta(minutes=5)))
    assert calls == ["get_balance", "sell"]
    assert (result.outcome, result.shares_sold) == (ExitOutcome.CLOSED, Decimal("9.98"))  # type: ignore[attr-defined]


async def test_a_lower_reading_with_no_known_buy_is_the_truth_too(clock: ManualClock) -> None:
    paper = market(clock, "9.98")
    async with engine_on(paper, clock) as engine:
        calls, _ = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10")))
    assert calls == ["get_balance", "sell"]


async def test_a_lower_reading_inside_the_settlement_window_is_refreshed_and_read_again(clock: ManualClock) -> None:
    paper = market(clock, "4")
    paper.lag_balance("tok", delay=None)
    async with engine_on(paper, clock) as engine:
        paper.set_balance("tok", Decimal("10"))  # the buy landed on chain; the cache still shows 4
        calls, result = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10"),
                                                                 last_buy_at=clock.wall() - timedelta(seconds=5)))
    assert calls == ["get_balance", "refresh_balance", "get_balance", "sell"]
    assert result.shares_sold == Decimal("10")  # type: ignore[attr-defined]


async def test_after_a_refusal_for_lack_of_balance_the_next_verification_refreshes_first(clock: ManualClock) -> None:
    paper = market(clock, "10")
    paper.fail_next("sell", 1, InsufficientBalance("paper: not enough balance / allowance", status=400))
    async with engine_on(paper, clock) as engine:
        calls, first = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10")))
        assert first.outcome is ExitOutcome.NOT_FILLED  # type: ignore[attr-defined]
        start = len(paper.calls)
        await engine.exit("p1", reason="tp", limit_price=P)
    assert [call.operation for call in paper.calls[start:]] == ["refresh_balance", "get_balance", "sell"]


async def test_a_stale_zero_outside_the_window_is_refreshed_before_the_position_is_given_up(clock: ManualClock) -> None:
    """The cache shows 0 for shares still held, with no buy in sight: "already exited" would end the position and
    the shares would never be sold. A zero gets a second witness (states.refresh: Reading.ZERO)."""
    paper = market(clock, "0")
    paper.lag_balance("tok", None)  # the cache keeps showing 0 until it is refreshed
    paper.set_balance("tok", Decimal("10"))
    async with engine_on(paper, clock) as engine:
        calls, result = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10")))
    assert calls == ["get_balance", "refresh_balance", "get_balance", "sell"]
    assert (result.outcome, result.shares_sold) == (ExitOutcome.CLOSED, Decimal("10"))  # type: ignore[attr-defined]


async def test_a_true_zero_outside_the_window_is_already_exited_after_the_second_witness(clock: ManualClock) -> None:
    paper = market(clock, "0")
    async with engine_on(paper, clock) as engine:
        calls, result = await exit_calls(paper, engine, Position("p1", "tok", Decimal("10")))
    assert calls == ["get_balance", "refresh_balance", "get_balance"]
    assert result.outcome is ExitOutcome.ALREADY_EXITED  # type: ignore[attr-defined]

