"""Issue 12 point 4 through the real py-clob-client-v2 against the fake CLOB: an exit on a closed market ends as
MARKET_CLOSED without retries (tests/fakeclob/WIRE.md section 2a: GET /book 404 `No orderbook exists for the
requested token id`, POST /order 400 `the orderbook <condition> does not exist`)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import anyio
import pytest
from fakeclob import FakeClob

from exitguard import ExitEngine, ExitOutcome, MarketClosed, Position, RetryPolicy, TransientError
from exitguard.exchange.polymarket import reads
from exitguard.polymarket import PolymarketExchange
from exitguard.states import REDEEM_HINT

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
P = Decimal("0.55")
RETRIES = RetryPolicy(max_attempts=3, step_ticks=1, max_slippage=Decimal("0.05"))

pytestmark = pytest.mark.anyio


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN)
        yield fake


@pytest.fixture
def exchange(clob: FakeClob) -> PolymarketExchange:
    return PolymarketExchange(clob.client(), call_timeout=5.0)


def engine_of(exchange: PolymarketExchange) -> ExitEngine:
    return ExitEngine(exchange, settlement_poll_interval=None, retry=RETRIES)


async def warm_up_failed(logs) -> None:  # noqa: ANN001
    for _ in range(500):
        if logs.named("market_warm_up_failed"):
            return
        await anyio.sleep(0.01)  # the warm-up's GET /book is loopback I/O
    raise AssertionError("the warm-up never failed")


def posts(clob: FakeClob) -> int:
    return sum(1 for r in clob.requests if (r.method, r.path) == ("POST", "/order"))


# -- the worst answers first --------------------------------------------------------------------------

async def test_an_exit_on_a_closed_market_ends_as_market_closed_without_retries(
        clob: FakeClob, exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    clob.close_market(TOKEN)
    async with engine_of(exchange) as engine:
        engine.track(Position("p1", TOKEN, Decimal("10")))
        await warm_up_failed(logs)
        clob.reset_requests()

        result = await engine.exit("p1", reason="take_profit", limit_price=P)

        assert (result.outcome, result.state, result.shares_sold) == (ExitOutcome.MARKET_CLOSED, "OPEN", 0)
        assert result.error is not None and result.error.endswith(REDEEM_HINT)
    assert clob.requests == [], "learned at warm-up: nothing read, nothing sent"
    assert [e["error_type"] for e in logs.named("exit_market_closed")] == ["MarketClosed"]
    assert logs.named("exit_not_filled") == [] and logs.named("exit_retrying") == []


async def test_a_cold_exit_on_a_closed_market_learns_it_from_the_book_and_posts_nothing(
        clob: FakeClob, exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    clob.close_market(TOKEN)
    async with engine_of(exchange) as engine:
        engine.track(Position("p1", TOKEN, Decimal("10")))

        result = await engine.exit("p1", reason="take_profit", limit_price=P)  # before the warm-up ended

        assert result.outcome is ExitOutcome.MARKET_CLOSED and engine.state("p1") == "OPEN"
    assert posts(clob) == 0, "the book is gone: nothing is sent"


async def test_a_book_that_vanishes_after_warm_up_is_refused_once_and_the_next_exit_sends_nothing(
        clob: FakeClob, exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    async with engine_of(exchange) as engine:
        engine.track(Position("p1", TOKEN, Decimal("10")))
        await exchange.warm_up(TOKEN)  # joins the engine's warm-up: the market still trades
        clob.close_market(TOKEN)

        first = await engine.exit("p1", reason="take_profit", limit_price=P)
        clob.reset_requests()
        second = await engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.40"))

        assert first.outcome is ExitOutcome.MARKET_CLOSED and first.attempts == 1
        assert "does not exist" in (first.error or "")
        assert second.outcome is ExitOutcome.MARKET_CLOSED and engine.state("p1") == "OPEN"
    assert clob.requests == [], "a token known closed: the second exit reads and sends nothing"
    assert clob.chain_balance(TOKEN) == Decimal(10)
    assert len(logs.named("exit_market_closed")) == 2


async def test_not_yet_ready_is_a_refusal_not_a_closed_market(clob: FakeClob, exchange: PolymarketExchange,
                                                              logs) -> None:  # noqa: ANN001
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", TOKEN, Decimal("10")))
        await exchange.warm_up(TOKEN)
        clob.market_not_ready(TOKEN)

        first = await engine.exit("p1", reason="take_profit", limit_price=P)
        second = await engine.exit("p1", reason="take_profit", limit_price=P)

    assert first.outcome is ExitOutcome.NOT_FILLED and "not yet ready" in (first.error or "")
    assert second.outcome is ExitOutcome.CLOSED and second.shares_sold == Decimal(10)
    assert logs.named("exit_market_closed") == []


# -- the reads ------------------------------------------------------------------------------------------

def test_only_the_documented_book_gone_404_reads_as_a_closed_market() -> None:
    gone = reads.read_error("order book", 404, {"error": "No orderbook exists for the requested token id"})
    assert isinstance(gone, MarketClosed) and gone.status == 404
    for status, body in [(404, {"error": "market not found"}), (404, "404 page not found"),
                         (400, {"error": "No orderbook exists for the requested token id"}), (None, None),
                         (503, {"error": "Trading is currently disabled."})]:
        assert type(reads.read_error("order book", status, body)) is TransientError, (status, body)


def test_a_book_answer_flagged_closed_is_a_closed_market() -> None:
    book = {"tick_size": "0.01", "min_order_size": "5", "neg_risk": False, "closed": True}
    with pytest.raises(MarketClosed):
        reads.market_from_book(TOKEN, book)
    assert reads.market_from_book(TOKEN, {**book, "closed": False}).rules.min_order_shares == Decimal(5)
