"""exitguard.fills on the paper exchange: notices of a push channel acted on through the paths REST answers take.

The paper exchange gets the port's optional `follow_fills` here, fed by the test: each notice arrives exactly when
the test sends it, so the races between the channel and the settlement poll are played out in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from decimal import Decimal

import anyio
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from exitguard import (
    DivergenceKind,
    ExchangeNotice,
    ExitEngine,
    ExitOutcome,
    ManualClock,
    NoticeKind,
    Position,
    SettlementStatus,
)
from exitguard.exchange.paper import PaperExchange

pytestmark = pytest.mark.anyio
PRICE = Decimal("0.55")


class PushingPaper(PaperExchange):
    """A paper exchange with a push channel whose notices the test sends."""

    def __init__(self, **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.push, self._notices = anyio.create_memory_object_stream[ExchangeNotice](math.inf)

    async def follow_fills(self, notify: Callable[[ExchangeNotice], None]) -> None:
        notices: MemoryObjectReceiveStream[ExchangeNotice] = self._notices
        async for notice in notices:
            notify(notice)


async def settle_quietly() -> None:
    for _ in range(20):  # the follower consumes on the event loop: a few turns of it
        await anyio.lowlevel.checkpoint()


async def sold(engine: ExitEngine, exchange: PushingPaper) -> tuple[str, str]:
    exchange.set_balance("tok", Decimal("10"))
    exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    exchange.defer_settlement("tok")
    engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == ["p1"] and result.order_id
    return result.order_id, f"{result.order_id}-trade"


async def test_a_failure_announced_while_a_poll_asks_is_recorded_once(clock: ManualClock, logs) -> None:  # noqa: ANN001
    exchange = PushingPaper(latency=0.01)
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        order, trade = await sold(engine, exchange)
        exchange.settle(failed=True)
        answers: dict[str, SettlementStatus] = {}

        async def poll() -> None:
            answers.update(await engine.check_settlements())

        async with anyio.create_task_group() as group:
            group.start_soon(poll)  # asks the exchange, waits its latency...
            await anyio.lowlevel.checkpoint()
            exchange.push.send_nowait(ExchangeNotice(NoticeKind.TRADE_FAILED, order_id=order, trade_id=trade,
                                                     token_id="tok", returned_shares=10_000_000))
        # ...while the announcement was recorded: the poll's own FAILED finds the sale no longer followed.
        assert answers == {"p1": SettlementStatus.FAILED}
        assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1
        assert len(logs.named("exit_settlement_failed")) == 1 and engine.unsettled() == []


async def test_a_repeated_or_foreign_announcement_changes_nothing(clock: ManualClock, logs) -> None:  # noqa: ANN001
    exchange = PushingPaper()
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        order, trade = await sold(engine, exchange)
        for notice in (ExchangeNotice(NoticeKind.TRADE_FAILED, order_id="0xsomeone-else", trade_id=trade),
                       ExchangeNotice(NoticeKind.TRADE_FAILED, order_id=order, trade_id="another-trade"),
                       ExchangeNotice(NoticeKind.TRADE_SETTLED, order_id="0xsomeone-else", trade_id=trade)):
            exchange.push.send_nowait(notice)
        await settle_quietly()
        assert engine.unsettled() == ["p1"] and not logs.named("exit_settlement_failed")
        failed = ExchangeNotice(NoticeKind.TRADE_FAILED, order_id=order.upper(), trade_id=trade, returned_shares=0)
        exchange.push.send_nowait(failed)
        exchange.push.send_nowait(failed)  # the channel said it twice
        await settle_quietly()
        assert len(logs.named("exit_settlement_failed")) == 1
        assert logs.named("exit_settlement_failed")[0]["returned"] == Decimal("10")  # size unsaid: the fill's
        assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1


async def test_the_backfill_runs_on_every_connect_and_health_follows_the_notices(clock: ManualClock,
                                                                                 logs) -> None:  # noqa: ANN001
    exchange = PushingPaper()
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        await sold(engine, exchange)
        exchange.settle(failed=True)  # while "down": nothing announced it
        exchange.push.send_nowait(ExchangeNotice(NoticeKind.DISCONNECTED))
        await settle_quietly()
        assert engine.metrics.user_channel_connected is False and engine.unsettled() == ["p1"]
        clock.advance(7)
        assert engine.metrics.user_channel_event_age() == 7
        exchange.push.send_nowait(ExchangeNotice(NoticeKind.CONNECTED))
        await settle_quietly()
        assert engine.metrics.user_channel_connected is True and engine.unsettled() == []
        assert [(r["unsettled"], r["unresolved"], r["error"]) for r in logs.named("user_channel_backfill")] == [
            (1, 0, None)]
        assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1
