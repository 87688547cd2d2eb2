"""A Hypothesis state machine over the exit engine on the paper exchange, across three tokens.

The rules track positions, buy more shares, request exits (alone, racing each other, racing a
reconciliation, or cancelled half way), inject faults, move the order book, advance the clock,
refresh the balance cache and reconcile unknown outcomes. After every step the promise is checked:
nothing sold that was not held, never two sells in flight, every sell carried a fresh, single-use
permit for the balance the exchange had just reported, and nothing sent for a position that was not
SELLING. The async engine runs in a blocking portal's event loop; the clock is manual and the attempt
ids come from a counter, so a failing sequence replays exactly.
"""

from __future__ import annotations

import itertools
from collections import Counter
from decimal import Decimal
from typing import Any

import anyio
import anyio.lowlevel
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from exitguard import (
    ExchangeError,
    ExitEngine,
    ExitOutcome,
    ExitRefused,
    InsufficientBalance,
    ManualClock,
    OrderKilled,
    Position,
    PositionConflict,
    RetryPolicy,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.exchange.port import Fill
from exitguard.states import (
    InvalidValue,
    SellPermit,
    TransitionRefused,
    micro_to_shares,
    parse_raw_balance,
    permit_is_fresh,
)

TOKENS = ("t0", "t1", "t2")
PRICES = (Decimal("0.40"), Decimal("0.50"), Decimal("0.55"), Decimal("0.60"))
FINAL = frozenset({"CLOSED", "RECONCILED", "DUST"})
PROCEEDED = frozenset({
    ExitOutcome.CLOSED, ExitOutcome.ALREADY_EXITED, ExitOutcome.DUST, ExitOutcome.NOT_FILLED,
    ExitOutcome.VERIFY_FAILED, ExitOutcome.UNKNOWN,
})
STATE_OF_OUTCOME = {
    ExitOutcome.CLOSED: {"CLOSED"},
    ExitOutcome.ALREADY_EXITED: {"RECONCILED"},
    ExitOutcome.DUST: {"DUST"},
    ExitOutcome.NOT_FILLED: {"OPEN"},
    ExitOutcome.VERIFY_FAILED: {"OPEN"},
    ExitOutcome.UNKNOWN: {"SELLING"},
}

BOOKS: dict[str, list[tuple[Decimal, Decimal]]] = {
    "deep_above": [(Decimal("0.60"), Decimal("1000"))],
    "thin_above": [(Decimal("0.60"), Decimal("2"))],
    "deep_below": [(Decimal("0.30"), Decimal("1000"))],
    "layered": [(Decimal("0.60"), Decimal("3")), (Decimal("0.55"), Decimal("3")), (Decimal("0.50"), Decimal("100"))],
    "empty": [],
}

SHARES = st.sampled_from([Decimal("5"), Decimal("10"), Decimal("7.5"), Decimal("4.8935"), Decimal("100")])
HELD = st.sampled_from(["same", "same", "fee", "more", "none", "dust"])
"""What the exchange books for the tracked shares: the same, less (fees), more, nothing, dust."""
RECENT_BUY = st.sampled_from([False, False, False, True])
"""Whether the buy was just now: a zero balance inside its settlement window is no exit."""

ERRORS = {
    "killed": lambda: OrderKilled("order couldn't be fully filled. FOK orders are fully filled or killed.", status=400),
    "transient": lambda: TransientError("paper: 503 engine restarting", status=503),
    "unknown": lambda: UnknownOutcome("paper: connection dropped"),
    "no_balance": lambda: InsufficientBalance("not enough balance / allowance", status=400),
}


CORRUPT: dict[str, object] = {"NaN": "NaN", "negative": "-5", "text": "abc", "missing": None,
                               "fraction": "1.5", "float": 2.5}
FAULTS = sorted(
    [f"fail {op} {error}" for op in ("sell", "get_balance", "lookup_sell", "refresh_balance") for error in ERRORS]
    + ["lose sell response"] * 4
    + ["lag until_refresh", "lag 0.5", "lag 5.0"]
    + [f"corrupt {name}" for name in CORRUPT]
)


INTERRUPT_POINTS = (
    "sell:before",
    "sell:after",
    "sell:after",
    "market_rules:before",
    "get_balance:before",
    "get_balance:after",
    "refresh_balance:before",
    "refresh_balance:after",
    "sell:before",
    "sell:after",
)


class CheckedExchange(PaperExchange):
    """The paper exchange, watching every sell it receives against the engine's promise.

    A check that fails is recorded, not raised: the engine treats any exception from `sell` as an
    unknown outcome, which would hide it. The invariant below asserts the record is empty.
    """

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.engine: ExitEngine | None = None
        self.token_of: dict[str, str] = {}
        self.violations: list[str] = []
        self.seen_attempts: set[str] = set()
        self.reported: dict[str, int | None] = {}
        """token -> the balance `get_balance` last answered, parsed (None when unreadable)."""
        self.key_of_attempt: dict[str, str] = {}
        self.in_flight_by_key: Counter[str] = Counter()
        self.max_in_flight_by_key = 0
        self.interrupt: tuple[str, anyio.CancelScope] | None = None
        """("operation:before|after", scope): cancel `scope` there, as a caller's timeout would."""
        self.slow = 0.0
        """Seconds the manual clock moves while each answer travels back (network latency)."""

    async def _reply(self) -> None:
        if self.slow:
            self.clock.advance(self.slow)  # type: ignore[attr-defined]
        await super()._reply()

    async def _interrupt_point(self, point: str) -> None:
        if self.interrupt is not None and self.interrupt[0] == point:
            scope = self.interrupt[1]
            self.interrupt = None
            scope.cancel()
            await anyio.lowlevel.checkpoint()  # raises the cancellation here

    async def market_rules(self, token_id: str) -> Any:
        await self._interrupt_point("market_rules:before")
        return await super().market_rules(token_id)

    async def refresh_balance(self, token_id: str) -> None:
        await self._interrupt_point("refresh_balance:before")
        await super().refresh_balance(token_id)
        await self._interrupt_point("refresh_balance:after")

    async def get_balance(self, token_id: str) -> object:
        await self._interrupt_point("get_balance:before")
        raw = await super().get_balance(token_id)
        await self._interrupt_point("get_balance:after")
        try:
            self.reported[token_id] = parse_raw_balance(raw)
        except InvalidValue:
            self.reported[token_id] = None
        return raw

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object) -> Fill:
        engine = self.engine
        assert engine is not None
        if not isinstance(permit, SellPermit):
            self.violations.append(f"sell without a permit: {permit!r}")
            return await super().sell(permit, limit_price, **options)
        key = permit.position_key
        now = self.clock.monotonic()
        if not permit_is_fresh(permit, now, engine.permit_max_age):
            self.violations.append(f"stale permit {permit} at {now} (max age {engine.permit_max_age})")
        if permit.attempt_id in self.seen_attempts:
            self.violations.append(f"permit reused: {permit}")
        self.seen_attempts.add(permit.attempt_id)
        self.key_of_attempt[permit.attempt_id] = key
        if not 0 < permit.shares <= permit.verified_balance:
            self.violations.append(f"permit above its verified balance: {permit}")
        if self.reported.get(permit.token_id) != permit.verified_balance:
            self.violations.append(
                f"permit verified {permit.verified_balance} but the exchange last reported "
                f"{self.reported.get(permit.token_id)} for {permit.token_id}: {permit}"
            )
        if self.token_of.get(key) != permit.token_id:
            self.violations.append(f"permit for {key} names token {permit.token_id}, not {self.token_of.get(key)}")
        state = engine.states().get(key)
        if state != "SELLING":
            self.violations.append(f"sell for {key} in state {state}: {permit}")
        if key in engine.unresolved():
            self.violations.append(f"resent for {key} whose outcome is unknown: {permit}")
        await self._interrupt_point("sell:before")  # the post never left
        self.in_flight_by_key[key] += 1
        self.max_in_flight_by_key = max(self.max_in_flight_by_key, self.in_flight_by_key[key])
        try:
            fill = await super().sell(permit, limit_price, **options)
        finally:
            self.in_flight_by_key[key] -= 1
        await self._interrupt_point("sell:after")  # executed, but the caller stopped waiting
        return fill


