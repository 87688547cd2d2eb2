"""The seeded stateful run on the paper exchange: one `random.Random(seed)` drives every step, the hostile
exchange drives its faults from its own seeded generator, and the whole run lives in virtual time, so a
seed replays exactly (same steps, same faults, same interleavings) in milliseconds per step.

Steps: track positions (several per token over time; a new position after a finished one, with the leftover
and a new buy), buy more shares on the exchange, sell some elsewhere, exit at a random price, race exits,
cancel an exit at a random await point, reconcile, move the order book, let time pass (late orders arrive,
horizons pass, the engine's resolver works), forget finished positions, shut the engine down while exits run
and start a new one on the same journal (recovery). After every step the watch checks the promise; at the
end the run stops the faults and lets time pass until the engine has resolved every unknown outcome itself.

    report = run_paper(seed=3, steps=1000, profile=PROFILES["all"], journal_dir=tmp_path)
    assert not report.violations, report.explain()
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from loguru import logger

from adversarial.hostile import Fault, HostileExchange
from adversarial.virtual_time import LoopClock, VirtualTimeLoop
from adversarial.watch import FINAL, Violation, Watch
from exitguard import (
    EngineClosed,
    ExitEngine,
    ExitOutcome,
    ExitRefused,
    PaperExchange,
    Position,
    PositionConflict,
    TransitionRefused,
)
from exitguard.states import shares_to_micro

HORIZON = 30.0
"""Issue 11 A.2's default: after this, a posted order can no longer arrive."""
PERMIT_MAX_AGE = 2.0
TOKENS = ("t0", "t1", "t2", "t3")
PRICES = (Decimal("0.50"), Decimal("0.55"), Decimal("0.60"), Decimal("0.60"), Decimal("0.65"))
SHARES = (Decimal("5"), Decimal("10"), Decimal("7.5"), Decimal("4.8935"), Decimal("25"), Decimal("100"))
BOOKS: dict[str, list[tuple[object, object]]] = {
    "deep": [(Decimal("0.60"), Decimal("100000"))],
    "thin": [(Decimal("0.60"), Decimal("6"))],
    "layered": [(Decimal("0.60"), Decimal("8")), (Decimal("0.55"), Decimal("8")), (Decimal("0.50"), Decimal("1000"))],
    "empty": [],
}
PROCEEDED = frozenset({ExitOutcome.CLOSED, ExitOutcome.ALREADY_EXITED, ExitOutcome.DUST, ExitOutcome.NOT_FILLED,
                       ExitOutcome.VERIFY_FAILED, ExitOutcome.UNKNOWN})
STATE_OF_OUTCOME = {ExitOutcome.CLOSED: {"CLOSED"}, ExitOutcome.ALREADY_EXITED: {"RECONCILED"},
                    ExitOutcome.DUST: {"DUST"}, ExitOutcome.NOT_FILLED: {"OPEN"}, ExitOutcome.VERIFY_FAILED: {"OPEN"},
                    ExitOutcome.UNKNOWN: {"SELLING"}}
MAX_BOOK = 40
"""Finished positions are forgotten beyond this many tracked, so a long run keeps the per-step checks cheap."""


@dataclass(frozen=True)
class Profile:
    """Which faults a run injects. Each profile aims at a few points of issue 11 (`aims`), so that a broken
    point fails the profiles that exercise it and no other."""

    name: str
    faults: dict[Fault, float]
    aims: str
    cancel: bool = False
    restart: bool = False


PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("calm", {}, "the promise with no fault at all"),
    Profile("stale_cache", {Fault.STALE_AFTER_FILL: 0.8}, "A.4 refresh after our own fill"),
    Profile("latency", {Fault.LATENCY: 0.5}, "A.5 permit fresh when the order leaves"),
    Profile("lost_answers", {Fault.LOST_ANSWER: 0.15, Fault.GARBAGE_ANSWER: 0.08, Fault.FAILED_READ: 0.05},
            "A.1 unreadable answers, A.3 self-resolving unknowns"),
    Profile("malformed_fills", {Fault.MALFORMED_FILL: 0.1}, "A.1 a sell answer that is no Fill is UNKNOWN"),
    Profile("late_orders", {Fault.LATE_ORDER: 0.15}, "A.2 the lookup horizon, A.3"),
    Profile("blind_lookups", {Fault.LOST_ANSWER: 0.2, Fault.BLIND_LOOKUP: 0.6, Fault.FAILED_READ: 0.1},
            "A.2 nothing found is not a no, A.3"),
    Profile("cancellations", {}, "cancelled exits leave the truth, A.3", cancel=True),
    Profile("restarts", {Fault.LOST_ANSWER: 0.1, Fault.LATENCY: 0.2}, "B.6 shutdown, B.10 recovery, A.3",
            restart=True),
    Profile("hostile", {Fault.LOST_ANSWER: 0.08, Fault.GARBAGE_ANSWER: 0.04, Fault.LATE_ORDER: 0.08,
                        Fault.STALE_AFTER_FILL: 0.5, Fault.BLIND_LOOKUP: 0.3, Fault.FAILED_READ: 0.05,
                        Fault.LATENCY: 0.2, Fault.LONG_LATENCY: 0.01},
            "everything at once", cancel=True, restart=True),
)}


@dataclass
class RunReport:
    seed: int
    profile: str
    steps: int
    """Steps run (fewer than asked when a violation stopped the run)."""
    faults: Counter[str]
    checks: int
    violations: list[Violation]
    trace: list[str] = field(default_factory=list)
    virtual_seconds: float = 0.0

    def explain(self) -> str:
        """The first violation, how to replay it, and the steps that touched its position."""
        if not self.violations:
            return f"seed {self.seed} profile {self.profile}: no violation in {self.steps} steps"
        first = self.violations[0]
        mine = [line for line in self.trace if first.key is not None and f" {first.key} " in f" {line} "]
        lines = [f"seed {self.seed} profile {self.profile}: {first}",
                 f"replay: python bench/adversarial.py --seeds {self.seed} --profile {self.profile} "
                 f"--{'clob-' if self.profile == 'fakeclob' else ''}steps {first.step + 1}",
                 f"steps on {first.key}:", *mine[-30:], "last steps:", *self.trace[-15:]]
        return "\n".join(lines)


def run_paper(seed: int, steps: int, profile: Profile, journal_dir: Path, *, keep_going: bool = False) -> RunReport:
    """One seeded run in its own virtual-time event loop. It stops at the first violation unless `keep_going`
    (then later violations may be consequences of the first)."""
    run = PaperRun(seed, steps, profile, journal_dir, keep_going=keep_going)
    with quiet():
        anyio.run(run.main, backend="asyncio", backend_options={"loop_factory": VirtualTimeLoop})
    return run.report()


@contextmanager
def quiet() -> Any:
    """The engine's logs off for the run (they double its cost and nobody reads them); afterwards, as they were."""
    was_enabled = _exitguard_logs_enabled()
    logger.disable("exitguard")
    try:
        yield
    finally:
        if was_enabled:
            logger.enable("exitguard")


def _exitguard_logs_enabled() -> bool:
    """Whether loguru lets records of `exitguard.*` modules through (it has no public query for that): log one
    record as if from such a module, to a sink of our own."""
    seen: list[object] = []
    sink = logger.add(seen.append, level="TRACE", filter="exitguard")
    try:
        exec("logger.trace('probe')", {"__name__": "exitguard.adversarial_probe", "logger": logger})
    finally:
        logger.remove(sink)
    return bool(seen)


