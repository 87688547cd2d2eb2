"""Per-token market rules and the pure price/size arithmetic that depends on them. Validated construction
from an exchange's figures lives with the exchanges (engine/exchange/rules.py)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, Rounded

from exitguard.states.errors import InvalidValue
from exitguard.states.quantities import MICRO, exact, micro_to_shares, parse_price

ROUNDING_DIRECTIONS = ("up", "down")


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

    @property
    def min_order_shares(self) -> Decimal:
        """The minimum order size in shares (`min_order_size` is in micro-shares)."""
        return micro_to_shares(self.min_order_size)

    def round_to_tick(self, price: object, direction: str = "up") -> Decimal:
        """`price` put on this market's tick, exactly (a price on the tick comes back equal).

        A sell limit is the least the seller accepts, so the default rounds UP: the order never sells below the
        price asked. The cost is on the other side: it may go unfilled where the exact price would have filled
        (NOT_FILLED: nothing sold, nothing lost, the position stays OPEN). `direction="down"` accepts up to one
        tick less than asked, for an exit that must get out (a stop loss). Raises InvalidValue naming `price`
        for a price not strictly between 0 and 1 or one that rounds to 0 or 1, and naming `direction` for any
        direction but "up" or "down"."""
        if direction not in ROUNDING_DIRECTIONS:
            raise InvalidValue("direction", direction, 'must be "up" or "down"')
        asked = parse_price(price, "price")
        with exact():
            ticks, remainder = divmod(asked, self.tick_size)
            if remainder and direction == "up":
                ticks += 1
            rounded = ticks * self.tick_size
        if not 0 < rounded < 1:
            raise InvalidValue("price", price, f"rounds {direction} to {rounded} on the tick size {self.tick_size}, "
                                               "outside (0, 1)")
        return rounded


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
