"""Per-token market rules and the pure price/size arithmetic that depends on them."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exitguard.states.errors import InvalidValue
from exitguard.states.quantities import MICRO, parse_price, shares_to_micro

POLYMARKET_SIZE_STEP = Decimal("0.01")
"""Order sizes round down to 0.01 share on Polymarket."""

TICK_SIZES = (Decimal("0.1"), Decimal("0.01"), Decimal("0.005"), Decimal("0.0025"), Decimal("0.001"),
              Decimal("0.0001"))
"""The ticks py-clob-client-v2 can sign for (its ROUNDING_CONFIG)."""


@dataclass(frozen=True, slots=True)
class MarketRules:
    """What the exchange accepts for one token: price tick, minimum order size, size step."""

    tick_size: Decimal = Decimal("0.01")
    min_order_size: int = 5 * MICRO
    """Micro-shares; a sell below this is refused by the exchange, so a smaller balance is dust."""
    size_step: int = 10_000
    """Micro-shares (0.01 share)."""

    @classmethod
    def of(
        cls,
        tick_size: object = Decimal("0.01"),
        min_order_size: object = Decimal("5"),
        size_step: object = POLYMARKET_SIZE_STEP,
    ) -> MarketRules:
        """Build from share quantities (Decimal/int/str), validating every field."""
        tick = parse_price(tick_size, "tick_size")
        if tick not in TICK_SIZES:
            raise InvalidValue("tick_size", tick_size, f"must be one of {', '.join(map(str, TICK_SIZES))}")
        minimum = shares_to_micro(min_order_size, "min_order_size")
        step = shares_to_micro(size_step, "size_step")
        if step <= 0:
            raise InvalidValue("size_step", size_step, "must be positive")
        if minimum < 0:
            raise InvalidValue("min_order_size", min_order_size, "must not be negative")
        return cls(tick_size=tick, min_order_size=minimum, size_step=step)

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
