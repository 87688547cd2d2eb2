"""The seeded stateful run against the fake CLOB, through the real `PolymarketExchange` and py-clob-client-v2.

Fewer steps than the paper run: every call crosses loopback HTTP to the fake's server threads. The faults are the fake's
own switches: statuses with their documented bodies (a definite no), gateway statuses and HTML bodies (the
order may have executed... here it did not: UNKNOWN until the horizon), answers lost after execution, 404s and
failures on the order, trade and balance endpoints, and a buy the balance cache has not seen yet. The engine's
clock (shared with the adapter, whose rate-limit waits advance it) is manual: steps move it, so lookup
horizons pass without real waiting. Steps run one after another (real threads make concurrent interleavings
unrepeatable; races and cancellations are the paper run's job), with restarts on the same journal between them.

What the watch sees: each post (through a thin proxy around the adapter), and the truth from the fake's own
order book, whatever the engine was told.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from contextlib import AsyncExitStack
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from fakeclob import FakeClob

from adversarial.hostile import Post, Told, Truth
from adversarial.paper_run import HORIZON, PERMIT_MAX_AGE, PROCEEDED, STATE_OF_OUTCOME, RunReport, quiet
from adversarial.watch import FINAL, Watch
from exitguard import ExchangeError, ExitEngine, ExitOutcome, ExitRefused, ManualClock, Position, TransitionRefused
from exitguard.polymarket import PolymarketExchange
from exitguard.states import SellPermit, shares_to_micro

TOKENS = tuple(str(10**70 + 7919 * n) for n in range(3))
PRICES = (Decimal("0.50"), Decimal("0.55"), Decimal("0.60"), Decimal("0.65"))
SHARES = (Decimal("5"), Decimal("10"), Decimal("7.5"), Decimal("20"))
ORDER_FAULTS: tuple[tuple[int, object], ...] = (
    (429, None), (425, None), (503, None),                      # documented refusals: nothing sold
    (500, None), (502, "<html><body>502 Bad Gateway</body></html>"), (504, "<html>504 Gateway Time-out</html>"),
    (503, "<html>503 Service Unavailable</html>"),               # a proxy's page, not the exchange's body
)
READ_PATHS = ("/balance-allowance", "/data/order", "/data/trades")


class WatchedExchange:
    """The adapter, with every post shown to the watch and its truth read from the fake's book."""

    def __init__(self, inner: PolymarketExchange, clob: FakeClob, watch: Watch, clock: ManualClock) -> None:
        self.inner, self.clob, self.watch, self.clock = inner, clob, watch, clock
        self.posts_by_key: dict[str, list[Post]] = {}
        self.order_ids: dict[str, str] = {}
        """Attempt id -> the order id prepare_sell gave the engine."""

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal, *args: Any, **kwargs: Any) -> str:
        # The engine signs (and journals the id) before every post when it has a journal, as this run's does. The
        # proxy must not sign on its own: the adapter would post a second, differently salted order.
        order_id: str = await self.inner.prepare_sell(permit, limit_price, *args, **kwargs)
        self.order_ids[permit.attempt_id] = order_id
        return order_id

    async def sell(self, permit: SellPermit, limit_price: Decimal, *args: Any, **kwargs: Any) -> Any:
        order_id = self.order_ids.get(permit.attempt_id, "?")
        post = Post(permit.position_key, permit, limit_price, posted_at=self.clock.monotonic())
        earlier = self.posts_by_key.setdefault(post.key, [])
        self.watch.posted(post, list(earlier))
        earlier.append(post)
        try:
            fill = await self.inner.sell(permit, limit_price, *args, **kwargs)
            post.told = Told.FILL
            return fill
        except ExchangeError as err:
            post.told = Told.NO if err.definitely_not_filled else Told.UNKNOWN
            raise
        finally:
            post.returned_at = self.clock.monotonic()
            if post.told is Told.WAITING:
                post.told = Told.UNKNOWN
            orders = self.clob.orders
            order = orders.get(order_id) or orders.get(order_id.lower())
            if order is not None:
                post.left_at = post.posted_at
                post.truth = Truth.FILLED if order["status"] == "MATCHED" else Truth.KILLED
                self.watch.executed(post)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def run_clob(seed: int, steps: int, journal_dir: Path) -> RunReport:
    with FakeClob() as clob, quiet():
        run = ClobRun(seed, steps, clob, journal_dir)
        anyio.run(run.main, backend="asyncio")
        return run.report()


