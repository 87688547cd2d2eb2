"""The sell step: one FOK post of exactly a fresh permit's shares, and what its answer means.

Only a definite "no" puts the position back to OPEN; anything else that ends without a fill (a timeout,
a cut connection, an unreadable answer) may have sold, so the position stays SELLING, flagged unknown,
and the order is never sent again: reconciliation finds out what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import anyio

from exitguard.background import Settlements
from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import InsufficientBalance, OrderKilled, OrderRejected
from exitguard.exchange.port import Exchange
from exitguard.position import ExitOutcome, ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.states import PositionRecord, micro_to_shares, permit_is_fresh, take_permit
from exitguard.telemetry.divergence import DivergenceKind
from exitguard.telemetry.logs import emit
from exitguard.telemetry.metrics import EngineMetrics


class Seller:
    """Sells for one engine. After a refusal for lack of balance it calls `distrust_balance(token)` (the
    next verification refreshes the exchange's cache first); after a rejection, `distrust_rules(token)`
    (the next attempt asks for the market's rules again)."""

    def __init__(self, exchange: Exchange, book: PositionBook, report: Reporter, settlements: Settlements,
                 clock: Clock, metrics: EngineMetrics, *, permit_max_age: float, timeout: float,
                 distrust_balance: Callable[[str], None], distrust_rules: Callable[[str], None]) -> None:
        self.exchange = exchange
        self.book = book
        self.report = report
        self.settlements = settlements
        self.clock = clock
        self.metrics = metrics
        self.permit_max_age = permit_max_age
        self.timeout = timeout
        self.distrust_balance = distrust_balance
        self.distrust_rules = distrust_rules

    async def sell(self, record: PositionRecord, price: Decimal, attempts: int,
                   latency: float) -> tuple[ExitResult, bool]:
        """Sell what the permit of the SELLING `record` allows. Returns the result and whether a retry
        may follow (only after a killed FOK)."""
        permit = take_permit(record)
        fields = log_fields(record, latency)
        now = self.clock.monotonic()
        age = now - permit.verified_at
        if not permit_is_fresh(permit, now, self.permit_max_age):
            self.book.fire(record, "sell_killed", reason="permit expired before sending", definitely_not_filled=True)
            emit("exit_permit_expired", **fields, permit_age_s=round(age, 3), max_age_s=self.permit_max_age)
            return self.report.finish(record, ExitOutcome.NOT_FILLED, attempts=attempts, price=price, latency=latency,
                                      error=f"sell permit {age:.3f}s old (max {self.permit_max_age}s); "
                                            "nothing sent"), False
        started = self.clock.monotonic()
        try:
            with anyio.fail_after(self.timeout):
                if self.book.journal is not None:
                    # The order's id is durable before the order exists anywhere else: after a crash,
                    # recovery looks up exactly this order instead of guessing.
                    order_id = await self.exchange.prepare_sell(permit, price)
                    self.book.note_order(record, order_id)
                fill = await self.exchange.sell(permit, price)
        except Exception as err:  # noqa: BLE001 - anything but a definite "no" may have sold
            if getattr(err, "definitely_not_filled", False) is True:
                self.book.fire(record, "sell_killed", reason=str(err), definitely_not_filled=True)
                emit("exit_not_filled", **fields, shares=permit.share_amount, limit_price=price,
                     error=str(err), error_type=type(err).__name__)
                if isinstance(err, InsufficientBalance):
                    self.distrust_balance(record.token_id)
                    self.report.diverge(DivergenceKind.INSUFFICIENT_BALANCE, record, permit.shares, None)
                elif isinstance(err, OrderRejected):
                    # The market's rules may have changed under us (a tick size shrinks near 0 and 1).
                    self.distrust_rules(record.token_id)
                return self.report.finish(record, ExitOutcome.NOT_FILLED, attempts=attempts, price=price,
                                          latency=latency, error=str(err)), isinstance(err, OrderKilled)
            error = str(err) or f"no answer within {self.timeout}s ({type(err).__name__})"
            self.book.fire(record, "sell_unknown", error=error)
            emit("exit_outcome_unknown", **fields, shares=permit.share_amount, limit_price=price,
                 error=error, error_type=type(err).__name__)
            self.report.diverge(DivergenceKind.UNKNOWN_OUTCOME, record, permit.shares, None)
            return self.report.finish(record, ExitOutcome.UNKNOWN, attempts=attempts, price=price, latency=latency,
                                      error=error), False
        self.metrics.sell_latency_recorder.record(self.clock.monotonic() - started)
        if fill.shares != permit.shares:
            self.report.diverge(DivergenceKind.FILL_MISMATCH, record, permit.shares, fill.shares)
        self.book.fire(record, "sell_filled", shares=fill.shares)
        emit("exit_filled", **fields, shares=micro_to_shares(fill.shares), avg_price=fill.avg_price,
             limit_price=price, order_id=fill.order_id, settlement_pending=bool(fill.trade_ids))
        self.settlements.follow(record, fill)
        return self.report.finish(record, ExitOutcome.CLOSED, attempts=attempts, price=price, latency=latency,
                                  order_id=fill.order_id), False
