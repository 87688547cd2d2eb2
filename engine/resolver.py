"""Unknown outcomes resolve themselves: a bot that only ever calls `exit()` is never left stuck.

Every position whose sell outcome is unknown (a lost answer, a cancelled post, a restart with an order
possibly sent) is handed to the resolver. In the engine's task group it looks the order up again through
the reconciler (never a resend) with backoff, `first_delay` doubling to `max_delay`, at most `concurrency`
lookups at once, until the outcome settles. One resolution of a position runs at a time: `exit()`,
`reconcile()` and the background retries wait for the one in flight and reuse what it found.

Retries are due on the engine's own clock (a test's manual clock decides when they fire); the scheduler
sleeps on the event loop until the earliest is due, and wakes at once when a new one is planned.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import anyio
import anyio.abc

from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import EngineClosed, JournalError
from exitguard.position import ExitOutcome, ExitResult
from exitguard.reports import Reporter, log_fields
from exitguard.states import REPORTS, PositionRecord
from exitguard.telemetry.logs import emit

RESOLVED_TRIGGERS = ("resolved_filled", "resolved_not_filled", "resolved_gone")
SHORTEST_NAP = 0.01
"""Seconds: the scheduler never spins, whatever the clock does."""


class Resolver:
    """Resolves unknown outcomes for one engine. `reconcile(record)` is one lookup (the Reconciler's);
    `filled(token)` hears of every resolution as filled (the exchange's balance cache may still show the
    shares)."""

    def __init__(self, book: PositionBook, report: Reporter, clock: Clock,
                 reconcile: Callable[[PositionRecord], Awaitable[ExitResult]], filled: Callable[[str], None], *,
                 concurrency: int, first_delay: float, max_delay: float) -> None:
        self.book = book
        self.report = report
        self.clock = clock
        self.reconcile = reconcile
        self.filled = filled
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.concurrency = concurrency
        self._slots = anyio.Semaphore(concurrency)
        self._due: list[tuple[float, int, str]] = []
        """(monotonic seconds on the engine's clock, sequence, key): the next lookup of each key, earliest first."""
        self._sequence = itertools.count()
        self._planned: dict[str, tuple[int, float]] = {}
        """Key -> (sequence, due time) of its live entry in `_due` (older entries are skipped)."""
        self._delay: dict[str, float] = {}
        """Key -> the delay its latest plan waited: the next one waits twice as long (up to `max_delay`)."""
        self._since: dict[str, float] = {}
        """Key -> monotonic seconds (the engine's clock) when its outcome became unknown."""
        self._resolving: dict[str, anyio.Event] = {}
        self._wake = anyio.Event()
        self._group: anyio.abc.TaskGroup | None = None
        self.witnessed: Callable[[PositionRecord], bool] = lambda record: False
        """Whether the exchange already announced a trade or the end of the record's order (exitguard.fills): its
        first lookup then runs at once instead of after `first_delay`."""

    @contextmanager
    def running(self, group: anyio.abc.TaskGroup) -> Iterator[None]:
        """Retry lookups in `group` until the block ends."""
        # Fresh for each run: an engine entered again may run on another event loop.
        self._slots, self._wake, self._group = anyio.Semaphore(self.concurrency), anyio.Event(), group
        group.start_soon(self._schedule)
        try:
            yield
        finally:
            self._group = None

    def submit(self, record: PositionRecord) -> None:
        """The record's outcome is unknown: look it up again in `first_delay` seconds (at once when its order was
        already seen to trade or end), then with backoff."""
        key = record.key
        if not record.unresolved or key in self._since:
            return
        self._since[key] = self.clock.monotonic()
        self._plan(key, self.first_delay, at_once=self.witnessed(record))

    def oldest_age(self) -> float:
        """Seconds since the oldest unresolved outcome became unknown (0 when there is none)."""
        return max(0.0, self.clock.monotonic() - min(self._since.values())) if self._since else 0.0

    async def resolve(self, record: PositionRecord) -> ExitResult:
        """One lookup of the record's outcome now; if one is already in flight, wait for it and use its
        result. UNKNOWN while the outcome stays unknown."""
        key = record.key
        waited = False
        while (in_flight := self._resolving.get(key)) is not None:
            await in_flight.wait()
            waited = True
        if waited and not record.unresolved:
            return self._settled(record)
        if not record.unresolved:
            return await self.reconcile(record)  # nothing to resolve: the reconciler says why
        done = self._resolving[key] = anyio.Event()
        try:
            result = await self.reconcile(record)
        except (JournalError, EngineClosed):
            raise  # our own bookkeeping failed, not the lookup: the caller must hear it
        except Exception as err:  # noqa: BLE001 - a lookup that breaks proves nothing: still unknown
            error = f"{type(err).__name__}: {err}"
            emit("exit_reconcile_failed", **log_fields(record, None), error=error)
            result = self.report.finish(record, ExitOutcome.UNKNOWN, attempts=0, error=error)
        finally:
            del self._resolving[key]
            done.set()
        if record.unresolved:
            self._still_unknown(record, result.error)
        else:
            self._forget(key)
            if result.outcome is ExitOutcome.CLOSED:
                self.filled(record.token_id)
        return result

    async def resolve_all(self) -> dict[str, ExitResult]:
        """One lookup of every unresolved outcome now, `concurrency` at a time."""
        results: dict[str, ExitResult] = {}

        async def one(record: PositionRecord) -> None:
            async with self._slots:
                results[record.key] = await self.resolve(record)

        async with anyio.create_task_group() as group:
            for key in self.book.unresolved():
                group.start_soon(one, self.book.get(key))
        return results

    # -- the background retries --------------------------------------------------------------------

    def _still_unknown(self, record: PositionRecord, error: str | None) -> None:
        """A lookup did not settle the record: make sure a background one is planned, and say when."""
        key, now = record.key, self.clock.monotonic()
        self.submit(record)
        if key not in self._planned:
            self._plan(key, self.first_delay)
        emit("unknown_outcome_retry_scheduled", key=key, token=record.token_id,
             retry_in_s=round(max(0.0, self._planned[key][1] - now), 3),
             unresolved_for_s=round(now - self._since[key], 3), error=error)

    def _plan(self, key: str, delay: float, *, at_once: bool = False) -> None:
        """Look the key up in `delay` seconds (now, if `at_once`: the backoff still counts from `delay`)."""
        self._delay[key] = delay
        at = self.clock.monotonic() + (0.0 if at_once else delay)
        sequence = next(self._sequence)
        self._planned[key] = (sequence, at)
        heapq.heappush(self._due, (at, sequence, key))
        self._wake.set()

    def _forget(self, key: str) -> None:
        self._delay.pop(key, None)
        self._planned.pop(key, None)
        self._since.pop(key, None)

    async def _schedule(self) -> None:
        while True:
            self._wake = anyio.Event()
            while self._due and self._due[0][0] <= self.clock.monotonic():
                _, sequence, key = heapq.heappop(self._due)
                if self._planned.get(key, (None,))[0] != sequence:
                    continue  # settled since, or planned again
                del self._planned[key]
                # A slot before the task: at most `concurrency` lookups (and tasks) at once, however many wait.
                await self._slots.acquire()
                if self._group is None:
                    # The engine is closing: its block ended while this slot was awaited. The plan is dropped
                    # with the engine; a restarted engine looks the order up again from the journal.
                    self._slots.release()
                    return
                self._group.start_soon(self._retry, key)
            nap = self._due[0][0] - self.clock.monotonic() if self._due else math.inf
            with anyio.move_on_after(max(nap, SHORTEST_NAP)):
                await self._wake.wait()

    async def _retry(self, key: str) -> None:
        try:
            record = self.book.get(key)  # a position with an unknown outcome cannot be forgotten
            if not record.unresolved:
                self._forget(key)
                return
            # The next retry is planned before this lookup, so that a failure reports when it will come.
            self._plan(key, min(self._delay.get(key, self.first_delay) * 2, self.max_delay))
            try:
                await self.resolve(record)
            except Exception as err:  # noqa: BLE001 - the background work goes on; the plan above retries
                emit("exit_reconcile_failed", **log_fields(record, None), error=f"{type(err).__name__}: {err}")
        finally:
            self._slots.release()

    def _settled(self, record: PositionRecord) -> ExitResult:
        """What the resolution that ran while we waited found, read from the record it left behind."""
        outcome = next((report.outcome for trigger in RESOLVED_TRIGGERS
                        if (report := REPORTS.get((trigger, record.state))) is not None and report.outcome),
                       ExitOutcome.IN_PROGRESS)  # already moved on by another exit since
        return self.report.finish(record, outcome, attempts=0)
