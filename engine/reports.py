"""What the engine tells after a transition: the result of an exit, divergences, the common log fields.

The engine fires a transition through the position book (`PositionBook.fire`), then hands what it knows
to `Reporter.after`, which reads the edge's row in `states.REPORTS` (log event, divergence, outcome)
instead of deciding: fire -> after -> finish.
"""

from __future__ import annotations

from dataclasses import fields
from decimal import Decimal
from functools import lru_cache
from typing import Any

from exitguard.book import PositionBook
from exitguard.position import ExitOutcome, ExitResult
from exitguard.states import (
    BALANCE_MISMATCH,
    FINAL_STATES,
    REPORTS,
    BalanceVerdict,
    PositionRecord,
    Report,
    micro_to_shares,
    verify_divergence,
)
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


_shares = lru_cache(maxsize=4096)(micro_to_shares)
"""`micro_to_shares` for a result's amounts, which repeat (a position's tracked shares, its balance, zero): a Decimal
is immutable, so one built earlier for the same amount is as good as a new one."""
_ZERO = Decimal(0)
# A result's fields set through their slots, as position.py sets Position's: the frozen dataclass's generated
# __init__ goes through object.__setattr__ once per field, twice the cost, on every exit.
# tests/engine/test_exit_deadlines.py holds `finish` to what the constructor would have built, field by field.
_R = {field.name: vars(ExitResult)[field.name].__set__ for field in fields(ExitResult)}

Span = tuple[int | None, int | None]
"""(expected, actual) micro-shares of a divergence; None where unknown."""


def balance_facts(verdict: BalanceVerdict) -> dict[str, Any]:
    return {"expected": micro_to_shares(verdict.expected), "actual": micro_to_shares(verdict.actual),
            "difference": micro_to_shares(verdict.difference), "selling": micro_to_shares(verdict.sell)}


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

    def after(self, record: PositionRecord, trigger: str, context: dict[str, object], *,
              between: Span = (None, None), divergence: DivergenceKind | None = None, **facts: object) -> Report:
        """Report the edge `trigger` just took (the record is in its destination): its row's event with the
        facts the row names, its divergence (and `divergence`, the answer's own) between the expected and
        actual micro-shares of `between`. Returns the row: its `outcome` is what the caller hands back."""
        report = REPORTS[(trigger, record.state)]
        self.tell(report, record, context, between, **facts)
        if divergence is not None:
            self.diverge(divergence, record, *between)
        return report

    def tell(self, report: Report, record: PositionRecord, context: dict[str, object], between: Span,
             **facts: object) -> None:
        if report.event is not None:
            hint = {} if report.hint is None else {"hint": report.hint}
            emit(report.event, **context, **{name: facts[name] for name in report.facts}, **hint)
        if report.divergence is not None:
            self.diverge(report.divergence, record, *between)

    def mismatch(self, record: PositionRecord, verdict: BalanceVerdict, context: dict[str, object]) -> None:
        """The exchange holds a different balance than expected: warn, then count it as a divergence."""
        self.tell(BALANCE_MISMATCH, record, context, (verdict.expected, verdict.actual), **balance_facts(verdict))

    def counted(self, result: ExitResult) -> ExitResult:
        self.metrics.outcomes[str(result.outcome)] += 1
        return result

    def verify_failed(self, record: PositionRecord, err: Exception, error: str, price: Decimal, attempts: int,
                      latency: float) -> ExitResult:
        """The verification failed on `err` (VERIFYING -> OPEN, nothing sent): fire, report, end the attempt."""
        self.book.fire(record, "verify_failed", error=error)
        report = self.after(record, "verify_failed", log_fields(record, latency), error=error,
                            error_type=type(err).__name__, divergence=verify_divergence(err),
                            between=(record.expected, None))
        return self.ended(record, report, attempts=attempts, price=price, latency=latency, error=error)

    def market_closed(self, record: PositionRecord, err: Exception, price: Decimal, attempts: int,
                      latency: float) -> ExitResult:
        """The rules read found the market closed (VERIFYING -> OPEN, nothing read further, nothing sent)."""
        error = str(err) or "the market no longer trades"
        self.book.fire(record, "market_closed", reason=error)
        report = self.after(record, "market_closed", log_fields(record, latency), error=error,
                            error_type=type(err).__name__)
        return self.ended(record, report, attempts=attempts, price=price, latency=latency, error=error)

    def ended(self, record: PositionRecord, report: Report, **result: Any) -> ExitResult:
        """The result of an attempt that ended on `report`'s edge; a failed verification is counted. A row's hint
        ends the result's error, so a bot that only reads the result learns what to do next too."""
        assert report.outcome is not None, "an edge that ends an exit names its outcome"
        if report.outcome is ExitOutcome.VERIFY_FAILED:
            self.metrics.verify_failures += 1
        if report.hint is not None:
            result["error"] = "; ".join(part for part in (result.get("error"), report.hint) if part)
        return self.finish(record, report.outcome, **result)

    def finish(self, record: PositionRecord, outcome: ExitOutcome, *, attempts: int,
               price: Decimal | None = None, latency: float | None = None, order_id: str | None = None,
               error: str | None = None) -> ExitResult:
        """The result the caller gets; a position that ended here gives its token up."""
        self.book.release_token(record)
        closed = outcome is ExitOutcome.CLOSED
        sold = record.sold if closed else 0
        result = object.__new__(ExitResult)
        _R["key"](result, record.key)
        _R["outcome"](result, outcome)
        _R["state"](result, str(record.state))
        _R["shares_sold"](result, _shares(sold))
        _R["expected_shares"](result, _shares(record.expected))
        _R["verified_balance"](result, None if record.verified_balance is None else _shares(record.verified_balance))
        _R["residual_shares"](result, _shares(record.residual) if record.state in FINAL_STATES else _ZERO)
        _R["verify_latency"](result, latency)
        _R["attempts"](result, attempts)
        _R["limit_price"](result, price)
        _R["order_id"](result, order_id if order_id is not None or not closed else record.filled_order_id)
        _R["error"](result, error)
        _R["avg_price"](result, record.avg_price if closed else None)
        return result
