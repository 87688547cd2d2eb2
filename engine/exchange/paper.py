"""The paper exchange: the embedded default for the demo, the tests and users' own tests.

It behaves like the real one where it matters to an exit: balances in raw 6-decimal units, in the ledger the
token's id names (CTF or Protocol V2's PositionManager: paper_ledger.py), resting bids with a fill-or-kill model,
tick size and minimum order size per token, and the faults that break naive exit code (latency, injected errors,
a lagging balance cache, a lost response).
Every call yields to the event loop, as a network call does.
"""

from __future__ import annotations

import uuid
from collections import defaultdict, deque
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum

import anyio
import anyio.lowlevel

from exitguard.clock import Clock, SystemClock
from exitguard.errors import (
    ExchangeError,
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    PermitError,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.paper_ledger import PaperLedgers
from exitguard.exchange.paper_markets import PaperMarketStates
from exitguard.exchange.paper_orders import PaperOrderView, PaperTradeAudit
from exitguard.exchange.port import Fill, LookupStatus, SellDeadline, SellLookup, Settlement, SettlementStatus
from exitguard.exchange.rules import market_rules
from exitguard.settings import parse_count
from exitguard.states import InvalidValue, MarketRules, SellPermit, micro_to_shares, parse_price, shares_to_micro
from exitguard.states.quantities import exact

OPERATIONS = ("get_balance", "refresh_balance", "market_rules", "sell", "lookup_sell", "settlement")

KILLED_MESSAGE = "order couldn't be fully filled. FOK orders are fully filled or killed."
NO_BALANCE_MESSAGE = "not enough balance / allowance"


class SellStatus(StrEnum):
    FILLED = "filled"
    KILLED = "killed"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class PaperCall:
    operation: str
    token_id: str


@dataclass(frozen=True, slots=True)
class PaperSell:
    """A sell as the paper exchange received it."""

    token_id: str
    shares: Decimal
    limit_price: Decimal
    attempt_id: str
    status: SellStatus
    order_id: str
    avg_price: Decimal | None = None
    error: str | None = None
    verified_at: float | None = None
    """The permit's verification time (the engine's monotonic clock)."""
    sent_at: float | None = None
    """When the order left the caller's hands (this exchange's clock), after any wait for a send slot."""


class PaperExchange(PaperLedgers, PaperMarketStates, PaperTradeAudit):
    """An in-memory exchange. `latency` seconds are added to every call (half before the exchange acts,
    half after), so concurrent calls interleave as they would over a network.

    `max_concurrent_sells` models a real adapter's bounded senders (worker threads, a rate-limit
    bucket): at most that many sells are on their way at once, and the others wait for a slot before
    their order leaves. A sell's `deadline` is checked after that wait."""

    def __init__(
        self,
        latency: float = 0.0,
        *,
        clock: Clock | None = None,
        default_rules: MarketRules | None = None,
        max_concurrent_sells: int | None = None,
        wallet: str | None = None,
    ) -> None:
        self.latency = latency
        # The port's `wallet` (one live engine per wallet): each paper exchange is its own wallet unless named.
        self.wallet = wallet if wallet is not None else f"paper-{uuid.uuid4().hex}"
        self.clock: Clock = clock or SystemClock()
        self.default_rules = default_rules or MarketRules()
        self.calls: list[PaperCall] = []
        self.sells: list[PaperSell] = []
        self.sells_in_flight: defaultdict[str, int] = defaultdict(int)
        self.max_sells_in_flight = 0
        """Most sells of one token the exchange was processing at once (a test invariant: 1)."""
        PaperLedgers.__init__(self)
        self._bids: dict[str, list[tuple[Decimal, int]]] = {}
        self._rules: dict[str, MarketRules] = {}
        self._failures: dict[str, deque[ExchangeError]] = defaultdict(deque)
        self._lost_responses = 0
        self._used_attempts: set[str] = set()
        self._orders = 0
        self._prepared: dict[str, str] = {}
        self._deferred: set[str] = set()
        self._pending: dict[str, tuple[str, int]] = {}
        """order id -> (token, micro-shares) matched but not settled."""
        self._settled: dict[str, SettlementStatus] = {}
        self._send_slots = (None if max_concurrent_sells is None
                            else anyio.CapacityLimiter(parse_count(max_concurrent_sells, "max_concurrent_sells")))
        self._sent_at: dict[str, float] = {}
        self._orders_view = PaperOrderView(self.clock.monotonic, self.clock.wall)

    # -- setting up the market -------------------------------------------------------------------

    def set_bids(self, token_id: str, bids: list[tuple[object, object]]) -> None:
        """Resting bids as (price, size) pairs; a FOK sell fills against those at or above its limit."""
        book = []
        for index, (price, size) in enumerate(bids):
            book.append((parse_price(price, f"bids[{index}].price"), shares_to_micro(size, f"bids[{index}].size")))
            if book[-1][1] <= 0:
                raise InvalidValue(f"bids[{index}].size", size, "must be positive")
        self._bids[token_id] = sorted(book, key=lambda level: level[0], reverse=True)

    def bids(self, token_id: str) -> list[tuple[Decimal, Decimal]]:
        return [(price, micro_to_shares(size)) for price, size in self._bids.get(token_id, [])]

    def set_market(self, token_id: str, *, tick_size: object = Decimal("0.01"),
                   min_order_size: object = Decimal("5")) -> None:
        self._rules[token_id] = market_rules(tick_size=tick_size, min_order_size=min_order_size)

    # -- faults ------------------------------------------------------------------------------------

    def fail_next(self, operation: str, count: int = 1, error: ExchangeError | None = None) -> None:
        """The next `count` calls of `operation` raise `error` without acting (default: a 503)."""
        if operation not in OPERATIONS:
            raise InvalidValue("operation", operation, f"must be one of {', '.join(OPERATIONS)}")
        parse_count(count, "count")
        for _ in range(count):
            self._failures[operation].append(error or TransientError("paper: injected failure", status=503))

    def lose_next_sell_response(self, count: int = 1) -> None:
        """The next `count` sells are executed, then the caller gets an UnknownOutcome instead of the answer."""
        self._lost_responses += count

    def arrive_late(self, seconds: float, count: int = 1) -> None:
        """The next `count` sells arrive `seconds` later (on `clock`); their answer is lost (see paper_orders.py)."""
        self._orders_view.arrive_late(seconds, count)

    def hide_filled_orders(self, hidden: bool = True) -> None:
        """Filled orders drop out of the order lookup (py-clob-client #217): only the trade query shows them."""
        self._orders_view.hide_filled = hidden

    def lag_trades(self, seconds: float) -> None:
        """A fill's trade shows in the trade query only `seconds` after the fill (0: at once)."""
        self._orders_view.lag_trades(seconds)

    def fail_next_trade_query(self, count: int = 1, error: ExchangeError | None = None) -> None:
        """The next `count` trade queries fail (default: a 503): the lookup raises, never "no trade"."""
        self._orders_view.fail_next_trade_query(count, error)

    def defer_settlement(self, token_id: str) -> None:
        """Fills of the token from now on are matched but not settled: each carries a trade id, and
        `settlement()` answers PENDING until `settle()`."""
        self._deferred.add(token_id)

    def settle(self, order_id: str | None = None, *, failed: bool = False) -> list[str]:
        """Settle pending fills (one order, or all). `failed=True`: the trade fails on chain and the
        shares go back to the seller's balance, as on Polymarket. Returns the orders settled."""
        chosen = [oid for oid in self._pending if order_id is None or oid == order_id]
        for oid in chosen:
            token, shares = self._pending.pop(oid)
            self._settled[oid] = SettlementStatus.FAILED if failed else SettlementStatus.SETTLED
            if failed:
                self._set_chain(token, self._chain.get(token, 0) + shares)
        return chosen

    # -- the exchange port -------------------------------------------------------------------------

    async def get_balance(self, token_id: str) -> object:
        await self._request("get_balance", token_id)
        raw = self._read_ledger(token_id)  # paper_ledger.py: in the ledger the id names
        await self._reply()
        return raw

    async def refresh_balance(self, token_id: str) -> None:
        await self._request("refresh_balance", token_id)
        self._refresh_ledger(token_id)
        await self._reply()

    async def market_rules(self, token_id: str) -> MarketRules:
        await self._request("market_rules", token_id)
        rules = self._rules.get(token_id, self.default_rules)
        await self._reply()
        return rules

    async def warm_up(self, token_id: str) -> None:
        # Nothing to look up ahead on paper; not recorded in `calls`, which lists exchange traffic.
        await anyio.lowlevel.checkpoint()
        self.refuse_if_closed("market_rules", token_id)  # paper_markets.py: a closed market's book is gone

    async def settlement(self, fill: Fill) -> Settlement:
        await self._request("settlement", self._pending.get(fill.order_id, ("", 0))[0])
        await self._reply()
        if fill.order_id in self._pending:
            return Settlement(SettlementStatus.PENDING)
        status = self._settled.get(fill.order_id, SettlementStatus.SETTLED)
        return Settlement(status, returned_shares=fill.shares if status is SettlementStatus.FAILED else 0)

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal) -> str:
        # Not recorded in `calls`: nothing reaches the exchange until `sell`.
        await anyio.lowlevel.checkpoint()
        return self._order_id_for(permit.attempt_id)

    async def sell(self, permit: SellPermit, limit_price: Decimal, *, deadline: SellDeadline | None = None) -> Fill:
        """`deadline` None: no freshness check (direct calls in tests); the engine always passes one."""
        if not isinstance(permit, SellPermit):
            raise PermitError(f"paper: sell needs a SellPermit, got {type(permit).__name__}; nothing sent")
        slot: AbstractAsyncContextManager[object] = self._send_slots or nullcontext()
        async with slot:
            if deadline is not None:
                deadline.check(f"paper: order for {permit.token_id}")
            self._sent_at[permit.attempt_id] = self.clock.monotonic()
            return await self._send(permit, limit_price)

    async def _send(self, permit: SellPermit, limit_price: Decimal) -> Fill:
        token = permit.token_id
        self.sells_in_flight[token] += 1
        self.max_sells_in_flight = max(self.max_sells_in_flight, self.sells_in_flight[token])
        try:
            await self._request("sell", token)
            if permit.attempt_id in self._used_attempts:
                raise PermitError(f"paper: permit {permit.attempt_id} already used; nothing sold")
            self._used_attempts.add(permit.attempt_id)
            if self._orders_view.delay(permit, limit_price):
                outcome: Fill | ExchangeError = UnknownOutcome("paper: the order is still on its way (arrives late)")
            else:
                outcome = self._execute(permit, limit_price)
            if self._lost_responses:
                self._lost_responses -= 1
                outcome = UnknownOutcome("paper: response lost after the order reached the exchange")
            await self._reply()
        finally:
            self.sells_in_flight[token] -= 1
        if isinstance(outcome, ExchangeError):
            raise outcome
        return outcome

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
        """The order endpoint first (a known order: filled, or terminal unfilled); when it shows nothing (the
        order never arrived, is still on its way, or filled and dropped out), the trade query: FILLED, or
        NOT_FOUND when it succeeded and shows no trade. A failed trade query raises."""
        await self._request("lookup_sell", permit.token_id)
        found = next((sell for sell in self.sells if sell.attempt_id == permit.attempt_id
                      or (order_id is not None and sell.order_id == order_id)), None)
        await self._reply()
        view = self._orders_view
        if found is not None and view.order_visible(found.order_id):
            return self._found(found) if found.status is SellStatus.FILLED else SellLookup(LookupStatus.NOT_FILLED)
        traded = view.trade_query(found.order_id if found is not None else permit.attempt_id)
        return self._found(found) if found is not None and traded else SellLookup(LookupStatus.NOT_FOUND)

    @staticmethod
    def _found(sell: PaperSell) -> SellLookup:
        assert sell.avg_price is not None
        return SellLookup(LookupStatus.FILLED, Fill(shares=shares_to_micro(sell.shares), avg_price=sell.avg_price,
                                                    order_id=sell.order_id))

    # -- internals ---------------------------------------------------------------------------------

    async def _request(self, operation: str, token_id: str) -> None:
        for late in self._orders_view.due():
            self._execute(late.permit, late.limit_price)  # the answer went nowhere: its caller gave up long ago
        self.calls.append(PaperCall(operation, token_id))
        await self._wait(self.latency / 2)
        if self._failures[operation]:
            raise self._failures[operation].popleft()
        self.refuse_if_closed(operation, token_id)

    async def _reply(self) -> None:
        await self._wait(self.latency / 2)

    @staticmethod
    async def _wait(seconds: float) -> None:
        if seconds > 0:
            await anyio.sleep(seconds)
        else:
            await anyio.lowlevel.checkpoint()

    def _order_id_for(self, attempt_id: str) -> str:
        order_id = self._prepared.get(attempt_id)
        if order_id is None:
            self._orders += 1
            order_id = self._prepared[attempt_id] = f"paper-{self._orders}"
        return order_id

    def _execute(self, permit: SellPermit, limit_price: Decimal) -> Fill | ExchangeError:
        token, shares = permit.token_id, permit.shares
        order_id = self._order_id_for(permit.attempt_id)
        rules = self._rules.get(token, self.default_rules)
        problem = self._rule_problem(rules, shares, limit_price)
        if problem is not None:
            return self._record(permit, limit_price, SellStatus.REJECTED, order_id, OrderRejected(problem, status=400))
        if shares > self._chain.get(token, 0):
            return self._record(permit, limit_price, SellStatus.REJECTED, order_id,
                                InsufficientBalance(NO_BALANCE_MESSAGE, status=400))
        book = self._bids.get(token, [])
        if sum(size for price, size in book if price >= limit_price) < shares:
            return self._record(permit, limit_price, SellStatus.KILLED, order_id,
                                OrderKilled(KILLED_MESSAGE, status=400))
        remaining, proceeds, rest = shares, Decimal(0), []
        with exact():  # the application's decimal context must not round a price
            for price, size in book:
                take = min(size, remaining) if price >= limit_price else 0
                proceeds += price * take
                remaining -= take
                if size - take:
                    rest.append((price, size - take))
            avg = proceeds / shares
        self._bids[token] = rest
        self._set_chain(token, self._chain[token] - shares)
        self.sells.append(PaperSell(token, micro_to_shares(shares), limit_price, permit.attempt_id,
                                    SellStatus.FILLED, order_id, avg_price=avg, verified_at=permit.verified_at,
                                    sent_at=self._sent_at.get(permit.attempt_id)))
        self._orders_view.filled(order_id)
        if token in self._deferred:
            self._pending[order_id] = (token, shares)
            return Fill(shares=shares, avg_price=avg, order_id=order_id, trade_ids=(f"{order_id}-trade",))
        return Fill(shares=shares, avg_price=avg, order_id=order_id)

    @staticmethod
    def _rule_problem(rules: MarketRules, shares: int, limit_price: Decimal) -> str | None:
        if not (0 < limit_price < 1):
            return f"invalid price {limit_price}: must be between 0 and 1"
        if not rules.price_is_on_tick(limit_price):
            return f"invalid price {limit_price}: breaks minimum tick size rule: {rules.tick_size}"
        if shares % rules.size_step:
            return f"invalid size {micro_to_shares(shares)}: sizes are in steps of {micro_to_shares(rules.size_step)}"
        if shares < rules.min_order_size:
            return f"size {micro_to_shares(shares)} lower than the minimum: {micro_to_shares(rules.min_order_size)}"
        return None

    def _record(self, permit: SellPermit, limit_price: Decimal, status: SellStatus, order_id: str,
                error: ExchangeError) -> ExchangeError:
        self.sells.append(PaperSell(permit.token_id, micro_to_shares(permit.shares), limit_price,
                                    permit.attempt_id, status, order_id, error=str(error),
                                    verified_at=permit.verified_at, sent_at=self._sent_at.get(permit.attempt_id)))
        return error
