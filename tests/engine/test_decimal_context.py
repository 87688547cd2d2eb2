"""Issue 11, C.12: a full exit on paper gives exactly the same result under an application's hostile decimal
context (precision 4; Inexact, Rounded and FloatOperation trapped), and leaves that context untouched."""

from __future__ import annotations

import decimal
from decimal import Decimal

import anyio

from exitguard import ExitEngine, ExitResult, ManualClock, Position, RetryPolicy
from exitguard.errors import OrderKilled
from exitguard.exchange.paper import KILLED_MESSAGE, PaperExchange
from exitguard.telemetry.divergence import DivergenceDetector, DivergenceEvent


class Recorded(DivergenceDetector):
    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.events: list[DivergenceEvent] = []

    def record(self, event: DivergenceEvent) -> None:
        self.events.append(event)
        super().record(event)


def hostile_context() -> decimal.Context:
    return decimal.Context(prec=4, traps=[decimal.Inexact, decimal.Rounded, decimal.FloatOperation,
                                          decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow])


def full_exit() -> tuple[ExitResult, list[object]]:
    """Odd sizes and prices, a killed first attempt and a stepped-down retry: every piece of arithmetic."""

    async def run() -> tuple[ExitResult, list[object]]:
        clock = ManualClock()
        paper = PaperExchange(clock=clock)
        paper.set_market("tok", tick_size="0.0001", min_order_size="5")
        paper.set_balance("tok", Decimal("12345.678901"))
        paper.set_bids("tok", [(Decimal("0.5553"), Decimal("1000.5")), (Decimal("0.5551"), Decimal("20000"))])
        paper.fail_next("sell", 1, OrderKilled(KILLED_MESSAGE, status=400))
        divergence = Recorded(clock)
        retry = RetryPolicy(max_attempts=3, step_ticks=2, max_slippage=Decimal("0.0011"))
        async with ExitEngine(paper, clock=clock, retry=retry, attempt_ids=iter(["a1", "a2", "a3"]).__next__,
                              settlement_poll_interval=None, divergence=divergence) as engine:
            engine.track(Position(key="p1", token_id="tok", shares=Decimal("12000.123456")))
            result = await engine.exit("p1", reason="tp", limit_price=Decimal("0.5555"))
            events = [(e.kind, e.expected, e.actual, e.difference) for e in divergence.events]
        return result, [events, [(s.shares, s.limit_price, s.status, s.avg_price) for s in paper.sells],
                        paper.balance("tok")]

    return anyio.run(run)


def test_a_full_paper_exit_is_the_same_under_a_hostile_application_decimal_context() -> None:
    expected = full_exit()
    application = hostile_context()
    with decimal.localcontext(application):
        got = full_exit()
        assert decimal.getcontext().prec == 4
        assert not any(decimal.getcontext().flags.values())
    assert got == expected
    assert repr(got) == repr(expected)
    assert expected[0].shares_sold == Decimal("12345.67")  # the sale really happened, at the stepped-down price
    assert not any(application.flags.values())
    assert application.prec == 4 and application.traps[decimal.Inexact]
