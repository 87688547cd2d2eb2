"""Issue 11 A.4: the exchange's balance cache after our own fills. The cache can still show shares just sold;
a reading above what the engine knows is held is suspect; a "refresh first" mark stays until a refresh worked."""

from __future__ import annotations

from decimal import Decimal

import pytest

from exitguard import ExitEngine, ExitOutcome, ManualClock, Position, TransientError
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.states import RefreshReason, balance_refresh

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


def operations_since(exchange: PaperExchange, start: int) -> list[str]:
    return [call.operation for call in exchange.calls[start:]]


@pytest.fixture
def stale(exchange: PaperExchange) -> PaperExchange:
    """"tok" holds 10 shares; from now on its cache changes only when refreshed (as after our own fill)."""
    exchange.lag_balance("tok", delay=None)
    return exchange


async def test_after_our_own_fill_the_next_verification_of_the_token_refreshes_before_it_reads(
        stale: PaperExchange, clock: ManualClock) -> None:
    async with ExitEngine(stale, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.CLOSED
        # The cache still shows the 10 shares just sold. A new position on the token, whose buy of 10 has not
        # landed yet, would "verify" them and sell them a second time.
        engine.track(Position("p2", "tok", Decimal("10"), last_buy_at=clock.wall()))
        start = len(stale.calls)

        second = await engine.exit("p2", reason="tp", limit_price=P)

    assert operations_since(stale, start)[:2] == ["refresh_balance", "get_balance"]
    assert second.outcome is ExitOutcome.VERIFY_FAILED  # zero while the buy settles: nothing sent
    assert [s.status for s in stale.sells] == [SellStatus.FILLED]


async def test_a_reading_above_the_shares_held_is_refreshed_and_read_again(
        stale: PaperExchange, clock: ManualClock) -> None:
    stale.set_balance("tok", Decimal("6"))  # another process sold 4; the cache still says 10
    async with ExitEngine(stale, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("6")))

        result = await engine.exit("p1", reason="tp", limit_price=P)

    assert [c.operation for c in stale.calls] == ["market_rules", "get_balance", "refresh_balance", "get_balance",
                                                  "sell"]
    assert (result.outcome, result.shares_sold) == (ExitOutcome.CLOSED, Decimal("6"))
    assert [(s.shares, s.status) for s in stale.sells] == [(Decimal("6"), SellStatus.FILLED)]


async def test_a_refresh_first_mark_stays_until_a_refresh_has_succeeded(stale: PaperExchange,
                                                                         clock: ManualClock) -> None:
    async with ExitEngine(stale, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="tp", limit_price=P)
        engine.track(Position("p2", "tok", Decimal("10"), last_buy_at=clock.wall()))
        stale.fail_next("refresh_balance", error=TransientError("paper: 503", status=503))
        assert (await engine.exit("p2", reason="tp", limit_price=P)).outcome is ExitOutcome.VERIFY_FAILED
        start = len(stale.calls)

        await engine.exit("p2", reason="tp", limit_price=P)

    assert operations_since(stale, start)[:2] == ["refresh_balance", "get_balance"]
    assert [s.status for s in stale.sells] == [SellStatus.FILLED]


async def test_a_resolution_as_filled_marks_the_token_for_a_refresh_first(stale: PaperExchange,
                                                                          clock: ManualClock) -> None:
    stale.lose_next_sell_response()
    async with ExitEngine(stale, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        assert (await engine.reconcile("p1")).outcome is ExitOutcome.CLOSED
        engine.track(Position("p2", "tok", Decimal("10"), last_buy_at=clock.wall()))
        start = len(stale.calls)

        await engine.exit("p2", reason="tp", limit_price=P)

    assert operations_since(stale, start)[:2] == ["refresh_balance", "get_balance"]
    assert len(stale.sells) == 1


@pytest.mark.parametrize(("marked", "reading", "expected", "settling", "decision"), [
    (True, None, 10, False, RefreshReason.MARKED),
    (False, None, 10, True, None),
    (False, 10, 10, True, None),
    (False, 10, 10, False, None),
    (False, 4, 10, True, RefreshReason.BELOW_EXPECTED),
    (False, 4, 10, False, None),  # issue 14: outside the settlement window a lower reading is the truth
    (False, 0, 10, False, RefreshReason.ZERO),  # ...but a zero would end the position unsold: asked twice
    (False, 0, 10, True, RefreshReason.BELOW_EXPECTED),
    (False, 12, 10, True, RefreshReason.ABOVE_EXPECTED),
    (False, 12, 10, False, RefreshReason.ABOVE_EXPECTED),
    (True, 10, 10, False, None),  # a reading taken after the mark's refresh is trusted
])
def test_when_to_refresh_the_balance_cache_is_one_pure_decision(
        marked: bool, reading: int | None, expected: int, settling: bool, decision: RefreshReason | None) -> None:
    assert balance_refresh(marked=marked, reading=reading, expected=expected, settling=settling) is decision