class PaperRun:
    def __init__(self, seed: int, steps: int, profile: Profile, journal_dir: Path, *, keep_going: bool = False) -> None:
        self.seed, self.steps, self.profile, self.keep_going = seed, steps, profile, keep_going
        self.rng = random.Random(seed)
        self.clock = LoopClock()
        self.paper = PaperExchange(clock=self.clock)
        self.watch = Watch(now=self.clock.monotonic, horizon=HORIZON, permit_max_age=PERMIT_MAX_AGE,
                           state_of=self._state_of)
        self.exchange = HostileExchange(self.paper, self.clock, random.Random(f"exchange-{seed}"), profile.faults,
                                        observer=self.watch)
        self.journal = journal_dir / f"paper-{profile.name}-{seed}.sqlite"
        self.engine: ExitEngine | None = None
        self._host: anyio.abc.TaskGroup | None = None
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._attempts = itertools.count(1)
        self._keys = itertools.count(1)
        self.keys_by_token: dict[str, list[str]] = {token: [] for token in TOKENS}
        self.token_of: dict[str, str] = {}
        self.forgotten: set[str] = set()
        self.bought: Counter[str] = Counter()
        self.removed: Counter[str] = Counter()
        self.events: Counter[str] = Counter()
        self.trace: list[str] = []
        self.done = 0
        self.elapsed = 0.0
        """Virtual seconds the run took."""
        for token in TOKENS:
            self.paper.set_bids(token, BOOKS["deep"])

    # -- the run ------------------------------------------------------------------------------------

    async def main(self) -> None:
        async with anyio.create_task_group() as background:
            self._host = background
            background.start_soon(self._deliveries)
            try:
                await self._start_engine()
                for step in range(self.steps):
                    self.watch.step = step
                    await self._one_step()
                    self.done = step + 1
                    self._check_step()
                    if self.watch.violations and not self.keep_going:
                        return
                self.watch.step = self.steps
                await self._drain()
            finally:
                await self._stop_engine()
                background.cancel_scope.cancel()
                self.elapsed = anyio.current_time()

    def report(self) -> RunReport:
        faults = Counter({str(fault): count for fault, count in self.exchange.injected.items()})
        faults.update(self.events)
        return RunReport(self.seed, self.profile.name, self.done, faults, self.watch.checks,
                         list(self.watch.violations), self.trace, self.elapsed)

    async def _one_step(self) -> None:
        steps: list[tuple[Callable[[], Any], int]] = [
            (self._track, 12), (self._buy, 4), (self._sold_elsewhere, 2), (self._exit, 30), (self._race, 6),
            (self._reconcile, 4), (self._wait, 10), (self._book, 3), (self._forget, 3),
            (self._cancelled_exit, 8 if self.profile.cancel else 0), (self._restart, 1 if self.profile.restart else 0),
        ]
        chosen = self.rng.choices([step for step, _ in steps], weights=[weight for _, weight in steps])[0]
        await chosen()

    def _note(self, text: str) -> None:
        self.trace.append(f"{self.watch.step:6d} t={self.watch.now() - 1_000.0:9.2f} {text}")
        if len(self.trace) > 5_000:
            del self.trace[:1_000]

    # -- engine lifetime -------------------------------------------------------------------------------

    async def _start_engine(self) -> None:
        """The engine lives in a task of its own, as in a bot: any task may ask it to stop while exits run."""
        assert self._host is not None
        await self._host.start(self._run_engine)

    async def _run_engine(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        stop = self._stop = anyio.Event()
        stopped = self._stopped = anyio.Event()
        engine = ExitEngine(self.exchange, journal=self.journal, clock=self.clock, permit_max_age=PERMIT_MAX_AGE,
                            attempt_ids=lambda: f"a{next(self._attempts)}", settlement_poll_interval=None)
        try:
            async with engine:
                self.engine = engine
                self._note(f"engine started (recovered: {getattr(engine.recovery, 'by_state', None)}, "
                           f"unresolved: {engine.unresolved()[:10]})")
                task_status.started()
                await stop.wait()
        finally:
            self.engine = None
            stopped.set()
        self._note("engine stopped")

    async def _stop_engine(self) -> None:
        if self.engine is not None and self._stop is not None and self._stopped is not None:
            self._stop.set()
            await self._stopped.wait()

    @property
    def eng(self) -> ExitEngine:
        assert self.engine is not None, "no engine running"
        return self.engine

    def _state_of(self, key: str) -> str | None:
        return None if self.engine is None or key in self.forgotten else self.engine.state(key)

    # -- checks ------------------------------------------------------------------------------------------

    def _check_step(self) -> None:
        if self.engine is not None:
            states = self.engine.states()
            self.watch.check_positions(states, set(self.engine.unresolved()))
        for token in TOKENS:
            self.watch.check_ledger(token, shares_to_micro(self.bought[token]), shares_to_micro(self.removed[token]),
                                    self.watch.sold[token], shares_to_micro(self.paper.balance(token)))

    def _check_exit(self, key: str, before: str, unresolved: bool, busy: bool, result: Any) -> None:
        """One exit()'s answer against the state it started from (nothing else ran on the position)."""
        w = self.watch
        if isinstance(result, BaseException):
            ok = isinstance(result, ExitRefused) and before in FINAL
            w.check(ok, "promise", "exit() never raises for exchange trouble",
                    lambda: f"exit({key}) from {before} raised {type(result).__name__}: {result}", key)
            return
        outcome, after = result.outcome, self.eng.state(key)
        if before in FINAL:
            w.fail("promise", "exit() of a finished position is refused", f"{key} {before} -> {outcome}", key)
        elif before == "OPEN" or (unresolved and outcome is not ExitOutcome.IN_PROGRESS):
            w.check(outcome in PROCEEDED and after in STATE_OF_OUTCOME[outcome], "promise",
                    "an exit's outcome tells the position's state",
                    lambda: f"exit({key}) from {before} -> {outcome} with the position {after}", key)
        elif unresolved:
            w.check(busy, "A.3", "exit() on an unresolved position tries a resolution",
                    lambda: f"exit({key}) of an unresolved position answered IN_PROGRESS with nothing else "
                            "running on it", key)
        if outcome is ExitOutcome.UNKNOWN:
            w.check(key in self.eng.unresolved(), "promise", "UNKNOWN leaves the position unresolved",
                    lambda: f"{key} answered UNKNOWN but is not flagged unresolved", key)

    # -- steps: positions and balances --------------------------------------------------------------------

    def _live_key(self, token: str) -> str | None:
        keys = self.keys_by_token[token]
        if keys and keys[-1] not in self.forgotten and self.eng.state(keys[-1]) not in FINAL:
            return keys[-1]
        return None

    def _pick_key(self, *, live_bias: bool = True) -> str | None:
        live = [key for token in TOKENS if (key := self._live_key(token)) is not None]
        known = [key for key in self.token_of if key not in self.forgotten]
        pool = live if live and (live_bias and self.rng.random() < 0.8) else known
        return self.rng.choice(pool) if pool else None

    def _add(self, token: str, shares: Decimal) -> None:
        self.paper.set_balance(token, self.paper.balance(token) + shares)
        self.bought[token] += shares

    async def _track(self) -> None:
        free = [token for token in TOKENS if self._live_key(token) is None]
        shares = self.rng.choice(SHARES)
        key = f"p{next(self._keys)}"
        if not free:
            token = self.rng.choice(TOKENS)
            try:
                self.eng.track(Position(key=key, token_id=token, shares=shares))
            except PositionConflict:
                return
            self.watch.fail("promise", "one live position per token", f"{key} tracked on held token {token}", key)
            return
        token = self.rng.choice(free)
        held = self.rng.choice(["same", "same", "same", "fee", "more", "none", "dust"])
        added = {"same": shares, "fee": (shares * Decimal("0.97")).quantize(Decimal("0.000001")),
                 "more": shares + 2, "none": Decimal(0), "dust": Decimal(3)}[held]
        self._add(token, added)
        recent = self.rng.random() < 0.2
        self.eng.track(Position(key=key, token_id=token, shares=shares,
                                last_buy_at=self.clock.wall() if recent else None))
        self.keys_by_token[token].append(key)
        self.token_of[key] = token
        self._note(f"track {key} {token} x{shares} (bought {added}, balance {self.paper.balance(token)})")

    async def _buy(self) -> None:
        token, shares = self.rng.choice(TOKENS), self.rng.choice((Decimal("1"), Decimal("2.5"), Decimal("10")))
        self._add(token, shares)
        self._note(f"buy {token} +{shares} (balance {self.paper.balance(token)})")

    async def _sold_elsewhere(self) -> None:
        token = self.rng.choice(TOKENS)
        balance = self.paper.balance(token)
        keep = Decimal(0) if self.rng.random() < 0.5 else (balance / 2).quantize(Decimal("0.01"), rounding="ROUND_DOWN")
        self.paper.set_balance(token, keep)
        self.removed[token] += balance - keep
        self._note(f"sold elsewhere {token} {balance - keep} (balance {keep})")

    async def _book(self) -> None:
        token, book = self.rng.choice(TOKENS), self.rng.choice(list(BOOKS))
        self.paper.set_bids(token, BOOKS[book])
        self._note(f"book {token} {book}")

    async def _forget(self) -> None:
        states = self.eng.states()
        finished = [key for key, state in states.items() if state in FINAL]
        chosen = finished if len(states) > MAX_BOOK else finished[:1]
        for key in chosen:
            try:
                self.eng.forget(key)
            except TransitionRefused:
                continue
            self.forgotten.add(key)
        if chosen:
            self._note(f"forget {len(chosen)} finished")

    async def _wait(self) -> None:
        seconds = self.rng.choice((0.1, 0.5, 1.0, 2.0, 5.0, 15.0, 31.0, 60.0))
        await anyio.sleep(seconds)
        self._note(f"wait {seconds}s")

    # -- steps: exits -----------------------------------------------------------------------------------

    async def _exit(self) -> None:
        key = self._pick_key()
        if key is None:
            return
        price = self.rng.choice(PRICES)
        before, unresolved = self.eng.state(key), key in self.eng.unresolved()
        busy = self.exchange.busy[self.token_of[key]] > 0
        result = await self._call_exit(key, price)
        self._check_exit(key, before, unresolved, busy, result)
        self._note(f"exit {key} @{price} {before}{' unresolved' if unresolved else ''} -> {_show(result)} "
                   f"({self.eng.state(key)})")

    async def _call_exit(self, key: str, price: Decimal) -> Any:
        try:
            return await self.eng.exit(key, reason="adversarial", limit_price=price)
        except Exception as err:  # noqa: BLE001 - judged by the caller's check
            return err

    async def _race(self) -> None:
        """Two or three exits and reconciliations at once, on one position or several."""
        first = self._pick_key()
        if first is None:
            return
        keys = [first] + [self._pick_key() or first for _ in range(self.rng.randint(1, 2))]
        if self.rng.random() < 0.5:
            keys = [first] * len(keys)
        calls = [(key, self.rng.random() < 0.8, self.rng.choice(PRICES)) for key in keys]
        results: list[Any] = [None] * len(calls)

        async def one(index: int, key: str, is_exit: bool, price: Decimal) -> None:
            results[index] = await (self._call_exit(key, price) if is_exit else self._call_reconcile(key))

        async with anyio.create_task_group() as group:
            for index, call in enumerate(calls):
                group.start_soon(one, index, *call)
        for (key, _is_exit, _), result in zip(calls, results, strict=True):
            refused = isinstance(result, ExitRefused | TransitionRefused)
            self.watch.check(not isinstance(result, BaseException) or refused, "promise",
                             "exit() and reconcile() never raise for exchange trouble",
                             lambda result=result, key=key: f"{key}: {type(result).__name__}: {result}", key)
        self._note("race " + ", ".join(f"{'exit' if e else 'reconcile'} {k} -> {_show(r)}"
                                       for (k, e, _), r in zip(calls, results, strict=True)))

    async def _cancelled_exit(self) -> None:
        """exit() cut short at a random await point: after k checkpoints, or at a random virtual deadline."""
        key = self._pick_key()
        if key is None:
            return
        price, checkpoints = self.rng.choice(PRICES), self.rng.randint(0, 12)
        deadline = self.rng.choice((None, None, 0.0, 0.3, 1.0, 3.0, 12.0))
        result: Any = "cancelled"
        with anyio.CancelScope() as scope:
            if deadline is not None:
                scope.deadline = anyio.current_time() + deadline
            async with anyio.create_task_group() as group:
                if deadline is None:
                    group.start_soon(_cancel_after, checkpoints, scope)
                result = await self._call_exit(key, price)
                group.cancel_scope.cancel()
        self.events["cancelled_exit"] += scope.cancelled_caught
        if isinstance(result, BaseException):
            self.watch.check(isinstance(result, ExitRefused), "promise", "exit() never raises for exchange trouble",
                             lambda: f"exit({key}) raised {type(result).__name__}: {result}", key)
        self._note(f"cancelled exit {key} @{price} ({checkpoints if deadline is None else deadline}) -> "
                   f"{_show(result)} ({self.eng.state(key)})")

    async def _reconcile(self) -> None:
        key = self._pick_key()
        if key is None:
            return
        result = await self._call_reconcile(key)
        self.watch.check(not isinstance(result, BaseException) or isinstance(result, TransitionRefused),
                         "promise", "reconcile() never raises for exchange trouble",
                         lambda: f"reconcile({key}) raised {type(result).__name__}: {result}", key)
        if not isinstance(result, BaseException) and result.outcome is ExitOutcome.UNKNOWN:
            self.watch.check(key in self.eng.unresolved(), "promise", "UNKNOWN leaves the position unresolved",
                             lambda: f"reconcile({key}) answered UNKNOWN but it is not flagged unresolved", key)
        self._note(f"reconcile {key} -> {_show(result)} ({self.eng.state(key)})")

    async def _call_reconcile(self, key: str) -> Any:
        try:
            return await self.eng.reconcile(key)
        except Exception as err:  # noqa: BLE001 - judged by the caller's check
            return err

    async def _restart(self) -> None:
        """Shut the engine down while exits run (and one more exit asks to start meanwhile), then start a new
        engine on the same journal: recovery settles what was in flight."""
        keys = [key for token in TOKENS if (key := self._live_key(token)) is not None]
        running = self.rng.sample(keys, k=min(len(keys), self.rng.randint(0, 3)))
        late_key = self.rng.choice(keys) if keys else None
        results: dict[str, Any] = {}
        engine = self.eng

        async def run_exit(key: str) -> None:
            results[key] = await self._call_exit(key, self.rng.choice(PRICES))

        late: list[Any] = []

        async def exit_meanwhile(key: str, checkpoints: int) -> None:
            for _ in range(checkpoints):
                await anyio.lowlevel.checkpoint()
            try:
                late.append(await engine.exit(key, reason="adversarial", limit_price=Decimal("0.60")))
            except EngineClosed:
                late.append(None)
            except Exception as err:  # noqa: BLE001 - judged below
                late.append(err)

        async with anyio.create_task_group() as group:
            for key in running:
                group.start_soon(run_exit, key)
            for _ in range(self.rng.randint(0, 6)):
                await anyio.lowlevel.checkpoint()
            if late_key is not None:
                group.start_soon(exit_meanwhile, late_key, self.rng.randint(1, 3))
            await self._stop_engine()
        if late:
            self.watch.check(late[0] is None, "B.6", "an exit started during shutdown is refused with EngineClosed",
                             lambda: f"exit({late_key}) during shutdown -> {_show(late[0])}", late_key)
        for key, result in results.items():
            self.watch.check(not isinstance(result, BaseException) or isinstance(result, EngineClosed | ExitRefused),
                             "promise", "exit() never raises for exchange trouble",
                             lambda result=result, key=key: f"exit({key}) around shutdown raised "
                                                            f"{type(result).__name__}: {result}", key)
        self.events["restart"] += 1
        self._note("restart while " + (", ".join(f"exit {k} -> {_show(r)}" for k, r in results.items()) or "idle"))
        await self._start_engine()

    # -- late orders and the end ----------------------------------------------------------------------------

    async def _deliveries(self) -> None:
        """Late orders reach the book exactly when they are due (virtual time)."""
        while True:
            due = self.exchange.next_due()
            if due is None:
                await self.exchange.wait_for_late_orders()
                continue
            wait = due - self.clock.monotonic()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self.exchange.wait_for_late_orders()
                continue
            for post in [p for p in self.exchange.travelling if (p.late_due or 0) <= self.clock.monotonic()]:
                self._note(f"late order {post.permit.attempt_id} of {post.key} arrives")
            await self.exchange.deliver_due()

    async def _drain(self) -> None:
        """No new faults; time passes until every late order has arrived and the engine, on its own, has
        resolved every unknown outcome (bounded: 40 x 30 virtual seconds)."""
        self.exchange.calm()
        self._note("drain: faults off")
        for _ in range(40):
            if not self.eng.unresolved() and not self.exchange.travelling:
                break
            await anyio.sleep(30.0)
        self._check_step()
        left = self.eng.unresolved()
        self.watch.check(not left, "A.3", "every unknown outcome is resolved in the end",
                         lambda: f"{len(left)} still unresolved after the drain: {left[:10]}",
                         left[0] if left else None)
        self.watch.check(not self.exchange.travelling, "promise", "every late order arrived",
                         lambda: f"{len(self.exchange.travelling)} still travelling")


async def _cancel_after(checkpoints: int, scope: anyio.CancelScope) -> None:
    for _ in range(checkpoints):
        await anyio.lowlevel.checkpoint()
    scope.cancel()


def _show(result: Any) -> str:
    if isinstance(result, BaseException):
        return f"{type(result).__name__}"
    if result is None or isinstance(result, str):
        return str(result)
    return str(result.outcome)
