"""exitguard's pytest plugin: fixtures for testing a bot that embeds the engine, on the paper exchange.

Loaded automatically through the `pytest11` entry point once exitguard is installed (disable with
`-p no:exitguard`). It defines fixtures and one marker, and nothing else: no autouse fixture, no hook
that changes collection, so a test suite that does not ask for them runs exactly as before.

    exitguard_clock      a FrozenClock (engine.ManualClock) that moves only when the test moves it
    paper_exchange       a fresh PaperExchange on that clock: no balances, no bids
    paper_faults         PaperFaults: injects each paper-exchange fault by name
    exit_engine          an ExitEngine on paper_exchange, opened before the test and closed after it
    exit_engine_options  the keyword arguments exit_engine is built with (override it, or use the marker)
    exitguard_events     an EventCapture: exitguard's log events emitted during the test (`names()`,
                         `named(event)`), with exitguard's records turned on for the test only

    @pytest.mark.exitguard_engine(**options)   per-test ExitEngine options, e.g. permit_max_age=1.0;
                                               journal=True asks for a fresh journal file in tmp_path

`exit_engine` is an async fixture run by anyio's pytest plugin: use it from `@pytest.mark.anyio`
tests. It runs on whatever `anyio_backend` the test runs on (the engine is anyio-only, so asyncio and
trio both work); pin a backend by overriding the `anyio_backend` fixture in your conftest.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from exitguard.cli.scenario import FAULT_ERRORS
from exitguard.clock import ManualClock
from exitguard.errors import ExchangeError, OrderKilled
from exitguard.exchange.paper import KILLED_MESSAGE, PaperExchange
from exitguard.exits import ExitEngine
from exitguard.settings import parse_seconds
from exitguard.states import InvalidValue
from exitguard.telemetry.logs import records_enabled

__all__ = ["EventCapture", "FrozenClock", "PaperFaults", "attempt_ids", "capturing_events", "JOURNAL_FILE"]

JOURNAL_FILE = "exitguard-journal.sqlite"
"""The journal's file name inside the test's tmp_path, for `@pytest.mark.exitguard_engine(journal=True)`."""


class FrozenClock(ManualClock):
    """The engine's clock, frozen: it moves only on `advance(seconds)`, or inside `ticking(seconds)`.

    Frozen time makes the two time rules of an exit testable without sleeping. The settlement window
    is wall time since `Position.last_buy_at`: take `last_buy_at=clock.wall()`, then `advance()` past
    the window. Permit freshness is monotonic time between the balance answer and the sell, with no
    I/O in between, so only a clock that moves on every reading can age a permit: inside
    `ticking(s)` any two readings are at least `s` apart, so every permit is at least `s` old and a
    `permit_max_age` below `s` expires it (nothing is sent; outcome NOT_FILLED).
    """

    def __init__(self, start: datetime | None = None) -> None:
        super().__init__(start)
        self._tick = 0.0

    def wall(self) -> datetime:
        now = super().wall()
        self._step()
        return now

    def monotonic(self) -> float:
        now = super().monotonic()
        self._step()
        return now

    @contextmanager
    def ticking(self, seconds: float) -> Iterator[FrozenClock]:
        """Inside the block, every reading moves the clock `seconds` on (as freezegun's auto_tick_seconds)."""
        previous, self._tick = self._tick, parse_seconds(seconds, "seconds")
        try:
            yield self
        finally:
            self._tick = previous

    def _step(self) -> None:
        # After the reading, so the first reading inside ticking() is the time the block started.
        if self._tick:
            self.advance(self._tick)


class PaperFaults:
    """Every fault the paper exchange can inject, by name, for one exchange.

    Exchange errors are named as in scenarios (engine/scenario.py): "killed", "insufficient_balance",
    "rejected", "transient", "rate_limited", "unknown"; or pass an ExchangeError of your own.
    """

    ERRORS = tuple(FAULT_ERRORS)

    def __init__(self, exchange: PaperExchange) -> None:
        self.exchange = exchange

    def fail_next(self, operation: str, error: str | ExchangeError = "transient", count: int = 1) -> None:
        """The next `count` calls of `operation` ("get_balance", "refresh_balance", "market_rules", "sell",
        "lookup_sell", "settlement") raise `error` without acting. A sell failed this way was never executed."""
        if isinstance(error, str) and error in FAULT_ERRORS:
            error = FAULT_ERRORS[error]()
        if not isinstance(error, ExchangeError):
            raise InvalidValue("error", error, f"must be an ExchangeError or one of {', '.join(self.ERRORS)}")
        self.exchange.fail_next(operation, count, error)

    def kill_next_sell(self, count: int = 1) -> None:
        """The next `count` sells are killed as fill-or-kill orders the book could not fill (NOT_FILLED)."""
        self.exchange.fail_next("sell", count, OrderKilled(KILLED_MESSAGE, status=400))

    def lose_next_sell_response(self, count: int = 1) -> None:
        """The next `count` sells execute, but the answer is lost: the exit's outcome is UNKNOWN."""
        self.exchange.lose_next_sell_response(count)

    def lag_balance(self, token_id: str, delay: float | None = None) -> None:
        """Balance changes of the token show only after `delay` seconds on the exchange's clock, or, with
        None, only after the engine refreshes the exchange's balance cache."""
        self.exchange.lag_balance(token_id, delay)

    def corrupt_next_balance(self, token_id: str, raw: object = "NaN") -> None:
        """The next balance answer for the token is `raw` as-is (e.g. "NaN", "-5", "abc", None): VERIFY_FAILED."""
        self.exchange.corrupt_next_balance(token_id, raw)

    def defer_settlement(self, token_id: str) -> None:
        """Fills of the token stay matched but unsettled on chain until `settle()`: the engine lists them
        in `unsettled()` and `check_settlements()` answers PENDING."""
        self.exchange.defer_settlement(token_id)

    def settle(self, order_id: str | None = None, *, failed: bool = False) -> list[str]:
        """Settle deferred fills (one order or all); `failed=True` fails them on chain and hands the shares
        back, which the engine turns into a `settlement_failed` divergence and a new OPEN position."""
        return self.exchange.settle(order_id, failed=failed)

    def latency(self, seconds: float) -> None:
        """Seconds added to every exchange call, in real event-loop time (anyio.sleep), so concurrent
        calls interleave as over a network. Real time: keep it small in tests. It does not move the
        engine's clock; to age things deterministically, use `exitguard_clock` instead."""
        self.exchange.latency = parse_seconds(seconds, "seconds", allow_zero=True)


def attempt_ids(prefix: str = "attempt") -> Callable[[], str]:
    """Deterministic attempt ids ("attempt-1", "attempt-2", ...) instead of random ones, so that logs and
    the paper exchange's sell list are the same on every run."""
    counter = itertools.count(1)
    return lambda: f"{prefix}-{next(counter)}"


class EventCapture:
    """exitguard's log events, in the order they were emitted. Each record is a dict: `event` (the name,
    as in exitguard.telemetry.logs.EVENTS), `level` (e.g. "WARNING") and the event's fields as emitted
    (Decimal shares and prices stay Decimal)."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def sink(self, message: Any) -> None:
        record = message.record
        self.records.append({**record["extra"], "event": record["extra"]["event"], "level": record["level"].name})

    def names(self) -> list[str]:
        """Every event's name, in order, repeats included."""
        return [record["event"] for record in self.records]

    def named(self, event: str) -> list[dict[str, Any]]:
        """The records of one event, in order."""
        return [record for record in self.records if record["event"] == event]


def _is_exitguard_event(record: Any) -> bool:
    return "event" in record["extra"] and str(record["name"]).startswith("exitguard.")


@contextmanager
def capturing_events(level: str = "DEBUG") -> Iterator[EventCapture]:
    """exitguard's events at `level` and above, captured for the block. exitguard's records are turned on
    for the block (`logger.enable("exitguard")`) and turned off again after it unless they already were
    on; the capture is a handler of its own, so the application's handlers are left as they are."""
    was_enabled = records_enabled()
    logger.enable("exitguard")
    capture = EventCapture()
    handler = logger.add(capture.sink, level=level, filter=_is_exitguard_event)
    try:
        yield capture
    finally:
        logger.remove(handler)
        if not was_enabled:
            logger.disable("exitguard")


# -- fixtures and marker ----------------------------------------------------------------------------

def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "exitguard_engine(**options): ExitEngine keyword arguments for the exit_engine fixture "
        "(journal=True: a fresh journal file in tmp_path)",
    )


