"""Issue 11 A.1 and A.2 through the real py-clob-client-v2 against the fake CLOB.

A.1: an answer the engine cannot read (empty, HTML, `null`, not UTF-8, truncated, nested too deep, a gateway
status, an undocumented message, a 2xx with absurd fields) may hide a fill: UNKNOWN, never a second sell.
A.2: a lookup that finds nothing (a 404, `null`, an empty trade list) is not a "no" until the order can no
longer arrive; a failed or unreadable trade query is not an empty one; both exchange domains (plain and
neg-risk) give the order id the lookup asks for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from fakeclob import FakeClob

from exitguard import ExitEngine, ExitOutcome, ManualClock, Position
from exitguard.exchange.polymarket import reads
from exitguard.exchange.port import LookupStatus
from exitguard.polymarket import PolymarketExchange

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
P = Decimal("0.55")
HORIZON = 30

pytestmark = pytest.mark.anyio


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN)
        yield fake


@pytest.fixture
def clock() -> ManualClock:
    # The fake dates its trades by the real clock, and the adapter queries them by the order's own timestamp:
    # the engine's manual clock starts at the real now, and only the horizon is stepped.
    return ManualClock(datetime.now(UTC))


@pytest.fixture
async def engine(clob: FakeClob, clock: ManualClock) -> AsyncIterator[ExitEngine]:
    exchange = PolymarketExchange(clob.client(), call_timeout=5.0)
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None,
                          resolve_backoff=(3600.0, 3600.0)) as running:
        running.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
        await exchange.warm_up(TOKEN)
        yield running


async def unknown_exit(engine: ExitEngine) -> None:
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    assert (result.outcome, engine.state("p1"), engine.unresolved()) == (ExitOutcome.UNKNOWN, "SELLING", ["p1"])


HTML = b"<html><head><title>502 Bad Gateway</title></head><body>cloudflare</body></html>"
TRUNCATED = b'{"errorMsg":"","orderID":"0xab","takingAmount":"2.61","status":"mat'


@pytest.mark.parametrize(("status", "body"), [
    (200, b"null"), (200, b""), (200, HTML), (200, b"OK"), (200, b"[]"), (200, TRUNCATED),
    (200, b"\xff\xfe\xfa{\"status\": \x80"),            # not UTF-8
    (200, {"success": False, "errorMsg": "could not run the execution"}),
    (200, {"success": False, "errorMsg": "could not insert order"}),
    (200, {"success": False, "errorMsg": "error delaying the order"}),
    (400, b""), (400, HTML), (400, b'{"error": "not enough bal'), (400, {"error": "allowance not set"}),
    (404, "404 page not found"), (408, {"error": "Request Timeout"}),
    (500, {"error": "Internal server error"}), (502, HTML), (504, {"error": "Gateway Timeout"}),
    (503, HTML), (429, HTML), (425, HTML),
], ids=lambda value: str(value)[:24])
async def test_unreadable_sell_answer_is_unknown(clob: FakeClob, engine: ExitEngine, clock: ManualClock,
                                                 status: int, body: object) -> None:
    clob.fail_next(1, status, path="/order", body=body)  # type: ignore[arg-type]
    await unknown_exit(engine)
    assert clob.count("POST", "/order") == 1
    # Never sent again blindly: the exit is refused while the outcome is unknown.
    assert (await engine.exit("p1", reason="again", limit_price=P)).outcome is ExitOutcome.UNKNOWN
    assert clob.count("POST", "/order") == 1
    # The answer came before execution: past the horizon, no order and no trade prove it never filled.
    clock.advance(HORIZON)
    assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED
    assert clob.chain_balance(TOKEN) == 10


@pytest.mark.parametrize("body", [
    "<html>proxy error</html>",
    {"success": True, "errorMsg": "", "status": "matched", "makingAmount": "11", "takingAmount": "6.6"},
    {"success": True, "errorMsg": "", "status": "matched", "makingAmount": "-10", "takingAmount": "6"},
    {"success": True, "errorMsg": "", "status": "matched", "makingAmount": "1e999999999", "takingAmount": "6"},
    {"success": True, "errorMsg": "", "status": "matched", "orderID": "0x" + "cd" * 32, "makingAmount": "10",
     "takingAmount": "6"},
    {"success": True, "errorMsg": "", "status": "settled", "makingAmount": "10", "takingAmount": "6"},
], ids=["html", "more than the order", "negative", "exponent overflow", "another order", "unknown status"])
async def test_an_absurd_answer_after_execution_is_unknown_and_the_lookup_finds_the_fill(
        clob: FakeClob, engine: ExitEngine, body: object) -> None:
    clob.mangle_next_response(200, body)  # type: ignore[arg-type]
    await unknown_exit(engine)
    assert clob.chain_balance(TOKEN) == 0  # it did execute
    settled = await engine.reconcile("p1")
    assert (settled.outcome, settled.shares_sold) == (ExitOutcome.CLOSED, Decimal("10"))
    assert clob.count("POST", "/order") == 1


async def test_a_cut_connection_after_sending_is_unknown(clob: FakeClob, engine: ExitEngine) -> None:
    clob.lose_next_response("/order")
    await unknown_exit(engine)
    assert (await engine.reconcile("p1")).outcome is ExitOutcome.CLOSED


@pytest.mark.parametrize("answer", ["404", "null"])
async def test_lookup_404_falls_through_to_trades(clob: FakeClob, engine: ExitEngine, answer: str) -> None:
    clob.forget_finished_orders = answer  # a filled order drops out of /data/order (py-clob-client #217)
    clob.lose_next_response("/order")
    await unknown_exit(engine)
    settled = await engine.reconcile("p1")
    assert (settled.outcome, engine.state("p1"), settled.shares_sold) == (ExitOutcome.CLOSED, "CLOSED", 10)
    assert clob.count("GET", "/data/trades") >= 1


async def test_lookup_404_of_an_order_that_never_arrived_settles_past_the_horizon(
        clob: FakeClob, engine: ExitEngine, clock: ManualClock) -> None:
    clob.forget_finished_orders = "404"
    clob.fail_next(1, 502, path="/order", body=HTML)
    await unknown_exit(engine)
    assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN  # may still arrive
    clock.advance(HORIZON)
    settled = await engine.reconcile("p1")  # never stuck: the trade query decides
    assert (settled.outcome, engine.state("p1")) == (ExitOutcome.NOT_FILLED, "OPEN")


@pytest.mark.parametrize(("status", "body"), [(500, {"error": "Internal server error"}), (200, "<html></html>"),
                                              (200, {"data": "nope", "next_cursor": "LTE="})])
async def test_failed_trade_query_is_not_empty(clob: FakeClob, engine: ExitEngine, clock: ManualClock,
                                               status: int, body: object) -> None:
    clob.fail_next(1, 502, path="/order", body=HTML)
    await unknown_exit(engine)
    clock.advance(HORIZON)
    clob.fail_next(1, status, path="/data/trades", body=body)  # type: ignore[arg-type]
    failed = await engine.reconcile("p1")
    assert (failed.outcome, engine.state("p1")) == (ExitOutcome.UNKNOWN, "SELLING")
    assert (await engine.reconcile("p1")).outcome is ExitOutcome.NOT_FILLED


async def test_trade_query_reads_every_page(clob: FakeClob, engine: ExitEngine) -> None:
    clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("4")), (Decimal("0.59"), Decimal("3")),
                          (Decimal("0.58"), Decimal("3"))])  # three trades
    clob.trades_page_size = 1
    clob.forget_finished_orders = "null"
    clob.lose_next_response("/order")
    await unknown_exit(engine)
    settled = await engine.reconcile("p1")
    assert (settled.outcome, settled.shares_sold) == (ExitOutcome.CLOSED, Decimal("10"))


async def test_unrecognised_lookup_status_is_unknown(clob: FakeClob, engine: ExitEngine,
                                                     clock: ManualClock) -> None:
    clob.fail_next(1, 502, path="/order", body=HTML)
    await unknown_exit(engine)
    clock.advance(3600)
    clob.mangle_next_response(200, {"status": "ORDER_STATUS_SOMETHING_NEW", "size_matched": "0"},
                              path="/data/order/")
    assert (await engine.reconcile("p1")).outcome is ExitOutcome.UNKNOWN
    assert engine.state("p1") == "SELLING"


@pytest.mark.parametrize("neg_risk", [False, True], ids=["plain", "neg_risk"])
async def test_order_hash_for_neg_risk_domain_is_looked_up(clob: FakeClob, clock: ManualClock,
                                                           neg_risk: bool) -> None:
    clob.add_market(TOKEN, tick_size="0.01", min_order_size="5", neg_risk=neg_risk)
    exchange = PolymarketExchange(clob.client(), call_timeout=5.0)
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None,
                          resolve_backoff=(3600.0, 3600.0)) as engine:
        engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
        clob.lose_next_response("/order")
        await unknown_exit(engine)
        # The id the lookup asks for is the one the exchange computed for the order, in its own domain.
        [order_id] = clob.orders
        settled = await engine.reconcile("p1")
        assert (settled.outcome, settled.order_id) == (ExitOutcome.CLOSED, order_id)
        # And by trades alone, once the order endpoint has forgotten it.
        engine.track(Position(key="p2", token_id=TOKEN, shares=Decimal("10")))
        clob.set_balance(TOKEN, Decimal("10"))
        clob.forget_finished_orders = "404"
        clob.lose_next_response("/order")
        result = await engine.exit("p2", reason="take_profit", limit_price=P)
        assert result.outcome is ExitOutcome.UNKNOWN
        assert (await engine.reconcile("p2")).outcome is ExitOutcome.CLOSED
        assert clob.count("POST", "/order") == 2


def test_a_neg_risk_flag_that_is_not_a_boolean_is_refused() -> None:
    with pytest.raises(Exception, match="neg_risk"):
        reads.market_from_book(TOKEN, {"tick_size": "0.01", "min_order_size": "5", "neg_risk": "false"})


def test_a_trade_window_wide_enough_for_clock_skew() -> None:
    ref = reads.OrderRef("0xab", TOKEN, 10_000_000, signed_at=1_767_225_600)
    assert ref.trades_after == 1_767_225_600 - reads.CLOCK_SKEW and reads.CLOCK_SKEW >= 60


def test_reads_report_what_the_exchange_showed() -> None:
    ref = reads.OrderRef("0xab", TOKEN, 10_000_000)
    killed = {"id": "0xab", "status": "CANCELED_order couldn't be fully filled", "size_matched": "0",
              "original_size": "10", "associate_trades": []}
    assert reads.order_lookup(killed, [], ref).status is LookupStatus.NOT_FILLED
    for status in ("LIVE", "ORDER_STATUS_DELAYED", "SOMETHING_NEW", ""):
        assert reads.order_lookup({**killed, "status": status}, [], ref).status is LookupStatus.PENDING
    assert reads.order_lookup({**killed, "associate_trades": ["t1"]}, [], ref).status is LookupStatus.FILLED
    assert reads.lookup_from_trades([], ref).status is LookupStatus.NOT_FOUND
    theirs = {"id": "t1", "taker_order_id": "0xcd", "size": "10", "price": "0.6", "maker_orders": []}
    assert reads.lookup_from_trades([theirs], ref).status is LookupStatus.NOT_FOUND
    as_maker = {**theirs, "maker_orders": [{"order_id": "0xAB"}]}
    assert reads.lookup_from_trades([as_maker], ref).status is LookupStatus.FILLED
    for unreadable in (None, "", "<html>", {"data": []}, [1, 2]):
        with pytest.raises(Exception, match="unreadable"):
            reads.lookup_from_trades(unreadable, ref)
