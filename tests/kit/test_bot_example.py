"""examples/bot.py: positions from fills, exits on price rules, every outcome handled, a clean stop.

In-process tests script the market, with no sleeps: the paper exchange has no latency, the clock is
the plugin's frozen one, and the bot either runs in lockstep (each event's exits finish before the
next event) or the test holds sells at a gate and waits on what the bot says. One subprocess test
stops the real script with SIGINT.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any

import anyio
import pytest

from exitguard import ExitOutcome
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.pytest_plugin import FrozenClock, attempt_ids

BOT_PATH = Path(__file__).resolve().parents[2] / "examples" / "bot.py"


def load_bot() -> ModuleType:
    spec = importlib.util.spec_from_file_location("exitguard_example_bot", BOT_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


bot = load_bot()
Buy, Quote, ManualExit, LoseNextSellAnswer = bot.Buy, bot.Quote, bot.ManualExit, bot.LoseNextSellAnswer
D = Decimal
Step = Any  # a market event, or a callable run at that point of the script (a fault, time passing)

pytestmark = pytest.mark.anyio


async def scripted(exchange: PaperExchange, steps: Iterable[Step]) -> AsyncIterator[Any]:
    for step in steps:
        if callable(step):
            step()
            continue
        async for event in bot.play(exchange, [step]):
            yield event


class Run:
    def __init__(self, exchange: PaperExchange, clock: FrozenClock) -> None:
        self.exchange, self.clock = exchange, clock
        self.said: list[str] = []

    async def __call__(self, steps: Iterable[Step], **kwargs: Any) -> Any:
        return await bot.run_bot(self.exchange, scripted(self.exchange, steps), say=self.said.append,
                                 lockstep=True, clock=self.clock, attempt_ids=attempt_ids(),
                                 settlement_poll_interval=None, **kwargs)

    def sold(self) -> list[tuple[str, Decimal, Decimal]]:
        return [(s.token_id, s.shares, s.limit_price) for s in self.exchange.sells if s.status is SellStatus.FILLED]


@pytest.fixture
def run(paper_exchange: PaperExchange, exitguard_clock: FrozenClock) -> Run:
    return Run(paper_exchange, exitguard_clock)


# -- price rules and outcomes ------------------------------------------------------------------------

async def test_take_profit_and_stop_loss_exit_positions_tracked_from_fills(run: Run) -> None:
    report = await run([
        Buy("A", D(10), D("0.50")), Quote("A", D("0.52")), Quote("A", D("0.58")),  # +0.08: take profit
        Buy("B", D(10), D("0.40")), Quote("B", D("0.36")), Quote("B", D("0.35")),  # -0.05: stop loss
    ])

    assert report.outcomes == [("A#1", ExitOutcome.CLOSED), ("B#2", ExitOutcome.CLOSED)]
    assert run.sold() == [("A", D(10), D("0.57")), ("B", D(10), D("0.34"))]  # one tick under the bid
    assert (report.closed_shares, report.exchange_filled_shares, report.unresolved) == (D(20), D(20), [])


async def test_a_position_sold_elsewhere_is_dropped_without_a_sell(run: Run) -> None:
    report = await run([
        Buy("C", D(8), D("0.30")),
        lambda: run.clock.advance(61),  # past the settlement window of the buy
        lambda: run.exchange.set_balance("C", D(0)),  # sold by hand, outside the bot
        Quote("C", D("0.20")),
    ])

    assert report.outcomes == [("C#1", ExitOutcome.ALREADY_EXITED)]
    assert run.exchange.sells == []


async def test_a_zero_balance_right_after_the_buy_is_asked_again_later(run: Run) -> None:
    report = await run([
        Buy("C", D(8), D("0.30")),
        lambda: run.exchange.set_balance("C", D(0)),  # the exchange's balance cache lags the buy
        Quote("C", D("0.20")),
        lambda: run.clock.advance(61),
        Quote("C", D("0.20")), Quote("C", D("0.20")), Quote("C", D("0.20")),  # the pause after a failure
    ])

    assert report.outcomes == [("C#1", ExitOutcome.VERIFY_FAILED), ("C#1", ExitOutcome.ALREADY_EXITED)]


async def test_dust_below_the_minimum_order_is_recorded_and_dropped(run: Run) -> None:
    report = await run([Buy("D", D(3), D("0.20")), Quote("D", D("0.10"))])

    assert report.outcomes == [("D#1", ExitOutcome.DUST)]
    assert run.exchange.sells == []
    assert any("DUST: 3 below the minimum order" in line for line in run.said)


async def test_a_killed_sell_is_asked_again_only_after_a_pause(run: Run) -> None:
    report = await run([
        Buy("E", D(10), D("0.50")),
        Quote("E", D("0.44"), depth=D(5)),  # too thin for 10 shares: FOK killed (twice: the retry policy)
        Quote("E", D("0.44")), Quote("E", D("0.44")),  # inside the pause: no new exit
        Quote("E", D("0.44")),
    ])

    assert report.outcomes == [("E#1", ExitOutcome.NOT_FILLED), ("E#1", ExitOutcome.CLOSED)]
    assert report.started == 2
    assert run.sold() == [("E", D(10), D("0.43"))]


async def test_a_lost_answer_is_looked_up_and_never_resent(run: Run) -> None:
    report = await run([LoseNextSellAnswer(), Buy("F", D(12), D("0.40")), Quote("F", D("0.33"))])

    assert report.outcomes == [("F#1", ExitOutcome.UNKNOWN), ("F#1", ExitOutcome.CLOSED)]
    assert len(run.exchange.sells) == 1
    assert (report.closed_shares, report.exchange_filled_shares) == (D(12), D(12))


async def test_a_lost_answer_the_lookup_cannot_settle_waits_for_a_later_quote(run: Run) -> None:
    rules = bot.ExitRules(reconcile_attempts=1)
    report = await run([
        LoseNextSellAnswer(), lambda: run.exchange.fail_next("lookup_sell"),
        Buy("F", D(12), D("0.40")), Quote("F", D("0.33")),
        Quote("F", D("0.50")),  # any quote: the bot looks the answer up again, it never sells again
    ], rules=rules)

    assert report.outcomes == [("F#1", ExitOutcome.UNKNOWN), ("F#1", ExitOutcome.CLOSED)]
    assert [call.operation for call in run.exchange.calls].count("sell") == 1


async def test_a_second_buy_grows_the_bots_book_and_the_exit_sells_the_verified_balance(run: Run, logs: Any) -> None:
    # The known gap: the engine's position keeps the first buy's 10 shares; the exchange holds 15.
    report = await run([Buy("H", D(10), D("0.50")), Buy("H", D(5), D("0.56")), Quote("H", D("0.60"))])

    assert report.outcomes == [("H#1", ExitOutcome.CLOSED)]
    assert run.sold() == [("H", D(15), D("0.59"))]  # take profit from the average entry 0.52
    [mismatch] = logs.named("exit_balance_mismatch")
    assert (mismatch["expected"], mismatch["actual"]) == (D(10), D(15))


# -- exits in flight: a buy during one, a stop during one --------------------------------------------

class GatedSells(PaperExchange):
    """Each sell waits at the gate before it reaches the exchange (the balance is already verified)."""

    def __init__(self, clock: FrozenClock) -> None:
        super().__init__(clock=clock)
        self.waiting = anyio.Event()
        self.gate = anyio.Event()

    async def sell(self, permit: Any, limit_price: Decimal, **options: object) -> Any:
        self.waiting.set()
        await self.gate.wait()
        return await super().sell(permit, limit_price, **options)


class Said:
    """What the bot says, with a way to wait until it has said something."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._changed = anyio.Event()

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_for(self, text: str) -> None:
        while not any(text in line for line in self.lines):
            await self._changed.wait()


