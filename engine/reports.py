"""What the engine tells after a transition: the result of an exit, divergences, the common log fields.

The engine fires a transition through the position book (`PositionBook.fire`), then emits its log
event, records any divergence and finishes with `Reporter.finish`: fire -> emit -> diverge -> finish.
"""

from __future__ import annotations

from decimal import Decimal

from exitguard.book import PositionBook
from exitguard.position import ExitOutcome, ExitResult
from exitguard.states import FINAL_STATES, BalanceVerdict, PositionRecord, micro_to_shares
from exitguard.telemetry.divergence import DivergenceDetector, DivergenceEvent, DivergenceKind
from exitguard.telemetry.logs import emit
from exitguard.telemetry.metrics import EngineMetrics


def log_fields(record: PositionRecord, latency: float | None) -> dict[str, object]:
    """The fields every exit log event carries."""
    return {
        "key": record.key,
        "token": record.token_id,
        "attempt": record.attempts,
        "attempt_id": record.attempt_id,
        "verify_latency_ms": None if latency is None else round(latency * 1000, 3),
    }


class Reporter:
    """Exit results, divergences and outcome counts of one engine."""

    def __init__(self, book: PositionBook, metrics: EngineMetrics, divergence: DivergenceDetector) -> None:
        self.book = book
        self.metrics = metrics
        self.divergence = divergence

    def diverge(self, kind: DivergenceKind, record: PositionRecord, expected: int | None,
                actual: int | None) -> None:
        self.divergence.record(DivergenceEvent(
            kind=kind,
            position_key=record.key,
            token_id=record.token_id,
            expected=None if expected is None else micro_to_shares(expected),
            actual=None if actual is None else micro_to_shares(actual),
            at=self.divergence.now(),
        ))

    def mismatch(self, record: PositionRecord, verdict: BalanceVerdict, fields: dict[str, object]) -> None:
        """The exchange holds a different balance than expected: warn, then count it as a divergence."""
        emit("exit_balance_mismatch", **fields, expected=micro_to_shares(verdict.expected),
             actual=micro_to_shares(verdict.actual), difference=micro_to_shares(verdict.difference),
             selling=micro_to_shares(verdict.sell))
        self.diverge(DivergenceKind.BALANCE_MISMATCH, record, verdict.expected, verdict.actual)

    def counted(self, result: ExitResult) -> ExitResult:
        self.metrics.outcomes[str(result.outcome)] += 1
        return result

    def finish(self, record: PositionRecord, outcome: ExitOutcome, *, attempts: int,
               price: Decimal | None = None, latency: float | None = None, order_id: str | None = None,
               error: str | None = None) -> ExitResult:
        """The result the caller gets; a position that ended here gives its token up."""
        self.book.release_token(record)
        sold = record.sold if outcome is ExitOutcome.CLOSED else 0
        return ExitResult(
            key=record.key,
            outcome=outcome,
            state=str(record.state),
            shares_sold=micro_to_shares(sold),
            expected_shares=micro_to_shares(record.expected),
            verified_balance=None if record.verified_balance is None else micro_to_shares(record.verified_balance),
            residual_shares=micro_to_shares(record.residual) if record.state in FINAL_STATES else Decimal(0),
            verify_latency=latency,
            attempts=attempts,
            limit_price=price,
            order_id=order_id,
            error=error,
        )
