"""Paper settlement: fills matched on the book that settle later, or fail and hand the shares back."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exitguard import DivergenceKind, ExitEngine, ExitOutcome, ManualClock, Position, SettlementStatus
from exitguard.errors import TransientError
from exitguard.exchange.paper import PaperExchange

pytestmark = pytest.mark.anyio
PRICE = Decimal("0.55")


async def test_a_deferred_fill_is_followed_until_it_settles(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.defer_settlement("tok")
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == ["p1"]
        assert await engine.check_settlements() == {"p1": SettlementStatus.PENDING}
        assert exchange.settle() == [result.order_id]
        assert await engine.check_settlements() == {"p1": SettlementStatus.SETTLED}
        engine.forget("p1")


async def test_a_failed_settlement_returns_the_shares_as_a_new_position(exchange: PaperExchange,
                                                                        clock: ManualClock, logs) -> None:  # noqa: ANN001
    exchange.defer_settlement("tok")
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        exchange.settle(failed=True)
        assert exchange.balance("tok") == Decimal("10")
        assert await engine.check_settlements() == {"p1": SettlementStatus.FAILED}
        assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1
        returned = logs.named("exit_settlement_failed")[0]["returned_position"]
        again = await engine.exit(returned, reason="settlement_failed", limit_price=PRICE)
        assert again.outcome is ExitOutcome.CLOSED and exchange.balance("tok") == 0


async def test_a_failed_settlement_check_is_asked_again(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.defer_settlement("tok")
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        exchange.settle()
        exchange.fail_next("settlement", error=TransientError("trades lookup down"))
        assert await engine.check_settlements() == {}
        assert engine.unsettled() == ["p1"]
        assert await engine.check_settlements() == {"p1": SettlementStatus.SETTLED}
