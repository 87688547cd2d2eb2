"""Fills and settlement followed from the exchange's push channel, when its adapter has one (`follow_fills`).

The channel is a faster witness, not a new authority. Each notice is acted on through the path a REST answer
takes, and nothing here leads to a sell:
- a trade that FAILED on chain is recorded by `Settlements.apply`, as a polled FAILED is: the sale's following ends,
  the divergence is counted and the returned shares become a new OPEN position (`KEY~returned-N`), whose exit
  verifies the balance like any other;
- all of a fill's trades MINED or CONFIRMED end its following as a polled SETTLED does;
- a trade (or the end) of an order whose answer was lost has the resolver look that UNKNOWN up at once. The
  reconciler stays the only judge of what an order did: it reads the order and its trades (which the exchange
  shows as soon as it announces them) and fires the resolution, journaled, with the fill's real size and price.
  A notice says only "look now"; a lookup that cannot conclude leaves the usual backoff in place.
- after every (re)connect, the channel replays nothing: every unsettled sale and every unknown outcome is asked
  of the REST endpoints once (`Settlements.check`, `Resolver.resolve_all`).
Settlement polling keeps running whatever the channel does: it is the fallback while the channel is down, and a
channel that dies without a word (a notice lost) is covered by it too.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream

from exitguard.background import Settlements
from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.exchange.port import Exchange, ExchangeNotice, NoticeKind, Settlement, SettlementStatus
from exitguard.reports import log_fields
from exitguard.resolver import Resolver
from exitguard.states import PositionRecord
from exitguard.telemetry.logs import emit
from exitguard.telemetry.metrics import EngineMetrics

SEEN = 4096
"""Orders and tokens remembered as seen to trade (a few minutes of a busy bot's trades)."""
WITNESSES = (NoticeKind.TRADED, NoticeKind.ORDER_ENDED, NoticeKind.TRADE_FAILED, NoticeKind.TRADE_SETTLED)
"""Notices that say something happened to an order: an unknown outcome of that order is looked up at once."""


class FillFollower:
    """Runs the exchange's `follow_fills` in the engine's task group and acts on its notices."""

    def __init__(self, exchange: Exchange, book: PositionBook, settlements: Settlements, resolver: Resolver,
                 clock: Clock, metrics: EngineMetrics) -> None:
        self.exchange = exchange
        self.book = book
        self.settlements = settlements
        self.resolver = resolver
        self.clock = clock
        self.metrics = metrics
        self._last_notice: float | None = None
        self._settled: dict[str, set[str]] = {}
        """Key -> trade ids of its fill announced settled; the fill is settled once all of them are."""
        self._looking: set[str] = set()
        self._seen: OrderedDict[str, None] = OrderedDict()
        """Orders (and, for sells whose order id the engine never learnt, tokens) recently seen to trade or end, the
        newest last: a sell whose answer is lost after the channel announced its trade is looked up at once."""
        resolver.witnessed = self.witnessed

    def start(self, group: anyio.abc.TaskGroup) -> None:
        """Follow the exchange's channel in `group`, if its adapter has one (an optional port capability)."""
        follow = getattr(self.exchange, "follow_fills", None)
        if callable(follow):
            self.metrics.user_channel_connected = False
            self.metrics.user_channel_event_age = self.event_age
            group.start_soon(self.follow, follow)

    def event_age(self) -> float | None:
        return None if self._last_notice is None else max(0.0, self.clock.monotonic() - self._last_notice)

    async def follow(self, follow_fills: Callable[[Callable[[ExchangeNotice], None]], Awaitable[Any]]) -> None:
        # Unbounded: `notify` must never block the adapter's reader, and notices are few (one per trade event).
        send, receive = anyio.create_memory_object_stream[ExchangeNotice](math.inf)
        async with anyio.create_task_group() as group:
            group.start_soon(self._consume, receive, group)
            try:
                await follow_fills(send.send_nowait)
                self.metrics.user_channel_connected = None  # it returned: this exchange follows no channel
            except Exception as err:  # noqa: BLE001 - the channel is an extra: without it, polling carries on
                self.metrics.user_channel_connected = False
                emit("user_channel_failed", error=str(err) or type(err).__name__, error_type=type(err).__name__)
            finally:
                send.close()

    async def _consume(self, notices: MemoryObjectReceiveStream[ExchangeNotice], group: anyio.abc.TaskGroup) -> None:
        async with notices:
            async for notice in notices:
                if not isinstance(notice, ExchangeNotice):
                    continue  # an adapter's bug; nothing to act on
                self._last_notice = self.clock.monotonic()
                if notice.kind is NoticeKind.CONNECTED:
                    self.metrics.user_channel_connected = True
                    await self._backfill()
                elif notice.kind is NoticeKind.DISCONNECTED:
                    self.metrics.user_channel_connected = False
                if notice.kind in (NoticeKind.TRADE_FAILED, NoticeKind.TRADE_SETTLED):
                    self._settlement(notice)
                if notice.kind in WITNESSES:
                    self._remember(notice)
                    for record in self._unresolved_of(notice):
                        self._looking.add(record.key)
                        group.start_soon(self._look_up, record)

    async def _backfill(self) -> None:
        """The channel replays nothing: what happened while it was down is asked of the REST endpoints."""
        unsettled, unresolved = len(self.book.unsettled()), len(self.book.unresolved())
        error = None
        try:
            await self.settlements.check()
            await self.resolver.resolve_all()
        except Exception as err:  # noqa: BLE001 - polling and the resolver's retries still cover what this missed
            error = f"{type(err).__name__}: {err}"
        emit("user_channel_backfill", unsettled=unsettled, unresolved=unresolved, error=error)

    def _settlement(self, notice: ExchangeNotice) -> None:
        """A trade of one of our settling fills failed or settled: recorded as a polled answer is."""
        for record, fill in self.book.settling():
            if not _same(fill.order_id, notice.order_id) or notice.trade_id not in fill.trade_ids:
                continue
            if notice.kind is NoticeKind.TRADE_FAILED:
                self._settled.pop(record.key, None)
                # As the REST read counts it (polymarket reads.settlement): never more than the fill sold.
                returned = min(notice.returned_shares, fill.shares) or fill.shares
                self.settlements.apply(record, fill, Settlement(SettlementStatus.FAILED, returned_shares=returned))
                continue
            seen = self._settled.setdefault(record.key, set())
            seen.add(notice.trade_id)
            if seen >= set(fill.trade_ids):
                del self._settled[record.key]
                self.settlements.apply(record, fill, Settlement(SettlementStatus.SETTLED))

    def witnessed(self, record: PositionRecord) -> bool:
        """Whether a notice already named the order of the record's sell in flight (or its token, with no order id
        known): the resolver's first lookup of it runs at once."""
        order = self.book.order_id(record.key)
        return (order.lower() if order is not None else f"token:{record.token_id}") in self._seen

    def _remember(self, notice: ExchangeNotice) -> None:
        for seen in (notice.order_id and notice.order_id.lower(), notice.token_id and f"token:{notice.token_id}"):
            if seen:
                self._seen[seen] = None
                self._seen.move_to_end(seen)
        while len(self._seen) > SEEN:
            self._seen.popitem(last=False)

    def _unresolved_of(self, notice: ExchangeNotice) -> list[PositionRecord]:
        """Unknown outcomes the notice may witness: the order journaled for it, else (no journal: the engine never
        learnt the order's id) any unknown sell of the same token, whose lookup asks the adapter that signed it."""
        found = []
        for key in self.book.unresolved():
            if key in self._looking:
                continue
            record, order = self.book.get(key), self.book.order_id(key)
            if _same(order, notice.order_id) or (order is None and notice.token_id == record.token_id):
                found.append(record)
        return found

    async def _look_up(self, record: PositionRecord) -> None:
        try:
            if record.unresolved:  # another lookup may have settled it since the notice came
                await self.resolver.resolve(record)
        except Exception as err:  # noqa: BLE001 - the resolver's own retries go on
            emit("exit_reconcile_failed", **log_fields(record, None), error=f"{type(err).__name__}: {err}")
        finally:
            self._looking.discard(record.key)


def _same(ours: str | None, theirs: str | None) -> bool:
    return ours is not None and theirs is not None and ours.lower() == theirs.lower()
