"""ExitEngine: runs verified exits. The imperative shell around `states/`.

Each step does its I/O here, then feeds the answer to the position machine as a trigger; the machine
decides the next state. The one sell path is: request_exit -> balance fetched -> permit issued ->
permit fresh -> one FOK post of exactly the permit's shares.

Beside it: the positions and the one place transitions fire (`book.py`), what is reported after one
(`reports.py`), the sell step (`sell.py`), reconciliation (`reconcile.py`), warm-ups and settlements
(`background.py`), restart recovery (`recovery.py`).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio

from exitguard.background import Settlements, WarmUps
from exitguard.book import PositionBook
from exitguard.clock import Clock, SystemClock
from exitguard.errors import EngineClosed, ExchangeError, ExitRefused
from exitguard.exchange.port import Exchange, SettlementStatus
from exitguard.journal import Journal
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.reconcile import Reconciler
from exitguard.recovery import RecoverySummary, recover
from exitguard.reports import Reporter, balance_facts, log_fields
from exitguard.retry import RetryPolicy
from exitguard.sell import Seller
from exitguard.settings import parse_count, parse_seconds
from exitguard.states import (
    DEFAULT_PERMIT_MAX_AGE,
    IN_FLIGHT_STATES,
    InvalidValue,
    MarketRules,
    PositionRecord,
    Report,
    State,
    assess_balance,
    micro_to_shares,
    on_interrupt,
    parse_price,
    parse_raw_balance,
)
from exitguard.telemetry.divergence import DivergenceDetector
from exitguard.telemetry.logs import emit, enabled
from exitguard.telemetry.metrics import EngineMetrics

DEFAULT_SETTLEMENT_WINDOW = timedelta(seconds=60)
UNSETTLED_ZERO = "balance 0 inside the settlement window of the last buy: the cache may lag the buy"


class ExitEngine:
    """Exits positions on one exchange. Use as `async with ExitEngine(exchange) as engine:`.

    `journal=path` makes the engine crash-safe: every transition is written (fsync'd) to a SQLite journal
    before the engine acts on it; on entry the engine takes the journal's lock (one engine per file),
    restores the positions and settles whatever was in flight before returning.
    """

    def __init__(
        self,
        exchange: Exchange,
        journal: object = None,
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        max_concurrent_exits: int = 64,
        permit_max_age: float = DEFAULT_PERMIT_MAX_AGE,
        settlement_window: timedelta = DEFAULT_SETTLEMENT_WINDOW,
        verify_timeout: float = 10.0,
        sell_timeout: float = 15.0,
        divergence: DivergenceDetector | None = None,
        attempt_ids: Callable[[], str] | None = None,
        settlement_poll_interval: float | None = 2.0,
    ) -> None:
        if journal is not None and (not isinstance(journal, (str, os.PathLike)) or str(journal) in ("", ":memory:")):
            raise InvalidValue("journal", journal, "must be None or the path of a journal file (it must survive "
                                                   "the process)")
        self.journal_path = None if journal is None else Path(journal)
        self.recovery: RecoverySummary | None = None
        parse_count(max_concurrent_exits, "max_concurrent_exits")
        poll = 1.0 if settlement_poll_interval is None else settlement_poll_interval
        for name, seconds in (("permit_max_age", permit_max_age), ("verify_timeout", verify_timeout),
                              ("sell_timeout", sell_timeout), ("settlement_poll_interval", poll)):
            parse_seconds(seconds, name)
        if not isinstance(settlement_window, timedelta) or settlement_window < timedelta(0):
            raise InvalidValue("settlement_window", settlement_window, "must be a timedelta >= 0")
        self.exchange = exchange
        self.clock: Clock = clock or SystemClock()
        self.retry = retry or RetryPolicy()
        self.max_concurrent_exits = max_concurrent_exits
        self.permit_max_age = permit_max_age
        self.settlement_window = settlement_window
        self.verify_timeout = verify_timeout
        self.sell_timeout = sell_timeout
        self.divergence = divergence or DivergenceDetector(clock=self.clock)
        self.metrics = EngineMetrics()
        self.settlement_poll_interval = settlement_poll_interval
        self._attempt_ids = attempt_ids or (lambda: uuid.uuid4().hex)
        self._book = PositionBook(self.clock)
        self._report = Reporter(self._book, self.metrics, self.divergence)
        self._warm_ups = WarmUps(exchange)
        self._settlements = Settlements(exchange, self._book, self._report, self.track, verify_timeout)
        self._reconciler = Reconciler(exchange, self._book, self._report, self._settlements,
                                      partial(self._read_balance, refresh=True), verify_timeout)
        self._rules: dict[str, MarketRules] = {}
        self._cache_suspect: set[str] = set()
        """Tokens whose exchange balance cache read higher than the exchange would sell: refresh first."""
        self._seller = Seller(exchange, self._book, self._report, self._settlements, self.clock, self.metrics,
                              permit_max_age=permit_max_age, timeout=sell_timeout,
                              distrust_balance=self._cache_suspect.add, distrust_rules=self._forget_rules)
        self._lifetime: AsyncExitStack | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._running = 0
        self._idle: anyio.Event | None = None

    @property
    def journal(self) -> Journal | None:
        """The open journal while the engine runs with one, else None."""
        return self._book.journal

    # -- lifetime ----------------------------------------------------------------------------------

    async def __aenter__(self) -> ExitEngine:
        if self._lifetime is not None:
            raise EngineClosed("this ExitEngine is already running")
        self._lifetime = AsyncExitStack()
        try:
            await self._start(self._lifetime)
        except BaseException:
            # A start that fails leaves nothing running: no background tasks, no journal lock.
            await self._stop()
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    async def _start(self, lifetime: AsyncExitStack) -> None:
        """Everything the engine starts is entered on `lifetime`, which stops it in reverse order."""
        restored: list[PositionRecord] = []
        if self.journal_path is not None:
            journal = Journal.open(self.journal_path)
            lifetime.callback(self._book.close_journal, journal)
            restored, untracked = self._book.restore(journal)
            for position in untracked:
                self.track(position)
        self._limiter = anyio.CapacityLimiter(self.max_concurrent_exits)
        lifetime.callback(self._refuse_exits)
        # Warm-ups and settlement polling run beside the exits; they never decide a state by themselves.
        background = await lifetime.enter_async_context(anyio.create_task_group())
        lifetime.callback(background.cancel_scope.cancel)
        lifetime.enter_context(self._warm_ups.running(background, self._book.open_tokens()))
        if self.settlement_poll_interval is not None:
            background.start_soon(self._settlements.poll, self.settlement_poll_interval)
        if self.journal_path is not None:
            # Whatever was in flight when the last engine died is settled before any new exit can start.
            self.recovery = await recover(self._book, restored, journal=self.journal_path,
                                          reconcile=self.reconcile, report=self._report)

    async def _stop(self) -> None:
        # Exits started through this engine finish (each bounded by its own timeouts) before the block
        # ends, so leaving it never abandons a sell whose answer nobody will read.
        if self._running:
            self._idle = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._idle.wait()
        lifetime = self._lifetime
        try:
            if lifetime is not None:
                # Closed with no exception in flight, whatever ended the block: the task group would wrap
                # one in an exception group, and the caller's own exception must reach it unchanged.
                await lifetime.aclose()
        finally:
            self._lifetime = None

    def _refuse_exits(self) -> None:
        self._limiter = None

    # -- positions ---------------------------------------------------------------------------------

    def track(self, position: Position) -> None:
        """Start tracking a position. One live (unfinished) position per key and per token."""
        if not isinstance(position, Position):
            raise InvalidValue("position", position, "must be an exitguard Position")
        self._book.track(position)
        if enabled("position_tracked"):
            emit("position_tracked", key=position.key, token=position.token_id, shares=position.shares)
        self._warm_ups.request(position.token_id)

    def forget(self, key: str) -> None:
        """Drop a finished position from memory."""
        self._book.forget(key)

    def state(self, key: str) -> str:
        return self._book.state(key)

    def states(self) -> dict[str, str]:
        return self._book.states()

    def counts_by_state(self) -> dict[str, int]:
        """Tracked positions per state (for metrics: cheaper than `states()` at 100,000 positions)."""
        return self._book.counts_by_state()

    def unresolved(self) -> list[str]:
        """Keys whose sell outcome is unknown: each needs `reconcile(key)`."""
        return self._book.unresolved()

    def unsettled(self) -> list[str]:
        """CLOSED keys whose fill is matched but not yet settled on chain (see `check_settlements`)."""
        return self._book.unsettled()

    async def check_settlements(self) -> dict[str, SettlementStatus]:
        """Ask the exchange once where each unsettled sale stands. A failed settlement returns the shares
        to the wallet: it is a divergence, and the returned shares become a new OPEN position to exit.

        Runs every `settlement_poll_interval` seconds inside the engine; callable directly (tests, bots
        that poll on their own schedule with `settlement_poll_interval=None`)."""
        self._require_running()
        return await self._settlements.check()

    def _require_running(self) -> anyio.CapacityLimiter:
        if self._limiter is None:
            raise EngineClosed("use the engine inside `async with ExitEngine(...) as engine:`")
        return self._limiter

    # -- exit --------------------------------------------------------------------------------------

    async def exit(self, key: str, *, reason: str, limit_price: Decimal) -> ExitResult:
        """Exit the position: verify the balance, then sell exactly what the exchange confirmed.

        Never raises for exchange trouble: the answer is in `result.outcome`. Raises for bad input
        (unknown key, bad price or reason, a finished position), before anything is sent.
        """
        limiter = self._require_running()
        record = self._book.get(key)
        price = parse_price(limit_price, "limit_price")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValue("reason", reason, "must be a non-empty string")
        if record.state in IN_FLIGHT_STATES or self._book.is_reconciling(key):
            emit("exit_in_progress_refused", **log_fields(record, None), state=str(record.state),
                 reason=reason)
            return self._report.counted(self._report.finish(record, ExitOutcome.IN_PROGRESS, attempts=0))
        if record.state is not State.OPEN:
            raise ExitRefused(key, record.state)
        rules = self._rules.get(record.token_id)
        if rules is not None:
            self._check_tick(price, rules)
        # The state moves to VERIFYING before the first await: a racing exit() sees it and is refused.
        self._book.fire(record, "request_exit", reason=reason, limit_price=price, attempt_id=self._attempt_ids())
        self._running += 1
        try:
            async with limiter:
                return self._report.counted(await self._run_attempts(record, reason, price))
        finally:
            self._settle_interrupted(record)
            self._running -= 1
            if self._running == 0 and self._idle is not None:
                self._idle.set()

    async def _run_attempts(self, record: PositionRecord, reason: str, first_price: Decimal) -> ExitResult:
        price = first_price
        attempts = 1
        while True:
            result, retryable = await self._attempt(record, price, attempts)
            if not retryable or attempts >= self.retry.max_attempts:
                return result
            next_price = self.retry.next_price(first_price, price, self._rules[record.token_id].tick_size)
            if next_price is None:
                return result
            emit("exit_retrying", **log_fields(record, result.verify_latency), next_attempt=attempts + 1,
                 limit_price=next_price, previous_limit_price=price)
            price = next_price
            attempts += 1
            self._book.fire(record, "request_exit", reason=reason, limit_price=price, attempt_id=self._attempt_ids())

    async def _attempt(self, record: PositionRecord, price: Decimal, attempts: int) -> tuple[ExitResult, bool]:
        """One verification and at most one sell. Returns the result and whether a retry may follow."""
        token = record.token_id
        started = self.clock.monotonic()
        try:
            with anyio.fail_after(self.verify_timeout):
                rules = await self._market_rules(token)
                self._check_tick(price, rules)
                balance = await self._verified_balance(record)
        except (ExchangeError, InvalidValue, TimeoutError) as err:
            latency = self.clock.monotonic() - started
            error = str(err) or f"no answer within {self.verify_timeout}s"
            result = self._verify_failed(record, err, error, price, attempts, latency)
            if isinstance(err, InvalidValue) and err.field == "limit_price":
                raise
            return result, False
        verified_at = self.clock.monotonic()
        latency = verified_at - started
        self.metrics.verify_latency_recorder.record(latency)
        verdict = assess_balance(record.expected, balance, rules, last_buy_at=record.last_buy_at,
                                 now=self.clock.wall(), settlement_window=self.settlement_window)
        self._book.fire(record, "balance_fetched", verdict=verdict, verified_at=verified_at)
        context = log_fields(record, latency)
        if record.state is State.SELLING:
            if verdict.mismatch:
                self._report.mismatch(record, verdict, context)
            return await self._seller.sell(record, price, attempts, latency)
        report = self._report.after(record, "balance_fetched", context, between=(verdict.expected, verdict.actual),
                                    **balance_facts(verdict),
                                    min_order_size=micro_to_shares(rules.min_order_size),
                                    error=UNSETTLED_ZERO, error_type="UnsettledBalance")
        return self._finish(record, report, attempts=attempts, price=price, latency=latency,
                            error=UNSETTLED_ZERO if record.state is State.OPEN else None), False

    async def _verified_balance(self, record: PositionRecord) -> int:
        """The exchange's balance in micro-shares. A reading below the expected shares may be the
        exchange's cache lagging a buy, so it is refreshed and read once more before it counts; after
        the exchange refused a sell for lack of balance, the cache is refreshed before the first read."""
        token = record.token_id
        if token in self._cache_suspect:
            self._cache_suspect.discard(token)
            return await self._read_balance(token, refresh=True)
        balance = await self._read_balance(token, refresh=False)
        if balance < record.expected:
            balance = await self._read_balance(token, refresh=True)
        return balance

    async def _read_balance(self, token: str, *, refresh: bool) -> int:
        """One balance read in micro-shares, after a cache refresh when asked; malformed answers raise."""
        if refresh:
            await self.exchange.refresh_balance(token)
            self.metrics.balance_refreshes += 1
        return parse_raw_balance(await self.exchange.get_balance(token), f"balance[token_id={token}]")

    def _forget_rules(self, token: str) -> None:
        self._rules.pop(token, None)

    async def _market_rules(self, token: str) -> MarketRules:
        rules = self._rules.get(token)
        if rules is None:
            rules = await self.exchange.market_rules(token)
            if not isinstance(rules, MarketRules):
                raise InvalidValue(f"market_rules[token_id={token}]", rules, "the exchange returned no MarketRules")
            self._rules[token] = rules
        return rules

    # -- reconciliation ----------------------------------------------------------------------------

    async def reconcile(self, key: str) -> ExitResult:
        """Settle an unknown sell outcome by order lookup and balance: CLOSED, OPEN or RECONCILED.

        Never resends. If the lookup itself fails, the position stays SELLING (outcome UNKNOWN).
        """
        self._require_running()
        return self._report.counted(await self._reconciler.reconcile(self._book.get(key)))

    # -- shared steps ------------------------------------------------------------------------------

    def _settle_interrupted(self, record: PositionRecord) -> None:
        """After a cancelled exit, leave the record in a state that tells the truth (states.INTERRUPTED)."""
        settle = on_interrupt(record.state, record.unresolved, record.inflight is not None)
        if settle is None:
            return
        sent = record.inflight.shares if record.inflight is not None else None
        self._book.fire(record, settle.trigger, **settle.payload)
        if settle.divergence is not None:
            self._report.diverge(settle.divergence, record, sent, None)
        emit("exit_interrupted", **log_fields(record, None), state=str(record.state), unresolved=record.unresolved)

    def _verify_failed(self, record: PositionRecord, err: Exception, error: str, price: Decimal, attempts: int,
                       latency: float) -> ExitResult:
        self._book.fire(record, "verify_failed", error=error)
        report = self._report.after(record, "verify_failed", log_fields(record, latency), error=error,
                                    error_type=type(err).__name__)
        return self._finish(record, report, attempts=attempts, price=price, latency=latency, error=error)

    def _finish(self, record: PositionRecord, report: Report, **result: Any) -> ExitResult:
        assert report.outcome is not None, "an edge that ends an exit names its outcome"
        if report.outcome is ExitOutcome.VERIFY_FAILED:
            self.metrics.verify_failures += 1
        return self._report.finish(record, report.outcome, **result)

    @staticmethod
    def _check_tick(price: Decimal, rules: MarketRules) -> None:
        if not rules.price_is_on_tick(price):
            raise InvalidValue("limit_price", price, f"not on the market's tick size {rules.tick_size}")
