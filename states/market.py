"""Per-token market rules and the pure price/size arithmetic that depends on them. Validated construction
from an exchange's figures lives with the exchanges (engine/exchange/rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exitguard.states.quantities import MICRO


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What the exchange accepts for one token: price tick, minimum order size, size step."""

    tick_size: Decimal = Decimal("0.01")
    min_order_size: int = 5 * MICRO
    """Micro-shares; a sell below this is refused by the exchange, so a smaller balance is dust."""
    size_step: int = 10_000
    """Micro-shares (0.01 share)."""

    def price_is_on_tick(self, price: Decimal) -> bool:
        return price % self.tick_size == 0


def stepped_down_price(limit_price: Decimal, tick_size: Decimal, ticks: int, floor: Decimal) -> Decimal | None:
    """The limit for a retry `ticks` ticks lower, or None when that would go below `floor` or to 0.

    A retry after a killed FOK may accept a slightly worse price, but never worse than the
    caller's stated maximum slippage: the floor is the caller's, not ours.
    """
    price = limit_price - tick_size * ticks
    if price < floor or price <= 0:
        return None
    return price
