"""The five acceptance criteria of the original request (DESIGN.md, "E1: Pre-Exit Balance Verification")."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exitguard import DivergenceKind, ExitEngine, ExitOutcome, ManualClock, Position
from exitguard.exchange.paper import PaperExchange, SellStatus

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


class SlowBalanceExchange(PaperExchange):
    """Each balance read takes `seconds` on the manual clock: a deterministic network round trip."""

    def __init__(self, clock: ManualClock, seconds: float) -> None:
        super().__init__(clock=clock)
        self.seconds = seconds

    async def get_balance(self, token_id: str) -> object:
        self.clock.advance(self.seconds)  # type: ignore[attr-defined]
        return await super().get_balance(token_id)


async def test_every_exit_fetches_the_balance_before_any_sell(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_balance("tok2", Decimal("7"))
    exchange.set_bids("tok2", [(Decimal("0.60"), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        engine.track(Position("p2", "tok2", Decimal("7")))
        await engine.exit("p1", reason="take_profit", limit_price=P)
        await engine.exit("p2", reason="stop_loss", limit_price=P)

    for token in ("tok", "tok2"):
        operations = [call.operation for call in exchange.calls if call.token_id == token]
        assert operations.index("get_balance") < operations.index("sell")
    assert [sell.status for sell in exchange.sells] == [SellStatus.FILLED, SellStatus.FILLED]


async def test_zero_balance_cleans_up_without_selling(exchange: PaperExchange, clock: ManualClock, logs) -> None:
    exchange.set_balance("tok", Decimal("0"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert result.outcome is ExitOutcome.ALREADY_EXITED
        assert engine.state("p1") == "RECONCILED"
    assert exchange.sells == []
    assert "sell" not in [call.operation for call in exchange.calls]
    [event] = logs.named("exit_already_complete")
    assert event["key"] == "p1" and event["token"] == "tok"


async def test_balance_mismatch_warns_and_sells_the_actual_balance(exchange: PaperExchange, clock: ManualClock,
                                                                   logs) -> None:
    exchange.set_balance("tok", Decimal("8.5"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert result.outcome is ExitOutcome.CLOSED
    assert result.shares_sold == Decimal("8.5")
    assert [sell.shares for sell in exchange.sells] == [Decimal("8.5")]
    [warning] = logs.named("exit_balance_mismatch")
    assert warning["level"] == "WARNING"
    assert (warning["expected"], warning["actual"], warning["difference"]) == (Decimal("10"), Decimal("8.5"),
                                                                              Decimal("-1.5"))


async def test_mismatch_above_a_size_step_sells_the_balance_rounded_down_never_above(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_balance("tok", Decimal("4.8935") + 5)  # a fee taken in shares leaves sub-step digits
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert result.shares_sold == Decimal("9.89")
    assert result.residual_shares == Decimal("0.0035")
    assert exchange.balance("tok") == Decimal("0.0035")


async def test_verification_latency_is_tracked_per_result_and_aggregated(clock: ManualClock) -> None:
    exchange = SlowBalanceExchange(clock, seconds=0.1)
    async with ExitEngine(exchange, clock=clock) as engine:
        for index, latency in enumerate((0.1, 0.1, 0.3)):
            exchange.seconds = latency
            token = f"tok{index}"
            exchange.set_balance(token, Decimal("10"))
            exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
            engine.track(Position(f"p{index}", token, Decimal("10")))
            result = await engine.exit(f"p{index}", reason="take_profit", limit_price=P)
            assert result.verify_latency == pytest.approx(latency)

        summary = engine.metrics.verify_latency
    assert summary.count == 3
    assert summary.p50 == pytest.approx(0.1)
    assert summary.p99 == pytest.approx(0.3)
    assert summary.max == pytest.approx(0.3)


async def test_every_divergence_feeds_the_divergence_detector(clock: ManualClock) -> None:
    exchange = PaperExchange(clock=clock)
    books = {"mis": "9", "gone": "0", "dust": "2", "lost": "10"}
    for token, balance in books.items():
        exchange.set_balance(token, Decimal(balance))
        exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock) as engine:
        for token in books:
            engine.track(Position(token, token, Decimal("10")))
        await engine.exit("mis", reason="r", limit_price=P)
        await engine.exit("gone", reason="r", limit_price=P)
        await engine.exit("dust", reason="r", limit_price=P)
        exchange.lose_next_sell_response()
        await engine.exit("lost", reason="r", limit_price=P)
        await engine.reconcile("lost")

        detector = engine.divergence
    assert detector.by_kind == {
        DivergenceKind.BALANCE_MISMATCH: 1,
        DivergenceKind.ALREADY_EXITED: 1,
        DivergenceKind.DUST: 1,
        DivergenceKind.UNKNOWN_OUTCOME: 1,
        DivergenceKind.UNKNOWN_OUTCOME_RESOLVED: 1,
    }
    assert detector.total == 5
    assert detector.by_token["lost"] == 2