class ClobRun:
    def __init__(self, seed: int, steps: int, clob: FakeClob, journal_dir: Path) -> None:
        self.seed, self.steps, self.clob = seed, steps, clob
        self.rng = random.Random(seed)
        self.clock = ManualClock()
        self.watch = Watch(now=self.clock.monotonic, horizon=HORIZON, permit_max_age=PERMIT_MAX_AGE,
                           state_of=self._state_of)

        async def manual_sleep(seconds: float) -> None:
            self.clock.advance(seconds)
            await anyio.lowlevel.checkpoint()

        adapter = PolymarketExchange(clob.client(), call_timeout=5.0, clock=self.clock, sleep=manual_sleep)
        self.exchange = WatchedExchange(adapter, clob, self.watch, self.clock)
        self.journal = journal_dir / f"clob-{seed}.sqlite"
        self.engine: ExitEngine | None = None
        self._stack: AsyncExitStack | None = None
        self._attempts = itertools.count(1)
        self._keys = itertools.count(1)
        self.live: dict[str, str] = {}
        """Token -> the key last tracked on it."""
        self.token_of: dict[str, str] = {}
        self.bought: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.trace: list[str] = []
        self.done = 0
        for token in TOKENS:
            clob.add_market(token, tick_size="0.01", min_order_size="5")
            clob.set_bids(token, [(Decimal("0.60"), Decimal("100000"))])

    async def main(self) -> None:
        try:
            await self._start()
            for step in range(self.steps):
                self.watch.step = step
                await self._one_step()
                self.done = step + 1
                self._check()
                if self.watch.violations:
                    return
            self.watch.step = self.steps
            await self._drain()
        finally:
            await self._stop()

    def report(self) -> RunReport:
        return RunReport(self.seed, "fakeclob", self.done, self.events, self.watch.checks,
                         list(self.watch.violations), self.trace, self.clock.monotonic() - 1_000.0)

    def _note(self, text: str) -> None:
        self.trace.append(f"{self.watch.step:6d} t={self.clock.monotonic() - 1_000.0:9.2f} {text}")

    async def _start(self) -> None:
        stack = AsyncExitStack()
        self.engine = await stack.enter_async_context(ExitEngine(
            self.exchange, journal=self.journal, clock=self.clock, permit_max_age=PERMIT_MAX_AGE,
            attempt_ids=lambda: f"c{next(self._attempts)}", settlement_poll_interval=None))
        self._stack = stack
        self._note(f"engine started (unresolved: {self.engine.unresolved()})")

    async def _stop(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            self.engine = None

    @property
    def eng(self) -> ExitEngine:
        assert self.engine is not None
        return self.engine

    def _state_of(self, key: str) -> str | None:
        return None if self.engine is None else self.engine.state(key)

    def _check(self) -> None:
        self.watch.check_positions(self.eng.states(), set(self.eng.unresolved()))
        for token in TOKENS:
            self.watch.check_ledger(token, self.bought[token], 0, self.watch.sold[token],
                                    shares_to_micro(self.clob.chain_balance(token)))

    def _live_key(self, token: str) -> str | None:
        key = self.live.get(token)
        return key if key is not None and self.eng.state(key) not in FINAL else None

    async def _one_step(self) -> None:
        steps = [(self._track, 10), (self._exit, 30), (self._fault, 14), (self._reconcile, 4), (self._wait, 8),
                 (self._buy, 3), (self._forget, 2), (self._restart, 1)]
        chosen = self.rng.choices([s for s, _ in steps], weights=[w for _, w in steps])[0]
        await chosen()

    async def _track(self) -> None:
        free = [token for token in TOKENS if self._live_key(token) is None]
        if not free:
            return
        token, shares = self.rng.choice(free), self.rng.choice(SHARES)
        key = f"q{next(self._keys)}"
        added = shares if self.rng.random() < 0.8 else shares + 3
        self.clob.set_balance(token, self.clob.chain_balance(token) + added)
        self.bought[token] += shares_to_micro(added)
        self.eng.track(Position(key=key, token_id=token, shares=shares))
        await self.exchange.warm_up(token)
        self.live[token], self.token_of[key] = key, token
        self._note(f"track {key} x{shares} (balance {self.clob.chain_balance(token)})")

    async def _buy(self) -> None:
        token, shares = self.rng.choice(TOKENS), Decimal(self.rng.choice((1, 3, 10)))
        self.clob.credit(token, shares)  # on chain; the exchange's cache lags until a refresh
        self.bought[token] += shares_to_micro(shares)
        self._note(f"buy {token[-4:]} +{shares} (cache lags)")

    async def _exit(self) -> None:
        keys = [k for t in TOKENS if (k := self._live_key(t)) is not None] or list(self.token_of)
        if not keys:
            return
        key, price = self.rng.choice(keys), self.rng.choice(PRICES)
        before, unresolved = self.eng.state(key), key in self.eng.unresolved()
        try:
            result: Any = await self.eng.exit(key, reason="adversarial", limit_price=price)
        except Exception as err:  # noqa: BLE001 - judged below
            result = err
        w = self.watch
        if isinstance(result, BaseException):
            w.check(isinstance(result, ExitRefused) and before in FINAL, "promise",
                    "exit() never raises for exchange trouble",
                    lambda: f"exit({key}) from {before} raised {type(result).__name__}: {result}", key)
        else:
            after = self.eng.state(key)
            if unresolved:
                w.check(result.outcome is not ExitOutcome.IN_PROGRESS, "A.3",
                        "exit() on an unresolved position tries a resolution",
                        lambda: f"exit({key}) of an unresolved position answered IN_PROGRESS", key)
            if before == "OPEN" or (unresolved and result.outcome is not ExitOutcome.IN_PROGRESS):
                w.check(result.outcome in PROCEEDED and after in STATE_OF_OUTCOME[result.outcome], "promise",
                        "an exit's outcome tells the position's state",
                        lambda: f"exit({key}) from {before} -> {result.outcome} with the position {after}", key)
        self._note(f"exit {key} @{price} {before}{' unresolved' if unresolved else ''} -> "
                   f"{type(result).__name__ if isinstance(result, BaseException) else result.outcome} "
                   f"({self.eng.state(key)})")

    async def _fault(self) -> None:
        kind = self.rng.choice(("order", "order", "lose", "lose", "read", "read"))
        if kind == "order":
            status, body = self.rng.choice(ORDER_FAULTS)
            self.clob.fail_next(1, status, path="/order", body=body)  # type: ignore[arg-type]
            text = f"next POST /order -> {status}{' (html)' if isinstance(body, str) else ''}"
        elif kind == "lose":
            self.clob.lose_next_response("/order")
            text = "next POST /order executes, its answer is lost"
        else:
            path, status = self.rng.choice(READ_PATHS), self.rng.choice((404, 500, 502, 503))
            self.clob.fail_next(self.rng.randint(1, 3), status, path=path)
            text = f"next reads of {path} -> {status}"
        self.events[f"fakeclob {kind}"] += 1
        self._note(f"fault: {text}")

    async def _reconcile(self) -> None:
        keys = self.eng.unresolved() or list(self.token_of)
        if not keys:
            return
        key = self.rng.choice(keys)
        try:
            result: Any = await self.eng.reconcile(key)
        except TransitionRefused as err:
            result = err
        except Exception as err:  # noqa: BLE001 - judged below
            result = err
            self.watch.fail("promise", "reconcile() never raises for exchange trouble",
                            f"reconcile({key}) raised {type(err).__name__}: {err}", key)
        self._note(f"reconcile {key} -> {getattr(result, 'outcome', type(result).__name__)}")

    async def _wait(self) -> None:
        seconds = self.rng.choice((0.5, 2.0, 10.0, 31.0, 60.0))
        self.clock.advance(seconds)
        await anyio.sleep(0)
        self._note(f"wait {seconds}s")

    async def _forget(self) -> None:
        for key, state in self.eng.states().items():
            if state in FINAL and key not in self.eng.unsettled():
                self.eng.forget(key)
        self._note("forget finished")

    async def _restart(self) -> None:
        await self._stop()
        self.events["restart"] += 1
        await self._start()

    async def _drain(self) -> None:
        """Faults off (the fake's switches are all used up or cleared by a reset), horizons passed, and every
        unresolved position asked to exit: the engine must settle each (bounded)."""
        self.clob.reset_requests()
        for _ in range(10):
            left = self.eng.unresolved()
            if not left:
                break
            self.clock.advance(HORIZON + 1)
            for key in left:
                try:
                    await self.eng.exit(key, reason="adversarial drain", limit_price=Decimal("0.60"))
                except ExitRefused:
                    pass
            await anyio.sleep(0.05)
        self._check()
        left = self.eng.unresolved()
        self.watch.check(not left, "A.3", "every unknown outcome is resolved in the end",
                         lambda: f"{len(left)} still unresolved after the drain: {left}", left[0] if left else None)
