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
    micro_shares: int = field(default=0, init=False, repr=False, compare=False)
    """`shares` in integer micro-shares (what the engine computes with)."""

    def __init__(self, key: str, token_id: str, shares: Decimal, last_buy_at: datetime | None = None) -> None:
        # Written out rather than generated: a bot may build 100,000 of these at a start. The usual input (plain
        # strings, a Decimal) takes the short checks; anything else takes the long way and its exact error. Each
        # field is set once through its slot (a frozen dataclass's object.__setattr__ costs twice as much).
        if type(key) is not str or not key or key.isspace():
            _refuse_name("key", key)
        if type(token_id) is not str or not token_id or token_id.isspace():
            _refuse_name("token_id", token_id)
        micro = shares_to_micro(shares, "shares")
        if micro <= 0:
            raise InvalidValue("shares", shares, "must be positive")
        if last_buy_at is not None and (not isinstance(last_buy_at, datetime) or last_buy_at.tzinfo is None):
            raise InvalidValue("last_buy_at", last_buy_at, "must be a timezone-aware datetime")
        _set_key(self, key)
        _set_token_id(self, token_id)
        # Kept as given when it already is what micro_to_shares would build (Decimal("10"), Decimal("0.5")).
        _set_shares(self, shares if type(shares) is Decimal and is_canonical_shares(shares)
                    else micro_to_shares(micro))
        _set_last_buy_at(self, last_buy_at)
        _set_micro(self, micro)


def _refuse_name(field: str, value: object) -> None:
    """A key or token id that is not a plain, non-blank string (a str subclass that is not blank passes)."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(field, value, "must be a non-empty string")


# The slots' own setters: they skip the frozen class's __setattr__ (which refuses) without object.__setattr__'s
# lookup of the slot by name.
_SLOTS = vars(Position)
_set_key = _SLOTS["key"].__set__
_set_token_id = _SLOTS["token_id"].__set__
_set_shares = _SLOTS["shares"].__set__
_set_last_buy_at = _SLOTS["last_buy_at"].__set__
_set_micro = _SLOTS["micro_shares"].__set__


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
