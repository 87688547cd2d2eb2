"""Per-token market rules and the pure price/size arithmetic that depends on them. Validated construction
from an exchange's figures lives with the exchanges (engine/exchange/rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, Rounded

from exitguard.states.quantities import MICRO, exact


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What the exchange accepts for one token: price tick, minimum order size, size step."""

    tick_size: Decimal = Decimal("0.01")
    min_order_size: int = 5 * MICRO
    """Micro-shares; a sell below this is refused by the exchange, so a smaller balance is dust."""
    size_step: int = 10_000
    """Micro-shares (0.01 share)."""

    def price_is_on_tick(self, price: Decimal) -> bool:
        try:
            with exact() as context:
                remainder = price % self.tick_size
        except InvalidOperation:  # a quotient past 60 digits: no price of a real market
            return False
        # A remainder that had to round (1E-999999999 underflows to 0) is no proof of a price on the tick.
        return remainder == 0 and not context.flags[Rounded]


def stepped_down_price(limit_price: Decimal, tick_size: Decimal, ticks: int, floor: Decimal) -> Decimal | None:
    """The limit for a retry `ticks` ticks lower, or None when that would go below `floor` or to 0.

    A retry after a killed FOK may accept a slightly worse price, but never worse than the
    caller's stated maximum slippage: the floor is the caller's, not ours.
    """
    with exact():
        price = limit_price - tick_size * ticks
    if price < floor or price <= 0:
        return None
    return price
