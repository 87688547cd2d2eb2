"""Restart recovery: what a journal left in flight is made truthful before a new exit may start.

Synchronous, with no I/O, so that a restart during an exchange outage does not wait for a thousand
lookups before the first exit:

- VERIFYING: no order was sent (the order id is journaled before any post) -> OPEN.
- SELLING without a journaled order id: the post never happened -> OPEN.
- SELLING with an order id, or flagged unknown: the order may have executed -> SELLING, flagged unknown,
  handed to the background resolver (engine/resolver.py): order lookups, concurrent and bounded, retried
  with backoff until each outcome settles (CLOSED / OPEN / RECONCILED). Meanwhile every other position
  can be exited; an exit of a handed-over one tries a lookup at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from exitguard.book import PositionBook
from exitguard.reports import Reporter
from exitguard.states import DivergenceKind, PositionRecord, State, on_restart
from exitguard.telemetry.logs import emit


@dataclass(frozen=True, slots=True)
class RecoverySummary:
    positions: int
    """Positions restored from the journal."""
    by_state: dict[str, int]
    """States after recovery."""
    reopened: list[str] = field(default_factory=list)
    """Caught verifying, or selling with nothing sent: back to OPEN."""
    resolving: list[str] = field(default_factory=list)
    """Possibly sent: SELLING, flagged unknown, handed to the background resolver (see
    `ExitEngine.resolve_unknowns` to wait for a round of lookups)."""


def recover(book: PositionBook, restored: list[PositionRecord], *, journal: Path,
            resolve: Callable[[PositionRecord], None], filled_before: Callable[[str], None],
            report: Reporter) -> RecoverySummary:
    """Make what `restored` (the journal's positions, just loaded into `book`) left in flight truthful.
    `resolve(record)` hands a possibly sent order to the background resolver; `filled_before(token)`
    hears of each token a journaled fill sold or a possibly sent order may have sold (the exchange's balance cache
    may still show the shares)."""
    reopened: list[str] = []
    resolving: list[str] = []
    for record in restored:
        settle = on_restart(record.state, record.unresolved, book.order_id(record.key) is not None)
        if settle is not None:
            book.fire(record, settle.trigger, **settle.payload)
        if record.state is State.SELLING:
            resolving.append(record.key)
            # Its order may have filled, and the fill's own write may be what a power loss took: the exchange's
            # balance cache may still show the shares sold, so it is refreshed before a reading counts.
            filled_before(record.token_id)
            # Memory says sent, the exchange has not said: an unknown outcome, as a live lost answer is.
            report.diverge(DivergenceKind.UNKNOWN_OUTCOME, record,
                           record.inflight.shares if record.inflight else None, None)
            resolve(record)
        elif record.state is State.CLOSED:
            filled_before(record.token_id)
        elif settle is not None:
            reopened.append(record.key)
            emit("recovery_reopened", key=record.key, token=record.token_id, attempt_id=record.attempt_id)
    summary = RecoverySummary(positions=len(restored), by_state=dict(sorted(book.counts_by_state().items())),
                              reopened=reopened, resolving=resolving)
    emit("recovery_summary", journal=str(journal), positions=summary.positions,
         by_state=summary.by_state, reopened=len(reopened), resolving=resolving)
    return summary