@pytest.fixture
def exitguard_events() -> Iterator[EventCapture]:
    """exitguard's log events (DEBUG and above) emitted during the test: `names()`, `named(event)`, `records`."""
    with capturing_events() as capture:
        yield capture


@pytest.fixture
def exitguard_clock() -> FrozenClock:
    """The engine's and the paper exchange's clock: frozen at 2026-01-01 00:00 UTC until moved."""
    return FrozenClock()


@pytest.fixture
def paper_exchange(exitguard_clock: FrozenClock) -> PaperExchange:
    """A fresh paper exchange on `exitguard_clock`: no balances, no bids, default market rules."""
    return PaperExchange(clock=exitguard_clock)


@pytest.fixture
def paper_faults(paper_exchange: PaperExchange) -> PaperFaults:
    """Fault injection for `paper_exchange`."""
    return PaperFaults(paper_exchange)


@pytest.fixture
def exit_engine_options(request: pytest.FixtureRequest, exitguard_clock: FrozenClock) -> dict[str, Any]:
    """Keyword arguments for the `exit_engine` fixture's ExitEngine.

    Defaults: the frozen clock and deterministic attempt ids. `@pytest.mark.exitguard_engine(...)` adds to
    or replaces them (the marker closest to the test wins). `journal=True` becomes a fresh journal file
    in tmp_path (`exit_engine.journal_path`); the engine holds its lock until the test ends, so a test of
    a restart opens its own second engine on that path after this one is closed, or uses its own file.
    """
    options: dict[str, Any] = {"clock": exitguard_clock, "attempt_ids": attempt_ids()}
    for marker in reversed(list(request.node.iter_markers("exitguard_engine"))):
        if marker.args:
            raise InvalidValue("exitguard_engine", marker.args, "takes keyword arguments only")
        options.update(marker.kwargs)
    journal = options.get("journal")
    if journal is True:
        tmp_path: Path = request.getfixturevalue("tmp_path")
        options["journal"] = tmp_path / JOURNAL_FILE
    elif journal is False:
        options["journal"] = None
    return options


@pytest.fixture
async def exit_engine(paper_exchange: PaperExchange, exit_engine_options: dict[str, Any],
                      anyio_backend: object) -> AsyncIterator[ExitEngine]:
    """An ExitEngine on `paper_exchange`, inside its `async with` for the whole test.

    Closing it after the test waits for exits still in flight, as it does in a bot. Depending on
    `anyio_backend` makes anyio's plugin run this fixture (on the test's backend) even when the
    test itself forgot `@pytest.mark.anyio`.
    """
    async with ExitEngine(paper_exchange, **exit_engine_options) as engine:
        yield engine
