"""The paper exchange as a spec: one behaviour per test.

Permits are built directly (no engine): these tests pin what the exchange itself does with a sell,
a balance read and each injected fault. No real sleeps: latency is observed by replacing `anyio.sleep`.
"""

from __future__ import annotations

from contextlib import nullcontext
from decimal import Decimal
from typing import NamedTuple

import anyio
import anyio.lowlevel
import pytest

import exitguard.exchange.paper
from exitguard import ManualClock
from exitguard.errors import (
    ExchangeError,
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.paper import (
    KILLED_MESSAGE,
    NO_BALANCE_MESSAGE,
    OPERATIONS,
    PaperCall,
    PaperExchange,
    SellStatus,
)
from exitguard.exchange.port import Fill, LookupStatus
from exitguard.exchange.rules import market_rules
from exitguard.states import MICRO, InvalidValue, MarketRules, PermitError, SellPermit, shares_to_micro

TOKEN = "tok"


def make_permit(shares: str = "10", *, token: str = TOKEN, verified: str | None = None,
                attempt_id: str = "attempt-1", key: str = "p1", verified_at: float = 1_000.0) -> SellPermit:
    return SellPermit(
        position_key=key,
        token_id=token,
        shares=shares_to_micro(shares),
        verified_balance=shares_to_micro(verified if verified is not None else shares),
        verified_at=verified_at,
        attempt_id=attempt_id,
    )


@pytest.fixture
def paper(clock: ManualClock) -> PaperExchange:
    """20 shares of "tok" and a book with three levels above 0.59 and one below."""
    exchange = PaperExchange(clock=clock)
    exchange.set_balance(TOKEN, Decimal("20"))
    exchange.set_bids(TOKEN, [
        (Decimal("0.62"), Decimal("4")),
        (Decimal("0.61"), Decimal("5")),
        (Decimal("0.60"), Decimal("100")),
        (Decimal("0.55"), Decimal("100")),
    ])
    return exchange


def operations(paper: PaperExchange) -> list[str]:
    return [call.operation for call in paper.calls]


async def call_operation(paper: PaperExchange, operation: str) -> object:
    """Call one port operation on TOKEN with harmless arguments."""
    if operation == "get_balance":
        return await paper.get_balance(TOKEN)
    if operation == "refresh_balance":
        return await paper.refresh_balance(TOKEN)
    if operation == "market_rules":
        return await paper.market_rules(TOKEN)
    if operation == "sell":
        return await paper.sell(make_permit("10", attempt_id=f"op-{len(paper.calls)}"), Decimal("0.60"))
    if operation == "lookup_sell":
        return await paper.lookup_sell(make_permit("10", attempt_id="never-sent"))
    if operation == "settlement":
        return await paper.settlement(Fill(shares=10 * MICRO, avg_price=Decimal("0.60"), order_id="never-sent",
                                           trade_ids=("t",)))
    raise AssertionError(operation)


# -- the FOK fill model ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fok_fills_completely_against_bids_at_or_above_limit(paper: PaperExchange) -> None:
    fill = await paper.sell(make_permit("10"), Decimal("0.60"))

    # 4 @ 0.62 + 5 @ 0.61 + 1 @ 0.60 = 6.13 for 10 shares
    assert fill == Fill(shares=10_000_000, avg_price=Decimal("0.613"), order_id=fill.order_id)
    assert isinstance(fill.avg_price, Decimal)
    assert fill.avg_price == Decimal("6.13") / Decimal("10")


@pytest.mark.anyio
async def test_fok_fill_consumes_the_bids_it_took_and_leaves_the_rest(paper: PaperExchange) -> None:
    await paper.sell(make_permit("10"), Decimal("0.60"))

    assert paper.bids(TOKEN) == [(Decimal("0.60"), Decimal("99")), (Decimal("0.55"), Decimal("100"))]


@pytest.mark.anyio
async def test_fok_fill_reduces_the_balance_by_exactly_the_shares_sold(paper: PaperExchange) -> None:
    await paper.sell(make_permit("10.37", verified="20"), Decimal("0.60"))

    assert paper.balance(TOKEN) == Decimal("9.63")
    assert await paper.get_balance(TOKEN) == "9630000"


@pytest.mark.anyio
async def test_fok_fills_against_a_bid_exactly_at_the_limit(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance(TOKEN, "10")
    paper.set_bids(TOKEN, [(Decimal("0.55"), Decimal("10"))])

    fill = await paper.sell(make_permit("10"), Decimal("0.55"))

    assert fill.avg_price == Decimal("0.55")
    assert paper.bids(TOKEN) == []


@pytest.mark.anyio
async def test_fok_with_no_book_at_all_is_killed(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance(TOKEN, "10")

    with pytest.raises(OrderKilled):
        await paper.sell(make_permit("10"), Decimal("0.50"))
    assert paper.balance(TOKEN) == Decimal("10")


# -- market rules ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sell_off_a_coarser_market_tick_is_rejected(paper: PaperExchange) -> None:
    paper.set_market(TOKEN, tick_size="0.1")

    with pytest.raises(OrderRejected, match="tick size rule: 0.1"):
        await paper.sell(make_permit("10", attempt_id="a"), Decimal("0.55"))
    fill = await paper.sell(make_permit("10", attempt_id="b"), Decimal("0.6"))
    assert fill.shares == 10_000_000


@pytest.mark.anyio
async def test_market_minimum_order_size_is_per_token(paper: PaperExchange) -> None:
    paper.set_market(TOKEN, min_order_size="2")

    fill = await paper.sell(make_permit("3", verified="20"), Decimal("0.60"))

    assert fill.shares == 3_000_000


@pytest.mark.anyio
async def test_market_rules_answers_the_token_rules_or_the_default(paper: PaperExchange) -> None:
    paper.set_market("other", tick_size="0.001", min_order_size="1")

    assert await paper.market_rules(TOKEN) == MarketRules()
    assert await paper.market_rules("other") == market_rules(tick_size="0.001", min_order_size="1")


# -- balance -------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_get_balance_answers_raw_six_decimal_units_as_a_string(paper: PaperExchange) -> None:
    paper.set_balance("fee-eaten", Decimal("4.8935"))

    assert await paper.get_balance(TOKEN) == "20000000"
    assert await paper.get_balance("fee-eaten") == "4893500"
    assert await paper.get_balance("never-held") == "0"


# -- definite refusals ------------------------------------------------------------------------------


class Refusal(NamedTuple):
    """A sell the exchange answers with a definite no (HTTP 400), and what its message says."""

    balance: str
    shares: str
    limit_price: str
    error: type[ExchangeError]
    says: tuple[str, ...]
    """Words the message contains; with `word_for_word`, the one message it is, in the exchange's wording."""
    word_for_word: bool = False


REFUSALS = [
    # 4 + 5 shares rest at or above 0.61; the 100 at 0.60 and 0.55 are below the limit.
    pytest.param(Refusal("20", "10", "0.61", OrderKilled, (KILLED_MESSAGE,), word_for_word=True),
                 id="killed-short-liquidity"),
    pytest.param(Refusal("20", "10", "0.555", OrderRejected, ("tick size", "0.555")), id="off-default-tick"),
    pytest.param(Refusal("20", "4.99", "0.60", OrderRejected, ("lower than the minimum: 5",)), id="below-minimum"),
    pytest.param(Refusal("20", "4", "0.60", OrderRejected, ("lower than the minimum: 5",)), id="below-minimum-whole"),
    pytest.param(Refusal("20", "5.005", "0.60", OrderRejected, ("steps of 0.01",)), id="off-size-step"),
    pytest.param(Refusal("8", "10", "0.60", InsufficientBalance, (NO_BALANCE_MESSAGE,), word_for_word=True),
                 id="above-the-balance"),
]


@pytest.mark.anyio
@pytest.mark.parametrize("refusal", REFUSALS)
async def test_refused_sell_is_a_definite_400_that_consumes_nothing(paper: PaperExchange, refusal: Refusal) -> None:
    paper.set_balance(TOKEN, refusal.balance)
    book = paper.bids(TOKEN)

    with pytest.raises(refusal.error) as caught:
        await paper.sell(make_permit(refusal.shares), Decimal(refusal.limit_price))

    if refusal.word_for_word:
        assert (str(caught.value),) == refusal.says
    for words in refusal.says:
        assert words in str(caught.value)
    assert caught.value.status == 400
    assert caught.value.definitely_not_filled is True
    assert paper.bids(TOKEN) == book
    assert paper.balance(TOKEN) == Decimal(refusal.balance)
    assert await paper.get_balance(TOKEN) == str(shares_to_micro(refusal.balance))


def test_refusal_messages_are_the_exchange_wording() -> None:
    assert KILLED_MESSAGE == "order couldn't be fully filled. FOK orders are fully filled or killed."
    assert NO_BALANCE_MESSAGE == "not enough balance / allowance"


# -- what the exchange records ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_calls_record_every_call_in_order_with_its_token(paper: PaperExchange) -> None:
    await paper.market_rules(TOKEN)
    await paper.get_balance(TOKEN)
    await paper.refresh_balance("other")
    await paper.sell(make_permit("10"), Decimal("0.60"))
    await paper.lookup_sell(make_permit("10"))

    assert paper.calls == [
        PaperCall("market_rules", TOKEN),
        PaperCall("get_balance", TOKEN),
        PaperCall("refresh_balance", "other"),
        PaperCall("sell", TOKEN),
        PaperCall("lookup_sell", TOKEN),
    ]


@pytest.mark.anyio
async def test_calls_record_calls_that_failed(paper: PaperExchange) -> None:
    paper.fail_next("get_balance")

    with pytest.raises(TransientError):
        await paper.get_balance(TOKEN)

    assert paper.calls == [PaperCall("get_balance", TOKEN)]


@pytest.mark.anyio
async def test_sells_record_every_sell_received_with_its_status(paper: PaperExchange) -> None:
    fill = await paper.sell(make_permit("5", verified="20", attempt_id="filled"), Decimal("0.60"))
    with pytest.raises(OrderKilled):
        await paper.sell(make_permit("10", attempt_id="killed"), Decimal("0.62"))
    with pytest.raises(OrderRejected):
        await paper.sell(make_permit("10", attempt_id="off-tick"), Decimal("0.605"))
    with pytest.raises(InsufficientBalance):
        await paper.sell(make_permit("50", attempt_id="too-many"), Decimal("0.60"))

    assert [(sell.attempt_id, sell.status) for sell in paper.sells] == [
        ("filled", SellStatus.FILLED),
        ("killed", SellStatus.KILLED),
        ("off-tick", SellStatus.REJECTED),
        ("too-many", SellStatus.REJECTED),
    ]
    filled, killed, rejected, refused = paper.sells
    assert (filled.token_id, filled.shares, filled.limit_price) == (TOKEN, Decimal("5"), Decimal("0.60"))
    # 4 @ 0.62 + 1 @ 0.61
    assert (filled.avg_price, filled.order_id, filled.error) == (Decimal("0.618"), fill.order_id, None)
    assert killed.error == KILLED_MESSAGE and killed.avg_price is None
    assert "tick size" in (rejected.error or "")
    assert refused.error == NO_BALANCE_MESSAGE
    assert len({sell.order_id for sell in paper.sells}) == 4


# -- permits -----------------------------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize(("shares", "first_price", "first_error", "second", "second_price", "held"), [
    pytest.param("5", "0.60", None, "same", "0.60", "15", id="reused-after-a-fill"),
    pytest.param("10", "0.62", OrderKilled, "same", "0.55", "20", id="reused-after-a-kill"),
    pytest.param("5", "0.60", None, "copy", "0.60", "15", id="copied-after-a-fill"),
])
async def test_a_spent_permit_is_refused_and_nothing_sold(
        paper: PaperExchange, shares: str, first_price: str, first_error: type[Exception] | None, second: str,
        second_price: str, held: str) -> None:
    permit = make_permit(shares, verified="20", attempt_id="same")
    with pytest.raises(first_error) if first_error else nullcontext():
        await paper.sell(permit, Decimal(first_price))
    balance, book = paper.balance(TOKEN), paper.bids(TOKEN)
    again = permit if second == "same" else make_permit(shares, verified="20", attempt_id="same")

    with pytest.raises(PermitError, match="already used"):
        await paper.sell(again, Decimal(second_price))

    assert paper.balance(TOKEN) == balance == Decimal(held)
    assert paper.bids(TOKEN) == book
    assert len(paper.sells) == 1


@pytest.mark.anyio
@pytest.mark.parametrize("not_a_permit", [Decimal("10"), 10_000_000, "tok", None,
                                          {"token_id": TOKEN, "shares": 10_000_000}],
                         ids=["decimal", "int", "str", "none", "dict"])
async def test_a_non_permit_sell_argument_is_refused_before_anything_is_sent(
        paper: PaperExchange, not_a_permit: object) -> None:
    with pytest.raises(PermitError, match="needs a SellPermit"):
        await paper.sell(not_a_permit, Decimal("0.60"))  # type: ignore[arg-type]

    assert paper.calls == []
    assert paper.sells == []
    assert paper.balance(TOKEN) == Decimal("20")


def test_a_permit_cannot_exceed_its_verified_balance() -> None:
    with pytest.raises(PermitError):
        make_permit("10", verified="9.99")


# -- fault: fail_next ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fail_next_fails_exactly_count_calls_then_behaves(paper: PaperExchange) -> None:
    paper.fail_next("get_balance", 2)

    for _ in range(2):
        with pytest.raises(TransientError):
            await paper.get_balance(TOKEN)
    assert await paper.get_balance(TOKEN) == "20000000"
    assert operations(paper) == ["get_balance"] * 3


@pytest.mark.anyio
async def test_fail_next_default_error_is_a_transient_503(paper: PaperExchange) -> None:
    paper.fail_next("market_rules")

    with pytest.raises(TransientError) as caught:
        await paper.market_rules(TOKEN)

    assert caught.value.status == 503
    assert caught.value.definitely_not_filled is True


@pytest.mark.anyio
async def test_fail_next_raises_the_given_error(paper: PaperExchange) -> None:
    error = UnknownOutcome("connection dropped")
    paper.fail_next("lookup_sell", 1, error)

    with pytest.raises(UnknownOutcome) as caught:
        await paper.lookup_sell(make_permit())

    assert caught.value is error


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_fail_next_applies_to_each_operation_and_only_to_it(paper: PaperExchange, operation: str) -> None:
    paper.fail_next(operation)
    others = [op for op in OPERATIONS if op != operation]

    for other in others:
        await call_operation(paper, other)
    with pytest.raises(TransientError):
        await call_operation(paper, operation)
    await call_operation(paper, operation)


@pytest.mark.anyio
async def test_a_failed_sell_executes_nothing(paper: PaperExchange) -> None:
    paper.fail_next("sell")
    book = paper.bids(TOKEN)
    permit = make_permit("10")

    with pytest.raises(TransientError):
        await paper.sell(permit, Decimal("0.60"))

    assert paper.sells == []
    assert paper.balance(TOKEN) == Decimal("20")
    assert paper.bids(TOKEN) == book
    assert operations(paper) == ["sell"]
    assert (await paper.lookup_sell(permit)).status is LookupStatus.NOT_FOUND


@pytest.mark.parametrize(("operation", "count", "field", "value"), [
    pytest.param("buy", 1, "operation", "buy", id="operation-buy"),
    pytest.param("post_order", 1, "operation", "post_order", id="operation-post-order"),
    pytest.param("", 1, "operation", "", id="operation-empty"),
    pytest.param("Sell", 1, "operation", "Sell", id="operation-capitalised"),
    pytest.param("sell", 0, "count", 0, id="count-zero"),
    pytest.param("sell", -1, "count", -1, id="count-negative"),
    pytest.param("sell", 1.5, "count", 1.5, id="count-fractional"),
    pytest.param("sell", "2", "count", "2", id="count-string"),
])
def test_fail_next_refuses_a_bad_argument_naming_it(
        paper: PaperExchange, operation: str, count: object, field: str, value: object) -> None:
    with pytest.raises(InvalidValue) as caught:
        paper.fail_next(operation, count)  # type: ignore[arg-type]

    assert caught.value.field == field
    assert caught.value.value == value
    assert field in str(caught.value) and repr(value) in str(caught.value)


@pytest.mark.anyio
async def test_a_refused_fail_next_queues_no_failure(paper: PaperExchange) -> None:
    with pytest.raises(InvalidValue):
        paper.fail_next("get_balance", 0)

    assert await paper.get_balance(TOKEN) == "20000000"


# -- fault: lag_balance ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_lagged_balance_shows_a_change_only_after_the_delay(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance(TOKEN, "10")
    paper.lag_balance(TOKEN, 5)

    paper.set_balance(TOKEN, "20")
    assert await paper.get_balance(TOKEN) == "10000000"
    clock.advance(4)
    assert await paper.get_balance(TOKEN) == "10000000"
    clock.advance(1)
    assert await paper.get_balance(TOKEN) == "20000000"
    assert paper.balance(TOKEN) == Decimal("20")


@pytest.mark.anyio
async def test_lagged_balance_shows_a_change_at_once_after_refresh(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance(TOKEN, "10")
    paper.lag_balance(TOKEN, 5)
    paper.set_balance(TOKEN, "20")

    await paper.refresh_balance(TOKEN)

    assert await paper.get_balance(TOKEN) == "20000000"


@pytest.mark.anyio
async def test_balance_lag_without_delay_clears_only_on_refresh(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance(TOKEN, "10")
    paper.lag_balance(TOKEN, None)

    paper.set_balance(TOKEN, "0")
    clock.advance(86_400)
    assert await paper.get_balance(TOKEN) == "10000000"

    await paper.refresh_balance(TOKEN)
    assert await paper.get_balance(TOKEN) == "0"

    paper.set_balance(TOKEN, "7")
    clock.advance(86_400)
    assert await paper.get_balance(TOKEN) == "0"


@pytest.mark.anyio
async def test_lagged_balance_hides_a_fill_until_refresh(paper: PaperExchange) -> None:
    paper.lag_balance(TOKEN, None)

    await paper.sell(make_permit("10", verified="20"), Decimal("0.60"))

    assert paper.balance(TOKEN) == Decimal("10")
    assert await paper.get_balance(TOKEN) == "20000000"
    await paper.refresh_balance(TOKEN)
    assert await paper.get_balance(TOKEN) == "10000000"


@pytest.mark.anyio
async def test_a_lagged_stale_balance_never_lets_a_sell_exceed_the_chain(paper: PaperExchange) -> None:
    paper.lag_balance(TOKEN, None)
    paper.set_balance(TOKEN, "5")
    assert await paper.get_balance(TOKEN) == "20000000"

    with pytest.raises(InsufficientBalance):
        await paper.sell(make_permit("10", verified="20"), Decimal("0.60"))
    assert paper.balance(TOKEN) == Decimal("5")


@pytest.mark.anyio
async def test_balance_lag_is_per_token(paper: PaperExchange) -> None:
    paper.set_balance("other", "1")
    paper.lag_balance(TOKEN, None)

    paper.set_balance("other", "2")

    assert await paper.get_balance("other") == "2000000"


# -- fault: lost sell response ---------------------------------------------------------------------


@pytest.mark.anyio
async def test_lost_sell_response_executes_the_sell_but_answers_unknown(paper: PaperExchange) -> None:
    paper.lose_next_sell_response()

    with pytest.raises(UnknownOutcome) as caught:
        await paper.sell(make_permit("10", verified="20"), Decimal("0.60"))

    assert caught.value.definitely_not_filled is False
    assert paper.balance(TOKEN) == Decimal("10")
    assert [sell.status for sell in paper.sells] == [SellStatus.FILLED]


@pytest.mark.anyio
async def test_lookup_after_a_lost_response_reports_the_fill(paper: PaperExchange) -> None:
    permit = make_permit("10", verified="20")
    paper.lose_next_sell_response()
    with pytest.raises(UnknownOutcome):
        await paper.sell(permit, Decimal("0.60"))

    lookup = await paper.lookup_sell(permit)

    assert lookup.status is LookupStatus.FILLED
    assert lookup.fill == Fill(shares=10_000_000, avg_price=Decimal("0.613"), order_id=paper.sells[0].order_id)


@pytest.mark.anyio
async def test_lost_sell_response_affects_only_the_next_count_sells(paper: PaperExchange) -> None:
    paper.lose_next_sell_response(count=1)
    with pytest.raises(UnknownOutcome):
        await paper.sell(make_permit("5", verified="20", attempt_id="a"), Decimal("0.60"))

    fill = await paper.sell(make_permit("5", verified="15", attempt_id="b"), Decimal("0.60"))

    assert fill.shares == 5_000_000
    assert paper.balance(TOKEN) == Decimal("10")


@pytest.mark.anyio
async def test_lookup_reports_not_filled_for_a_killed_sell(paper: PaperExchange) -> None:
    permit = make_permit("10")
    with pytest.raises(OrderKilled):
        await paper.sell(permit, Decimal("0.62"))

    lookup = await paper.lookup_sell(permit)

    assert lookup.status is LookupStatus.NOT_FILLED
    assert lookup.fill is None


@pytest.mark.anyio
async def test_lookup_reports_not_found_for_a_sell_never_received(paper: PaperExchange) -> None:
    lookup = await paper.lookup_sell(make_permit("10", attempt_id="never"))

    assert lookup.status is LookupStatus.NOT_FOUND
    assert lookup.fill is None


# -- fault: corrupt balance ------------------------------------------------------------------------


@pytest.mark.anyio
async def test_corrupt_balance_is_returned_as_is_once_then_the_real_balance(paper: PaperExchange) -> None:
    marker = object()
    for raw in ("-5", None, marker):
        paper.corrupt_next_balance(TOKEN, raw)

    assert await paper.get_balance(TOKEN) == "-5"
    assert await paper.get_balance(TOKEN) is None
    assert await paper.get_balance(TOKEN) is marker
    assert await paper.get_balance(TOKEN) == "20000000"


@pytest.mark.anyio
async def test_corrupt_balance_is_per_token(paper: PaperExchange) -> None:
    paper.set_balance("other", "3")
    paper.corrupt_next_balance(TOKEN, "NaN")

    assert await paper.get_balance("other") == "3000000"
    assert await paper.get_balance(TOKEN) == "NaN"


@pytest.mark.anyio
async def test_corrupt_balance_changes_nothing_held(paper: PaperExchange) -> None:
    paper.corrupt_next_balance(TOKEN, "abc")
    await paper.get_balance(TOKEN)

    assert paper.balance(TOKEN) == Decimal("20")
    fill = await paper.sell(make_permit("20"), Decimal("0.55"))
    assert fill.shares == 20_000_000


# -- latency ---------------------------------------------------------------------------------------


@pytest.fixture
def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Replace `anyio.sleep` as engine.paper sees it: record the duration, yield, never sleep."""
    sleeps: list[float] = []
    checkpoint = anyio.lowlevel.checkpoint

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        await checkpoint()

    monkeypatch.setattr(exitguard.exchange.paper.anyio, "sleep", fake_sleep)
    return sleeps


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_latency_waits_half_before_and_half_after_every_call(
        paper: PaperExchange, recorded_sleeps: list[float], operation: str) -> None:
    paper.latency = 0.05

    await call_operation(paper, operation)

    assert recorded_sleeps == [0.025, 0.025]
    assert recorded_sleeps == [paper.latency / 2, paper.latency / 2]


@pytest.mark.anyio
async def test_latency_splits_around_the_moment_the_exchange_acts(
        paper: PaperExchange, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[float, Decimal]] = []
    checkpoint = anyio.lowlevel.checkpoint

    async def fake_sleep(seconds: float) -> None:
        seen.append((seconds, paper.balance(TOKEN)))
        await checkpoint()

    monkeypatch.setattr(exitguard.exchange.paper.anyio, "sleep", fake_sleep)
    paper.latency = 0.2

    await paper.sell(make_permit("10", verified="20"), Decimal("0.60"))

    assert seen == [(0.1, Decimal("20")), (0.1, Decimal("10"))]


@pytest.mark.anyio
async def test_latency_applies_to_every_call_of_a_sequence(
        paper: PaperExchange, recorded_sleeps: list[float]) -> None:
    paper.latency = 0.05

    for operation in OPERATIONS:
        await call_operation(paper, operation)

    assert recorded_sleeps == [0.025] * (2 * len(OPERATIONS))


@pytest.mark.anyio
@pytest.mark.parametrize("operation", OPERATIONS)
async def test_zero_latency_still_yields_via_a_checkpoint_on_every_call(
        paper: PaperExchange, recorded_sleeps: list[float], monkeypatch: pytest.MonkeyPatch,
        operation: str) -> None:
    checkpoints: list[str] = []
    real_checkpoint = anyio.lowlevel.checkpoint

    async def counting_checkpoint() -> None:
        checkpoints.append(operation)
        await real_checkpoint()

    monkeypatch.setattr(exitguard.exchange.paper.anyio.lowlevel, "checkpoint", counting_checkpoint)
    assert paper.latency == 0

    await call_operation(paper, operation)

    assert recorded_sleeps == []
    assert len(checkpoints) == 2


@pytest.mark.anyio
async def test_zero_latency_call_lets_another_task_run_before_it_returns(paper: PaperExchange) -> None:
    order: list[str] = []

    async def balance_read() -> None:
        await paper.get_balance(TOKEN)
        order.append("balance read returned")

    async def other_task() -> None:
        order.append("other task ran")

    async with anyio.create_task_group() as group:
        group.start_soon(balance_read)
        group.start_soon(other_task)

    assert order == ["other task ran", "balance read returned"]


def test_exchange_errors_share_one_base(paper: PaperExchange) -> None:
    for error in (OrderKilled, OrderRejected, InsufficientBalance, TransientError, UnknownOutcome):
        assert issubclass(error, ExchangeError)
