"""What the paper exchange's order lookups can see, and the faults that make a lookup find nothing.

The real exchange is not a perfect witness of our own orders: an order can reach it after its request was
answered (or after the answer was lost), a filled order drops out of `/data/order` (py-clob-client #217) so
that only the trades show it, a trade can show late, and a trade query can fail. The paper exchange models
each, so that the engine's rule ("a lookup that finds nothing is not a no") is tested where it matters:
- `arrive_late(seconds)`: the next sell reaches the exchange `seconds` later (paper clock); its caller's
  answer is lost at once, and until it arrives nothing of it is found;
- `hide_filled_orders()`: filled orders are not found by the order lookup; the trade query is the witness;
- `lag_trades(seconds)`: a fill's trade shows in the trade query only `seconds` after the fill;
- `fail_next_trade_query(count)`: the trade query of the next lookups fails (raises), which is no empty answer.

The same trade history answers the port's optional `our_sells_since` (the audit of a journal after an unclean stop,
exitguard.journal.audit), with the same faults: `PaperTradeAudit`, a base of the paper exchange.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from exitguard.errors import ExchangeError, TransientError
from exitguard.settings import parse_count, parse_seconds
from exitguard.states import SellPermit


@dataclass(frozen=True, slots=True)
class LateOrder:
    permit: SellPermit
    limit_price: Decimal
    arrives_at: float
    """Monotonic seconds on the paper exchange's clock."""


class PaperOrderView:
    """The lookup side of the paper exchange: late orders on their way, and what a lookup may see."""

    def __init__(self, now: Callable[[], float], wall: Callable[[], datetime] | None = None) -> None:
        self.now = now
        self.wall = wall or (lambda: datetime.now(UTC))
        self._filled_wall: dict[str, datetime] = {}
        """Order id -> when it filled, on the wall clock (what the exchange's trade history is dated by)."""
        self.hide_filled = False
        self.trade_lag = 0.0
        self._late_next: deque[float] = deque()
        self._late: list[LateOrder] = []
        self._filled_at: dict[str, float] = {}
        self._trade_failures: deque[ExchangeError] = deque()

    # -- switches ----------------------------------------------------------------------------------

    def arrive_late(self, seconds: float, count: int = 1) -> None:
        parse_seconds(seconds, "seconds")
        parse_count(count, "count")
        self._late_next.extend([seconds] * count)

    def fail_next_trade_query(self, count: int = 1, error: ExchangeError | None = None) -> None:
        parse_count(count, "count")
        for _ in range(count):
            self._trade_failures.append(error or TransientError("paper: trade query failed", status=503))

    def lag_trades(self, seconds: float) -> None:
        self.trade_lag = parse_seconds(seconds, "seconds", allow_zero=True)

    # -- the exchange's side -----------------------------------------------------------------------

    def delay(self, permit: SellPermit, limit_price: Decimal) -> bool:
        """Whether this sell arrives late: if so it is kept until due, and the caller's answer is lost."""
        if not self._late_next:
            return False
        self._late.append(LateOrder(permit, limit_price, self.now() + self._late_next.popleft()))
        return True

    def due(self) -> list[LateOrder]:
        """Late orders whose time has come, in order of arrival; they are handed over once."""
        now = self.now()
        arrived = sorted((order for order in self._late if order.arrives_at <= now), key=lambda o: o.arrives_at)
        self._late = [order for order in self._late if order.arrives_at > now]
        return arrived

    def filled(self, order_id: str) -> None:
        self._filled_at[order_id] = self.now()
        self._filled_wall[order_id] = self.wall()

    def order_visible(self, order_id: str) -> bool:
        """Whether the order endpoint shows this (known) order."""
        return not (self.hide_filled and order_id in self._filled_at)

    def trade_query(self, order_id: str) -> bool:
        """One trade query for the order: True when a trade of it shows. Raises an injected failure."""
        if self._trade_failures:
            raise self._trade_failures.popleft()
        filled = self._filled_at.get(order_id)
        return filled is not None and self.now() - filled >= self.trade_lag

    def sold_since(self, since: datetime) -> list[str]:
        """One trade query for our sells: the orders with a fill at or after `since` that the trade history shows
        (all of them paper sells), oldest first. Raises an injected failure."""
        if self._trade_failures:
            raise self._trade_failures.popleft()
        now = self.now()
        return [order_id for order_id, at in sorted(self._filled_wall.items(), key=lambda item: item[1])
                if at >= since and now - self._filled_at[order_id] >= self.trade_lag]


class PaperTradeAudit:
    """The paper exchange's `our_sells_since` (exchange/port.py), kept beside the lookups it shares faults with."""

    _orders_view: PaperOrderView

    async def our_sells_since(self, since: datetime) -> list[str]:
        """Ids of our sell orders with a fill at or after `since` (wall clock). `fail_next_trade_query` makes it
        raise; `lag_trades` hides a fill that is too fresh, as for lookups."""
        await self._request("our_sells_since", "")
        await self._reply()
        return self._orders_view.sold_since(since)

    async def _request(self, operation: str, token_id: str) -> None:
        raise NotImplementedError  # the paper exchange's own: late orders arrive, the call is recorded, latency

    async def _reply(self) -> None:
        raise NotImplementedError
