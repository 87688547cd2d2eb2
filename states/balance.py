"""What a fetched balance means for an exit: the pure decision behind VERIFYING's three exits."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from exitguard.states.errors import InvalidValue
from exitguard.states.market import MarketRules
from exitguard.states.quantities import round_down_to_step


class Excess(StrEnum):
    """What an exit does with a verified balance above the tracked shares."""

    SELL = "sell"
    """Sell the verified balance (the original request: the exchange has the last word), with a mismatch event."""
    CAP = "cap"
    """Sell at most the tracked shares: for wallets that also hold shares of the token the bot does not manage."""


def parse_excess(value: object) -> Excess:
    """The `excess` setting, or InvalidValue naming it."""
    if isinstance(value, str) and value in tuple(Excess):
        return Excess(value)
    raise InvalidValue("excess", value, f"must be one of {', '.join(repr(str(e)) for e in Excess)}")


class BalanceKind(StrEnum):
    ALREADY_EXITED = "already_exited"
    """Zero, and outside the settlement window of the last buy: nothing to sell, clean up."""
    SELLABLE = "sellable"
    """At least the exchange's minimum order after rounding down to the size step."""
    DUST = "dust"
    """Above zero but below the minimum order: no sell can be placed."""
    UNSETTLED_ZERO = "unsettled_zero"
    """Zero inside the settlement window: likely the balance cache lagging a buy, not an exit."""


@dataclass(frozen=True, slots=True)
class BalanceVerdict:
    kind: BalanceKind
    expected: int
    """Micro-shares the position believed it held."""
    actual: int
    """Micro-shares the exchange reported."""
    sell: int
    """Micro-shares to sell (0 unless SELLABLE); never above `actual`."""
    residual: int
    """Micro-shares that stay behind: sub-step remainder when selling, the whole balance as dust."""

    @property
    def mismatch(self) -> bool:
        return self.actual != self.expected

    @property
    def difference(self) -> int:
        return self.actual - self.expected


def assess_balance(
    expected: int,
    actual: int,
    rules: MarketRules,
    *,
    last_buy_at: datetime | None,
    now: datetime,
    settlement_window: timedelta,
    excess: Excess = Excess.SELL,
) -> BalanceVerdict:
    """Classify a verified balance. `now` comes from the caller: this module never reads a clock.

    With `Excess.CAP` the sell is at most the tracked shares (`expected`); zero and dust are decided as
    without it, so a cap never turns "already exited" into a sale."""
    if actual < 0:
        raise ValueError(f"balance must be parsed before assessment, got {actual}")
    if actual == 0:
        settling = last_buy_at is not None and now - last_buy_at < settlement_window
        kind = BalanceKind.UNSETTLED_ZERO if settling else BalanceKind.ALREADY_EXITED
        return BalanceVerdict(kind, expected, 0, 0, 0)
    sell = round_down_to_step(min(actual, expected) if excess is Excess.CAP else actual, rules.size_step)
    if sell >= max(rules.min_order_size, rules.size_step):
        return BalanceVerdict(BalanceKind.SELLABLE, expected, actual, sell, actual - sell)
    return BalanceVerdict(BalanceKind.DUST, expected, actual, 0, actual)