def micro(shares: Decimal) -> int:
    return int(shares * 1_000_000)


class ExitMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self._portal_cm = start_blocking_portal(backend="asyncio")
        self.portal = self._portal_cm.__enter__()
        self._engine_cm: Any = None
        self.engine: ExitEngine | None = None
        self.clock = ManualClock()
        self.exchange = CheckedExchange(self.clock)
        for token in TOKENS:
            self.exchange.set_bids(token, BOOKS["deep_above"])
        self.held: dict[str, int] = dict.fromkeys(TOKENS, 0)
        """Micro-shares ever put on each token (every balance set or added)."""
        self.removed: dict[str, int] = dict.fromkeys(TOKENS, 0)
        """Micro-shares that left each token other than by our sells (sold elsewhere)."""
        self.keys: list[str] = []
        self.unknown: set[str] = set()
        """Keys the model saw end with an unknown outcome and not yet settled by reconciliation."""
        self._positions = itertools.count(1)

    # -- lifetime ------------------------------------------------------------------------------------

    @initialize(
        retry=st.sampled_from([
            RetryPolicy(),
            RetryPolicy(max_attempts=3, step_ticks=1, max_slippage=Decimal("0.02")),
            RetryPolicy(max_attempts=2),
        ]),
        min_orders=st.lists(st.sampled_from([Decimal("1"), Decimal("5")]), min_size=3, max_size=3),
        positions=st.lists(st.tuples(SHARES, HELD, RECENT_BUY), min_size=3, max_size=3),
    )
    def start(self, retry: RetryPolicy, min_orders: list[Decimal],
              positions: list[tuple[Decimal, str, bool]]) -> None:
        """The engine, entered in the portal's event loop, with one position tracked per token."""
        for token, minimum in zip(TOKENS, min_orders, strict=True):
            self.exchange.set_market(token, min_order_size=minimum)
        attempts = itertools.count(1)
        # The background resolver is held off (tests/engine/test_resolver.py covers it): its lookups would run
        # in the portal's loop while this thread inspects the engine. exit() and reconcile() still look up.
        self.engine = ExitEngine(self.exchange, clock=self.clock, retry=retry,
                                 attempt_ids=lambda: f"attempt-{next(attempts)}", resolve_backoff=(1e9, 1e9))
        self.exchange.engine = self.engine
        self._engine_cm = self.portal.wrap_async_context_manager(self.engine)
        self._engine_cm.__enter__()
        for token, (shares, held, recent_buy) in zip(TOKENS, positions, strict=True):
            self._track(token, shares, held, recent_buy)

    def teardown(self) -> None:
        try:
            if self._engine_cm is not None:
                self._engine_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)

    # -- helpers -------------------------------------------------------------------------------------

    @property
    def eng(self) -> ExitEngine:
        assert self.engine is not None
        return self.engine

    def chain(self, token: str) -> int:
        return micro(self.exchange.balance(token))

    def set_chain(self, token: str, new: int) -> None:
        old = self.chain(token)
        self.exchange.set_balance(token, micro_to_shares(new))
        if new >= old:
            self.held[token] += new - old
        else:
            self.removed[token] += old - new

    def live_tokens(self) -> set[str]:
        states = self.eng.states()
        return {self.exchange.token_of[key] for key, state in states.items() if state not in FINAL}

    def pick(self, index: int) -> str:
        """A tracked key: mostly an unfinished one (two draws in three), else any, finished ones too."""
        states = self.eng.states()
        live = [key for key in self.keys if states[key] not in FINAL]
        candidates = live if live and index % 3 else self.keys
        return candidates[index % len(candidates)]

    def note_unknown(self, key: str) -> None:
        """Follow whether the key's outcome is unknown after a call that may have looked it up."""
        if key in self.eng.unresolved():
            self.unknown.add(key)
        else:
            self.unknown.discard(key)

    def exchange_seen(self) -> tuple[int, int]:
        return len(self.exchange.calls), len(self.exchange.sells)

    async def _exit(self, key: str, price: Decimal) -> Any:
        try:
            return await self.eng.exit(key, reason="stateful", limit_price=price)
        except (ExitRefused, TransitionRefused) as err:
            return err

    async def _reconcile(self, key: str) -> Any:
        try:
            return await self.eng.reconcile(key)
        except TransitionRefused as err:
            return err

    async def _race(self, calls: list[tuple[str, str, Decimal]]) -> list[Any]:
        results: list[Any] = [None] * len(calls)

        async def one(index: int, operation: str, key: str, price: Decimal) -> None:
            results[index] = await (self._exit(key, price) if operation == "exit" else self._reconcile(key))

        async with anyio.create_task_group() as tg:
            for index, (operation, key, price) in enumerate(calls):
                tg.start_soon(one, index, operation, key, price)
        return results

    async def _interrupted_exit(self, key: str, price: Decimal, at: str) -> list[Any]:
        """exit() cancelled at `at` (a caller's timeout); answers [result] when it finished first."""
        results: list[Any] = []
        with anyio.CancelScope() as scope:
            self.exchange.interrupt = (at, scope)
            results.append(await self._exit(key, price))
        self.exchange.interrupt = None
        return results

    def check_result(self, key: str, before: str, result: Any, seen: tuple[int, int]) -> None:
        """One exit()'s answer against the state it started from."""
        after = self.eng.state(key)
        if before in FINAL:
            assert isinstance(result, ExitRefused), (key, before, result)
        elif before == "SELLING":
            # An unknown outcome (issue 11 A.3): exit() looks it up at once. Still unknown: UNKNOWN, nothing
            # sent; settled: what the lookup found, or (proven not filled) a fresh verification and sell.
            assert not isinstance(result, Exception), (key, before, result)
            assert result.outcome in PROCEEDED, (key, before, result)
            assert after in STATE_OF_OUTCOME[result.outcome], (key, result, after)
            if result.outcome is ExitOutcome.UNKNOWN and after == "SELLING" and len(self.exchange.sells) == seen[1]:
                assert key in self.eng.unresolved()
            self.note_unknown(key)
            return
        else:
            assert before == "OPEN", (key, before)
            assert not isinstance(result, Exception), (key, before, result)
            assert result.outcome in PROCEEDED, (key, result)
            assert after in STATE_OF_OUTCOME[result.outcome], (key, result, after)
            if result.outcome is ExitOutcome.UNKNOWN:
                self.unknown.add(key)
            if result.outcome is ExitOutcome.CLOSED:
                assert result.shares_sold > 0
                assert result.verified_balance is not None and result.shares_sold <= result.verified_balance
            else:
                assert result.shares_sold == 0
            return
        assert self.exchange_seen() == seen, f"refused exit of {key} ({before}) reached the exchange"
        assert after == before

    # -- rules: positions and balances ---------------------------------------------------------------

    def _track(self, token: str, shares: Decimal, held: str, recent_buy: bool) -> None:
        """Buy `held` shares of `token` (as the exchange books them) and track a position of `shares`."""
        key = f"p{next(self._positions)}"
        added = {
            "same": micro(shares),
            "fee": micro(shares) * 97 // 100,  # BUY fees taken in shares
            "none": 0,
            "dust": 3_000_000,
            "more": micro(shares) + 2_000_000,
        }[held]
        self.set_chain(token, self.chain(token) + added)
        self.exchange.token_of[key] = token
        self.eng.track(Position(key=key, token_id=token, shares=shares,
                                last_buy_at=self.clock.wall() if recent_buy else None))
        self.keys.append(key)
        assert self.eng.state(key) == "OPEN"

    @precondition(lambda self: self.engine is not None)
    @rule(data=st.data(), shares=SHARES, held=HELD, recent_buy=RECENT_BUY)
    def track(self, data: st.DataObject, shares: Decimal, held: str, recent_buy: bool) -> None:
        """Track a position on a token no live position holds; on a held token it must be refused."""
        live = self.live_tokens()
        free = [token for token in TOKENS if token not in live]
        if free:
            self._track(data.draw(st.sampled_from(free), label="free token"), shares, held, recent_buy)
            return
        token = data.draw(st.sampled_from(TOKENS), label="held token")
        key = f"p{next(self._positions)}"
        try:
            self.eng.track(Position(key=key, token_id=token, shares=shares))
        except PositionConflict:
            return
        raise AssertionError(f"{token} is held by a live position, yet {key} was tracked on it")

    @rule(token=st.sampled_from(TOKENS),
          change=st.sampled_from(["buy 1", "buy 2.5", "buy 10", "sold all", "sold half"]))
    def balance_change(self, token: str, change: str) -> None:
        """A buy adds shares on the exchange; "sold" is another process selling some or all of them."""
        verb, amount = change.split()
        if verb == "buy":
            self.set_chain(token, self.chain(token) + micro(Decimal(amount)))
        else:
            keep = 0 if amount == "all" else self.chain(token) // 2 // 10_000 * 10_000
            self.set_chain(token, keep)

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50))
    def forget(self, index: int) -> None:
        key = self.pick(index)
        state = self.eng.state(key)
        if state in FINAL:
            self.eng.forget(key)
            self.keys.remove(key)
        else:
            try:
                self.eng.forget(key)
            except TransitionRefused:
                return
            raise AssertionError(f"forgot {key} in state {state}")

    # -- rules: exits ---------------------------------------------------------------------------------

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50), price=st.sampled_from(PRICES))
    def exit_one(self, index: int, price: Decimal) -> None:
        key = self.pick(index)
        before, seen = self.eng.state(key), self.exchange_seen()
        result = self.portal.call(self._exit, key, price)
        self.check_result(key, before, result, seen)

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50), n=st.integers(2, 3),
          prices=st.lists(st.sampled_from(PRICES), min_size=3, max_size=3))
    def racing_exits(self, index: int, n: int, prices: list[Decimal]) -> None:
        key = self.pick(index)
        before, seen = self.eng.state(key), self.exchange_seen()
        results = self.portal.call(self._race, [("exit", key, prices[i]) for i in range(n)])
        if before in FINAL:
            assert all(isinstance(r, ExitRefused) for r in results), results
            assert self.exchange_seen() == seen
            return
        proceeded = [r for r in results if r.outcome is not ExitOutcome.IN_PROGRESS]
        assert len(proceeded) == 1, f"{n} racing exits of an OPEN position: {results}"
        self.check_result(key, before, proceeded[0], seen)

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50), price=st.sampled_from(PRICES), exit_first=st.booleans())
    def exit_racing_reconcile(self, index: int, price: Decimal, exit_first: bool) -> None:
        key = self.pick(index)
        before, sells = self.eng.state(key), len(self.exchange.sells)
        calls = [("exit", key, price), ("reconcile", key, price)]
        results = self.portal.call(self._race, calls if exit_first else calls[::-1])
        exit_result, reconcile_result = results if exit_first else results[::-1]
        after = self.eng.state(key)
        if before == "SELLING":  # unresolved: both look it up, one lookup at a time, and nothing is resent blind
            assert not isinstance(exit_result, Exception) and exit_result.outcome in PROCEEDED | {
                ExitOutcome.IN_PROGRESS}, exit_result
            if len(self.exchange.sells) == sells:  # no fresh sell: at most a lookup happened
                assert after in {"SELLING", "CLOSED", "OPEN", "RECONCILED"}, after
            assert not isinstance(reconcile_result, Exception) or isinstance(reconcile_result, TransitionRefused)
            self.note_unknown(key)
        elif before == "OPEN":
            assert isinstance(reconcile_result, TransitionRefused) or (
                reconcile_result.outcome is ExitOutcome.IN_PROGRESS), reconcile_result
            if not isinstance(exit_result, Exception) and exit_result.outcome is ExitOutcome.UNKNOWN:
                self.unknown.add(key)
            assert not isinstance(exit_result, Exception) and exit_result.outcome in PROCEEDED, exit_result
            assert after in STATE_OF_OUTCOME[exit_result.outcome]
        else:
            assert isinstance(exit_result, ExitRefused) and isinstance(reconcile_result, TransitionRefused)

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50), price=st.sampled_from(PRICES), at=st.sampled_from(INTERRUPT_POINTS))
    def interrupted_exit(self, index: int, price: Decimal, at: str) -> None:
        """An exit cancelled at one point of its I/O, as a caller's timeout would cancel it."""
        key = self.pick(index)
        before = self.eng.state(key)
        results = self.portal.call(self._interrupted_exit, key, price, at)
        state = self.eng.state(key)
        if before == "OPEN" and not results:  # cancelled: nothing in flight, and a sent sell is unknown
            assert state != "VERIFYING" and (state != "SELLING" or key in self.eng.unresolved()), state
            if at == "sell:after":
                assert state == "SELLING", "a sell that may have executed must stay SELLING until reconciled"
        assert state in FINAL | {"OPEN", "SELLING"}, state
        if state == "SELLING":
            assert key in self.eng.unresolved(), "an interrupted sell must be flagged unknown"
            self.unknown.add(key)
        for result in results:
            if not isinstance(result, Exception) and result.outcome is ExitOutcome.UNKNOWN:
                self.unknown.add(key)
        if before == "SELLING":  # the exit looked the unknown outcome up first, and may have settled it
            self.note_unknown(key)

    # -- rules: reconciliation -----------------------------------------------------------------------

    def after_reconcile(self, key: str, result: Any) -> None:
        if isinstance(result, TransitionRefused):
            raise AssertionError(f"reconcile refused for unresolved {key}: {result}")
        if result.outcome is ExitOutcome.UNKNOWN:
            assert self.eng.state(key) == "SELLING" and key in self.eng.unresolved()
            return
        assert result.outcome in {ExitOutcome.CLOSED, ExitOutcome.NOT_FILLED, ExitOutcome.ALREADY_EXITED}, result
        assert self.eng.state(key) in STATE_OF_OUTCOME[result.outcome]
        assert key not in self.eng.unresolved()
        self.unknown.discard(key)

    @precondition(lambda self: self.engine is not None and self.eng.unresolved())
    @rule(index=st.integers(0, 50))
    def reconcile_unresolved(self, index: int) -> None:
        unresolved = self.eng.unresolved()
        key = unresolved[index % len(unresolved)]
        sells = len(self.exchange.sells)
        result = self.portal.call(self._reconcile, key)
        assert len(self.exchange.sells) == sells, "reconciliation sent a sell"
        self.after_reconcile(key, result)

    @precondition(lambda self: self.keys)
    @rule(index=st.integers(0, 50))
    def reconcile_any(self, index: int) -> None:
        key = self.pick(index)
        if key in self.eng.unresolved():
            return self.reconcile_unresolved(self.eng.unresolved().index(key))
        before, seen = self.eng.state(key), self.exchange_seen()
        result = self.portal.call(self._reconcile, key)
        assert isinstance(result, TransitionRefused), (key, before, result)
        assert self.exchange_seen() == seen and self.eng.state(key) == before
        return None

    # -- rules: the exchange ---------------------------------------------------------------------------

    @rule(fault=st.sampled_from(FAULTS), token=st.sampled_from(TOKENS))
    def inject_fault(self, fault: str, token: str) -> None:
        if fault.startswith("fail "):
            _, operation, error = fault.split()
            self.exchange.fail_next(operation, error=ERRORS[error]())
        elif fault == "lose sell response":
            self.exchange.lose_next_sell_response()
        elif fault.startswith("lag "):
            delay = fault.split()[1]
            self.exchange.lag_balance(token, None if delay == "until_refresh" else float(delay))
        elif fault.startswith("corrupt "):
            self.exchange.corrupt_next_balance(token, CORRUPT[fault.split()[1]])
        else:
            raise AssertionError(fault)

    @rule(token=st.sampled_from(TOKENS), book=st.sampled_from(sorted(BOOKS)))
    def set_bids(self, token: str, book: str) -> None:
        self.exchange.set_bids(token, BOOKS[book])

    @rule(seconds=st.sampled_from([0.1, 1.0, 2.5, 61.0]))
    def advance_clock(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(seconds=st.sampled_from([0.0, 0.0, 0.05, 0.8, 3.0]))
    def exchange_latency(self, seconds: float) -> None:
        """Every answer now takes `seconds` on the manual clock: verifications age, windows pass."""
        self.exchange.slow = seconds

    @rule(token=st.sampled_from(TOKENS))
    def refresh_balance(self, token: str) -> None:
        try:
            self.portal.call(self.exchange.refresh_balance, token)
        except ExchangeError:
            pass  # an injected refresh failure meant for the engine, spent here instead

    # -- invariants ------------------------------------------------------------------------------------

    @invariant()
    def every_sell_was_licensed(self) -> None:
        assert self.exchange.violations == [], "\n".join(self.exchange.violations)

    @invariant()
    def never_sold_more_than_held(self) -> None:
        sold: Counter[str] = Counter()
        for sell in self.exchange.sells:
            if sell.status is SellStatus.FILLED:
                sold[sell.token_id] += micro(sell.shares)
        for token in TOKENS:
            assert sold[token] <= self.held[token], f"{token}: sold {sold[token]} of {self.held[token]} ever held"
            assert self.chain(token) == self.held[token] - sold[token] - self.removed[token] >= 0

    @invariant()
    def one_sell_in_flight(self) -> None:
        assert self.exchange.max_sells_in_flight <= 1
        assert self.exchange.max_in_flight_by_key <= 1
        assert all(count == 0 for count in self.exchange.sells_in_flight.values())

    @invariant()
    def one_fill_per_position_and_never_reopened(self) -> None:
        if self.engine is None:
            return
        fills: Counter[str] = Counter()
        for sell in self.exchange.sells:
            if sell.status is SellStatus.FILLED:
                fills[self.exchange.key_of_attempt[sell.attempt_id]] += 1
        states = self.eng.states()
        unresolved = set(self.eng.unresolved())
        for key, count in fills.items():
            assert count == 1, f"{key} filled {count} times"
            if key in states:
                assert states[key] == "CLOSED" or key in unresolved, (
                    f"{key} sold but is {states[key]}: the next exit would sell again")

    @invariant()
    def unresolved_positions_stay_selling(self) -> None:
        if self.engine is None:
            return
        states = self.eng.states()
        unresolved = set(self.eng.unresolved())
        for key in unresolved:
            assert states[key] == "SELLING", f"{key} is unresolved in {states[key]}"
        for key, state in states.items():
            assert state != "VERIFYING", f"{key} left VERIFYING between calls"
            if state == "SELLING":
                assert key in unresolved, f"{key} left SELLING with a pending answer between calls"
        assert self.unknown <= unresolved, f"unknown outcomes {self.unknown - unresolved} were dropped"
        live = [key for key, state in states.items() if state not in FINAL]
        tokens = [self.exchange.token_of[key] for key in live]
        assert len(tokens) == len(set(tokens)), f"two live positions on one token: {live}"


ExitMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestExitEngineStateful = ExitMachine.TestCase
