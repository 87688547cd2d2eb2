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
from exitguard.errors import JournalError, UnknownOutcome, answer_of
from exitguard.exchange.port import Exchange, Fill, SellDeadline
from exitguard.position import ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.scopes import Scopes
from exitguard.states import (
    FILL_MISMATCH,
    SELL_ANSWERS,
    AnswerEffect,
    PositionRecord,
    SellAnswer,
    SellPermit,
    micro_to_shares,
    permit_is_fresh,
    take_permit,
)
from exitguard.telemetry.metrics import EngineMetrics


class Seller:
    """Sells for one engine. What an answer teaches beyond the trigger (states.AnswerEffect) is carried out
    by the engine's callbacks: `distrust_balance(token)` (the next verification refreshes the exchange's
    cache first), `distrust_rules(token)` (the next attempt asks for the market's rules again),
    `remember_closed(token)` (the market no longer trades: later exits of it end at once, nothing sent)."""

    def __init__(self, exchange: Exchange, book: PositionBook, report: Reporter, settlements: Settlements,
                 clock: Clock, metrics: EngineMetrics, *, permit_max_age: float, timeout: float, scopes: Scopes,
                 distrust_balance: Callable[[str], None], distrust_rules: Callable[[str], None],
                 remember_closed: Callable[[str], None]) -> None:
        self.exchange = exchange
        self.book = book
        self.report = report
        self.settlements = settlements
        self.clock = clock
        self.metrics = metrics
        self.permit_max_age = permit_max_age
        self.timeout = timeout
        self.scopes = scopes
        self.effects: dict[AnswerEffect, Callable[[str], None]] = {
            AnswerEffect.REFRESH_BALANCE_FIRST: distrust_balance,
            AnswerEffect.FORGET_MARKET_RULES: distrust_rules,
            AnswerEffect.REMEMBER_MARKET_CLOSED: remember_closed,
        }

    async def sell(self, record: PositionRecord, price: Decimal, attempts: int, latency: float,
                   scope: anyio.CancelScope) -> tuple[ExitResult, bool]:
        """Sell what the permit of the SELLING `record` allows, inside `scope` (the attempt's, entered), whose deadline
        becomes the sell's. Returns the result and whether a retry may follow (only after a killed FOK). When the
        deadline strikes, the cancellation leaves through `scope` and the attempt reports it with `timed_out`."""
        permit = take_permit(record)
        context = log_fields(record, latency)
        started = self.clock.monotonic()  # the sell's latency counts from its freshness check
        if not permit_is_fresh(permit, started, self.permit_max_age):
            return self._expired(record, permit, context, attempts, price, latency), False
        # Checked once more by the adapter when the order is about to leave, after its own waits (a worker
        # thread, a rate-limit slot, signing): a verification may age past its limit inside `sell`.
        deadline = SellDeadline(permit.verified_at + self.permit_max_age, self.clock.monotonic)
        self.scopes.move(scope, self.timeout)  # only this deadline cancels `scope` from here: its catch is a timeout
        try:
            if self.book.journal is not None:
                # The order's id is durable before the order exists anywhere else: after a crash,
                # recovery looks up exactly this order instead of guessing.
                order_id = await self.exchange.prepare_sell(permit, price)
                self.book.note_order(record, order_id)
                # One fsync (off the event loop) makes the intent durable: the request, the verified balance and
                # this order id. Only then is the permit's age judged, for the post that follows at once.
                await self.book.commit_intent(record)
                if not permit_is_fresh(permit, self.clock.monotonic(), self.permit_max_age):
                    return self._expired(record, permit, context, attempts, price, latency), False
            fill = await self.exchange.sell(permit, price, deadline=deadline)
            if not readable_fill(fill, permit):
                # The order left and the answer is no fill we can read: it may have executed (issue 11 A.1).
                raise UnknownOutcome(f"the exchange answered the sell with no readable Fill: {str(fill)[:200]}")
        except JournalError:
            raise  # the order id could not be journaled: the book put the position back to OPEN, nothing sent
        except Exception as err:  # noqa: BLE001 - the answer table says what each class of error means
            return self._failed(record, permit, context, err, attempts, price, latency)
        self.metrics.sell_latency_recorder.record(self.clock.monotonic() - started)
        if fill.shares != permit.shares:
            self.report.tell(FILL_MISMATCH, record, context, (permit.shares, fill.shares))
        self.book.fire(record, "sell_filled", shares=fill.shares, avg_price=fill.avg_price, order_id=fill.order_id)
        for effect in SELL_ANSWERS[SellAnswer.FILLED].effects:
            self.effects[effect](record.token_id)
        report = self.report.after(record, "sell_filled", context, shares=micro_to_shares(fill.shares),
                                   avg_price=fill.avg_price, limit_price=price, order_id=fill.order_id,
                                   settlement_pending=bool(fill.trade_ids))
        self.settlements.follow(record, fill)
        return self.report.ended(record, report, attempts=attempts, price=price, latency=latency,
                                 order_id=fill.order_id), False

    def timed_out(self, record: PositionRecord, price: Decimal, attempts: int,
                  latency: float) -> tuple[ExitResult, bool]:
        """The sell's deadline struck (the attempt's scope caught it): the answer to a TimeoutError, an unknown outcome
        for the permit in flight. Its log fields are the sell's own: nothing they read has changed since it began."""
        permit = record.inflight
        assert permit is not None, "a sell whose deadline struck holds its permit in flight"
        return self._failed(record, permit, log_fields(record, latency), TimeoutError(), attempts, price, latency)

    def _failed(self, record: PositionRecord, permit: SellPermit, context: dict[str, object], err: Exception,
                attempts: int, price: Decimal, latency: float) -> tuple[ExitResult, bool]:
        answer = answer_of(err)
        if answer is SellAnswer.EXPIRED:
            return self._expired(record, permit, context, attempts, price, latency, str(err)), False
        rule = SELL_ANSWERS[answer]
        error = str(err) or f"no answer within {self.timeout}s ({type(err).__name__})"
        # An unknown outcome's lookup horizon counts from now, when the call that sent it returned: journaled
        # with the trigger, so a restarted engine counts from the same moment.
        payload: dict[str, object] = {"error": error, "sent_at": self.clock.wall()}
        if rule.trigger != "sell_unknown":
            payload = {"reason": error, "definitely_not_filled": True}
        self.book.fire(record, rule.trigger, **payload)
        for effect in rule.effects:
            self.effects[effect](record.token_id)
        report = self.report.after(record, rule.trigger, context, between=(permit.shares, None),
                                   divergence=rule.divergence, shares=permit.share_amount, limit_price=price,
                                   error=error, error_type=type(err).__name__)
        return self.report.ended(record, report, attempts=attempts, price=price, latency=latency,
                                 error=error), rule.retryable

    def _expired(self, record: PositionRecord, permit: SellPermit, context: dict[str, object], attempts: int,
                 price: Decimal, latency: float, why: str | None = None) -> ExitResult:
        """The permit went stale before the order left (here, or in the adapter after its waits): nothing sent."""
        age = self.clock.monotonic() - permit.verified_at
        error = why or f"sell permit {age:.3f}s old (max {self.permit_max_age}s); nothing sent"
        self.book.fire(record, "sell_expired", reason=error)
        report = self.report.after(record, "sell_expired", context, permit_age_s=round(age, 3),
                                   max_age_s=self.permit_max_age)
        return self.report.ended(record, report, attempts=attempts, price=price, latency=latency, error=error)


def readable_fill(fill: object, permit: SellPermit) -> bool:
    """A Fill of at least one and at most the permit's micro-shares, at a price in (0, 1], naming an order.
    Anything else an adapter hands back (None, a dict, text, an absurd amount) cannot be a "sold" to act on."""
    if not isinstance(fill, Fill) or isinstance(fill.shares, bool) or not isinstance(fill.shares, int):
        return False
    price = fill.avg_price
    return (0 < fill.shares <= permit.shares and isinstance(price, Decimal) and price.is_finite()
            and 0 < price <= 1 and isinstance(fill.order_id, str) and isinstance(fill.trade_ids, tuple))
