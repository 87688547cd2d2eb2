"""Issue 13 §3: the market's rules for a bot (`engine.market`, `round_to_tick`), an off-tick price refused as bad
input, and the kill switch (`pause` / `resume`)."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest

from exitguard import (
    ExitEngine,
    ExitOutcome,
    InvalidValue,
    ManualClock,
    MarketRules,
    PaperExchange,
    Position,
    RetryPolicy,
    SellPermit,
)
from exitguard.telemetry.prometheus import EngineCollector

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


def engine_of(exchange: PaperExchange, clock: ManualClock, **options: object) -> ExitEngine:
    return ExitEngine(exchange, clock=clock, settlement_poll_interval=None, **options)  # type: ignore[arg-type]


# -- engine.market and round_to_tick ------------------------------------------------------------------

async def test_market_returns_the_rules_fetched_once_then_cached(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_market("tok", tick_size=Decimal("0.001"), min_order_size=Decimal("15"))
    async with engine_of(exchange, clock) as engine:
        first = await engine.market("tok")
        again = await engine.market("tok")

    assert (first.tick_size, first.min_order_shares, first.min_order_size) == (Decimal("0.001"), Decimal("15"),
                                                                               15_000_000)
    assert again is first
    assert [call.operation for call in exchange.calls] == ["market_rules"]


async def test_market_refuses_an_empty_token_before_any_io(exchange: PaperExchange, clock: ManualClock) -> None:
    async with engine_of(exchange, clock) as engine:
        with pytest.raises(InvalidValue) as caught:
            await engine.market("  ")
    assert caught.value.field == "token_id" and exchange.calls == []


@pytest.mark.parametrize(("price", "direction", "rounded"), [
    ("0.555", "up", Decimal("0.56")),
    ("0.555", "down", Decimal("0.55")),
    ("0.55", "up", Decimal("0.55")),
    (Decimal("0.5501"), "down", Decimal("0.55")),
    (Decimal("0.0101"), "up", Decimal("0.02")),
])
def test_round_to_tick_is_exact_and_rounds_up_by_default(price: str, direction: str, rounded: Decimal) -> None:
    rules = MarketRules(tick_size=Decimal("0.01"))

    got = rules.round_to_tick(price, direction=direction)

    assert got == rounded and rules.price_is_on_tick(got)
    assert MarketRules(tick_size=Decimal("0.01")).round_to_tick("0.555") == Decimal("0.56")  # default: up


@pytest.mark.parametrize(("price", "direction", "field"), [
    ("0.995", "up", "price"),       # rounds to 1: no sell limit
    ("0.004", "down", "price"),     # rounds to 0
    ("1.5", "up", "price"),
    (0.55, "up", "price"),          # a float is not exact
    ("0.55", "nearest", "direction"),
])
def test_round_to_tick_refuses_what_cannot_be_a_limit(price: object, direction: str, field: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        MarketRules(tick_size=Decimal("0.01")).round_to_tick(price, direction=direction)
    assert caught.value.field == field


# -- an off-tick limit price ---------------------------------------------------------------------------

async def test_off_tick_price_with_known_rules_fails_before_any_io(exchange: PaperExchange, clock: ManualClock,
                                                                  logs) -> None:  # noqa: ANN001
    async with engine_of(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.market("tok")
        before = list(exchange.calls)

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.555"))

        assert caught.value.field == "limit_price"
        assert exchange.calls == before
        assert engine.state("p1") == "OPEN"
        assert engine.metrics.verify_failures == 0 and sum(engine.metrics.outcomes.values()) == 0
    assert logs.named("balance_verify_failed") == []


async def test_off_tick_price_found_when_the_rules_arrive_is_not_counted_as_a_verification_failure(
        exchange: PaperExchange, clock: ManualClock, logs) -> None:  # noqa: ANN001
    async with engine_of(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.555"))

        assert caught.value.field == "limit_price"
        # Issue 14: the balance is read beside the rules (a cold exit in two round trips); off the tick, that read
        # is discarded and nothing is sent.
        assert sorted(call.operation for call in exchange.calls) == ["get_balance", "market_rules"]
        assert exchange.sells == []
        assert engine.state("p1") == "OPEN"
        assert engine.metrics.verify_failures == 0 and sum(engine.metrics.outcomes.values()) == 0
        assert (await engine.exit("p1", reason="take_profit", limit_price=P)).outcome is ExitOutcome.CLOSED
    assert logs.named("balance_verify_failed") == []


# -- the kill switch -------------------------------------------------------------------------------------

def paused_gauge(engine: ExitEngine) -> float:
    [family] = [f for f in EngineCollector(engine).collect() if f.name == "exitguard_paused"]
    return family.samples[0].value


async def test_pause_refuses_new_exits_until_resume_and_its_state_is_a_metric(
        exchange: PaperExchange, clock: ManualClock, logs) -> None:  # noqa: ANN001
    async with engine_of(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        engine.pause("operator: incident 42")
        refused = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert (refused.outcome, refused.state, refused.shares_sold) == (ExitOutcome.PAUSED, "OPEN", Decimal("0"))
        assert refused.outcome == "PAUSED"
        assert exchange.calls == [] and exchange.sells == []
        assert (engine.paused, engine.metrics.paused, paused_gauge(engine)) == ("operator: incident 42", True, 1)
        assert engine.metrics.snapshot()["paused"] is True

        engine.resume()
        done = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert done.outcome is ExitOutcome.CLOSED
        assert (engine.paused, engine.metrics.paused, paused_gauge(engine)) == (None, False, 0)
        assert engine.metrics.outcomes["PAUSED"] == 1
    assert [e["reason"] for e in logs.named("engine_paused")] == ["operator: incident 42"]
    assert [e["reason"] for e in logs.named("engine_resumed")] == ["operator: incident 42"]
    assert [(e["key"], e["pause_reason"]) for e in logs.named("exit_paused_refused")] == [
        ("p1", "operator: incident 42")]


def test_pause_needs_a_reason(exchange: PaperExchange, clock: ManualClock) -> None:
    engine = engine_of(exchange, clock)
    with pytest.raises(InvalidValue) as caught:
        engine.pause("")
    assert caught.value.field == "reason" and engine.paused is None


async def test_an_exit_in_flight_finishes_its_attempt_but_does_not_retry_once_paused(clock: ManualClock) -> None:
    class Gated(PaperExchange):
        gate: anyio.Event | None = None
        at_gate = anyio.Event()

        async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # type: ignore[no-untyped-def]
            if self.gate is not None:
                self.at_gate.set()
                await self.gate.wait()
            return await super().sell(permit, limit_price, **options)  # type: ignore[arg-type]

    exchange = Gated(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.set_bids("tok", [(Decimal("0.50"), Decimal("100"))])  # below the limit: the FOK is killed
    exchange.gate = anyio.Event()
    results = []
    async with engine_of(exchange, clock, retry=RetryPolicy(max_attempts=3, step_ticks=1,
                                                            max_slippage=Decimal("0.05"))) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        async with anyio.create_task_group() as group:
            async def run() -> None:
                results.append(await engine.exit("p1", reason="stop_loss", limit_price=P))
            group.start_soon(run)
            await exchange.at_gate.wait()

            engine.pause("operator: stop")
            exchange.gate.set()

    [result] = results
    assert (result.outcome, result.attempts, len(exchange.sells)) == (ExitOutcome.NOT_FILLED, 1, 1)


async def test_unknown_outcomes_are_still_resolved_while_paused(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.lose_next_sell_response()
    async with engine_of(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        unknown = await engine.exit("p1", reason="stop_loss", limit_price=P)
        engine.pause("operator: stop")

        found = await engine.reconcile("p1")

    assert (unknown.outcome, found.outcome, found.avg_price) == (ExitOutcome.UNKNOWN, ExitOutcome.CLOSED,
                                                                 Decimal("0.60"))
    assert len(exchange.sells) == 1
