"""Bad input gets a clear error naming the field and the value, and leaves everything safe: the position
in the state it was in (OPEN), and nothing sent to the exchange."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from exitguard import (
    EngineClosed,
    ExitEngine,
    ExitOutcome,
    ExitRefused,
    ManualClock,
    Position,
    PositionConflict,
    RetryPolicy,
    UnknownPosition,
)
from exitguard.exchange.paper import PaperExchange
from exitguard.states import InvalidValue

PRICE = Decimal("0.55")


class OddBalance:
    """Not a number of any kind: what a broken adapter might hand back."""

    def __repr__(self) -> str:
        return "<OddBalance object>"


def sent(exchange: PaperExchange) -> list[str]:
    return [call.operation for call in exchange.calls]


def assert_names(err: BaseException, field: str, value: object) -> None:
    text = str(err)
    assert field in text, text
    assert repr(value) in text, text


# -- malformed balances from the exchange ----------------------------------------------------------

MALFORMED_BALANCES = [
    pytest.param("-5", id="negative"),
    pytest.param("NaN", id="nan"),
    pytest.param("abc", id="not-a-number"),
    pytest.param("", id="empty"),
    pytest.param(None, id="missing"),
    pytest.param(5.0, id="float"),
    pytest.param(True, id="bool"),
    pytest.param("1.5", id="fractional-raw"),
    pytest.param("Infinity", id="infinity"),
    pytest.param("-Infinity", id="minus-infinity"),
    pytest.param(OddBalance(), id="object"),
    pytest.param({"balance": "10000000"}, id="dict"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("raw", MALFORMED_BALANCES)
async def test_malformed_balance_fails_verification_naming_it_and_sells_nothing_until_it_is_good(
        exchange: PaperExchange, clock: ManualClock, raw: object) -> None:
    exchange.corrupt_next_balance("tok", raw)
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        refused = await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        assert refused.outcome is ExitOutcome.VERIFY_FAILED
        assert refused.error is not None
        assert "balance" in refused.error and "tok" in refused.error
        assert repr(raw) in refused.error
        assert refused.shares_sold == 0
        assert engine.state("p1") == "OPEN"
        assert exchange.sells == []
        assert "sell" not in sent(exchange)
        assert exchange.balance("tok") == Decimal("10")

        retried = await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        assert retried.outcome is ExitOutcome.CLOSED
        assert retried.shares_sold == Decimal("10")
        assert engine.state("p1") == "CLOSED"
        assert len(exchange.sells) == 1


# -- unknown position ------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("key", ["ghost", "", None, 7])
async def test_exit_of_an_unknown_position_names_the_key_and_sends_nothing(
        exchange: PaperExchange, clock: ManualClock, key: object) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        with pytest.raises(UnknownPosition) as caught:
            await engine.exit(key, reason="take_profit", limit_price=PRICE)  # type: ignore[arg-type]

        assert caught.value.key == key
        assert_names(caught.value, "key", key)
        assert exchange.calls == []
        assert engine.state("p1") == "OPEN"


@pytest.mark.anyio
async def test_state_and_reconcile_of_an_unknown_position_name_the_key(
        exchange: PaperExchange, clock: ManualClock) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        with pytest.raises(UnknownPosition) as state_error:
            engine.state("ghost")
        with pytest.raises(UnknownPosition) as reconcile_error:
            await engine.reconcile("ghost")

    assert_names(state_error.value, "key", "ghost")
    assert_names(reconcile_error.value, "key", "ghost")
    assert exchange.calls == []


# -- limit price -----------------------------------------------------------------------------------

BAD_PRICES = [
    pytest.param(0, id="zero"),
    pytest.param(1, id="one"),
    pytest.param(Decimal("0"), id="decimal-zero"),
    pytest.param(Decimal("1"), id="decimal-one"),
    pytest.param(Decimal("-0.1"), id="negative"),
    pytest.param(Decimal("1.5"), id="above-one"),
    pytest.param("abc", id="not-a-number"),
    pytest.param("", id="empty"),
    pytest.param(Decimal("NaN"), id="nan"),
    pytest.param("NaN", id="nan-string"),
    pytest.param(Decimal("Infinity"), id="infinity"),
    pytest.param(0.5, id="float"),
    pytest.param(float("nan"), id="float-nan"),
    pytest.param(None, id="none"),
    pytest.param(True, id="bool"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("price", BAD_PRICES)
async def test_bad_limit_price_is_refused_naming_it_and_leaves_the_position_open_with_nothing_sent(
        exchange: PaperExchange, clock: ManualClock, price: object) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=price)  # type: ignore[arg-type]

        assert caught.value.field == "limit_price"
        assert caught.value.value is price
        assert_names(caught.value, "limit_price", price)
        assert engine.state("p1") == "OPEN"
        assert exchange.calls == []
        assert exchange.sells == []


@pytest.mark.anyio
async def test_limit_price_off_the_market_tick_is_refused_and_nothing_sold(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_market("tok", tick_size="0.01")
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.555"))

        assert caught.value.field == "limit_price"
        assert_names(caught.value, "limit_price", Decimal("0.555"))
        assert engine.state("p1") == "OPEN"
        assert exchange.sells == []
        assert "sell" not in sent(exchange)
        assert exchange.balance("tok") == Decimal("10")


@pytest.mark.anyio
async def test_limit_price_off_a_known_tick_is_refused_before_any_call(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_market("tok", tick_size="0.1")
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        with pytest.raises(InvalidValue):
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        calls_after_first = len(exchange.calls)

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))

        assert_names(caught.value, "limit_price", Decimal("0.55"))
        assert len(exchange.calls) == calls_after_first
        assert engine.state("p1") == "OPEN"


@pytest.mark.anyio
async def test_exit_on_tick_works_after_an_off_tick_refusal(exchange: PaperExchange, clock: ManualClock) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        with pytest.raises(InvalidValue):
            await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.555"))

        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))

        assert result.outcome is ExitOutcome.CLOSED
        assert [sell.limit_price for sell in exchange.sells] == [Decimal("0.55")]


# -- reason ----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("reason", ["", "   ", None, 5])
async def test_empty_reason_is_refused_naming_reason_and_nothing_sent(
        exchange: PaperExchange, clock: ManualClock, reason: object) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        with pytest.raises(InvalidValue) as caught:
            await engine.exit("p1", reason=reason, limit_price=PRICE)  # type: ignore[arg-type]

        assert caught.value.field == "reason"
        assert_names(caught.value, "reason", reason)
        assert engine.state("p1") == "OPEN"
        assert exchange.calls == []


# -- Position --------------------------------------------------------------------------------------

GOOD_POSITION: dict[str, object] = {"key": "p1", "token_id": "tok", "shares": Decimal("10")}


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("shares", 0, id="shares-zero"),
    pytest.param("shares", Decimal("0"), id="shares-decimal-zero"),
    pytest.param("shares", -1, id="shares-negative"),
    pytest.param("shares", Decimal("-0.5"), id="shares-negative-decimal"),
    pytest.param("shares", Decimal("NaN"), id="shares-nan"),
    pytest.param("shares", "NaN", id="shares-nan-string"),
    pytest.param("shares", Decimal("Infinity"), id="shares-infinity"),
    pytest.param("shares", 10.0, id="shares-float"),
    pytest.param("shares", Decimal("1.0000001"), id="shares-seven-decimals"),
    pytest.param("shares", "abc", id="shares-not-a-number"),
    pytest.param("shares", None, id="shares-none"),
    pytest.param("shares", True, id="shares-bool"),
    pytest.param("key", "", id="key-empty"),
    pytest.param("key", "   ", id="key-blank"),
    pytest.param("key", None, id="key-none"),
    pytest.param("key", 1, id="key-int"),
    pytest.param("token_id", "", id="token-empty"),
    pytest.param("token_id", "  ", id="token-blank"),
    pytest.param("token_id", None, id="token-none"),
    pytest.param("last_buy_at", datetime(2026, 1, 1, 12, 0), id="last-buy-naive"),
    pytest.param("last_buy_at", "2026-01-01T12:00:00Z", id="last-buy-string"),
    pytest.param("last_buy_at", 1_767_268_800, id="last-buy-timestamp"),
])
def test_bad_position_field_is_refused_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        Position(**{**GOOD_POSITION, field: value})  # type: ignore[arg-type]

    assert caught.value.field == field
    assert caught.value.value is value
    assert_names(caught.value, field, value)


def test_position_accepts_exact_shares_and_an_aware_last_buy() -> None:
    bought = datetime(2026, 1, 1, tzinfo=UTC)

    position = Position(key="p1", token_id="tok", shares="4.893500", last_buy_at=bought)

    assert position.shares == Decimal("4.8935")
    assert position.micro_shares == 4_893_500


# -- conflicts, finished positions, engine lifetime ------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("second", "field", "value"), [
    pytest.param(Position(key="p2", token_id="tok", shares=Decimal("5")), "token_id", "tok", id="same-token"),
    pytest.param(Position(key="p1", token_id="other", shares=Decimal("5")), "key", "p1", id="same-key"),
])
async def test_second_live_position_conflicting_with_the_first_is_refused_naming_it(
        exchange: PaperExchange, clock: ManualClock, second: Position, field: str, value: str) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

        with pytest.raises(PositionConflict) as caught:
            engine.track(second)

        assert_names(caught.value, field, value)
        assert "'p1'" in str(caught.value)
        assert engine.states() == {"p1": "OPEN"}
        assert exchange.calls == []
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert [call.token_id for call in exchange.calls if call.operation == "sell"] == ["tok"]


@pytest.mark.anyio
async def test_a_finished_position_frees_its_token_for_a_new_position(
        exchange: PaperExchange, clock: ManualClock) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        engine.track(Position(key="p2", token_id="tok", shares=Decimal("5")))

        assert engine.states() == {"p1": "CLOSED", "p2": "OPEN"}


def test_tracking_something_that_is_not_a_position_names_it(exchange: PaperExchange) -> None:
    engine = ExitEngine(exchange)
    value = {"key": "p1", "token_id": "tok", "shares": "10"}

    with pytest.raises(InvalidValue) as caught:
        engine.track(value)  # type: ignore[arg-type]

    assert caught.value.field == "position"
    assert_names(caught.value, "position", value)


@pytest.mark.anyio
@pytest.mark.parametrize(("balance", "final"), [("10", "CLOSED"), ("0", "RECONCILED"), ("3", "DUST")])
async def test_exit_on_a_finished_position_is_refused_naming_key_and_state(
        exchange: PaperExchange, clock: ManualClock, balance: str, final: str) -> None:
    exchange.set_balance("tok", balance)
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert engine.state("p1") == final
        calls, sells = len(exchange.calls), len(exchange.sells)

        with pytest.raises(ExitRefused) as caught:
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        assert_names(caught.value, "key", "p1")
        assert final in str(caught.value)
        assert engine.state("p1") == final
        assert (len(exchange.calls), len(exchange.sells)) == (calls, sells)


@pytest.mark.anyio
@pytest.mark.parametrize("after_the_block", [False, True], ids=["before-async-with", "after-async-with"])
async def test_engine_used_outside_async_with_is_closed(
        exchange: PaperExchange, clock: ManualClock, after_the_block: bool) -> None:
    engine = ExitEngine(exchange, clock=clock)
    if after_the_block:
        async with engine:
            engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    else:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))

    with pytest.raises(EngineClosed, match="async with"):
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    with pytest.raises(EngineClosed):
        await engine.reconcile("p1")

    assert engine.state("p1") == "OPEN"
    assert exchange.calls == []


@pytest.mark.anyio
async def test_engine_entered_twice_at_once_is_refused(exchange: PaperExchange, clock: ManualClock) -> None:
    async with ExitEngine(exchange, clock=clock) as engine:
        with pytest.raises(EngineClosed, match="already running"):
            async with engine:
                pass


# -- construction ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("max_concurrent_exits", 0, id="no-concurrency"),
    pytest.param("max_concurrent_exits", 2.5, id="fractional-concurrency"),
    pytest.param("max_concurrent_exits", "8", id="string-concurrency"),
    pytest.param("permit_max_age", 0, id="permit-age-zero"),
    pytest.param("permit_max_age", -1.0, id="permit-age-negative"),
    pytest.param("permit_max_age", float("nan"), id="permit-age-nan"),
    pytest.param("verify_timeout", 0, id="verify-timeout-zero"),
    pytest.param("sell_timeout", -5, id="sell-timeout-negative"),
    pytest.param("verify_timeout", "10", id="verify-timeout-string"),
    pytest.param("settlement_window", 60, id="settlement-window-int"),
    pytest.param("journal", "", id="journal-empty"),
    pytest.param("journal", ":memory:", id="journal-memory"),
    pytest.param("journal", 0, id="journal-zero"),
    pytest.param("journal", False, id="journal-false"),
    pytest.param("journal", 1.5, id="journal-float"),
    pytest.param("journal", b"x.db", id="journal-bytes"),
])
def test_engine_refuses_bad_settings_and_journals_naming_field_and_value(
        exchange: PaperExchange, field: str, value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        ExitEngine(exchange, **{field: value})  # type: ignore[arg-type]

    assert caught.value.field == field
    assert_names(caught.value, field, value)


@pytest.mark.parametrize(("field", "value"), [
    pytest.param("max_attempts", 0, id="no-attempts"),
    pytest.param("max_attempts", -1, id="negative-attempts"),
    pytest.param("max_attempts", 1.5, id="fractional-attempts"),
    pytest.param("max_attempts", "2", id="string-attempts"),
    pytest.param("step_ticks", -1, id="negative-step"),
    pytest.param("step_ticks", 1.0, id="float-step"),
    pytest.param("max_slippage", 0.02, id="float-slippage"),
    pytest.param("max_slippage", Decimal("-0.01"), id="negative-slippage"),
    pytest.param("max_slippage", Decimal("NaN"), id="nan-slippage"),
])
def test_retry_policy_refuses_bad_settings_naming_field_and_value(field: str, value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        RetryPolicy(**{field: value})  # type: ignore[arg-type]

    assert caught.value.field == field
    assert_names(caught.value, field, value)

