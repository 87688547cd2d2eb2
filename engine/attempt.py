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
from exitguard.verify import Verifier, check_tick

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
                 metrics: EngineMetrics, *, verify_timeout: float, settlement_window: timedelta,
                 excess: Excess) -> None:
        self.verify = verify
        self.book = book
        self.report = report
        self.seller = seller
        self.clock = clock
        self.metrics = metrics
        self.verify_timeout = verify_timeout
        self.settlement_window = settlement_window
        self.excess = excess

    async def run(self, record: PositionRecord, price: Decimal, attempts: int) -> tuple[ExitResult, bool]:
        """One verification and at most one sell. Returns the result and whether a retry may follow."""
        started = self.clock.monotonic()
        try:
            # anyio.fail_after without its generator (a few us per exit): only the deadline cancels this scope.
            with anyio.CancelScope(deadline=anyio.current_time() + self.verify_timeout) as scope:
                self.verify.check_open(record.token_id)  # a market known closed: no slot, no read, nothing sent
                rules, balance, off_tick = await self._read(record, price)
            if scope.cancelled_caught:
                raise TimeoutError
        except MarketClosed as err:
            # No sell can ever take these shares: its own outcome, never a failed verification to retry.
            return self.report.market_closed(record, err, price, attempts, self.clock.monotonic() - started), False
        except (ExchangeError, InvalidValue, TimeoutError) as err:
            latency = self.clock.monotonic() - started
            error = str(err) or f"no answer within {self.verify_timeout}s"
            return self.report.verify_failed(record, err, error, price, attempts, latency), False
        if off_tick is not None:
            self.book.fire(record, "verify_failed", error=f"refused before the balance was read: {off_tick}")
            raise off_tick
        verified_at = self.clock.monotonic()
        latency = verified_at - started
        self.metrics.verify_latency_recorder.record(latency)
        verdict = assess_balance(record.expected, balance, rules, last_buy_at=record.last_buy_at,
                                 now=self.clock.wall(), settlement_window=self.settlement_window, excess=self.excess)
        self.book.fire(record, "balance_fetched", verdict=verdict, verified_at=verified_at)
        if record.state is State.SELLING:
            if verdict.mismatch:
                self.report.mismatch(record, verdict, log_fields(record, latency))
            return await self.seller.sell(record, price, attempts, latency)
        report = self.report.after(record, "balance_fetched", log_fields(record, latency),
                                   between=(verdict.expected, verdict.actual), **balance_facts(verdict),
                                   min_order_size=micro_to_shares(rules.min_order_size),
                                   error=UNSETTLED_ZERO, error_type="UnsettledBalance")
        return self.report.ended(record, report, attempts=attempts, price=price, latency=latency,
                                 error=UNSETTLED_ZERO if record.state is State.OPEN else None), False

    async def _read(self, record: PositionRecord, price: Decimal) -> tuple[MarketRules, int, InvalidValue | None]:
        """The market's rules and the balance, the sell's slot reserved (`reserve_sell`) before the balance is
        read. A price off the tick reads no balance (0 is returned, unused) and comes back as the refusal."""
        attempt_id = cast(str, record.attempt_id)
        settling = record.last_buy_at is not None and in_settlement_window(record.last_buy_at, self.clock.wall(),
                                                                           self.settlement_window)
        rules = self.verify.cached_rules(record.token_id)
        if rules is not None:
            off_tick = _off_tick(price, rules)
            if off_tick is not None:
                return rules, 0, off_tick  # the caller's mistake: no slot taken, nothing read
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
                off_tick = _off_tick(price, fetched)
                if off_tick is not None:
                    group.cancel_scope.cancel()  # the caller's mistake: the balance read is discarded
                    return fetched, 0, off_tick
        if rules_error or balance_error:
            raise (rules_error or balance_error)[0]
        return fetched, read[0], None


def _off_tick(price: Decimal, rules: MarketRules) -> InvalidValue | None:
    try:
        check_tick(price, rules)
    except InvalidValue as err:
        return err
    return None
