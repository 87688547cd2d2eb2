"""Issue 11, C.11 and C.13: quantities beyond the absolute bound, exponents that overflow, a future last buy.

From the caller these are InvalidValue naming the field; from the exchange, VERIFY_FAILED with a divergence
event. Never a raw decimal exception, never an order for 10^24 shares. `excess="cap"` sells at most the
tracked shares.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest

from exitguard import (
    DivergenceKind,
    ExitEngine,
    ExitOutcome,
    ManualClock,
    Position,
    RetryPolicy,
    UnknownPosition,
)
from exitguard.exchange.paper import PaperExchange
from exitguard.exchange.rules import market_rules
from exitguard.states import (
    MAX_SHARES,
    Excess,
    InvalidValue,
    QuantityOutOfBounds,
    assess_balance,
    parse_price,
    parse_raw_balance,
    shares_to_micro,
)

PRICE = Decimal("0.55")

ABSURD_SHARES = [
    pytest.param("1e999999", id="exponent-overflows"),
    pytest.param(Decimal("1E+999999999"), id="decimal-exponent-overflows"),
    pytest.param("1e13", id="beyond-the-bound"),
    pytest.param(10**24, id="int-10^24"),
    pytest.param(-(10**24), id="negative-10^24"),
    pytest.param(10**5000, id="int-past-the-str-digit-limit"),
]


@pytest.mark.parametrize("shares", ABSURD_SHARES)
def test_absurd_shares_from_the_caller_are_an_invalid_value_naming_shares(shares: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        Position(key="p1", token_id="tok", shares=shares)
    assert caught.value.field == "shares"


def test_shares_at_the_bound_are_accepted_and_one_micro_share_more_is_refused() -> None:
    assert shares_to_micro(MAX_SHARES) == MAX_SHARES * 1_000_000
    with pytest.raises(QuantityOutOfBounds):
        shares_to_micro(Decimal(MAX_SHARES) + Decimal("0.000001"))


@pytest.mark.parametrize("value", ["1e-999999999", "1." + "0" * 70 + "1"])
def test_digits_finer_than_a_micro_share_are_refused_even_beyond_any_precision(value: str) -> None:
    with pytest.raises(InvalidValue, match="finer than one micro-share"):
        shares_to_micro(value)


@pytest.mark.parametrize("field, value", [("max_slippage", "1e999999"), ("max_slippage", Decimal("1e13"))])
def test_retry_policy_with_an_absurd_slippage_is_an_invalid_value_naming_it(field: str, value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        RetryPolicy(max_attempts=2, step_ticks=1, **{field: value})
    assert caught.value.field == field


@pytest.mark.parametrize("price", ["1e999999", "-1e999999", "1E+9999999999999999999", "1e-99999999999999999999"])
def test_an_absurd_limit_price_is_an_invalid_value_naming_it(price: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        parse_price(price)
    assert caught.value.field == "limit_price"


@pytest.mark.anyio
async def test_an_absurd_limit_price_on_exit_is_refused_naming_it_and_nothing_sent(
    exchange: PaperExchange, clock: ManualClock
) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="tp", limit_price=Decimal("1E-999999999"))
        assert caught.value.field == "limit_price"
        assert engine.state("p1") == "OPEN"
    assert exchange.sells == []


@pytest.mark.parametrize("raw", ["1e30", str(10**24), "1e999999", "1E+999999999999999999", 10**24])
def test_an_absurd_raw_balance_is_refused_as_out_of_bounds(raw: object) -> None:
    with pytest.raises(QuantityOutOfBounds):
        parse_raw_balance(raw)


@pytest.mark.anyio
@pytest.mark.parametrize("raw", ["1e30", str(10**24), "1e999999"])
async def test_an_absurd_balance_from_the_exchange_is_verify_failed_with_a_divergence_and_nothing_sold(
    exchange: PaperExchange, clock: ManualClock, raw: str
) -> None:
    for _ in range(3):  # every read, refreshed or not, answers the same absurd figure
        exchange.corrupt_next_balance("tok", raw)
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="tp", limit_price=PRICE)
        assert result.outcome is ExitOutcome.VERIFY_FAILED
        assert engine.state("p1") == "OPEN"
        assert engine.divergence.by_kind[DivergenceKind.ABSURD_QUANTITY] == 1
    assert exchange.sells == []


# -- excess="sell" | "cap" ------------------------------------------------------------------------

@pytest.mark.anyio
async def test_a_balance_above_the_tracked_shares_is_sold_whole_by_default(
    exchange: PaperExchange, clock: ManualClock
) -> None:
    exchange.set_balance("tok", Decimal("25"))
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="tp", limit_price=PRICE)
        assert engine.divergence.by_kind[DivergenceKind.BALANCE_MISMATCH] == 1
    assert result.outcome is ExitOutcome.CLOSED
    assert result.shares_sold == Decimal("25")


@pytest.mark.anyio
async def test_excess_cap_sells_at_most_the_tracked_shares_and_still_reports_the_mismatch(
    exchange: PaperExchange, clock: ManualClock
) -> None:
    exchange.set_balance("tok", Decimal("25"))
    async with ExitEngine(exchange, clock=clock, excess="cap") as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10.005")))
        result = await engine.exit("p1", reason="tp", limit_price=PRICE)
        assert engine.divergence.by_kind[DivergenceKind.BALANCE_MISMATCH] == 1
    assert result.outcome is ExitOutcome.CLOSED
    assert result.shares_sold == Decimal("10")  # the tracked 10.005, rounded down to the 0.01 step
    assert exchange.balance("tok") == Decimal("15")


@pytest.mark.anyio
async def test_excess_cap_sells_a_balance_below_the_tracked_shares_as_verified(
    exchange: PaperExchange, clock: ManualClock
) -> None:
    exchange.set_balance("tok", Decimal("8"))
    async with ExitEngine(exchange, clock=clock, excess="cap") as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="tp", limit_price=PRICE)
    assert result.outcome is ExitOutcome.CLOSED
    assert result.shares_sold == Decimal("8")


def test_excess_cap_leaves_zero_and_dust_decisions_as_they_were() -> None:
    rules = market_rules(min_order_size="5")
    now = ManualClock().wall()
    common = {"last_buy_at": None, "now": now, "settlement_window": timedelta(seconds=60)}
    for excess in Excess:
        assert assess_balance(10_000_000, 0, rules, excess=excess, **common).kind == "already_exited"
        assert assess_balance(10_000_000, 3_000_000, rules, excess=excess, **common).kind == "dust"
    capped = assess_balance(3_000_000, 40_000_000, rules, excess=Excess.CAP, **common)
    assert (capped.kind, capped.sell) == ("dust", 0)
    assert assess_balance(10_000_000, 40_000_000, rules, excess=Excess.CAP, **common).sell == 10_000_000
    assert assess_balance(10_000_000, 40_000_000, rules, **common).sell == 40_000_000


@pytest.mark.parametrize("excess", ["CAP ", "all", None, 1])
def test_an_unknown_excess_setting_is_an_invalid_value_naming_excess(
    exchange: PaperExchange, excess: object
) -> None:
    with pytest.raises(InvalidValue) as caught:
        ExitEngine(exchange, excess=excess)  # type: ignore[arg-type]
    assert caught.value.field == "excess"


# -- C.13: last_buy_at in the future -------------------------------------------------------------

@pytest.mark.anyio
async def test_last_buy_at_in_the_future_is_refused_at_track_naming_it(
    exchange: PaperExchange, clock: ManualClock
) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        with pytest.raises(InvalidValue) as caught:
            engine.track(Position(key="p1", token_id="tok", shares=Decimal("10"),
                                  last_buy_at=clock.wall() + timedelta(hours=1)))
        assert caught.value.field == "last_buy_at"
        with pytest.raises(UnknownPosition):
            engine.state("p1")
        # The token stays free: the refused position never held it.
        engine.track(Position(key="p2", token_id="tok", shares=Decimal("10"),
                              last_buy_at=clock.wall() + timedelta(seconds=3)))  # within clock skew
        assert engine.state("p2") == "OPEN"
