"""The position record: the model the shared machine drives. Plain data with slots, no behaviour.

One shared `Machine` drives every record (no per-record machine, no `add_model`), so a record costs
only its own fields: at 100,000 positions that is the difference between megabytes and a gigabyte.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from transitions import EventData

from exitguard.states.permit import SellPermit


class State(StrEnum):
    OPEN = "OPEN"
    VERIFYING = "VERIFYING"
    SELLING = "SELLING"
    CLOSED = "CLOSED"
    RECONCILED = "RECONCILED"
    DUST = "DUST"


FINAL_STATES = frozenset({State.CLOSED, State.RECONCILED, State.DUST})
IN_FLIGHT_STATES = frozenset({State.VERIFYING, State.SELLING})


class PositionRecord:
    __slots__ = (
        "key",
        "token_id",
        "expected",
        "last_buy_at",
        "state",
        "attempts",
        "attempt_id",
        "reason",
        "limit_price",
        "verified_balance",
        "permit",
        "inflight",
        "unresolved",
        "sold",
        "residual",
        "avg_price",
        "filled_order_id",
    )

    def __init__(self, key: str, token_id: str, expected: int, last_buy_at: datetime | None = None) -> None:
        self.key = key
        self.token_id = token_id
        self.expected = expected
        """Micro-shares the position believes it holds."""
        self.last_buy_at = last_buy_at
        self.state = State.OPEN
        self.attempts = 0
        self.attempt_id: str | None = None
        self.reason: str | None = None
        self.limit_price: Decimal | None = None
        self.verified_balance: int | None = None
        self.permit: SellPermit | None = None
        """Issued by VERIFYING -> SELLING, not yet handed to the exchange."""
        self.inflight: SellPermit | None = None
        """Handed to the exchange; kept until the answer (or the reconciliation) is known."""
        self.unresolved = False
        """SELLING with an unknown outcome: only an order lookup may move the position on."""
        self.sold = 0
        self.residual = 0
        self.avg_price: Decimal | None = None
        """The fill's average price, once a sell filled (a lookup that proved a fill may not read its price)."""
        self.filled_order_id: str | None = None
        """The order that filled, once a sell filled."""

    @classmethod
    def restored(cls, *, key: str, token_id: str, expected: int, last_buy_at: datetime | None, state: State,
                 attempts: int, attempt_id: str | None, reason: str | None, limit_price: Decimal | None,
                 verified_balance: int | None, sold: int, residual: int, unresolved: bool,
                 inflight: SellPermit | None, avg_price: Decimal | None = None,
                 filled_order_id: str | None = None) -> PositionRecord:
        """A record as a journal last wrote it. Loading a state that was reached through the machine is
        not a transition; what the engine does next with it (recovery) goes through the machine again."""
        record = cls(key, token_id, expected, last_buy_at)
        record.state = state
        record.attempts = attempts
        record.attempt_id = attempt_id
        record.reason = reason
        record.limit_price = limit_price
        record.verified_balance = verified_balance
        record.sold = sold
        record.residual = residual
        record.unresolved = unresolved
        record.inflight = inflight if state is State.SELLING else None
        record.avg_price = avg_price
        record.filled_order_id = filled_order_id
        return record

    def __repr__(self) -> str:
        return (f"PositionRecord(key={self.key!r}, token_id={self.token_id!r}, state={self.state}, "
                f"expected={self.expected})")


def record_of(event: EventData) -> PositionRecord:
    """The record a trigger is driving (transitions types the model as `object`)."""
    # Not typing.cast: a function call at run time, several per transition, for what only the type checker reads.
    return event.model  # type: ignore[return-value]
