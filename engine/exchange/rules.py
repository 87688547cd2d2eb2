"""Polymarket's order rules as the exchange and py-clob-client-v2 apply them: the ticks the client can sign,
the size step, and `market_rules`, which builds validated `MarketRules` from an exchange's figures.

Client facts, not decisions: they live with the exchanges, and `states/` only reads the MarketRules built here.
"""

from __future__ import annotations

from decimal import Decimal

from exitguard.states import InvalidValue, MarketRules, parse_price, shares_to_micro

POLYMARKET_SIZE_STEP = Decimal("0.01")
"""Order sizes round down to 0.01 share on Polymarket."""

TICK_SIZES = (Decimal("0.1"), Decimal("0.01"), Decimal("0.005"), Decimal("0.0025"), Decimal("0.001"),
              Decimal("0.0001"))
"""The ticks py-clob-client-v2 can sign for (its ROUNDING_CONFIG)."""


def market_rules(
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
    return MarketRules(tick_size=tick, min_order_size=minimum, size_step=step)
