"""What a transition writes on the record. Pure: values come in through the trigger's payload."""

from __future__ import annotations

from transitions import EventData

from states.permit import SellPermit


def begin_attempt(event: EventData) -> None:
    record = event.model
    record.attempts += 1
    record.attempt_id = event.kwargs["attempt_id"]
    record.reason = event.kwargs["reason"]
    record.limit_price = event.kwargs["limit_price"]
    record.verified_balance = None


def record_verified_balance(event: EventData) -> None:
    event.model.verified_balance = event.kwargs["verdict"].actual


def record_residual(event: EventData) -> None:
    event.model.residual = event.kwargs["verdict"].residual


def issue_sell_permit(event: EventData) -> None:
    """The one place a SellPermit is created: from the verdict this transition was guarded on."""
    record = event.model
    verdict = event.kwargs["verdict"]
    record.residual = verdict.residual
    record.permit = SellPermit(
        position_key=record.key,
        token_id=record.token_id,
        shares=verdict.sell,
        verified_balance=verdict.actual,
        verified_at=event.kwargs["verified_at"],
        attempt_id=record.attempt_id,
    )


def record_sold(event: EventData) -> None:
    event.model.sold += event.kwargs["shares"]


def flag_unresolved(event: EventData) -> None:
    event.model.unresolved = True


def end_sell_attempt(event: EventData) -> None:
    """Leaving SELLING: any permit is spent, nothing is in flight any more."""
    record = event.model
    record.permit = None
    record.inflight = None
    record.unresolved = False
