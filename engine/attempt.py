"""One exit attempt: the market's rules and the balance read under `verify_timeout`, the verdict fired, then at
most one sell. The engine (exits.py) decides whether another attempt follows.

A limit price off the market's tick is the caller's mistake, not the exchange's: it raises InvalidValue naming
`limit_price` and is neither logged nor counted as a failed verification. With the rules already known, the
engine refuses it before anything happens; when they had to be fetched first, the position goes back to OPEN
(the machine's only way out of VERIFYING before a balance, journaled with the reason) and nothing else is read.
"""

from __future__ import annotations

import itertools
import secrets
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import cast

import anyio

from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import ExchangeError, MarketClosed
from exitguard.position import ExitResult
from exitguard.reports import Reporter, balance_facts, log_fields
from exitguard.scopes import Scopes
from exitguard.sell import Seller
from exitguard.states import (
    Excess,
    InvalidValue,
    MarketRules,
    PositionRecord,
    State,
    assess_balance,
    in_settlement_window,
    micro_to_shares,
)
from exitguard.telemetry.metrics import EngineMetrics
from exitguard.verify import Verifier

UNSETTLED_ZERO = "balance 0 inside the settlement window of the last buy: the cache may lag the buy"


def attempt_ids() -> Callable[[], str]:
    """An engine's attempt ids: 64 random bits drawn once per engine, then a counter ("9f2c...e1-1", "...-2").

    Unique across restarts: each engine (and so each start on a journal) draws a new prefix from the OS, so its
    ids never repeat one the journal holds from an earlier process; two prefixes collide once in 2**64 starts.
    Cheaper than a uuid4 per attempt (2-5 us each, most of it reading the OS's randomness)."""
    prefix = secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class Slots:
    """The engine's `max_concurrent_exits` slots (`async with slots:`). A free one is a counter taken without a
    checkpoint or a borrower set (what `anyio.CapacityLimiter` keeps per exit); when none is free the exit waits
    in line, and a slot that ends is handed straight to the first in line."""

    __slots__ = ("free", "_waiting")

    def __init__(self, total: int) -> None:
        self.free = total
        self._waiting: deque[anyio.Event] = deque()

    async def __aenter__(self) -> None:
        if self.free > 0 and not self._waiting:
            self.free -= 1
            return
        turn = anyio.Event()
        self._waiting.append(turn)
        try:
            await turn.wait()
        except BaseException:
            if turn.is_set():
                self._release()  # handed a slot while being cancelled: it goes to the next in line
            else:
                self._waiting.remove(turn)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        if self._waiting:
            self._waiting.popleft().set()
        else:
            self.free += 1


