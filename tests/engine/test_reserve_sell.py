"""Issue 12/14: the engine takes the sell's rate-limit slot (`reserve_sell`, optional on the port) when an attempt
starts, before the balance is read, so a wait for the slot never ages a permit. Without it nothing changes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exitguard import ExitEngine, ExitOutcome, ManualClock, Position, RetryPolicy, TransientError
from exitguard.exchange.paper import PaperExchange
from exitguard.states import MarketRules, SellPermit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


class ReservingExchange(PaperExchange):
    """The paper exchange with a `reserve_sell`, recording the order of the engine's calls."""

    def __init__(self, clock: ManualClock, fail_reserve: Exception | None = None) -> None:
        super().__init__(clock=clock)
        self.order: list[str] = []
        self.reserved: list[str] = []
        self.fail_reserve = fail_reserve

    async def reserve_sell(self, attempt_id: str) -> None:
        self.order.append("reserve_sell")
        self.reserved.append(attempt_id)
        if self.fail_reserve is not None:
            raise self.fail_reserve

    async def get_balance(self, token_id: str) -> object:
        self.order.append("get_balance")
        return await super().get_balance(token_id)

    async def market_rules(self, token_id: str) -> MarketRules:
        self.order.append("market_rules")
        return await super().market_rules(token_id)

    async def sell(self, permit: SellPermit, limit_price: Decimal, **kwargs):  # noqa: ANN003, ANN201
        self.order.append(f"sell:{permit.attempt_id}")
        return await super().sell(permit, limit_price, **kwargs)


def _exchange(clock: ManualClock, fail_reserve: Exception | None = None) -> ReservingExchange:
    paper = ReservingExchange(clock, fail_reserve)
    paper.set_balance("tok", Decimal("10"))
    paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    return paper


async def test_a_failed_reservation_is_a_failed_verification_and_nothing_is_read_or_sent(clock: ManualClock) -> None:
    paper = _exchange(clock, TransientError("rate limiter unavailable"))
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="tp", limit_price=P)

        assert (result.outcome, result.state) == (ExitOutcome.VERIFY_FAILED, "OPEN")
        assert "rate limiter unavailable" in (result.error or "")
    assert "get_balance" not in paper.order and paper.sells == []
    assert paper.balance("tok") == Decimal("10")


async def test_the_slot_is_reserved_for_the_attempt_before_the_balance_is_read(clock: ManualClock) -> None:
    paper = _exchange(clock)
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None,
                          attempt_ids=iter(["a1", "a2"]).__next__) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="tp", limit_price=P)

    assert result.outcome is ExitOutcome.CLOSED
    assert paper.reserved == ["a1"]
    assert paper.order.index("reserve_sell") < paper.order.index("get_balance") < paper.order.index("sell:a1")


async def test_each_retry_reserves_its_own_attempt_before_its_balance(clock: ManualClock) -> None:
    paper = _exchange(clock)
    paper.set_bids("tok", [(Decimal("0.54"), Decimal("100"))])  # the first FOK at 0.55 is killed
    retry = RetryPolicy(max_attempts=2, step_ticks=1, max_slippage=Decimal("0.01"))
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None, retry=retry,
                          attempt_ids=iter(["a1", "a2", "a3"]).__next__) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="tp", limit_price=P)

    assert result.outcome is ExitOutcome.CLOSED and paper.reserved == ["a1", "a2"]
    # Each attempt: its reservation, then its balance, then its sell.
    attempts = [call for call in paper.order if call != "market_rules"]
    assert attempts == ["reserve_sell", "get_balance", "sell:a1", "reserve_sell", "get_balance", "sell:a2"]


async def test_an_exchange_without_reserve_sell_exits_as_before(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance("tok", Decimal("10"))
    paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    assert not hasattr(paper, "reserve_sell")
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.CLOSED
