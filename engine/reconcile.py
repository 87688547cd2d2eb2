"""Reconciliation: an unknown sell outcome settled by order lookup and balance, never by resending.

A sell whose answer was lost may have filled. The exchange is asked for the order (by its journaled
id when there is one); if it did not fill, a fresh balance read tells "not filled" (the shares are still
there) from "gone" (sold elsewhere). If the lookup itself fails, the position stays SELLING, flagged
unresolved, and exits of it stay refused.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from exitguard.background import Settlements
from exitguard.book import PositionBook
from exitguard.errors import ExchangeError
from exitguard.exchange.port import Exchange, LookupStatus
from exitguard.position import ExitOutcome, ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.states import RESOLUTIONS, InvalidValue, PositionRecord, State, TransitionRefused, micro_to_shares
from exitguard.telemetry.logs import emit


class Reconciler:
    """Settles unknown outcomes for one engine. `fresh_balance(token)` reads the balance in micro-shares
    after refreshing the exchange's cache."""

    def __init__(self, exchange: Exchange, book: PositionBook, report: Reporter, settlements: Settlements,
                 fresh_balance: Callable[[str], Awaitable[int]], timeout: float) -> None:
        self.exchange = exchange
        self.book = book
        self.report = report
        self.settlements = settlements
        self.fresh_balance = fresh_balance
        self.timeout = timeout

    async def reconcile(self, record: PositionRecord) -> ExitResult:
        """CLOSED, OPEN or RECONCILED; UNKNOWN (still SELLING) when the lookup fails."""
        key = record.key
        if self.book.is_reconciling(key) or (record.state is State.SELLING and not record.unresolved):
            emit("exit_in_progress_refused", **log_fields(record, None), state=str(record.state),
                 reason="reconcile")
            return self.report.finish(record, ExitOutcome.IN_PROGRESS, attempts=0)
        if not record.unresolved or record.inflight is None:
            raise TransitionRefused(key, record.state, "reconcile", "no unknown outcome to settle")
        permit = record.inflight
        with self.book.reconciling(key):
            try:
                with anyio.fail_after(self.timeout):
                    order_id = self.book.order_id(key)
                    lookup = (await self.exchange.lookup_sell(permit, order_id=order_id) if order_id is not None
                              else await self.exchange.lookup_sell(permit))
                    balance = None
                    if lookup.status is not LookupStatus.FILLED:
                        balance = await self.fresh_balance(record.token_id)
            except (ExchangeError, InvalidValue, TimeoutError) as err:
                emit("exit_reconcile_failed", **log_fields(record, None),
                     error=str(err) or type(err).__name__)
                return self.report.finish(record, ExitOutcome.UNKNOWN, attempts=0,
                                          error=str(err) or type(err).__name__)
        sent = permit.shares
        trigger = RESOLUTIONS[(lookup.status, balance == 0)]
        fill = lookup.fill if lookup.status is LookupStatus.FILLED else None
        # A FOK fills all or nothing: without fill details, "filled" still means the permit's shares.
        actual = (fill.shares if fill is not None else sent) if trigger == "resolved_filled" else 0
        self.book.fire(record, trigger, **({"shares": actual} if trigger == "resolved_filled" else {}))
        if fill is not None:
            self.settlements.follow(record, fill)
        report = self.report.after(record, trigger, log_fields(record, None), between=(sent, actual),
                                   lookup=str(lookup.status), state=str(record.state), sent=micro_to_shares(sent),
                                   filled=micro_to_shares(actual))
        assert report.outcome is not None
        return self.report.finish(record, report.outcome, attempts=0,
                                  order_id=fill.order_id if fill is not None else None)
