"""What a call cut short leaves behind: a position that tells the truth, and a result that says so.

A cancelled exit (the caller's own cancel scope, or the shutdown after its grace period) is settled by
`states.INTERRUPTED`: still verifying -> OPEN; selling with nothing sent -> OPEN; a sell that may have
left -> an unknown outcome, which the background resolver then looks up (never a resend).
"""

from __future__ import annotations

from exitguard.book import PositionBook
from exitguard.position import ExitOutcome, ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.states import PositionRecord, on_interrupt
from exitguard.telemetry.logs import emit


def settle_interrupted(book: PositionBook, report: Reporter, record: PositionRecord) -> None:
    """After a cancelled exit, leave the record in a state that tells the truth (states.INTERRUPTED)."""
    settle = on_interrupt(record.state, record.unresolved, record.inflight is not None)
    if settle is None:
        return
    sent = record.inflight.shares if record.inflight is not None else None
    book.fire(record, settle.trigger, **settle.payload)
    if settle.divergence is not None:
        report.diverge(settle.divergence, record, sent, None)
    emit("exit_interrupted", **log_fields(record, None), state=str(record.state), unresolved=record.unresolved)


def cut_short(book: PositionBook, report: Reporter, record: PositionRecord, grace: float) -> ExitResult:
    """The result of a call the shutdown cancelled after `grace` seconds, once the record was settled: UNKNOWN
    with the journaled order id if the sell may have left, else NOT_FILLED (nothing was sent)."""
    outcome = ExitOutcome.UNKNOWN if record.unresolved else ExitOutcome.NOT_FILLED
    return report.counted(report.finish(record, outcome, attempts=0, order_id=book.order_id(record.key),
                                        error=f"cancelled by the engine's shutdown after {grace}s"))