class LiveMarket:
    """A market the test feeds one event at a time while the bot runs, on a gated exchange."""

    def __init__(self, clock: FrozenClock) -> None:
        self.exchange = GatedSells(clock)
        self.said = Said()
        self.stop = anyio.Event()
        self.send, self.receive = anyio.create_memory_object_stream[Any]()

    async def feed(self) -> AsyncIterator[Any]:
        async with self.receive:
            async for step in self.receive:
                async for event in bot.play(self.exchange, [step]):
                    yield event

    async def run(self, script: Callable[[LiveMarket], Awaitable[None]]) -> Any:
        reports = []

        async def trade() -> None:
            reports.append(await bot.run_bot(self.exchange, self.feed(), stop=self.stop, say=self.said,
                                             clock=self.exchange.clock, attempt_ids=attempt_ids(),
                                             settlement_poll_interval=None))

        async with anyio.create_task_group() as group:
            group.start_soon(trade)
            await script(self)
            await self.send.aclose()
        return reports[0]


async def test_stopping_waits_for_the_exit_in_flight_and_loses_no_sell(exitguard_clock: FrozenClock) -> None:
    async def script(market: LiveMarket) -> None:
        await market.send.send(Buy("J", D(10), D("0.50")))
        await market.send.send(Quote("J", D("0.44")))
        await market.exchange.waiting.wait()  # the sell is on its way
        market.stop.set()  # what Ctrl-C does
        await market.said.wait_for("bot: stopping")
        market.exchange.gate.set()

    market = LiveMarket(exitguard_clock)
    report = await market.run(script)

    assert report.outcomes == [("J#1", ExitOutcome.CLOSED)]
    assert (report.started, report.answered, report.unresolved) == (1, 1, [])
    assert (report.closed_shares, report.exchange_filled_shares) == (D(10), D(10))
    assert market.said.lines[-2:] == ["bot: stopping: 1 exit(s) in flight; waiting for their answers",
                                      "bot: J#1 CLOSED sold 10 at limit 0.43"]  # answered after the stop


