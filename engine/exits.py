"""ExitEngine: runs verified exits. The imperative shell around `states/`.

Each step does its I/O here, then feeds the answer to the position machine as a trigger; the machine
decides the next state. The one sell path is: request_exit -> balance fetched -> permit issued ->
permit fresh -> one FOK post of exactly the permit's shares.
"""

from __future__ import annotations

import math
import os
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import anyio
import anyio.abc
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from exitguard.clock import Clock, SystemClock
from exitguard.errors import (
    EngineClosed,
    ExchangeError,
    ExitRefused,
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    PositionConflict,
    UnknownPosition,
)
from exitguard.exchange.port import Exchange, Fill, LookupStatus, SettlementStatus
from exitguard.journal import Journal
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.recovery import RecoverySummary, recover
from exitguard.retry import RetryPolicy
from exitguard.states import (
    DEFAULT_PERMIT_MAX_AGE,
    FINAL_STATES,
    IN_FLIGHT_STATES,
    BalanceKind,
    BalanceVerdict,
    InvalidValue,
    MarketRules,
    PositionRecord,
    State,
    TransitionRefused,
    assess_balance,
    fire,
    micro_to_shares,
    parse_count,
    parse_price,
    parse_raw_balance,
    parse_seconds,
    permit_is_fresh,
    take_permit,
)
from exitguard.telemetry.divergence import DivergenceDetector, DivergenceEvent, DivergenceKind
from exitguard.telemetry.logs import emit, enabled
from exitguard.telemetry.metrics import EngineMetrics

