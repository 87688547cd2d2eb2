"""Issue 11 A.2 on the paper exchange: a lookup that finds nothing is not a "no".

An unknown outcome becomes NOT_FILLED only when the exchange shows the order terminal and unfilled, or when
the order can no longer arrive (the lookup horizon has passed since the request left our hands) and a trade
query that succeeded shows no trade of it. Until then it stays UNKNOWN; nothing is ever sent twice."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import (
    DivergenceKind,
    ExitEngine,
    ExitOutcome,
    LookupStatus,
    ManualClock,
    PaperExchange,
    Position,
    SellLookup,
)
from exitguard.errors import TransientError, UnknownOutcome
from exitguard.states import CONCLUSIONS, RESOLUTIONS, Conclusion, InvalidValue, SellPermit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")
HORIZON = 30.0


def market(clock: ManualClock) -> PaperExchange:
    exchange = PaperExchange(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    return exchange


def engine_on(exchange: PaperExchange, clock: ManualClock, **options: object) -> ExitEngine:
    # Background retries far off: each test drives the lookups itself.
    return ExitEngine(exchange, clock=clock, settlement_poll_interval=None,  # type: ignore[arg-type]
                      resolve_backoff=(3600.0, 3600.0), **options)


def filled(exchange: PaperExchange) -> list[object]:
    return [s for s in exchange.sells if s.status.value == "filled"]


async def test_empty_trade_list_before_horizon_stays_unknown(clock: ManualClock, logs) -> None:  # noqa: ANN001
    exchange = market(clock)
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))  # never reached the exchange
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        clock.advance(HORIZON - 1)

        result = await engine.reconcile("p1")

        assert (result.outcome, engine.state("p1"), engine.unresolved()) == (ExitOutcome.UNKNOWN, "SELLING", ["p1"])
        assert [c.operation for c in exchange.calls][-1] == "lookup_sell"  # no balance read: it cannot conclude
        [pending] = logs.named("exit_outcome_pending")
        assert (pending["lookup"], pending["horizon_s"]) == ("not_found", HORIZON)
        assert not logs.named("exit_outcome_resolved")
        clock.advance(1)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED
    assert filled(exchange) == []


async def test_no_trade_past_horizon_is_not_filled_even_if_balance_moved(clock: ManualClock) -> None:
    exchange = market(clock)
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        exchange.set_balance("tok", Decimal("4"))  # something else moved the shares; no trade of ours
        clock.advance(HORIZON)

        result = await engine.reconcile("p1")

        # A FOK fills all or nothing: with no trade of ours it did not fill, whatever the balance did.
        assert (result.outcome, engine.state("p1")) == (ExitOutcome.NOT_FILLED, "OPEN")
        assert engine.divergence.by_kind[DivergenceKind.BALANCE_MOVED_WITHOUT_FILL] == 1
        assert result.shares_sold == 0


async def test_failed_trade_query_is_not_empty(clock: ManualClock, logs) -> None:  # noqa: ANN001
    exchange = market(clock)
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        clock.advance(HORIZON + 1)
        exchange.fail_next_trade_query()

        failed = await engine.reconcile("p1")

        assert (failed.outcome, engine.state("p1")) == (ExitOutcome.UNKNOWN, "SELLING")
        assert logs.named("exit_reconcile_failed")
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED


async def test_order_that_arrives_late_is_found_and_never_sold_again(clock: ManualClock) -> None:
    exchange = market(clock)
    exchange.arrive_late(20)
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        clock.advance(10)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN  # on its way: nothing found yet
        assert filled(exchange) == []
        clock.advance(15)

        result = await engine.reconcile("p1")

        assert (result.outcome, engine.state("p1"), result.shares_sold) == (ExitOutcome.CLOSED, "CLOSED", 10)
    assert len(filled(exchange)) == 1 and exchange.balance("tok") == 0


async def test_a_filled_order_dropped_from_the_order_lookup_is_found_by_its_trade(clock: ManualClock) -> None:
    exchange = market(clock)
    exchange.hide_filled_orders()
    exchange.lag_trades(5)
    exchange.lose_next_sell_response()
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN  # neither order nor trade shows yet
        clock.advance(5)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.CLOSED
    assert len(filled(exchange)) == 1


async def test_a_killed_order_the_exchange_shows_is_not_filled_at_once(clock: ManualClock) -> None:
    exchange = market(clock)
    exchange.set_bids("tok", [(Decimal("0.60"), Decimal("1"))])  # too thin: the FOK is killed
    exchange.lose_next_sell_response()
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        # Terminal and unfilled on the exchange's own record: no horizon to wait for.
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED


async def test_horizon_counts_from_when_the_request_left_our_hands(clock: ManualClock) -> None:
    class SlowToFail(PaperExchange):
        """The sell call holds the request 20 s before it gives up (a worker that had not returned)."""

        async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # noqa: ANN202
            clock.advance(20)
            raise UnknownOutcome("no answer within 20s")

    exchange = SlowToFail(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    async with engine_on(exchange, clock, sell_timeout=60.0) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        clock.advance(HORIZON - 5)  # 45 s after it was sent, 25 s after it left our hands
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
        clock.advance(5)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED


async def test_a_worker_that_outlived_the_deadline_delays_the_horizon(clock: ManualClock) -> None:
    class HeldByAWorker(PaperExchange):
        """The adapter knows its worker held the request 12 s after the engine's call returned."""

        async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
            found = await super().lookup_sell(permit, order_id)
            return SellLookup(found.status, found.fill, left_late=12.0)

    exchange = HeldByAWorker(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.fail_next("sell", error=UnknownOutcome("no answer"))
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        clock.advance(HORIZON + 5)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
        clock.advance(10)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED


async def test_unrecognised_lookup_status_is_unknown(clock: ManualClock) -> None:
    class StillOnTheBook(PaperExchange):
        async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
            await super().lookup_sell(permit, order_id)
            return SellLookup(LookupStatus.PENDING)

    exchange = StillOnTheBook(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.fail_next("sell", error=UnknownOutcome("no answer"))
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        clock.advance(3600)
        # Live, delayed or a status nobody documents: only the exchange moving it on settles it.
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
        assert engine.state("p1") == "SELLING"


async def test_a_lookup_that_is_not_a_sell_lookup_is_unknown(clock: ManualClock) -> None:
    class Garbled(PaperExchange):
        async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
            return "not_found"  # type: ignore[return-value]

    exchange = Garbled(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.fail_next("sell", error=UnknownOutcome("no answer"))
    async with engine_on(exchange, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
        clock.advance(3600)
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN


async def test_restart_counts_the_horizon_from_the_journaled_order_time(tmp_path: Path) -> None:
    clock = ManualClock()
    journal = tmp_path / "exits.journal"
    exchange = market(clock)
    exchange.fail_next("sell", error=UnknownOutcome("connection reset"))
    async with engine_on(exchange, clock, journal=str(journal)) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.UNKNOWN
    clock.advance(HORIZON - 10)
    async with engine_on(exchange, clock, journal=str(journal)) as engine:
        # The journaled `sent_at` of the unknown answer, not the restart, is where the horizon starts.
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
    clock.advance(10)
    async with engine_on(exchange, clock, journal=str(journal)) as engine:
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED
        assert (await engine.exit("p1", reason="r", limit_price=P)).outcome is ExitOutcome.CLOSED
    assert len(filled(exchange)) == 1


def test_lookup_horizon_is_a_validated_setting() -> None:
    exchange = PaperExchange()
    for bad in (0, -1, "30", True, float("nan")):
        with pytest.raises(InvalidValue, match="lookup_horizon"):
            ExitEngine(exchange, lookup_horizon=bad)  # type: ignore[arg-type]


def test_only_the_exchanges_own_record_or_the_horizon_prove_not_filled() -> None:
    proves_not_filled = {key for key, conclusion in CONCLUSIONS.items()
                         if conclusion in (Conclusion.TERMINAL_UNFILLED, Conclusion.NO_TRADE_PAST_HORIZON)}
    assert proves_not_filled == {(LookupStatus.NOT_FILLED, False), (LookupStatus.NOT_FILLED, True),
                                 (LookupStatus.NOT_FOUND, True)}
    assert {RESOLUTIONS[(Conclusion.UNKNOWN, zero)] for zero in (False, True)} == {None}


async def test_a_lookup_failure_is_no_empty_answer_on_paper(clock: ManualClock) -> None:
    exchange = market(clock)
    exchange.fail_next_trade_query(error=TransientError("trades: HTTP 502", status=502))
    permit = SellPermit("p1", "tok", 10_000_000, 10_000_000, clock.monotonic(), "never-sent")
    with pytest.raises(TransientError):
        await exchange.lookup_sell(permit)
    assert (await exchange.lookup_sell(permit)).status is LookupStatus.NOT_FOUND


def test_the_horizon_default_is_thirty_seconds() -> None:
    from exitguard.reconcile import DEFAULT_LOOKUP_HORIZON
    assert timedelta(seconds=DEFAULT_LOOKUP_HORIZON) == timedelta(seconds=30)
