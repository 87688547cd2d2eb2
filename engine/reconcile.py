"""Reconciliation: an unknown sell outcome settled by order lookup, trades and balance, never by resending.

A sell whose answer was lost may have filled, and a lookup that finds nothing is not a "no": the order may
still arrive, or it filled and dropped out of the exchange's order endpoint. One attempt asks the exchange
what it shows of the order (`Exchange.lookup_sell`), then `states.CONCLUSIONS` decides what that proves:
- filled: the order matched, or a trade of ours names it;
- not filled: the exchange shows the order terminal and unfilled, or the order can no longer arrive (the
  lookup horizon has passed since the request left our hands) and a trade query that succeeded shows no
  trade of it. The balance, read after a cache refresh, then says where the shares are (`RESOLUTIONS`:
  still held -> OPEN, gone -> RECONCILED); a balance that moved without a trade of ours is a divergence;
- anything else: nothing fires, the position stays SELLING (flagged) and the attempt returns UNKNOWN. A failed
  lookup or balance read is UNKNOWN too. Retrying later is the caller's business (the engine's resolver).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import anyio

from exitguard.background import Settlements
from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import ExchangeError
from exitguard.exchange.port import Exchange, LookupStatus, SellLookup
from exitguard.position import ExitOutcome, ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.sell import readable_fill
from exitguard.states import (
    RESOLUTIONS,
    UNFILLED,
    Conclusion,
    DivergenceKind,
    InvalidValue,
    PositionRecord,
    State,
    TransitionRefused,
    balance_moved_without_fill,
    conclude,
    micro_to_shares,
)
from exitguard.telemetry.logs import emit

DEFAULT_LOOKUP_HORIZON = 30.0
"""Seconds after the request left our hands past which an order the exchange does not show can no longer
arrive. Polymarket states no bound; a FOK is matched or killed at once, and a delayed match is reported as
such, so 30 s is generous."""

DEFAULT_POST_DEADLINE = 15.0
"""The engine's default `sell_timeout`: after a restart with no journaled answer, the order may have been
leaving for that long after it was journaled."""


class Reconciler:
    """Settles unknown outcomes for one engine. `fresh_balance(token)` reads the balance in micro-shares
    after refreshing the exchange's cache. `horizon`: the lookup horizon in seconds; `post_deadline`: the
    longest the engine's sell call may have been sending an order (its `sell_timeout`)."""

    def __init__(self, exchange: Exchange, book: PositionBook, report: Reporter, settlements: Settlements,
                 fresh_balance: Callable[[str], Awaitable[int]], timeout: float, *,
                 horizon: float = DEFAULT_LOOKUP_HORIZON, post_deadline: float = DEFAULT_POST_DEADLINE,
                 clock: Clock | None = None) -> None:
        self.exchange = exchange
        self.book = book
        self.report = report
        self.settlements = settlements
        self.fresh_balance = fresh_balance
        self.timeout = timeout
        self.horizon = horizon
        self.post_deadline = post_deadline
        self.clock: Clock = clock or book.clock

    async def reconcile(self, record: PositionRecord) -> ExitResult:
        """One attempt: CLOSED, OPEN or RECONCILED when the exchange's answers prove what happened; UNKNOWN
        (still SELLING, flagged) when they do not yet, or when a lookup or balance read fails."""
        key = record.key
        if self.book.is_reconciling(key) or (record.state is State.SELLING and not record.unresolved):
            emit("exit_in_progress_refused", **log_fields(record, None), state=str(record.state),
                 reason="reconcile")
            return self.report.finish(record, ExitOutcome.IN_PROGRESS, attempts=0)
        if not record.unresolved or record.inflight is None:
            raise TransitionRefused(key, record.state, "reconcile", "no unknown outcome to settle")
        permit = record.inflight
        balance = None
        with self.book.reconciling(key):
            try:
                with anyio.fail_after(self.timeout):
                    order_id = self.book.order_id(key)
                    lookup = (await self.exchange.lookup_sell(permit, order_id=order_id) if order_id is not None
                              else await self.exchange.lookup_sell(permit))
                    if not isinstance(lookup, SellLookup) or not isinstance(lookup.status, LookupStatus):
                        raise InvalidValue(f"lookup_sell[{key}]", lookup, "the exchange returned no SellLookup")
                    waited = self.clock.wall() - self._left_at(record, lookup)
                    conclusion = conclude(lookup.status, waited >= timedelta(seconds=self.horizon))
                    if conclusion in UNFILLED:
                        balance = await self.fresh_balance(record.token_id)
            except (ExchangeError, InvalidValue, TimeoutError) as err:
                emit("exit_reconcile_failed", **log_fields(record, None),
                     error=str(err) or type(err).__name__)
                return self.report.finish(record, ExitOutcome.UNKNOWN, attempts=0,
                                          error=str(err) or type(err).__name__)
        trigger = RESOLUTIONS[(conclusion, balance == 0)]
        if trigger is None:
            return self._still_unknown(record, lookup, waited)
        sent = permit.shares
        # A fill the lookup could not describe readably is still a fill: the permit's shares, as a FOK fills whole.
        fill = lookup.fill if conclusion is Conclusion.FILLED and readable_fill(lookup.fill, permit) else None
        # A FOK fills all or nothing: without fill details, "filled" still means the permit's shares.
        actual = (fill.shares if fill is not None else sent) if trigger == "resolved_filled" else 0
        if balance is not None and balance_moved_without_fill(permit.verified_balance, balance):
            self.report.diverge(DivergenceKind.BALANCE_MOVED_WITHOUT_FILL, record, permit.verified_balance, balance)
        # The order that filled: the lookup's fill names it; without one, the order journaled for this sell does.
        filled = {"shares": actual, "avg_price": None if fill is None else fill.avg_price,
                  "order_id": fill.order_id if fill is not None else self.book.order_id(key)}
        self.book.fire(record, trigger, **(filled if trigger == "resolved_filled" else {}))
        if fill is not None:
            self.settlements.follow(record, fill)
        report = self.report.after(record, trigger, log_fields(record, None), between=(sent, actual),
                                   lookup=str(lookup.status), state=str(record.state), sent=micro_to_shares(sent),
                                   filled=micro_to_shares(actual))
        return self.report.ended(record, report, attempts=0, order_id=fill.order_id if fill is not None else None)

    def _left_at(self, record: PositionRecord, lookup: SellLookup) -> datetime:
        """When the request left our hands: when the engine's sell call returned, later by however long the
        adapter's worker still held it. After a restart with no answer journaled, the journaled time of the
        order plus the longest the engine could have been posting it; with no record at all, now (the first
        lookup), which is never too early."""
        sent = self.book.sent_at(record.key)
        if sent is None:
            noted = self.book.order_noted_at(record.key)
            sent = self.clock.wall() if noted is None else noted + timedelta(seconds=self.post_deadline)
            self.book.note_sent(record, sent)
        return sent + timedelta(seconds=max(lookup.left_late, 0.0))

    def _still_unknown(self, record: PositionRecord, lookup: SellLookup, waited: timedelta) -> ExitResult:
        why = (f"order lookup found {lookup.status} {max(waited.total_seconds(), 0.0):.1f}s after the order left "
               f"(horizon {self.horizon}s): not proven either way")
        emit("exit_outcome_pending", **log_fields(record, None), lookup=str(lookup.status),
             waited_s=round(max(waited.total_seconds(), 0.0), 3), horizon_s=self.horizon)
        return self.report.finish(record, ExitOutcome.UNKNOWN, attempts=0, error=why)
