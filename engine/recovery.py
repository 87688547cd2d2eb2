"""Restart recovery: what a journal left in flight is settled before a new exit may start.

- VERIFYING: no order was sent (the order id is journaled before any post) -> OPEN.
- SELLING without a journaled order id: the post never happened -> OPEN.
- SELLING with an order id, or flagged unknown: the order may have executed -> order lookup plus
  balance, through the same reconciliation as a live unknown outcome -> CLOSED / OPEN / RECONCILED.
  If the lookup fails, the position stays SELLING (unresolved): exits of it are refused until a later
  `reconcile(key)` succeeds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from exitguard.book import PositionBook
from exitguard.position import ExitOutcome, ExitResult
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
    reconciled: dict[str, ExitOutcome] = field(default_factory=dict)
    """Possibly sent: settled by lookup (CLOSED, NOT_FILLED -> OPEN, ALREADY_EXITED -> RECONCILED)."""
    unresolved: list[str] = field(default_factory=list)
    """The lookup failed: still SELLING, exits refused until `reconcile(key)` succeeds."""


async def recover(book: PositionBook, restored: list[PositionRecord], *, journal: Path,
                  reconcile: Callable[[str], Awaitable[ExitResult]], report: Reporter) -> RecoverySummary:
    """Settle what `restored` (the journal's positions, just loaded into `book`) left in flight.
    `reconcile` is the engine's own `reconcile(key)`: a possibly sent order is settled as a live one is."""
    reopened: list[str] = []
    to_settle: list[str] = []
    for record in restored:
        settle = on_restart(record.state, record.unresolved, book.order_id(record.key) is not None)
        if settle is not None:
            book.fire(record, settle.trigger, **settle.payload)
        if record.state is State.SELLING:
            to_settle.append(record.key)
        elif settle is not None:
            reopened.append(record.key)
            emit("recovery_reopened", key=record.key, token=record.token_id, attempt_id=record.attempt_id)
    reconciled: dict[str, ExitOutcome] = {}
    unresolved: list[str] = []
    for key in to_settle:
        result = await reconcile(key)
        if result.outcome is ExitOutcome.UNKNOWN:
            unresolved.append(key)
            record = book.get(key)
            report.diverge(DivergenceKind.UNKNOWN_OUTCOME, record,
                           record.inflight.shares if record.inflight else None, None)
        else:
            reconciled[key] = result.outcome
    summary = RecoverySummary(positions=len(restored), by_state=dict(sorted(book.counts_by_state().items())),
                              reopened=reopened, reconciled=reconciled, unresolved=unresolved)
    emit("recovery_summary", journal=str(journal), positions=summary.positions,
         by_state=summary.by_state, reopened=len(reopened),
         reconciled={key: str(outcome) for key, outcome in reconciled.items()}, unresolved=unresolved)
    return summary