DEFAULT_SETTLEMENT_WINDOW = timedelta(seconds=60)
WARM_UP_WORKERS = 8


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
        self.journal: Journal | None = None
        self.recovery: RecoverySummary | None = None
        parse_count(max_concurrent_exits, "max_concurrent_exits")
        for name, seconds in (("permit_max_age", permit_max_age), ("verify_timeout", verify_timeout),
                              ("sell_timeout", sell_timeout),
                              ("settlement_poll_interval", 1.0 if settlement_poll_interval is None
                               else settlement_poll_interval)):
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
        self._records: dict[str, PositionRecord] = {}
        self._live_by_token: dict[str, str] = {}
        self._rules: dict[str, MarketRules] = {}
        self._reconciling: set[str] = set()
        self._cache_suspect: set[str] = set()
        """Tokens whose exchange balance cache read higher than the exchange would sell: refresh first."""
        self._order_ids: dict[str, str] = {}
        """Key -> the order signed for its sell in flight (journal on): what a lookup after a crash asks for."""
        self._unsettled: dict[str, Fill] = {}
        """Closed positions whose fill is matched on the book but not yet settled on chain."""
        self._returned = 0
        self._limiter: anyio.CapacityLimiter | None = None
        self._background: anyio.abc.TaskGroup | None = None
        self._warm_queue: MemoryObjectSendStream[str] | None = None
        self._loop_thread: int | None = None
        self._running = 0
        self._idle: anyio.Event | None = None

    # -- lifetime ----------------------------------------------------------------------------------

    async def __aenter__(self) -> ExitEngine:
        if self._limiter is not None:
            raise EngineClosed("this ExitEngine is already running")
        if self.journal_path is not None:
            self.journal = Journal.open(self.journal_path)
            try:
                restored = self._restore()
            except BaseException:
                self.journal.close()
                self.journal = None
                raise
        self._limiter = anyio.CapacityLimiter(self.max_concurrent_exits)
        # Warm-ups and settlement polling run beside the exits; they never decide a state by themselves.
        self._background = anyio.create_task_group()
        await self._background.__aenter__()
        self._loop_thread = threading.get_ident()
        # Market warm-ups go through a queue and a few workers, not a task per position: a task costs
        # ~45 us and ~1 KB, which at 100,000 positions is seconds and a hundred megabytes.
        self._warm_queue, tokens_to_warm = anyio.create_memory_object_stream[str](math.inf)
        for _ in range(WARM_UP_WORKERS):
            self._background.start_soon(self._warm_up_worker, tokens_to_warm.clone())
        tokens_to_warm.close()
        for token in dict.fromkeys(r.token_id for r in self._records.values() if r.state is State.OPEN):
            self._warm_queue.send_nowait(token)
        if self.settlement_poll_interval is not None:
            self._background.start_soon(self._poll_settlements, self.settlement_poll_interval)
        if self.journal is not None:
            try:
                # Whatever was in flight when the last engine died is settled before any new exit can start.
                self.recovery = await recover(self, restored)
            except BaseException:
                # A start that fails leaves nothing running: no background tasks, no journal lock.
                await self.__aexit__(None, None, None)
                raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        # Exits started through this engine finish (each bounded by its own timeouts) before the block
        # ends, so leaving it never abandons a sell whose answer nobody will read.
        if self._running:
            self._idle = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._idle.wait()
        if self._warm_queue is not None:
            self._warm_queue.close()
            self._warm_queue = None
        background, self._background = self._background, None
        if background is not None:
            background.cancel_scope.cancel()
            await background.__aexit__(None, None, None)
        self._limiter = None
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    # -- positions ---------------------------------------------------------------------------------

    def track(self, position: Position) -> None:
        """Start tracking a position. One live (unfinished) position per key and per token."""
        if not isinstance(position, Position):
            raise InvalidValue("position", position, "must be an exitguard Position")
        if position.key in self._records:
            raise PositionConflict(f"position key={position.key!r}: already tracked (state "
                                   f"{self._records[position.key].state}); forget() a finished one first")
        holder = self._live_by_token.get(position.token_id)
        if holder is not None:
            raise PositionConflict(
                f"position key={position.key!r}: token_id={position.token_id!r} is already held by live "
                f"position {holder!r}; the exchange reports one balance per token, so exits would collide"
            )
        record = PositionRecord(position.key, position.token_id, position.micro_shares, position.last_buy_at)
        self._records[position.key] = record
        self._live_by_token[position.token_id] = position.key
        if self.journal is not None:
            self.journal.track(record, self.clock.wall())
        if enabled("position_tracked"):
            emit("position_tracked", key=position.key, token=position.token_id, shares=position.shares)
        if self._warm_queue is not None:
            self._queue_warm_up(position.token_id)

    def forget(self, key: str) -> None:
        """Drop a finished position from memory."""
        record = self._record(key)
        if record.state not in FINAL_STATES:
            raise TransitionRefused(key, record.state, "forget",
                                    "only CLOSED, RECONCILED or DUST positions can be forgotten")
        if key in self._unsettled:
            raise TransitionRefused(key, record.state, "forget",
                                    "its sale is not settled on chain yet; a failed settlement returns the shares")
        del self._records[key]
        self._order_ids.pop(key, None)
        if self.journal is not None:
            self.journal.forget(key)

    def state(self, key: str) -> str:
        return str(self._record(key).state)

    def states(self) -> dict[str, str]:
        return {key: str(record.state) for key, record in self._records.items()}

    def counts_by_state(self) -> dict[str, int]:
        """Tracked positions per state (for metrics: cheaper than `states()` at 100,000 positions)."""
        return {str(state): count for state, count in Counter(r.state for r in self._records.values()).items()}

    def unresolved(self) -> list[str]:
        """Keys whose sell outcome is unknown: each needs `reconcile(key)`."""
        return [key for key, record in self._records.items() if record.unresolved]

    def unsettled(self) -> list[str]:
        """CLOSED keys whose fill is matched but not yet settled on chain (see `check_settlements`)."""
        return list(self._unsettled)

    def _record(self, key: str) -> PositionRecord:
        try:
            return self._records[key]
        except (KeyError, TypeError):
            raise UnknownPosition(key) from None

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
        record = self._record(key)
        price = parse_price(limit_price, "limit_price")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValue("reason", reason, "must be a non-empty string")
        if record.state in IN_FLIGHT_STATES or key in self._reconciling:
            emit("exit_in_progress_refused", **self._fields(record, None), state=str(record.state),
                 reason=reason)
            return self._counted(self._finish(record, ExitOutcome.IN_PROGRESS, attempts=0))
        if record.state is not State.OPEN:
            raise ExitRefused(key, record.state)
        rules = self._rules.get(record.token_id)
        if rules is not None:
            self._check_tick(price, rules)
        # The state moves to VERIFYING before the first await: a racing exit() sees it and is refused.
        self._fire(record, "request_exit", reason=reason, limit_price=price, attempt_id=self._attempt_ids())
        self._running += 1
        try:
            async with limiter:
                return self._counted(await self._run_attempts(record, reason, price))
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
            emit("exit_retrying", **self._fields(record, result.verify_latency), next_attempt=attempts + 1,
                 limit_price=next_price, previous_limit_price=price)
            price = next_price
            attempts += 1
            self._fire(record, "request_exit", reason=reason, limit_price=price, attempt_id=self._attempt_ids())

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
            self._verify_failed(record, error, type(err).__name__, latency)
            if isinstance(err, InvalidValue) and err.field == "limit_price":
                raise
            return self._finish(record, ExitOutcome.VERIFY_FAILED, attempts=attempts, price=price,
                                latency=latency, error=error), False
        verified_at = self.clock.monotonic()
        latency = verified_at - started
        self.metrics.verify_latency_recorder.record(latency)
        verdict = assess_balance(record.expected, balance, rules, last_buy_at=record.last_buy_at,
                                 now=self.clock.wall(), settlement_window=self.settlement_window)
        fields = self._fields(record, latency)
        if verdict.kind is BalanceKind.UNSETTLED_ZERO:
            error = "balance 0 inside the settlement window of the last buy: the cache may lag the buy"
            self._verify_failed(record, error, "UnsettledBalance", latency)
            return self._finish(record, ExitOutcome.VERIFY_FAILED, attempts=attempts, price=price,
                                latency=latency, error=error), False
        self._fire(record, "balance_fetched", verdict=verdict, verified_at=verified_at)
        if record.state is State.RECONCILED:
            emit("exit_already_complete", **fields, expected=micro_to_shares(verdict.expected))
            self._diverge(DivergenceKind.ALREADY_EXITED, record, verdict.expected, verdict.actual)
            return self._finish(record, ExitOutcome.ALREADY_EXITED, attempts=attempts, price=price,
                                latency=latency), False
        if record.state is State.DUST:
            emit("exit_dust_residual", **fields, expected=micro_to_shares(verdict.expected),
                 actual=micro_to_shares(verdict.actual), min_order_size=micro_to_shares(rules.min_order_size))
            self._diverge(DivergenceKind.DUST, record, verdict.expected, verdict.actual)
            return self._finish(record, ExitOutcome.DUST, attempts=attempts, price=price, latency=latency), False
        if verdict.mismatch:
            self._warn_mismatch(record, verdict, fields)
        return await self._sell(record, price, attempts, latency)

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

    async def _market_rules(self, token: str) -> MarketRules:
        rules = self._rules.get(token)
        if rules is None:
            rules = await self.exchange.market_rules(token)
            if not isinstance(rules, MarketRules):
                raise InvalidValue(f"market_rules[token_id={token}]", rules, "the exchange returned no MarketRules")
            self._rules[token] = rules
        return rules

    async def _sell(self, record: PositionRecord, price: Decimal, attempts: int,
                    latency: float) -> tuple[ExitResult, bool]:
        permit = take_permit(record)
        fields = self._fields(record, latency)
        now = self.clock.monotonic()
        age = now - permit.verified_at
        if not permit_is_fresh(permit, now, self.permit_max_age):
            self._fire(record, "sell_killed", reason="permit expired before sending", definitely_not_filled=True)
            emit("exit_permit_expired", **fields, permit_age_s=round(age, 3), max_age_s=self.permit_max_age)
            return self._finish(record, ExitOutcome.NOT_FILLED, attempts=attempts, price=price, latency=latency,
                                error=f"sell permit {age:.3f}s old (max {self.permit_max_age}s); nothing sent"), False
        started = self.clock.monotonic()
        try:
            with anyio.fail_after(self.sell_timeout):
                if self.journal is not None:
                    # The order's id is durable before the order exists anywhere else: after a crash,
                    # recovery looks up exactly this order instead of guessing.
                    order_id = await self.exchange.prepare_sell(permit, price)
                    self._order_ids[record.key] = order_id
                    self.journal.note_order(record, order_id, self.clock.wall())
                fill = await self.exchange.sell(permit, price)
        except Exception as err:  # noqa: BLE001 - anything but a definite "no" may have sold
            if getattr(err, "definitely_not_filled", False) is True:
                self._fire(record, "sell_killed", reason=str(err), definitely_not_filled=True)
                emit("exit_not_filled", **fields, shares=permit.share_amount, limit_price=price,
                     error=str(err), error_type=type(err).__name__)
                if isinstance(err, InsufficientBalance):
                    self._cache_suspect.add(record.token_id)
                    self._diverge(DivergenceKind.INSUFFICIENT_BALANCE, record, permit.shares, None)
                elif isinstance(err, OrderRejected):
                    # The market's rules may have changed under us (a tick size shrinks near 0 and 1):
                    # the next attempt asks for them again instead of trusting the cache.
                    self._rules.pop(record.token_id, None)
                return self._finish(record, ExitOutcome.NOT_FILLED, attempts=attempts, price=price,
                                    latency=latency, error=str(err)), isinstance(err, OrderKilled)
            error = str(err) or f"no answer within {self.sell_timeout}s ({type(err).__name__})"
            self._fire(record, "sell_unknown", error=error)
            emit("exit_outcome_unknown", **fields, shares=permit.share_amount, limit_price=price,
                 error=error, error_type=type(err).__name__)
            self._diverge(DivergenceKind.UNKNOWN_OUTCOME, record, permit.shares, None)
            return self._finish(record, ExitOutcome.UNKNOWN, attempts=attempts, price=price, latency=latency,
                                error=error), False
        self.metrics.sell_latency_recorder.record(self.clock.monotonic() - started)
        if fill.shares != permit.shares:
            self._diverge(DivergenceKind.FILL_MISMATCH, record, permit.shares, fill.shares)
        self._fire(record, "sell_filled", shares=fill.shares)
        emit("exit_filled", **fields, shares=micro_to_shares(fill.shares), avg_price=fill.avg_price,
             limit_price=price, order_id=fill.order_id, settlement_pending=bool(fill.trade_ids))
        self._follow_settlement(record, fill)
        return self._finish(record, ExitOutcome.CLOSED, attempts=attempts, price=price, latency=latency,
                            order_id=fill.order_id), False

    # -- reconciliation ----------------------------------------------------------------------------

    async def reconcile(self, key: str) -> ExitResult:
        """Settle an unknown sell outcome by order lookup and balance: CLOSED, OPEN or RECONCILED.

        Never resends. If the lookup itself fails, the position stays SELLING (outcome UNKNOWN).
        """
        return self._counted(await self._reconcile(key))

    async def _reconcile(self, key: str) -> ExitResult:
        self._require_running()
        record = self._record(key)
        if key in self._reconciling or (record.state is State.SELLING and not record.unresolved):
            emit("exit_in_progress_refused", **self._fields(record, None), state=str(record.state),
                 reason="reconcile")
            return self._finish(record, ExitOutcome.IN_PROGRESS, attempts=0)
        if not record.unresolved or record.inflight is None:
            raise TransitionRefused(key, record.state, "reconcile", "no unknown outcome to settle")
        permit = record.inflight
        self._reconciling.add(key)
        try:
            with anyio.fail_after(self.verify_timeout):
                order_id = self._order_ids.get(key)
                lookup = (await self.exchange.lookup_sell(permit, order_id=order_id) if order_id is not None
                          else await self.exchange.lookup_sell(permit))
                balance = None
                if lookup.status is not LookupStatus.FILLED:
                    balance = await self._read_balance(record.token_id, refresh=True)
        except (ExchangeError, InvalidValue, TimeoutError) as err:
            emit("exit_reconcile_failed", **self._fields(record, None),
                 error=str(err) or type(err).__name__)
            return self._finish(record, ExitOutcome.UNKNOWN, attempts=0, error=str(err) or type(err).__name__)
        finally:
            self._reconciling.discard(key)
        sent = permit.shares
        if lookup.status is LookupStatus.FILLED:
            # A FOK fills all or nothing: without fill details, "filled" still means the permit's shares.
            actual = lookup.fill.shares if lookup.fill is not None else sent
            order_id = lookup.fill.order_id if lookup.fill is not None else None
            self._fire(record, "resolved_filled", shares=actual)
            outcome = ExitOutcome.CLOSED
            if lookup.fill is not None:
                self._follow_settlement(record, lookup.fill)
        elif balance == 0:
            self._fire(record, "resolved_gone")
            outcome, actual, order_id = ExitOutcome.ALREADY_EXITED, 0, None
        else:
            self._fire(record, "resolved_not_filled")
            outcome, actual, order_id = ExitOutcome.NOT_FILLED, 0, None
        emit("exit_outcome_resolved", **self._fields(record, None),
             lookup=str(lookup.status), state=str(record.state), sent=micro_to_shares(sent),
             filled=micro_to_shares(actual))
        self._diverge(DivergenceKind.UNKNOWN_OUTCOME_RESOLVED, record, sent, actual)
        return self._finish(record, outcome, attempts=0, order_id=order_id)

    def _fire(self, record: PositionRecord, trigger: str, **payload: object) -> None:
        source = record.state
        fire(record, trigger, **payload)
        if self.journal is not None:
            self.journal.transition(record, source, trigger, payload, self.clock.wall(),
                                    order_id=self._order_ids.get(record.key))
        if record.state is not State.SELLING:
            self._order_ids.pop(record.key, None)

    def _restore(self) -> list[PositionRecord]:
        """Load the journal's positions; a position tracked before entering must match its journaled self.
        Nothing in memory changes unless every row loads and matches."""
        assert self.journal is not None
        records: dict[str, PositionRecord] = {}
        live: dict[str, str] = {}
        order_ids: dict[str, str] = {}
        unsettled: dict[str, Fill] = {}
        pending = dict(self._records)
        for row in self.journal.positions():
            record = row.record()
            early = pending.pop(record.key, None)
            if early is not None and (early.token_id, early.expected) != (record.token_id, record.expected):
                raise PositionConflict(f"position key={record.key!r}: tracked as {early.token_id!r} x "
                                       f"{micro_to_shares(early.expected)} but journaled as {record.token_id!r} x "
                                       f"{micro_to_shares(record.expected)}")
            records[record.key] = record
            if row.order_id is not None:
                order_ids[record.key] = row.order_id
            if row.unsettled is not None:
                unsettled[record.key] = row.unsettled
            if record.state not in FINAL_STATES:
                live[record.token_id] = record.key
        restored = list(records.values())
        self._records, self._live_by_token = records, live
        self._order_ids.update(order_ids)
        self._unsettled.update(unsettled)
        for record in pending.values():
            self.track(Position(key=record.key, token_id=record.token_id, shares=micro_to_shares(record.expected),
                                last_buy_at=record.last_buy_at))
        return restored

    # -- background: warm-up and settlement --------------------------------------------------------

    def _queue_warm_up(self, token: str) -> None:
        assert self._warm_queue is not None
        if threading.get_ident() != self._loop_thread:
            # track() called from outside the engine's event loop (another thread): no warm-up; the first
            # exit looks the market up itself.
            return
        self._warm_queue.send_nowait(token)

    async def _warm_up_worker(self, tokens: MemoryObjectReceiveStream[str]) -> None:
        async with tokens:
            async for token in tokens:
                await self._warm_up(token)

    async def _warm_up(self, token: str) -> None:
        try:
            await self.exchange.warm_up(token)
        except Exception as err:  # noqa: BLE001 - a failed warm-up only means the first exit looks up itself
            emit("market_warm_up_failed", token=token, error=str(err) or type(err).__name__,
                 error_type=type(err).__name__)

    def _follow_settlement(self, record: PositionRecord, fill: Fill) -> None:
        if fill.trade_ids:
            self._unsettled[record.key] = fill
            if self.journal is not None:
                self.journal.note_settlement(record, fill, "settlement_pending", self.clock.wall())

    async def _poll_settlements(self, interval: float) -> None:
        while True:
            await anyio.sleep(interval)
            if self._unsettled:
                await self.check_settlements()

    async def check_settlements(self) -> dict[str, SettlementStatus]:
        """Ask the exchange once where each unsettled sale stands. A failed settlement returns the shares
        to the wallet: it is a divergence, and the returned shares become a new OPEN position to exit.

        Runs every `settlement_poll_interval` seconds inside the engine; callable directly (tests, bots
        that poll on their own schedule with `settlement_poll_interval=None`)."""
        self._require_running()
        answers: dict[str, SettlementStatus] = {}
        for key, fill in list(self._unsettled.items()):
            record = self._records[key]
            try:
                with anyio.fail_after(self.verify_timeout):
                    settlement = await self.exchange.settlement(fill)
            except (ExchangeError, TimeoutError) as err:
                emit("settlement_check_failed", key=key, token=record.token_id, order_id=fill.order_id,
                     error=str(err) or type(err).__name__, error_type=type(err).__name__)
                continue
            answers[key] = settlement.status
            if settlement.status is SettlementStatus.PENDING:
                continue
            del self._unsettled[key]
            if self.journal is not None:
                self.journal.note_settlement(record, None, str(settlement.status), self.clock.wall())
            if settlement.status is SettlementStatus.SETTLED:
                emit("exit_settled", key=key, token=record.token_id, order_id=fill.order_id,
                     shares=micro_to_shares(fill.shares))
                continue
            self._settlement_failed(record, fill, settlement.returned_shares or fill.shares)
        return answers

    def _settlement_failed(self, record: PositionRecord, fill: Fill, returned: int) -> None:
        self._diverge(DivergenceKind.SETTLEMENT_FAILED, record, fill.shares, fill.shares - returned)
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

    # -- shared steps ------------------------------------------------------------------------------

    def _settle_interrupted(self, record: PositionRecord) -> None:
        """After a cancelled or crashed exit, leave the record in a state that tells the truth: no
        verification in flight (-> OPEN), and a sell that may have been sent flagged unknown."""
        if record.state is State.VERIFYING:
            self._fire(record, "verify_failed", error="exit interrupted before the balance was verified")
        elif record.state is State.SELLING and not record.unresolved:
            if record.inflight is None:
                self._fire(record, "sell_killed", reason="exit interrupted before the sell was sent",
                     definitely_not_filled=True)
            else:
                self._fire(record, "sell_unknown", error="exit interrupted while the sell was in flight")
                self._diverge(DivergenceKind.UNKNOWN_OUTCOME, record, record.inflight.shares, None)
        else:
            return
        emit("exit_interrupted", **self._fields(record, None),
             state=str(record.state), unresolved=record.unresolved)

    def _verify_failed(self, record: PositionRecord, error: str, error_type: str, latency: float) -> None:
        self._fire(record, "verify_failed", error=error)
        self.metrics.verify_failures += 1
        emit("balance_verify_failed", **self._fields(record, latency), error=error, error_type=error_type)

    def _warn_mismatch(self, record: PositionRecord, verdict: BalanceVerdict, fields: dict[str, object]) -> None:
        emit("exit_balance_mismatch", **fields, expected=micro_to_shares(verdict.expected),
             actual=micro_to_shares(verdict.actual), difference=micro_to_shares(verdict.difference),
             selling=micro_to_shares(verdict.sell))
        self._diverge(DivergenceKind.BALANCE_MISMATCH, record, verdict.expected, verdict.actual)

    def _diverge(self, kind: DivergenceKind, record: PositionRecord, expected: int | None,
                 actual: int | None) -> None:
        self.divergence.record(DivergenceEvent(
            kind=kind,
            position_key=record.key,
            token_id=record.token_id,
            expected=None if expected is None else micro_to_shares(expected),
            actual=None if actual is None else micro_to_shares(actual),
            at=self.divergence.now(),
        ))

    @staticmethod
    def _check_tick(price: Decimal, rules: MarketRules) -> None:
        if not rules.price_is_on_tick(price):
            raise InvalidValue("limit_price", price, f"not on the market's tick size {rules.tick_size}")

    @staticmethod
    def _fields(record: PositionRecord, latency: float | None) -> dict[str, object]:
        return {
            "key": record.key,
            "token": record.token_id,
            "attempt": record.attempts,
            "attempt_id": record.attempt_id,
            "verify_latency_ms": None if latency is None else round(latency * 1000, 3),
        }

    def _counted(self, result: ExitResult) -> ExitResult:
        self.metrics.outcomes[str(result.outcome)] += 1
        return result

    def _finish(self, record: PositionRecord, outcome: ExitOutcome, *, attempts: int,
                price: Decimal | None = None, latency: float | None = None, order_id: str | None = None,
                error: str | None = None) -> ExitResult:
        if record.state in FINAL_STATES and self._live_by_token.get(record.token_id) == record.key:
            del self._live_by_token[record.token_id]
        sold = record.sold if outcome is ExitOutcome.CLOSED else 0
        return ExitResult(
            key=record.key,
            outcome=outcome,
            state=str(record.state),
            shares_sold=micro_to_shares(sold),
            expected_shares=micro_to_shares(record.expected),
            verified_balance=None if record.verified_balance is None else micro_to_shares(record.verified_balance),
            residual_shares=micro_to_shares(record.residual) if record.state in FINAL_STATES else Decimal(0),
            verify_latency=latency,
            attempts=attempts,
            limit_price=price,
            order_id=order_id,
            error=error,
        )
