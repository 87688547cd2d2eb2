"""ExitEngine: runs verified exits. The imperative shell around `states/`.

Each step does its I/O here, then feeds the answer to the position machine as a trigger; the machine
decides the next state. The one sell path is: request_exit -> balance fetched -> permit issued ->
permit fresh -> one FOK post of exactly the permit's shares.

Beside it: the positions and the one place transitions fire (`book.py`), re-tracks and updates (`tracking.py`),
what is reported after one (`reports.py`), one attempt (`attempt.py`), the balance and rule reads (`verify.py`),
the sell step (`sell.py`), reconciliation (`reconcile.py`) and the background resolution of unknown outcomes
(`resolver.py`), warm-ups and settlements (`background.py`), restart recovery (`recovery.py`), the calls in
flight and the shutdown (`gate.py`), the kill switch (`control.py`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from contextlib import AsyncExitStack
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from types import TracebackType

import anyio

from exitguard.attempt import Attempt, Slots
from exitguard.attempt import attempt_ids as fresh_attempt_ids
from exitguard.background import Settlements, WarmUps
from exitguard.book import PositionBook
from exitguard.clock import Clock, SystemClock
from exitguard.control import KillSwitch
from exitguard.errors import EngineClosed, ExitRefused
from exitguard.exchange.port import Exchange, SettlementStatus
from exitguard.fills import FillFollower
from exitguard.gate import Gate
from exitguard.interrupt import cut_short, settle_interrupted
from exitguard.journal import Journal
from exitguard.journal.audit import audit_unclean_start
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.reconcile import DEFAULT_LOOKUP_HORIZON, Reconciler
from exitguard.recovery import RecoverySummary, recover
from exitguard.reports import Reporter, log_fields
from exitguard.resolver import Resolver
from exitguard.retry import RetryPolicy
from exitguard.sell import Seller
from exitguard.settings import parse_backoff, parse_count, parse_seconds
from exitguard.states import (
    DEFAULT_PERMIT_MAX_AGE,
    IN_FLIGHT_STATES,
    InvalidValue,
    MarketRules,
    PositionRecord,
    State,
    parse_excess,
    parse_price,
)
from exitguard.telemetry.divergence import DivergenceDetector
from exitguard.telemetry.logs import emit, emit_each
from exitguard.telemetry.metrics import EngineMetrics
from exitguard.tracking import tracked_fields
from exitguard.verify import Verifier
from exitguard.wallet_lock import holding_wallet

DEFAULT_SETTLEMENT_WINDOW = timedelta(seconds=60)


class ExitEngine:
    """Exits positions on one exchange. Use as `async with ExitEngine(exchange) as engine:`.

    `journal=path` makes the engine crash-safe: every transition is written to a SQLite journal, and an exit's
    intent (request, verified balance, signed order id) is one fsync'd commit before its order is posted (the
    outcome is written without an fsync: a lost one is recovered by lookup; journal/durable.py); on entry the
    engine takes the journal's lock (one engine per file), restores the positions, after an unclean stop refuses
    to start if the exchange shows a sale the journal does not know (journal/audit.py), reopens what was surely
    not sent and hands what may have been sent to the background resolver, then returns: exits can start while
    those lookups run.

    Unknown outcomes resolve themselves: lookups retried from `resolve_backoff[0]` seconds, doubling to
    `resolve_backoff[1]`, at most `resolve_concurrency` at once; an order the exchange does not show, with no
    trade of it, counts as unfilled only `lookup_horizon` seconds after it left our hands. Leaving the block
    refuses new calls and gives exits in flight `shutdown_grace` seconds; one that outlives it is cancelled
    and left truthful (UNKNOWN if its order may have left, with the order id journaled).
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
        excess: str = "sell",
        shutdown_grace: float = 10.0,
        resolve_backoff: tuple[float, float] = (0.5, 30.0),
        resolve_concurrency: int = 16,
        lookup_horizon: float = DEFAULT_LOOKUP_HORIZON,
    ) -> None:
        if journal is not None and (not isinstance(journal, (str, os.PathLike)) or str(journal) in ("", ":memory:")):
            raise InvalidValue("journal", journal, "must be None or the path of a journal file (it must survive "
                                                   "the process)")
        self.journal_path = None if journal is None else Path(journal)
        self.recovery: RecoverySummary | None = None
        parse_count(max_concurrent_exits, "max_concurrent_exits")
        parse_count(resolve_concurrency, "resolve_concurrency")
        poll = 1.0 if settlement_poll_interval is None else settlement_poll_interval
        first_delay, max_delay = parse_backoff(resolve_backoff, "resolve_backoff")
        for name, seconds in (("permit_max_age", permit_max_age), ("verify_timeout", verify_timeout),
                              ("sell_timeout", sell_timeout), ("settlement_poll_interval", poll),
                              ("shutdown_grace", shutdown_grace), ("lookup_horizon", lookup_horizon)):
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
        self._attempt_ids = attempt_ids or fresh_attempt_ids()
        self.excess = parse_excess(excess)  # "cap": never sell more than tracked (states.Excess)
        self._book = PositionBook(self.clock)
        self._gate = Gate(shutdown_grace)
        self._report = Reporter(self._book, self.metrics, self.divergence)
        self._verify = Verifier(exchange, self.metrics)
        # A warm-up that finds the market closed marks it: the first exit then ends MARKET_CLOSED at once.
        self._warm_ups = WarmUps(exchange, on_closed=self._verify.remember_closed)
        self._settlements = Settlements(exchange, self._book, self._report, self.track, verify_timeout)
        self._reconciler = Reconciler(exchange, self._book, self._report, self._settlements,
                                      self._verify.fresh_balance, verify_timeout, horizon=lookup_horizon,
                                      post_deadline=sell_timeout, clock=self.clock)
        self._resolver = Resolver(self._book, self._report, self.clock, self._reconciler.reconcile,
                                  self._verify.distrust_balance, concurrency=resolve_concurrency,
                                  first_delay=first_delay, max_delay=max_delay)
        self.metrics.unresolved_age = self._resolver.oldest_age
        self._fills = FillFollower(exchange, self._book, self._settlements, self._resolver, self.clock, self.metrics)
        self._seller = Seller(exchange, self._book, self._report, self._settlements, self.clock, self.metrics,
                              permit_max_age=permit_max_age, timeout=sell_timeout, scopes=self._gate.scopes,
                              distrust_balance=self._verify.distrust_balance, distrust_rules=self._verify.forget_rules,
                              remember_closed=self._verify.remember_closed)
        self._attempt = Attempt(self._verify, self._book, self._report, self._seller, self.clock, self.metrics,
                                self._gate.scopes, verify_timeout=verify_timeout, settlement_window=settlement_window,
                                excess=self.excess)
        self._lifetime: AsyncExitStack | None = None
        self._slots: Slots | None = None
        self._switch = KillSwitch(self.clock, self.metrics)
        self._exiting: set[str] = set()
        """Keys with an exit() running now: another exit() of them is IN_PROGRESS."""

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
        lifetime.callback(self._gate.closed)
        restored: list[PositionRecord] = []
        if self.journal_path is not None:
            journal = Journal.open(self.journal_path)
            lifetime.callback(self._book.close_journal, journal)
            restored, untracked = self._book.restore(journal)
            for position in untracked:
                self.track(position)
        lifetime.enter_context(holding_wallet(self.exchange))  # after the journal's lock: its refusal names it
        await audit_unclean_start(self.exchange, self.journal)  # a sale the journal forgot refuses the start
        self._slots = Slots(self.max_concurrent_exits)
        # Warm-ups, settlement polling and the resolution of unknown outcomes run beside the exits; the task
        # group is cancelled before the journal closes, so none of them outlives it.
        background = await lifetime.enter_async_context(anyio.create_task_group())
        lifetime.callback(background.cancel_scope.cancel)
        lifetime.enter_context(self._warm_ups.running(background, self._book.open_tokens()))
        lifetime.enter_context(self._resolver.running(background))
        self._fills.start(background)  # the exchange's push channel, when it has one (exitguard.fills)
        if self.settlement_poll_interval is not None:
            background.start_soon(self._settlements.poll, self.settlement_poll_interval)
        if self.journal_path is not None:
            # What was in flight when the last engine died is made truthful before any new exit can start;
            # the lookups of what may have been sent run in the background (an outage must not hold the start).
            self.recovery = recover(self._book, restored, journal=self.journal_path, resolve=self._resolver.submit,
                                    filled_before=self._verify.distrust_balance, report=self._report)
        self._gate.open()

    async def _stop(self) -> None:
        # Calls in flight finish (each bounded by its own timeouts, and all by `shutdown_grace`) before the
        # background stops and the journal closes: leaving never abandons a sell whose answer nobody reads.
        await self._gate.close()
        lifetime = self._lifetime
        try:
            if lifetime is not None:
                # Closed with no exception in flight, whatever ended the block: the task group would wrap
                # one in an exception group, and the caller's own exception must reach it unchanged.
                await lifetime.aclose()
        finally:
            self._lifetime = None

    # -- positions ---------------------------------------------------------------------------------

    def track(self, position: Position) -> None:
        """Start tracking a position. One live (unfinished) position per key and per token. Tracking the same
        position again (a bot re-tracking its book at start, after the journal restored it) does nothing; a
        different one under a tracked key raises PositionConflict naming each difference (tracking.py)."""
        if not isinstance(position, Position):
            raise InvalidValue("position", position, "must be an exitguard Position")
        self._gate.check_track(journaled=self.journal_path is not None)
        if self._book.track(position):
            emit("position_tracked", key=position.key, token=position.token_id, shares=position.shares)
            self._warm_ups.request(position.token_id)

    def track_many(self, positions: Iterable[Position]) -> None:
        """`track` for many positions (a bot loading its book): all or none. Each is checked first, and a bad one
        (not a Position, a conflict, a buy in the future) raises naming it with nothing tracked; one journal
        write holds them all. Positions already tracked as they are change nothing, as with `track`."""
        self._gate.check_track(journaled=self.journal_path is not None)
        fresh = self._book.track_many(list(positions))
        emit_each("position_tracked", fresh, tracked_fields)
        self._warm_ups.request_many([position.token_id for position in fresh])

    def update(self, key: str, *, shares: Decimal, last_buy_at: datetime | None = None) -> None:
        """An OPEN position now holds `shares` (a second buy, a partial fill learned late); `last_buy_at`, when
        given, opens the settlement window anew. Journaled; refused (TransitionRefused) in any other state."""
        self._gate.check_track(journaled=self.journal_path is not None)
        self._book.update(key, shares, last_buy_at)

    async def market(self, token_id: str) -> MarketRules:
        """The token's market rules (tick size, minimum order size): cached, else asked of the exchange within
        `verify_timeout`. `rules.round_to_tick(price)` puts a limit price on the tick."""
        self._gate.check()
        return await self._verify.market(token_id, self.verify_timeout)

    def pause(self, reason: str) -> None:
        """The kill switch (control.py): new exits return PAUSED and send nothing until `resume()`; an exit in
        flight ends its attempt without a retry; unknown outcomes go on being looked up."""
        self._switch.pause(reason)

    def resume(self) -> None:
        self._switch.resume()

    @property
    def paused(self) -> str | None:
        """Why new exits are refused; None while they run."""
        return self._switch.reason

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
        """Keys whose sell outcome is unknown; the engine looks each up in the background until it settles."""
        return self._book.unresolved()

    async def resolve_unknowns(self) -> dict[str, ExitResult]:
        """Look every unknown outcome up once, now (concurrently, `resolve_concurrency` at a time), and
        return what each lookup found (UNKNOWN: still unknown; the background retries go on)."""
        results: dict[str, ExitResult] = {}
        with self._gate.call():
            results = await self._resolver.resolve_all()
            for result in results.values():
                self._report.counted(result)
        return results

    def unsettled(self) -> list[str]:
        """CLOSED keys whose fill is matched but not yet settled on chain (see `check_settlements`)."""
        return self._book.unsettled()

    async def check_settlements(self) -> dict[str, SettlementStatus]:
        """Ask the exchange once where each unsettled sale stands. A failed settlement returns the shares
        to the wallet: it is a divergence, and the returned shares become a new OPEN position to exit.

        Runs every `settlement_poll_interval` seconds inside the engine; callable directly (tests, bots
        that poll on their own schedule with `settlement_poll_interval=None`)."""
        answers: dict[str, SettlementStatus] = {}
        with self._gate.call():
            answers = await self._settlements.check()
        return answers

    # -- exit --------------------------------------------------------------------------------------

    async def exit(self, key: str, *, reason: str, limit_price: Decimal) -> ExitResult:
        """Exit the position: verify the balance, then sell exactly what the exchange confirmed.

        An unknown outcome is looked up at once: CLOSED or ALREADY_EXITED if the order filled or the shares
        are gone, UNKNOWN while it stays unknown; proven not filled, a fresh verification and sell follow.
        IN_PROGRESS only while another exit of the position runs. Never raises for exchange trouble: the
        answer is in `result.outcome`. Raises for bad input (unknown key, bad price or reason, a finished
        position) before anything is sent, and EngineClosed outside the engine's block or while it closes.
        """
        self._gate.check()
        record = self._book.get(key)
        price = parse_price(limit_price, "limit_price")
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValue("reason", reason, "must be a non-empty string")
        if key in self._exiting or (record.state in IN_FLIGHT_STATES and not record.unresolved):
            emit("exit_in_progress_refused", **log_fields(record, None), state=str(record.state),
                 reason=reason)
            return self._report.counted(self._report.finish(record, ExitOutcome.IN_PROGRESS, attempts=0))
        if record.state is not State.OPEN and not record.unresolved:
            raise ExitRefused(key, record.state)
        if self._switch.reason is not None:
            return self._report.counted(self._switch.refused(record, reason, self._report))
        rules = self._verify.cached_rules(record.token_id)
        if rules is not None:
            self._verify.check_tick(price, rules)
        # Marked before the first await: a racing exit() sees it and is refused.
        self._exiting.add(key)
        try:
            with self._gate.call():
                if record.unresolved:
                    found = await self._resolver.resolve(record)
                    if record.state is not State.OPEN:
                        return self._report.counted(found)
                self._book.fire(record, "request_exit", reason=reason, limit_price=price,
                                attempt_id=self._attempt_ids())
                try:
                    assert self._slots is not None, "the gate is open only while the engine runs"
                    async with self._slots:
                        return self._report.counted(await self._run_attempts(record, reason, price))
                finally:
                    settle_interrupted(self._book, self._report, record)
            # Only reached when the shutdown's grace period ran out and cancelled this exit.
            return cut_short(self._book, self._report, record, self._gate.grace)
        finally:
            self._exiting.discard(key)
            self._resolver.submit(record)

    async def _run_attempts(self, record: PositionRecord, reason: str, first_price: Decimal) -> ExitResult:
        price = first_price
        attempts = 1
        while True:
            result, retryable = await self._attempt.run(record, price, attempts)
            if not retryable or attempts >= self.retry.max_attempts or self._switch.reason is not None:
                return result
            rules = self._verify.cached_rules(record.token_id)
            next_price = None if rules is None else self.retry.next_price(first_price, price, rules.tick_size)
            if next_price is None:
                return result
            emit("exit_retrying", **log_fields(record, result.verify_latency), next_attempt=attempts + 1,
                 limit_price=next_price, previous_limit_price=price)
            price = next_price
            attempts += 1
            self._book.fire(record, "request_exit", reason=reason, limit_price=price, attempt_id=self._attempt_ids())

    # -- reconciliation ----------------------------------------------------------------------------

    async def reconcile(self, key: str) -> ExitResult:
        """Look an unknown sell outcome up now (the engine also does so in the background): CLOSED, OPEN or
        RECONCILED once it settles. Never resends. While it stays unknown: SELLING, outcome UNKNOWN."""
        self._gate.check()
        record = self._book.get(key)
        with self._gate.call():
            return self._report.counted(await self._resolver.resolve(record))
        return cut_short(self._book, self._report, record, self._gate.grace)
