"""Restart recovery: what a journal left in flight is settled before a new exit may start.

- VERIFYING: no order was sent (the order id is journaled before any post) -> OPEN.
- SELLING without a journaled order id: the post never happened -> OPEN.
- SELLING with an order id, or flagged unknown: the order may have executed -> order lookup plus
  balance, through the same reconciliation as a live unknown outcome -> CLOSED / OPEN / RECONCILED.
  If the lookup fails, the position stays SELLING (unresolved): exits of it are refused until a later
  `reconcile(key)` succeeds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from exitguard.position import ExitOutcome, ExitResult
from exitguard.states import PositionRecord, State
from exitguard.telemetry.divergence import DivergenceKind
from exitguard.telemetry.logs import emit

if TYPE_CHECKING:
    from exitguard.exits import ExitEngine


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


async def recover(engine: ExitEngine, restored: list[PositionRecord]) -> RecoverySummary:
    reopened: list[str] = []
    to_settle: list[str] = []
    for record in restored:
        if record.state is State.VERIFYING:
            engine._fire(record, "verify_failed", error="engine restarted while verifying; nothing was sent")
            reopened.append(record.key)
        elif record.state is State.SELLING and not record.unresolved:
            if record.key in engine._order_ids:
                engine._fire(record, "sell_unknown", error="engine restarted with this order possibly sent")
                to_settle.append(record.key)
            else:
                engine._fire(record, "sell_killed", reason="engine restarted before the order was signed",
                             definitely_not_filled=True)
                reopened.append(record.key)
        elif record.state is State.SELLING:
            to_settle.append(record.key)
    for key in reopened:
        record = engine._records[key]
        emit("recovery_reopened", key=key, token=record.token_id, attempt_id=record.attempt_id)
    reconciled: dict[str, ExitOutcome] = {}
    unresolved: list[str] = []
    for key in to_settle:
        result: ExitResult = await engine.reconcile(key)
        if result.outcome is ExitOutcome.UNKNOWN:
            unresolved.append(key)
            record = engine._records[key]
            engine._diverge(DivergenceKind.UNKNOWN_OUTCOME, record,
                            record.inflight.shares if record.inflight else None, None)
        else:
            reconciled[key] = result.outcome
    states = Counter(str(record.state) for record in engine._records.values())
    summary = RecoverySummary(positions=len(restored), by_state=dict(sorted(states.items())), reopened=reopened,
                              reconciled=reconciled, unresolved=unresolved)
    emit("recovery_summary", journal=str(engine.journal_path), positions=summary.positions,
         by_state=summary.by_state, reopened=len(reopened),
         reconciled={key: str(outcome) for key, outcome in reconciled.items()}, unresolved=unresolved)
    return summary
