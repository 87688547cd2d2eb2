"""The sell step: one FOK post of exactly a fresh permit's shares, and what its answer means.

Only a definite "no" puts the position back to OPEN; anything else that ends without a fill (a timeout,
a cut connection, an unreadable answer) may have sold, so the position stays SELLING, flagged unknown,
and the order is never sent again: reconciliation finds out what happened.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anyio

from exitguard.background import Settlements
from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import answer_of
from exitguard.exchange.port import Exchange
from exitguard.position import ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.states import (
    FILL_MISMATCH,
    SELL_ANSWERS,
    AnswerEffect,
    PositionRecord,
    Report,
    micro_to_shares,
    permit_is_fresh,
    take_permit,
)
from exitguard.telemetry.metrics import EngineMetrics


class Seller:
    """Sells for one engine. What an answer teaches beyond the trigger (states.AnswerEffect) is carried out
    by the engine's callbacks: `distrust_balance(token)` (the next verification refreshes the exchange's
    cache first), `distrust_rules(token)` (the next attempt asks for the market's rules again)."""

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
        self.effects: dict[AnswerEffect, Callable[[str], None]] = {
            AnswerEffect.REFRESH_BALANCE_FIRST: distrust_balance,
            AnswerEffect.FORGET_MARKET_RULES: distrust_rules,
        }

    async def sell(self, record: PositionRecord, price: Decimal, attempts: int,
                   latency: float) -> tuple[ExitResult, bool]:
        """Sell what the permit of the SELLING `record` allows. Returns the result and whether a retry
        may follow (only after a killed FOK)."""
        permit = take_permit(record)
        context = log_fields(record, latency)
        now = self.clock.monotonic()
        age = now - permit.verified_at
        if not permit_is_fresh(permit, now, self.permit_max_age):
            error = f"sell permit {age:.3f}s old (max {self.permit_max_age}s); nothing sent"
            self.book.fire(record, "sell_expired", reason=error)
            report = self.report.after(record, "sell_expired", context, permit_age_s=round(age, 3),
                                       max_age_s=self.permit_max_age)
            return self._result(record, report, attempts, price, latency, error=error), False
        started = self.clock.monotonic()
        try:
            with anyio.fail_after(self.timeout):
                if self.book.journal is not None:
                    # The order's id is durable before the order exists anywhere else: after a crash,
                    # recovery looks up exactly this order instead of guessing.
                    order_id = await self.exchange.prepare_sell(permit, price)
                    self.book.note_order(record, order_id)
                fill = await self.exchange.sell(permit, price)
        except Exception as err:  # noqa: BLE001 - the answer table says what each class of error means
            rule = SELL_ANSWERS[answer_of(err)]
            error = str(err) or f"no answer within {self.timeout}s ({type(err).__name__})"
            payload = {"error": error} if rule.trigger == "sell_unknown" else {"reason": error,
                                                                              "definitely_not_filled": True}
            self.book.fire(record, rule.trigger, **payload)
            for effect in rule.effects:
                self.effects[effect](record.token_id)
            report = self.report.after(record, rule.trigger, context, between=(permit.shares, None),
                                       divergence=rule.divergence, shares=permit.share_amount, limit_price=price,
                                       error=error, error_type=type(err).__name__)
            return self._result(record, report, attempts, price, latency, error=error), rule.retryable
        self.metrics.sell_latency_recorder.record(self.clock.monotonic() - started)
        if fill.shares != permit.shares:
            self.report.tell(FILL_MISMATCH, record, context, (permit.shares, fill.shares))
        self.book.fire(record, "sell_filled", shares=fill.shares)
        report = self.report.after(record, "sell_filled", context, shares=micro_to_shares(fill.shares),
                                   avg_price=fill.avg_price, limit_price=price, order_id=fill.order_id,
                                   settlement_pending=bool(fill.trade_ids))
        self.settlements.follow(record, fill)
        return self._result(record, report, attempts, price, latency, order_id=fill.order_id), False

    def _result(self, record: PositionRecord, report: Report, attempts: int, price: Decimal, latency: float,
                **result: Any) -> ExitResult:
        assert report.outcome is not None, "an edge that ends an exit names its outcome"
        return self.report.finish(record, report.outcome, attempts=attempts, price=price, latency=latency, **result)
