"""Work that runs beside the exits, in the engine's task group: market warm-ups and settlement following.

Neither decides a state by itself: a warm-up only saves the first exit its look-ups, and a settlement
answer is recorded through the position book like any other change.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from exitguard.book import PositionBook
from exitguard.errors import ExchangeError, MarketClosed, PositionConflict
from exitguard.exchange.port import Exchange, Fill, Settlement, SettlementStatus
from exitguard.position import Position
from exitguard.reports import Reporter
from exitguard.states import PositionRecord, micro_to_shares
from exitguard.telemetry.divergence import DivergenceKind
from exitguard.telemetry.logs import emit

WARM_UP_WORKERS = 8


class WarmUps:
    """Asks the exchange adapter to look a market up when its position is tracked, so that the first
    exit does not pay for the look-ups (three round trips on a cold Polymarket token)."""

    def __init__(self, exchange: Exchange, *, on_closed: Callable[[str, str], None] | None = None) -> None:
        self.exchange = exchange
        self.on_closed = on_closed
        """Told (token, the exchange's words) when a warm-up finds the market closed (MarketClosed)."""
        self._pending: deque[str] = deque()
        self._wake: anyio.Event | None = None
        """Set when tokens wait and the workers may be asleep; None while the engine does not run."""
        self._loop_thread: int | None = None

    @contextmanager
    def running(self, group: anyio.abc.TaskGroup, tokens: list[str]) -> Iterator[None]:
        """Warm `tokens`, then every token `request`ed, until the block ends (the workers run in `group`)."""
        # A queue and a few workers, not a task per position: a task costs ~45 us and ~1 KB, which at
        # 100,000 positions is seconds and a hundred megabytes. A deque and one wake-up, not a memory stream:
        # a send to a stream wakes a worker per token, and track() is on the bot's hot path.
        self._loop_thread = threading.get_ident()
        self._pending.clear()  # what an earlier run left unwarmed went with its workers
        self._pending.extend(tokens)
        self._wake = anyio.Event()
        for _ in range(WARM_UP_WORKERS):
            group.start_soon(self._worker)
        try:
            yield
        finally:
            wake, self._wake = self._wake, None
            if wake is not None:
                wake.set()  # the workers warm what is queued, then end

    def request(self, token: str) -> None:
        """Warm the token's market, if the engine is running and this is its event loop's thread."""
        wake = self._wake
        if wake is None:
            return
        if threading.get_ident() != self._loop_thread:
            # track() called from outside the engine's event loop (another thread): no warm-up; the first
            # exit looks the market up itself.
            return
        pending = self._pending
        if not pending:
            wake.set()  # workers sleep only on an empty queue: the token that ends it wakes them, later ones need not
        pending.append(token)

    def request_many(self, tokens: list[str]) -> None:
        """`request` for each of `tokens`, with one wake-up."""
        wake = self._wake
        if wake is None or not tokens or threading.get_ident() != self._loop_thread:
            return
        if not self._pending:
            wake.set()
        self._pending.extend(tokens)

    async def _worker(self) -> None:
        pending = self._pending
        while True:
            while pending:
                await self._warm_up(pending.popleft())
            wake = self._wake
            if wake is None:
                return
            if wake.is_set():
                # Every worker that finds the queue empty sleeps on a fresh event; the next request sets it.
                wake = self._wake = anyio.Event()
            await wake.wait()

    async def _warm_up(self, token: str) -> None:
        try:
            await self.exchange.warm_up(token)
        except Exception as err:  # noqa: BLE001 - a failed warm-up only means the first exit looks up itself
            if isinstance(err, MarketClosed) and self.on_closed is not None:
                self.on_closed(token, str(err))  # learned ahead: the first exit of it sends nothing
            emit("market_warm_up_failed", token=token, error=str(err) or type(err).__name__,
                 error_type=type(err).__name__)


class Settlements:
    """Filled sales that are matched on the book but not yet settled on chain, followed until the
    exchange says how they ended. A failed settlement returns the shares to the wallet: it is a
    divergence, and the returned shares become a new OPEN position to exit (through `track`)."""

    def __init__(self, exchange: Exchange, book: PositionBook, report: Reporter,
                 track: Callable[[Position], None], timeout: float) -> None:
        self.exchange = exchange
        self.book = book
        self.report = report
        self.track = track
        self.timeout = timeout
        self._returned = 0

    def follow(self, record: PositionRecord, fill: Fill) -> None:
        self.book.follow_settlement(record, fill)

    async def poll(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if self.book.unsettled():
                await self.check()

    async def check(self) -> dict[str, SettlementStatus]:
        """Ask the exchange once where each unsettled sale stands."""
        answers: dict[str, SettlementStatus] = {}
        for record, fill in self.book.settling():
            key = record.key
            try:
                with anyio.fail_after(self.timeout):
                    settlement = await self.exchange.settlement(fill)
            except (ExchangeError, TimeoutError) as err:
                emit("settlement_check_failed", key=key, token=record.token_id, order_id=fill.order_id,
                     error=str(err) or type(err).__name__, error_type=type(err).__name__)
                continue
            answers[key] = settlement.status
            self.apply(record, fill, settlement)
        return answers

    def apply(self, record: PositionRecord, fill: Fill, settlement: Settlement) -> None:
        """Record what the exchange said of a sale's settlement, whether a REST answer (`check`) or an event of its
        push channel (exitguard.fills) said it: PENDING changes nothing; SETTLED ends the following; FAILED ends it
        and tracks the returned shares. A sale no longer followed (the other source told first) is left alone."""
        if settlement.status is SettlementStatus.PENDING or record.key not in self.book.unsettled():
            return
        self.book.end_settlement(record, str(settlement.status))
        if settlement.status is SettlementStatus.SETTLED:
            emit("exit_settled", key=record.key, token=record.token_id, order_id=fill.order_id,
                 shares=micro_to_shares(fill.shares))
            return
        self._failed(record, fill, settlement.returned_shares or fill.shares)

    def _failed(self, record: PositionRecord, fill: Fill, returned: int) -> None:
        self.report.diverge(DivergenceKind.SETTLEMENT_FAILED, record, fill.shares, fill.shares - returned)
        self._returned += 1
        new_key = f"{record.key}~returned-{self._returned}"
        fields = {"key": record.key, "token": record.token_id, "order_id": fill.order_id,
                  "sold": micro_to_shares(fill.shares), "returned": micro_to_shares(returned)}
        try:
            self.track(Position(key=new_key, token_id=record.token_id, shares=micro_to_shares(returned)))
        except PositionConflict as err:
            # Another live position already holds the token; its next verification sees these shares
            # in the balance (a mismatch it sells), so nothing is lost, but an operator should know.
            emit("exit_settlement_failed", **fields, returned_position=None, error=str(err))
            return
        emit("exit_settlement_failed", **fields, returned_position=new_key, error=None)
