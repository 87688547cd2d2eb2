"""Issue 13 §3: results that carry the fill, top-ups (`update`), and restarts that re-track the book."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import (
    DivergenceKind,
    ExitEngine,
    ExitOutcome,
    InvalidValue,
    ManualClock,
    PaperExchange,
    Position,
    PositionConflict,
    TransitionRefused,
)
from exitguard.journal import Journal

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def engine_on(exchange: PaperExchange, path: Path | None, clock: ManualClock) -> ExitEngine:
    return ExitEngine(exchange, journal=path, clock=clock, settlement_poll_interval=None)


# -- the fill on the result and in the journal ------------------------------------------------------

async def test_a_filled_exit_carries_its_avg_price_and_order_id_and_the_journal_records_both(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert (result.outcome, result.avg_price, result.order_id) == (ExitOutcome.CLOSED, Decimal("0.60"), "paper-1")
    assert isinstance(result.avg_price, Decimal)
    [row] = Journal.open(path, readonly=True).positions()
    assert (row.avg_price, row.filled_order_id) == (Decimal("0.60"), "paper-1")
    filled = Journal.open(path, readonly=True).history("p1")[-1]
    assert (filled.trigger, filled.payload["avg_price"], filled.payload["order_id"]) == ("sell_filled", "0.60",
                                                                                          "paper-1")


async def test_a_fill_found_by_a_lookup_carries_its_avg_price_and_order_id(exchange: PaperExchange,
                                                                          clock: ManualClock, path: Path) -> None:
    exchange.lose_next_sell_response()
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        unknown = await engine.exit("p1", reason="stop_loss", limit_price=P)

        found = await engine.reconcile("p1")

    assert (unknown.outcome, unknown.avg_price) == (ExitOutcome.UNKNOWN, None)
    assert (found.outcome, found.avg_price, found.order_id) == (ExitOutcome.CLOSED, Decimal("0.60"), "paper-1")
    [row] = Journal.open(path, readonly=True).positions()
    assert (row.avg_price, row.filled_order_id) == (Decimal("0.60"), "paper-1")


async def test_the_fill_survives_a_restart_on_the_journal(exchange: PaperExchange, clock: ManualClock,
                                                         path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=P)
    async with engine_on(exchange, path, clock) as engine:
        assert engine.state("p1") == "CLOSED"
    [row] = Journal.open(path, readonly=True).positions()
    assert (row.avg_price, row.filled_order_id) == (Decimal("0.60"), "paper-1")


async def test_an_exit_without_a_fill_carries_no_avg_price(exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_balance("tok", Decimal("0"))
    async with engine_on(exchange, None, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert (result.outcome, result.avg_price, result.order_id) == (ExitOutcome.ALREADY_EXITED, None, None)


# -- update: a top-up or a correction of an OPEN position --------------------------------------------

async def test_update_after_top_ups_sells_the_new_shares_without_a_mismatch_or_an_alert(clock: ManualClock) -> None:
    exchange = PaperExchange(clock=clock)
    async with engine_on(exchange, None, clock) as engine:
        for n in range(5):
            token = f"t{n}"
            exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
            exchange.set_balance(token, Decimal("10"))
            engine.track(Position(f"p{n}", token, Decimal("10")))
            exchange.set_balance(token, Decimal("15"))  # a second buy of 5 shares

            engine.update(f"p{n}", shares=Decimal("15"))

        results = [await engine.exit(f"p{n}", reason="take_profit", limit_price=P) for n in range(5)]

    assert [(r.outcome, r.shares_sold, r.expected_shares) for r in results] == [
        (ExitOutcome.CLOSED, Decimal("15"), Decimal("15"))] * 5
    assert engine.divergence.by_kind[DivergenceKind.BALANCE_MISMATCH] == 0
    assert engine.divergence.alerts == []


async def test_update_is_journaled_as_a_trail_row_and_restored(exchange: PaperExchange, clock: ManualClock,
                                                                path: Path, logs) -> None:  # noqa: ANN001
    bought = clock.wall() - timedelta(seconds=5)
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        engine.update("p1", shares=Decimal("12.5"), last_buy_at=bought)

    journal = Journal.open(path, readonly=True)
    updated = journal.history("p1")[-1]
    assert (updated.source, updated.dest, updated.trigger) == ("OPEN", "OPEN", "position_updated")
    assert (updated.payload["expected"], updated.payload["previous_expected"]) == (12_500_000, 10_000_000)
    [row] = journal.positions()
    assert (row.expected, row.last_buy_at) == (12_500_000, bought)
    [event] = logs.named("position_updated")
    assert (event["shares"], event["previous_shares"]) == (Decimal("12.5"), Decimal("10"))
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("12.5"), last_buy_at=bought))  # the bot's book agrees
        assert engine.state("p1") == "OPEN"


async def test_update_is_refused_outside_open(exchange: PaperExchange, clock: ManualClock) -> None:
    async with engine_on(exchange, None, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=P)

        with pytest.raises(TransitionRefused, match="only an OPEN position") as caught:
            engine.update("p1", shares=Decimal("20"))

    assert caught.value.state == "CLOSED"


async def test_update_refuses_bad_shares_naming_the_field(exchange: PaperExchange, clock: ManualClock) -> None:
    async with engine_on(exchange, None, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

        for bad in (Decimal("0"), Decimal("-1"), 1.5, "1e40"):
            with pytest.raises(InvalidValue) as caught:
                engine.update("p1", shares=bad)  # type: ignore[arg-type]
            assert caught.value.field == "shares"

        assert engine.state("p1") == "OPEN"
        result = await engine.exit("p1", reason="take_profit", limit_price=P)
    assert result.expected_shares == Decimal("10")


# -- restarts: re-tracking the book --------------------------------------------------------------------

async def test_tracking_a_restored_position_again_does_nothing(exchange: PaperExchange, clock: ManualClock,
                                                               path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        engine.track(Position("done", "t2", Decimal("6")))
        exchange.set_balance("t2", Decimal("6"))
        exchange.set_bids("t2", [(Decimal("0.60"), Decimal("100"))])
        await engine.exit("done", reason="take_profit", limit_price=P)
    writes = len(Journal.open(path, readonly=True).history("p1"))

    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))  # the bot re-tracks its book at start
        engine.track(Position("done", "t2", Decimal("6")))

        assert engine.states() == {"p1": "OPEN", "done": "CLOSED"}
        assert (await engine.exit("p1", reason="take_profit", limit_price=P)).outcome is ExitOutcome.CLOSED
    assert len(Journal.open(path, readonly=True).history("p1")) == writes + 4  # no second track row


async def test_tracking_a_different_position_under_a_restored_key_names_the_difference(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))

    async with engine_on(exchange, path, clock) as engine:
        with pytest.raises(PositionConflict) as caught:
            engine.track(Position("p1", "tok", Decimal("7")))

        assert caught.value.differences == (("shares", Decimal("10"), Decimal("7")),)
        assert "shares journaled 10 but 7 now" in str(caught.value)
        assert "update()" in str(caught.value)
        with pytest.raises(PositionConflict) as other:
            engine.track(Position("p1", "elsewhere", Decimal("10")))
        assert [field for field, _, _ in other.value.differences] == ["token_id"]
        assert engine.states() == {"p1": "OPEN"}


async def test_a_position_tracked_before_start_that_differs_from_the_journal_names_the_difference(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
    other = engine_on(exchange, path, clock)
    other.track(Position("p1", "tok", Decimal("3")))

    with pytest.raises(PositionConflict) as caught:
        async with other:
            pass

    assert caught.value.differences == (("shares", Decimal("10"), Decimal("3")),)
