"""The journal's audit after an unclean stop, through the real py-clob-client-v2 against the fake CLOB (issue 11 B.8).

The adapter's `our_sells_since` reads GET /data/trades filtered by our address and `after`, page by page until
"LTE=" (exchange/polymarket/history.py); here with one trade per page, so that a sale's several trades span pages.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit.lost_writes import cut_back_to, row_of, stop_uncleanly
from fakeclob import FakeClob

from exitguard import ExitEngine, ExitOutcome, JournalError, Position, TransientError, UnjournaledSales
from exitguard.exchange.polymarket.history import SalesPages, our_sold_orders
from exitguard.journal.audit import CLOCK_SKEW
from exitguard.polymarket import PolymarketExchange

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
OTHER = "52114319501245915516055106046884209969926127482827954674443846427813813222426"

pytestmark = pytest.mark.anyio


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        for token in (TOKEN, OTHER):
            fake.add_market(token, tick_size="0.01", min_order_size="5")
            # Two levels: a sale of 10 shares is two trades, each on a page of its own.
            fake.set_bids(token, [(Decimal("0.60"), Decimal("4")), (Decimal("0.59"), Decimal("100"))])
            fake.set_balance(token, Decimal("10"))
        fake.trades_page_size = 1
        yield fake


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def engine_on(clob: FakeClob, path: Path) -> ExitEngine:
    """A fresh adapter, as a restarted process has: it knows no order it signed before."""
    return ExitEngine(PolymarketExchange(clob.client(), call_timeout=5.0), journal=path, settlement_poll_interval=None)


async def sell_then_crash(clob: FakeClob, path: Path) -> tuple[tuple[Any, ...], str]:
    async with engine_on(clob, path) as engine:
        engine.track(Position(key="p0", token_id=OTHER, shares=Decimal("10")))
        engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
        tracked = row_of(path, "p1")
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.CLOSED and result.order_id is not None
        stop_uncleanly(engine)
    return tracked, result.order_id


def audit_queries(clob: FakeClob) -> list[dict[str, str]]:
    return [r.query for r in clob.requests if (r.method, r.path) == ("GET", "/data/trades")]


async def test_a_sale_the_journal_forgot_refuses_the_start_through_the_real_client(clob: FakeClob,
                                                                                  path: Path) -> None:
    tracked, order_id = await sell_then_crash(clob, path)
    cut_back_to(path, "p1", tracked)
    assert len([t for t in clob.trades if t["taker_order_id"] == order_id]) == 2
    clob.reset_requests()

    with pytest.raises(UnjournaledSales) as refused:
        async with engine_on(clob, path):
            pytest.fail("the engine started on a journal that forgot a sale")

    assert refused.value.orders == (order_id,)
    queries = audit_queries(clob)
    assert len(queries) == 2  # one trade per page, until "LTE="
    signed_as = clob.client().builder.funder  # our orders' `maker`, checksummed as the client signs it
    assert all(q["maker_address"] == signed_as for q in queries)
    assert int(queries[0]["after"]) <= int((datetime.now(UTC) - CLOCK_SKEW).timestamp())
    assert clob.count("POST", "/order") == 0  # nothing was sent


async def test_an_unclean_start_with_every_sale_journaled_starts_through_the_real_client(clob: FakeClob,
                                                                                        path: Path) -> None:
    await sell_then_crash(clob, path)

    async with engine_on(clob, path) as engine:
        assert engine.states() == {"p0": "OPEN", "p1": "CLOSED"}
    assert len(audit_queries(clob)) == 2


async def test_a_failed_trade_page_at_an_unclean_start_refuses_through_the_real_client(clob: FakeClob,
                                                                                      path: Path) -> None:
    await sell_then_crash(clob, path)
    clob.fail_next(1, 503, path="/data/trades")

    with pytest.raises(JournalError, match="a failed query is not an empty one"):
        async with engine_on(clob, path):
            pass


@pytest.mark.parametrize(("trade", "ours"), [
    ({"side": "SELL", "trader_side": "TAKER", "taker_order_id": "0xa", "maker_orders": []}, ["0xa"]),
    ({"side": "SELL", "taker_order_id": "0xa"}, ["0xa"]),  # no trader_side: read as the taker, the wider reading
    ({"side": "BUY", "trader_side": "TAKER", "taker_order_id": "0xa"}, []),  # our own buy
    ({"side": "BUY", "trader_side": "MAKER", "taker_order_id": "0xtheirs",
      "maker_orders": [{"order_id": "0xb", "maker_address": "0xUS", "side": "SELL"},
                       {"order_id": "0xc", "maker_address": "0xother", "side": "SELL"}]}, ["0xb"]),
])
def test_our_sold_orders_in_a_trade(trade: dict[str, Any], ours: list[str]) -> None:
    assert our_sold_orders(trade, "0xus") == ours


@pytest.mark.parametrize("trade", ["not a trade", {"side": "SELL", "trader_side": "TAKER", "taker_order_id": ""}])
def test_an_unreadable_sale_fails_the_query(trade: object) -> None:
    with pytest.raises(TransientError, match="trade audit"):
        our_sold_orders(trade, "0xus")


@pytest.mark.parametrize("page", [
    {"next_cursor": "LTE="},  # no data: the client's get_trades_paginated would read it as an empty page
    {"data": [], "next_cursor": None},
    {"error": "Invalid trade params payload"},
    "<html>502 Bad Gateway</html>",
])
def test_an_unreadable_trades_page_fails_the_query(page: object) -> None:
    with pytest.raises(TransientError, match="page 1 is unreadable"):
        SalesPages("0xus").read(page)


def test_a_trade_history_that_does_not_end_fails_the_query() -> None:
    pages = SalesPages("0xus")
    pages.read({"data": [], "next_cursor": "MQ=="})
    with pytest.raises(TransientError, match="did not end"):
        pages.read({"data": [], "next_cursor": "MQ=="})
