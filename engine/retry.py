"""What happens after a killed FOK: how many fresh attempts, and at what price."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from exitguard.settings import parse_count
from exitguard.states import InvalidValue, exact, shares_to_micro, stepped_down_price


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` counts sells tried by one `exit()` call, each after its own fresh verification.

    With `step_ticks` > 0, each retry lowers the limit by that many ticks, never below
    `limit_price - max_slippage`: a retry may accept a slightly worse price, never an unbounded one.
    """

    max_attempts: int = 1
    step_ticks: int = 0
    max_slippage: Decimal = field(default=Decimal(0))

    def __post_init__(self) -> None:
        parse_count(self.max_attempts, "max_attempts")
        parse_count(self.step_ticks, "step_ticks", minimum=0)
        shares_to_micro(self.max_slippage, "max_slippage")  # exact Decimal check
        if self.max_slippage < 0:
            raise InvalidValue("max_slippage", self.max_slippage, "must not be negative")

    def next_price(self, first_limit: Decimal, current: Decimal, tick_size: Decimal) -> Decimal | None:
        """Limit for the next attempt, or None when the policy allows no further attempt at any price."""
        if self.step_ticks == 0:
            return current
        with exact():
            floor = first_limit - self.max_slippage
        return stepped_down_price(current, tick_size, self.step_ticks, floor)
