"""Tests of a bot that embeds exitguard, with the fixtures of exitguard's pytest plugin."""

from datetime import timedelta
from decimal import Decimal

import pytest

from exitguard import ExitOutcome, Position

pytestmark = pytest.mark.anyio  # exit_engine is an async fixture: anyio's pytest plugin runs it


@pytest.fixture
def market(paper_exchange):
    """One token on the paper exchange: 9.5 shares held (a buy fee taken in shares), bids at 0.60."""
    paper_exchange.set_balance("tok", Decimal("9.5"))
    paper_exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    return paper_exchange


async def test_take_profit_sells_what_the_exchange_holds(market, exit_engine):
    exit_engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

    result = await exit_engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))

    assert result.outcome is ExitOutcome.CLOSED
    assert result.shares_sold == Decimal("9.5")  # the verified balance, not the 10 the bot believed
    assert [sell.shares for sell in market.sells] == [Decimal("9.5")]


async def test_a_killed_order_sells_nothing_and_leaves_the_position_open(market, exit_engine, paper_faults):
    exit_engine.track(Position(key="p1", token_id="tok", shares=Decimal("9.5")))
    paper_faults.kill_next_sell()

    result = await exit_engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))

    assert (result.outcome, exit_engine.state("p1")) == (ExitOutcome.NOT_FILLED, "OPEN")
    assert market.balance("tok") == Decimal("9.5")


async def test_a_lost_answer_is_settled_by_lookup_never_resent(market, exit_engine, paper_faults):
    exit_engine.track(Position(key="p1", token_id="tok", shares=Decimal("9.5")))
    paper_faults.lose_next_sell_response()

    unknown = await exit_engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))
    settled = await exit_engine.reconcile("p1")

    assert unknown.outcome is ExitOutcome.UNKNOWN
    assert settled.outcome is ExitOutcome.CLOSED
    assert len(market.sells) == 1  # the sell executed once and was never sent again


async def test_a_zero_balance_right_after_a_buy_is_not_taken_as_exited(paper_exchange, exit_engine,
                                                                        exitguard_clock):
    paper_exchange.set_balance("tok", Decimal("0"))  # the exchange's balance cache has not seen the buy
    exit_engine.track(Position(key="p1", token_id="tok", shares=Decimal("10"),
                               last_buy_at=exitguard_clock.wall()))

    inside = await exit_engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))
    exitguard_clock.advance(exit_engine.settlement_window / timedelta(seconds=1))
    after = await exit_engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))

    assert inside.outcome is ExitOutcome.VERIFY_FAILED
    assert after.outcome is ExitOutcome.ALREADY_EXITED


@pytest.mark.exitguard_engine(permit_max_age=1.0)
async def test_a_stale_verification_sends_nothing(market, exit_engine, exitguard_clock):
    exit_engine.track(Position(key="p1", token_id="tok", shares=Decimal("9.5")))

    with exitguard_clock.ticking(1.5):  # every clock reading is 1.5 s after the one before
        result = await exit_engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))

    assert result.outcome is ExitOutcome.NOT_FILLED
    assert market.sells == []
