"""One exit attempt: the market's rules and the balance read under `verify_timeout`, the verdict fired, then at
most one sell. The engine (exits.py) decides whether another attempt follows.

A limit price off the market's tick is the caller's mistake, not the exchange's: it raises InvalidValue naming
`limit_price` and is neither logged nor counted as a failed verification. With the rules already known, the
engine refuses it before anything happens; when they had to be fetched first, the position goes back to OPEN
(the machine's only way out of VERIFYING before a balance, journaled with the reason) and nothing else is read.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import anyio

from exitguard.book import PositionBook
from exitguard.clock import Clock
from exitguard.errors import ExchangeError
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
    micro_to_shares,
)
from exitguard.telemetry.metrics import EngineMetrics
from exitguard.verify import Verifier, check_tick

UNSETTLED_ZERO = "balance 0 inside the settlement window of the last buy: the cache may lag the buy"


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
            with anyio.fail_after(self.verify_timeout):
                rules = await self.verify.rules(record.token_id)
                off_tick = _off_tick(price, rules)
                if off_tick is None:
                    balance = await self.verify.balance(record)
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
        context = log_fields(record, latency)
        if record.state is State.SELLING:
            if verdict.mismatch:
                self.report.mismatch(record, verdict, context)
            return await self.seller.sell(record, price, attempts, latency)
        report = self.report.after(record, "balance_fetched", context, between=(verdict.expected, verdict.actual),
                                   **balance_facts(verdict),
                                   min_order_size=micro_to_shares(rules.min_order_size),
                                   error=UNSETTLED_ZERO, error_type="UnsettledBalance")
        return self.report.ended(record, report, attempts=attempts, price=price, latency=latency,
                                 error=UNSETTLED_ZERO if record.state is State.OPEN else None), False


def _off_tick(price: Decimal, rules: MarketRules) -> InvalidValue | None:
    try:
        check_tick(price, rules)
    except InvalidValue as err:
        return err
    return None
