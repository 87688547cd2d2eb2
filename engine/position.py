"""The public value types: what a bot hands in (`Position`) and gets back (`ExitResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from exitguard.states import InvalidValue, micro_to_shares, shares_to_micro


@dataclass(frozen=True, slots=True)
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

    def __post_init__(self) -> None:
        for name in ("key", "token_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise InvalidValue(name, value, "must be a non-empty string")
        micro = shares_to_micro(self.shares, "shares")
        if micro <= 0:
            raise InvalidValue("shares", self.shares, "must be positive")
        object.__setattr__(self, "shares", micro_to_shares(micro))
        object.__setattr__(self, "_micro", micro)
        if self.last_buy_at is not None and (
            not isinstance(self.last_buy_at, datetime) or self.last_buy_at.tzinfo is None
        ):
            raise InvalidValue("last_buy_at", self.last_buy_at, "must be a timezone-aware datetime")

    @property
    def micro_shares(self) -> int:
        return self._micro


class ExitOutcome(StrEnum):
    CLOSED = "CLOSED"
    """Sold: the FOK filled (or a lookup found that it had)."""
    ALREADY_EXITED = "ALREADY_EXITED"
    """The exchange shows no shares: cleaned up without a sell."""
    DUST = "DUST"
    """A balance below the minimum order remains; nothing could be sold."""
    NOT_FILLED = "NOT_FILLED"
    """The exchange definitely sold nothing; the position is OPEN again."""
    VERIFY_FAILED = "VERIFY_FAILED"
    """The balance could not be verified; nothing was sent; the position is OPEN."""
    IN_PROGRESS = "IN_PROGRESS"
    """Another exit of this position is in flight; this call did nothing."""
    UNKNOWN = "UNKNOWN"
    """The sell may or may not have executed; the position stays SELLING until reconciled."""


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
    error: str | None = None
