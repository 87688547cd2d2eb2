"""What a transition writes on the record, and the one hand-over of a permit to the sell. Pure: values come
in through the trigger's payload."""

from __future__ import annotations

from typing import cast

from transitions import EventData

from exitguard.states.errors import InvalidValue, PermitError
from exitguard.states.permit import SellPermit
from exitguard.states.record import PositionRecord, record_of


def begin_attempt(event: EventData) -> None:
    attempt_id = event.kwargs["attempt_id"]
    if not isinstance(attempt_id, str) or not attempt_id:
        raise InvalidValue("attempt_id", attempt_id, "must be a non-empty string")
    record = record_of(event)
    record.attempts += 1
    record.attempt_id = attempt_id
    record.reason = event.kwargs["reason"]
    record.limit_price = event.kwargs["limit_price"]
    record.verified_balance = None


def record_verified_balance(event: EventData) -> None:
    record_of(event).verified_balance = event.kwargs["verdict"].actual


def record_residual(event: EventData) -> None:
    record_of(event).residual = event.kwargs["verdict"].residual


def issue_sell_permit(event: EventData) -> None:
    """The one place a SellPermit is created: from the verdict this transition was guarded on."""
    record = record_of(event)
    verdict = event.kwargs["verdict"]
    record.residual = verdict.residual
    record.permit = SellPermit(
        position_key=record.key,
        token_id=record.token_id,
        shares=verdict.sell,
        verified_balance=verdict.actual,
        verified_at=event.kwargs["verified_at"],
        # begin_attempt set it on request_exit, the only edge into VERIFYING.
        attempt_id=cast(str, record.attempt_id),
    )


def record_sold(event: EventData) -> None:
    """The fill's price and order ride along when the engine read them (a bot's P&L needs both); a fill proven
    by a lookup that could not describe it carries neither, and None is what the record keeps then."""
    record = record_of(event)
    record.sold += event.kwargs["shares"]
    record.avg_price = event.kwargs.get("avg_price")
    record.filled_order_id = event.kwargs.get("order_id")


def flag_unresolved(event: EventData) -> None:
    record_of(event).unresolved = True


def end_sell_attempt(event: EventData) -> None:
    """Leaving SELLING: any permit is spent, nothing is in flight any more."""
    record = record_of(event)
    record.permit = None
    record.inflight = None
    record.unresolved = False


def take_permit(record: PositionRecord) -> SellPermit:
    """Hand out the record's permit exactly once; it moves to `inflight` until SELLING is left."""
    permit = record.permit
    if permit is None:
        raise PermitError(f"position {record.key!r} in state {record.state} holds no unused sell permit")
    record.permit = None
    record.inflight = permit
    return permit