async def test_a_manual_exit_while_one_is_in_flight_is_refused_by_the_engine(exitguard_clock: FrozenClock) -> None:
    async def script(market: LiveMarket) -> None:
        await market.send.send(Buy("G", D(10), D("0.50")))
        await market.send.send(Quote("G", D("0.44")))
        await market.exchange.waiting.wait()
        await market.send.send(ManualExit("G"))
        await market.said.wait_for("IN_PROGRESS")
        market.exchange.gate.set()

    market = LiveMarket(exitguard_clock)
    report = await market.run(script)

    assert report.outcomes == [("G#1", ExitOutcome.IN_PROGRESS), ("G#1", ExitOutcome.CLOSED)]
    assert len(market.exchange.sells) == 1


async def test_a_buy_during_an_exit_is_tracked_anew_once_the_exit_is_over(exitguard_clock: FrozenClock) -> None:
    async def script(market: LiveMarket) -> None:
        await market.send.send(Buy("K", D(10), D("0.50")))
        await market.send.send(Quote("K", D("0.44")))
        await market.exchange.waiting.wait()  # 10 verified; the sell is on its way
        await market.send.send(Buy("K", D(6), D("0.45")))
        await market.said.wait_for("bought during its exit")
        market.exchange.gate.set()
        await market.said.wait_for("tracking K#2")
        await market.send.send(Quote("K", D("0.60")))  # +0.15 over the new position's entry: take profit
        await market.said.wait_for("K#2 CLOSED")

    market = LiveMarket(exitguard_clock)
    report = await market.run(script)

    assert report.outcomes == [("K#1", ExitOutcome.CLOSED), ("K#2", ExitOutcome.CLOSED)]
    assert [sell.shares for sell in market.exchange.sells] == [D(10), D(6)]
    assert "bot: tracking K#2: 6 shares at 0.45" in market.said.lines


# -- the script itself, stopped with SIGINT ------------------------------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_the_script_cleanly_with_no_sell_lost() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-u", str(BOT_PATH), "--seed", "3", "--interval", "0.002", "--latency", "0.02"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # A guard against a hung child, not a timing assertion: it only bounds how long a failure takes.
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("bot: exit started"):
                break
        proc.send_signal(signal.SIGINT)
        rest, errors = proc.communicate()
    finally:
        watchdog.cancel()
    lines += rest.splitlines()

    assert proc.returncode == 0, errors[-2000:]
    assert any(line.startswith("bot: SIGINT: finishing exits in flight") for line in lines)
    summary = lines[-1]
    assert summary.startswith("bot: stopped: "), lines[-5:]
    started = int(summary.split("exits started ")[1].split(",")[0])
    answered = int(summary.split("answered ")[1].split(",")[0])
    saw, filled = summary.split("shares the bot saw sold ")[1].split(", shares the exchange filled ")
    assert started >= 1 and answered == started
    assert "unresolved 0;" in summary
    assert Decimal(saw) == Decimal(filled)