class Attempt:
    """Runs attempts for one engine."""

    def __init__(self, verify: Verifier, book: PositionBook, report: Reporter, seller: Seller, clock: Clock,
                 metrics: EngineMetrics, scopes: Scopes, *, verify_timeout: float, settlement_window: timedelta,
                 excess: Excess) -> None:
        self.verify = verify
        self.book = book
        self.report = report
        self.seller = seller
        self.clock = clock
        self.metrics = metrics
        self.scopes = scopes
        self.verify_timeout = verify_timeout
        self.settlement_window = settlement_window
        self.excess = excess

    async def run(self, record: PositionRecord, price: Decimal, attempts: int) -> tuple[ExitResult, bool]:
        """One verification and at most one sell. Returns the result and whether a retry may follow.

        One cancel scope holds both deadlines in turn: the verification's, then (moved by the seller) the sell's.
        Only they cancel it, so its catch is a timeout of whichever phase ran; `latency` is set once the
        verification has ended, which tells the two apart. A deadline that struck as the balance arrived has
        cancelled the scope already: the sell then gets a scope of its own, as a sell always did."""
        started = self.clock.monotonic()
        latency: float | None = None
        with self.scopes.within(self.verify_timeout) as scope:
            try:
                self.verify.check_open(record.token_id)  # a market known closed: no slot, no read, nothing sent
                rules, balance, off_tick = await self._read(record, price)
            except MarketClosed as err:
                # No sell can ever take these shares: its own outcome, never a failed verification to retry.
                return self.report.market_closed(record, err, price, attempts, self.clock.monotonic() - started), False
            except (ExchangeError, InvalidValue, TimeoutError) as err:
                return self._verify_failed(record, err, price, attempts, started), False
            if off_tick is not None:
                self.book.fire(record, "verify_failed", error=f"refused before the balance was read: {off_tick}")
                raise off_tick
            verified_at = self.clock.monotonic()
            latency = verified_at - started
            self.metrics.verify_latency_recorder.record(latency)
            verdict = assess_balance(record.expected, balance, rules, last_buy_at=record.last_buy_at,
                                     now=self.clock.wall(), settlement_window=self.settlement_window,
                                     excess=self.excess)
            self.book.fire(record, "balance_fetched", verdict=verdict, verified_at=verified_at)
            if record.state is not State.SELLING:
                report = self.report.after(record, "balance_fetched", log_fields(record, latency),
                                           between=(verdict.expected, verdict.actual), **balance_facts(verdict),
                                           min_order_size=micro_to_shares(rules.min_order_size),
                                           error=UNSETTLED_ZERO, error_type="UnsettledBalance")
                return self.report.ended(record, report, attempts=attempts, price=price, latency=latency,
                                         error=UNSETTLED_ZERO if record.state is State.OPEN else None), False
            if verdict.mismatch:
                self.report.mismatch(record, verdict, log_fields(record, latency))
            if not scope.cancel_called:
                return await self.seller.sell(record, price, attempts, latency, scope)
        if scope.cancelled_caught:
            if latency is None:
                return self._verify_failed(record, TimeoutError(), price, attempts, started), False
            return self.seller.timed_out(record, price, attempts, latency)
        assert latency is not None, "only a verified SELLING position leaves the scope uncaught and unreturned"
        with self.scopes.scope() as scope:
            return await self.seller.sell(record, price, attempts, latency, scope)
        return self.seller.timed_out(record, price, attempts, latency)

    def _verify_failed(self, record: PositionRecord, err: Exception, price: Decimal, attempts: int,
                       started: float) -> ExitResult:
        latency = self.clock.monotonic() - started
        error = str(err) or f"no answer within {self.verify_timeout}s"
        return self.report.verify_failed(record, err, error, price, attempts, latency)

    async def _read(self, record: PositionRecord, price: Decimal) -> tuple[MarketRules, int, InvalidValue | None]:
        """The market's rules and the balance, the sell's slot reserved (`reserve_sell`) before the balance is
        read. A price off the tick reads no balance (0 is returned, unused) and comes back as the refusal."""
        attempt_id = cast(str, record.attempt_id)
        settling = record.last_buy_at is not None and in_settlement_window(record.last_buy_at, self.clock.wall(),
                                                                           self.settlement_window)
        rules = self.verify.cached_rules(record.token_id)
        if rules is not None:
            off_tick = self.verify.off_tick(price, rules)
            if off_tick is not None:
                return rules, 0, off_tick  # the caller's mistake: no slot taken, nothing read
            if self.verify.reserves:
                await self.verify.reserve(attempt_id)
            return rules, await self.verify.balance(record, settling=settling), None
        # The first exit right after track(), before its warm-up ended: the rules are read beside the slot and
        # the balance, so it costs the same round trips as a warm exit. Errors are kept until both ended (a task
        # group would bundle them): the rules' first, as when the reads ran one after the other.
        rules_error: list[Exception] = []
        balance_error: list[Exception] = []
        read: list[int] = []

        async def reserve_and_read() -> None:
            try:
                await self.verify.reserve(attempt_id)
                read.append(await self.verify.balance(record, settling=settling))
            except Exception as err:  # noqa: BLE001 - raised below, after the rules' own error
                balance_error.append(err)

        async with anyio.create_task_group() as group:
            group.start_soon(reserve_and_read)
            try:
                fetched = await self.verify.rules(record.token_id)
            except Exception as err:  # noqa: BLE001 - raised below, once the balance read is cancelled
                rules_error.append(err)
                group.cancel_scope.cancel()
            else:
                off_tick = self.verify.off_tick(price, fetched)
                if off_tick is not None:
                    group.cancel_scope.cancel()  # the caller's mistake: the balance read is discarded
                    return fetched, 0, off_tick
        if rules_error or balance_error:
            raise (rules_error or balance_error)[0]
        return fetched, read[0], None
