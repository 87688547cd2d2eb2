"""The public value types: what a bot hands in (`Position`) and gets back (`ExitResult`, whose `outcome` is an
`ExitOutcome`, defined with the table that decides it in states/outcomes.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from exitguard.states import ExitOutcome, InvalidValue, micro_to_shares, shares_to_micro
from exitguard.states.quantities import is_canonical_shares


@dataclass(frozen=True, slots=True, init=False)
class Position:
    """A position to exit. `shares` is what the bot believes it holds; the exchange has the last word.

    `last_buy_at` (timezone-aware) opens the settlement window: a zero balance inside it is treated as
    the exchange's balance cache lagging the buy, never as "already exited".
    """

    key: str
    token_id: str
    shares: Decimal
    last_buy_at: datetime | None = None
    _micro: int = field(default=0, init=False, repr=False, compare=False)

    def __init__(self, key: str, token_id: str, shares: Decimal, last_buy_at: datetime | None = None) -> None:
        # Written out rather than generated with a __post_init__: each field is validated, then set once (a frozen
        # dataclass sets each through object.__setattr__, and a bot may build 100,000 of these at a start).
        if not isinstance(key, str) or not key.strip():
            raise InvalidValue("key", key, "must be a non-empty string")
        if not isinstance(token_id, str) or not token_id.strip():
            raise InvalidValue("token_id", token_id, "must be a non-empty string")
        micro = shares_to_micro(shares, "shares")
        if micro <= 0:
            raise InvalidValue("shares", shares, "must be positive")
        if last_buy_at is not None and (not isinstance(last_buy_at, datetime) or last_buy_at.tzinfo is None):
            raise InvalidValue("last_buy_at", last_buy_at, "must be a timezone-aware datetime")
        setattr_ = object.__setattr__
        setattr_(self, "key", key)
        setattr_(self, "token_id", token_id)
        # Kept as given when it already is what micro_to_shares would build (Decimal("10"), Decimal("0.5")).
        setattr_(self, "shares", shares if type(shares) is Decimal and is_canonical_shares(shares)
                 else micro_to_shares(micro))
        setattr_(self, "last_buy_at", last_buy_at)
        setattr_(self, "_micro", micro)

    @property
    def micro_shares(self) -> int:
        return self._micro


MAX_CLOCK_SKEW = timedelta(seconds=5)
"""How far a position's `last_buy_at` may lie ahead of the engine's clock (two hosts' clocks disagree a little)."""


def refuse_future_buy(position: Position, now: datetime) -> None:
    """A `last_buy_at` in the future keeps the settlement window open for as long as it lies ahead, so a
    real "already exited" would read as a lagging cache; beyond clock skew it is a bug in the caller."""
    if position.last_buy_at is not None and position.last_buy_at - now > MAX_CLOCK_SKEW:
        raise InvalidValue("last_buy_at", position.last_buy_at,
                           f"is {(position.last_buy_at - now).total_seconds():.0f}s ahead of the engine's clock "
                           f"({now.isoformat()}); at most {MAX_CLOCK_SKEW.total_seconds():.0f}s of clock skew is "
                           "allowed")

__all__ = ["ExitOutcome", "ExitResult", "Position"]


@dataclass(frozen=True, slots=True)
class ExitResult:
    key: str
    outcome: ExitOutcome
    state: str
    """The position's state after this call."""
    shares_sold: Decimal = Decimal(0)
    expected_shares: Decimal = Decimal(0)
    verified_balance: Decimal | None = None
    residual_shares: Decimal = Decimal(0)
    """Shares left on the exchange: sub-step remainder after a sale, or the dust balance."""
    verify_latency: float | None = None
    """Seconds spent verifying the balance in the last attempt (monotonic clock)."""
    attempts: int = 0
    """Attempts made by this call (a killed FOK retried with a fresh verification counts twice)."""
    limit_price: Decimal | None = None
    """The limit of the last sell attempt."""
    order_id: str | None = None
    """The order that filled (CLOSED), or the one whose outcome is being looked up (UNKNOWN) when known."""
    error: str | None = None
    avg_price: Decimal | None = None
    """The fill's average price (CLOSED). None only when no fill happened, or when a lookup proved the fill
    without describing it (the exchange showed the order matched but no readable trade)."""
