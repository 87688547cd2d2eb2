"""Our own sales in the exchange's trade history: the Polymarket side of the journal's audit (exitguard.journal.audit).

GET /data/trades (L2; tests/fakeclob/WIRE.md section 6) filtered by our address (`maker_address`, the trade's own
party: the funder that signs our orders) and `after` (unix seconds, inclusive), read page by page until the cursor
"LTE=". Each page is one request of its own (its own deadline and rate-limit slot), sent by the adapter; the client's
`get_trades` reads every page in one call and takes a page without `data` for an empty one.

Strict on purpose: a failed query is not an empty one. A page that is not an object with a `data` list of trade
objects and a `next_cursor`, a cursor that repeats, more than MAX_PAGES pages, or a sale of ours whose order id is
missing, raises TransientError.

Which orders are ours and sold (a trade reports one taker order and the maker orders it matched):
- the taker's order (`taker_order_id`) when we were the taker (`trader_side` TAKER, or absent) and the taker sold
  (`side` SELL): every exit exitguard sends is a taker FOK;
- a maker order (`maker_orders[].order_id`) of our address whose own `side` is SELL: a resting sell of this wallet.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from py_clob_client_v2.constants import END_CURSOR, INITIAL_CURSOR

from exitguard.errors import TransientError

MAX_PAGES = 1000
"""100,000 trades at the documented page size of 100: past that, the query is refused rather than left half read."""


def trades_query(address: str, since: datetime) -> dict[str, str]:
    """The filter of every page: our address, and trades at or after `since` (whole seconds, rounded down)."""
    after = int(since.timestamp())
    return {"maker_address": address, **({"after": str(after)} if after > 0 else {})}


def page_params(query: dict[str, str], cursor: str) -> dict[str, str]:
    """The query of one GET /data/trades page (the adapter sends it, L2 headers signed over the path without the
    query, as the client signs them)."""
    return {**query, "next_cursor": cursor}


class TradePages:
    """The pages of one GET /data/trades query read so far (the adapter's lookups: a token's trades, a trade by id).
    A page that is not an object with a `data` list, or a cursor that repeats or never ends, fails the query."""

    def __init__(self, what: str, *, first_page_only: bool = False) -> None:
        self.what = what
        self.first_page_only = first_page_only
        self.cursor = INITIAL_CURSOR
        self.done = False
        self.found: list[object] = []
        self._seen = {INITIAL_CURSOR}

    def read(self, page: object) -> None:
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise TransientError(f"{self.what}: unreadable answer {str(page)[:200]}")
        self.found.extend(page["data"])
        cursor = page.get("next_cursor")
        if self.first_page_only or cursor == END_CURSOR:
            self.done = True
        elif not isinstance(cursor, str) or not cursor or cursor in self._seen or len(self._seen) > MAX_PAGES:
            raise TransientError(f"{self.what}: the trade pages did not end after {len(self._seen)} "
                                 f"(cursor {str(cursor)[:40]!r})")
        else:
            self._seen.add(cursor)
            self.cursor = cursor


class SalesPages:
    """The pages read so far: where the next one starts, and the sold orders of ours they showed."""

    def __init__(self, wallet: str) -> None:
        self.wallet = wallet.lower()
        self.cursor = INITIAL_CURSOR
        self.done = False
        self.pages = 0
        self._seen = {INITIAL_CURSOR}
        self._orders: dict[str, None] = {}

    def read(self, page: object) -> None:
        """One page's answer; raises TransientError when it is not one (a failed query is not an empty one)."""
        if not isinstance(page, dict) or not isinstance(page.get("data"), list) \
                or not isinstance(page.get("next_cursor"), str) or not page["next_cursor"]:
            raise TransientError(f"trade audit: page {self.pages + 1} is unreadable: {str(page)[:200]}")
        for trade in page["data"]:
            for order_id in our_sold_orders(trade, self.wallet):
                self._orders.setdefault(order_id)
        self.pages += 1
        cursor = page["next_cursor"]
        if cursor == END_CURSOR:
            self.done = True
        elif cursor in self._seen or self.pages >= MAX_PAGES:
            raise TransientError(f"trade audit: the trade history did not end after {self.pages} pages "
                                 f"(cursor {cursor[:40]!r})")
        self._seen.add(cursor)
        self.cursor = cursor

    def orders(self) -> list[str]:
        return list(self._orders)


def our_sold_orders(trade: object, wallet: str) -> list[str]:
    """The ids of our orders that sold in one trade of /data/trades (see the module for the rule)."""
    if not isinstance(trade, dict):
        raise TransientError(f"trade audit: a trade that is not an object: {str(trade)[:200]}")
    ours: list[str] = []
    taker_side = str(trade.get("trader_side") or "TAKER").upper()
    if taker_side == "TAKER" and str(trade.get("side", "")).upper() == "SELL":
        ours.append(_order_id(trade.get("taker_order_id"), trade))
    for maker in trade.get("maker_orders") or []:
        if isinstance(maker, dict) and str(maker.get("maker_address", "")).lower() == wallet \
                and str(maker.get("side", "")).upper() == "SELL":
            ours.append(_order_id(maker.get("order_id"), trade))
    return ours


def _order_id(value: object, trade: dict[str, Any]) -> str:
    if not isinstance(value, str) or not value:
        raise TransientError(f"trade audit: a sale of ours without its order id: {str(trade)[:200]}")
    return value
