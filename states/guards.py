"""Named guards. Each name is what the diagram shows on its edge; each docstring says what it prevents.

Guards read the trigger's payload (`event.kwargs`) and the record (`event.model`); they never do I/O.
"""

from __future__ import annotations

from transitions import EventData

from exitguard.states.balance import BalanceKind, BalanceVerdict
from exitguard.states.record import record_of


def _verdict(event: EventData) -> BalanceVerdict:
    verdict = event.kwargs["verdict"]
    if not isinstance(verdict, BalanceVerdict):
        raise TypeError(f"balance_fetched needs a BalanceVerdict, got {type(verdict).__name__}")
    return verdict


def balance_is_zero_and_settled(event: EventData) -> bool:
    """Without it, a balance cache lagging a fresh buy would be read as "already exited" and the
    position forgotten while the shares are still held."""
    verdict = _verdict(event)
    return verdict.kind is BalanceKind.ALREADY_EXITED and verdict.actual == 0


def balance_is_zero_but_unsettled(event: EventData) -> bool:
    """Without it, a zero read while the last buy settles would have no edge, and the engine would have
    to decide by itself that it is no exit. It is none: the position goes back to OPEN, nothing sold."""
    verdict = _verdict(event)
    return verdict.kind is BalanceKind.UNSETTLED_ZERO and verdict.actual == 0


def balance_is_sellable(event: EventData) -> bool:
    """Without it, a sell could be sized from memory or above the verified balance: an oversell,
    or a short. The sell size is the verified balance rounded down, never more."""
    verdict = _verdict(event)
    return verdict.kind is BalanceKind.SELLABLE and 0 < verdict.sell <= verdict.actual


def balance_is_dust(event: EventData) -> bool:
    """Without it, a residual below the minimum order would be sent and rejected on every retry."""
    verdict = _verdict(event)
    return verdict.kind is BalanceKind.DUST and verdict.actual > 0


def exchange_said_no_fill(event: EventData) -> bool:
    """Only a definite "no fill" may reopen the position. Without it a timeout could be taken as a
    kill, and the retry would sell the same shares twice."""
    return event.kwargs.get("definitely_not_filled") is True


def sell_answer_pending(event: EventData) -> bool:
    """The answer to our own post may move SELLING on; once the outcome is unknown only a lookup may."""
    return not record_of(event).unresolved


def outcome_is_unresolved(event: EventData) -> bool:
    """Reconciliation settles unknown outcomes only; it must not race a post whose answer is pending."""
    return record_of(event).unresolved
