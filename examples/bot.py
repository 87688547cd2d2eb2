"""A small trading bot that embeds exitguard: positions from fills, exits on price rules, an answer to
every ExitOutcome, and a clean stop on Ctrl-C with nothing in flight lost.

    python examples/bot.py [--seed N] [--interval SECONDS] [--latency SECONDS] [--events N]

It trades on the paper exchange against a simulated market: a seeded random walk of best bids, our
buys filling now and then, and now and then a sell whose answer is lost on the way back. Ctrl-C (or
SIGTERM) stops it: the bot stops reacting to prices, waits for every exit it already started
(settling any lost answer by lookup), and prints what the exchange filled next to what it saw close.
A second Ctrl-C aborts at once.

Known gap (the engine has no way yet to grow a tracked position): a second buy into a position that
is still live only grows the bot's own book. The engine keeps expecting the first buy's shares, so
the exit verifies the balance, sells everything the exchange holds and logs `exit_balance_mismatch`
(a divergence). A buy that fills while an exit is in flight is tracked as a new position once that
exit is over; the engine's verification then finds what is really left.
"""

from __future__ import annotations

import argparse
import itertools
import random
import signal
import sys
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel

from exitguard import (
    ExitEngine,
    ExitOutcome,
    ExitRefused,
    ExitResult,
    Position,
    RetryPolicy,
    UnknownPosition,
    add_log_sink,
)
from exitguard.exchange.paper import PaperExchange, SellStatus

FINISHED = {ExitOutcome.CLOSED, ExitOutcome.ALREADY_EXITED, ExitOutcome.DUST}
"""Outcomes after which the position is over: nothing is left to exit."""
FINAL_STATES = {"CLOSED", "RECONCILED", "DUST"}


# -- what the market tells the bot -------------------------------------------------------------------

@dataclass(frozen=True)
class Buy:
    """One of our buy orders filled."""

    token_id: str
    shares: Decimal
    price: Decimal


@dataclass(frozen=True)
class Quote:
    """The best bid moved."""

    token_id: str
    bid: Decimal
    depth: Decimal = Decimal("100")


@dataclass(frozen=True)
class ManualExit:
    """An operator asked to exit the token's position now, whatever the price rules say."""

    token_id: str


MarketEvent = Buy | Quote | ManualExit


@dataclass(frozen=True)
class LoseNextSellAnswer:
    """Market trouble, not news for the bot: the next sell executes but its answer never arrives."""


# -- the rules ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExitRules:
    stop_loss: Decimal = Decimal("0.05")
    """Exit when the bid is this far below the entry price."""
    take_profit: Decimal = Decimal("0.08")
    """Exit when the bid is this far above the entry price."""
    slippage_ticks: int = 1
    """The sell's limit: this many ticks below the bid that triggered it."""
    tick_size: Decimal = Decimal("0.01")
    cool_down: int = 3
    """Market events to let pass after an exit that sold nothing, before asking again."""
    reconcile_attempts: int = 3
    """Lookups per lost answer before the bot leaves the position for a later quote to settle."""
    reconcile_pause: float = 0.5
    """Seconds between two lookups of one lost answer."""

    def __post_init__(self) -> None:
        if self.reconcile_attempts < 1:
            raise ValueError(f"reconcile_attempts={self.reconcile_attempts!r}: must be at least 1")

    def reason(self, entry: Decimal, bid: Decimal) -> str | None:
        if bid <= entry - self.stop_loss:
            return "stop_loss"
        if bid >= entry + self.take_profit:
            return "take_profit"
        return None

    def limit_price(self, bid: Decimal) -> Decimal:
        limit = (bid - self.slippage_ticks * self.tick_size).quantize(self.tick_size, rounding=ROUND_DOWN)
        return max(limit, self.tick_size)


# -- the bot -----------------------------------------------------------------------------------------

@dataclass
class Holding:
    """The bot's view of one live position (one per token: the engine's rule, since the exchange
    reports one balance per token)."""

    key: str
    token_id: str
    shares: Decimal
    entry: Decimal
    exiting: bool = False
    """An exit (or the lookup of a lost answer) is running for it."""
    unresolved: bool = False
    """A sell whose answer was lost and whose lookup has not settled it yet: never sell again, look up."""
    bought_while_exiting: Decimal = Decimal(0)
    entry_while_exiting: Decimal = Decimal(0)
    quiet_until: int = 0
    last_bid: Decimal | None = None


@dataclass
class BotReport:
    started: int = 0
    """Exit requests the bot made (price rules and manual)."""
    answered: int = 0
    """Of those, how many got their answer (IN_PROGRESS refusals included)."""
    outcomes: list[tuple[str, ExitOutcome]] = field(default_factory=list)
    closed_shares: Decimal = Decimal(0)
    """Shares the bot saw sold (CLOSED answers, from exit or from the lookup of a lost answer)."""
    exchange_filled_shares: Decimal = Decimal(0)
    """Shares the paper exchange filled: equal to `closed_shares` when no sell was lost."""
    unresolved: list[str] = field(default_factory=list)
    """Positions whose sell answer is still unknown at the stop: reconcile them before trading again."""


class Bot:
    def __init__(self, engine: ExitEngine, rules: ExitRules, say: Callable[[str], object] = print) -> None:
        self.engine = engine
        self.rules = rules
        self.say = say
        self.holdings: dict[str, Holding] = {}
        self.report = BotReport()
        self.stopping = False
        self._events = 0
        self._serial = itertools.count(1)
        self._busy = 0
        self._idle = anyio.Event()

    async def trade(self, feed: AsyncIterable[MarketEvent], exits: anyio.abc.TaskGroup, *,
                    lockstep: bool = False) -> None:
        """React to the market until the feed ends or this task is cancelled. Exits run in `exits`,
        a task group owned by the caller, so that cancelling the trading loop never cancels an exit.

        `lockstep=True` waits for the exits each event started before taking the next event: for replaying
        a recorded market (and for tests). A live market does not wait, so neither does the default."""
        async for event in feed:
            self._events += 1
            if isinstance(event, Buy):
                self.on_buy(event)
            elif isinstance(event, Quote):
                self.on_quote(event, exits)
            else:
                self.on_manual_exit(event, exits)
            if lockstep and self._busy:
                await self._idle.wait()

    def on_buy(self, buy: Buy) -> None:
        holding = self.holdings.get(buy.token_id)
        if holding is None:
            self._track(buy.token_id, buy.shares, buy.price)
        elif holding.exiting or holding.unresolved:
            # The exit in flight verified (or will verify) a balance that may or may not include these
            # shares; they become a new position when it is over, and its verification finds the truth.
            holding.entry_while_exiting = _average(holding.entry_while_exiting, holding.bought_while_exiting,
                                                   buy.price, buy.shares)
            holding.bought_while_exiting += buy.shares
            self.say(f"bot: {holding.key}: {buy.shares} bought during its exit; tracked anew when it is over")
        else:
            # The known gap: the engine's position cannot grow. Our book grows; the next exit sells what
            # the exchange confirms, which includes these shares (logged as a balance mismatch).
            holding.entry = _average(holding.entry, holding.shares, buy.price, buy.shares)
            holding.shares += buy.shares
            self.say(f"bot: {holding.key} grew to {holding.shares} (engine still expects the first buy)")

    def on_quote(self, quote: Quote, exits: anyio.abc.TaskGroup) -> None:
        holding = self.holdings.get(quote.token_id)
        if holding is None:
            return
        holding.last_bid = quote.bid
        if holding.exiting:
            return
        if holding.unresolved:
            holding.exiting = True
            self._run(exits, self._settle_lost_answer, holding)
            return
        reason = self.rules.reason(holding.entry, quote.bid)
        if reason is not None and self._events >= holding.quiet_until:
            self._start_exit(holding, reason, self.rules.limit_price(quote.bid), exits)

    def on_manual_exit(self, command: ManualExit, exits: anyio.abc.TaskGroup) -> None:
        holding = self.holdings.get(command.token_id)
        if holding is None or holding.last_bid is None or holding.unresolved:
            self.say(f"bot: manual exit of {command.token_id}: no position, no price yet, or a lookup pending")
            return
        # No check for an exit in flight: the engine refuses a second one at once (IN_PROGRESS).
        self._start_exit(holding, "manual", self.rules.limit_price(holding.last_bid), exits)

    # -- exits -------------------------------------------------------------------------------------

    def _start_exit(self, holding: Holding, reason: str, limit: Decimal, exits: anyio.abc.TaskGroup) -> None:
        state = self.engine.state(holding.key)
        if state in FINAL_STATES:
            self._finish(holding, f"finished elsewhere ({state})")
            return
        holding.exiting = True
        self.report.started += 1
        self.say(f"bot: exit started {holding.key} {reason} limit {limit}")
        self._run(exits, self._exit, holding, reason, limit)

    def _run(self, exits: anyio.abc.TaskGroup, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Start an exit or a lookup in the caller's task group, counted until it is over."""
        if self._busy == 0:
            self._idle = anyio.Event()
        self._busy += 1

        async def counted() -> None:
            try:
                await work(*args)
            finally:
                self._busy -= 1
                if self._busy == 0:
                    self._idle.set()

        exits.start_soon(counted)

    async def _exit(self, holding: Holding, reason: str, limit: Decimal) -> None:
        try:
            result = await self.engine.exit(holding.key, reason=reason, limit_price=limit)
        except (ExitRefused, UnknownPosition):
            # The position finished (and may be forgotten already) before this request ran: an exit of it
            # that started earlier answered first, and that answer was handled there.
            self.report.answered += 1
            if self.holdings.get(holding.token_id) is holding:
                self._finish(holding, "finished by another exit")
            return
        self.report.answered += 1
        if result.outcome is ExitOutcome.UNKNOWN:
            self.report.outcomes.append((holding.key, result.outcome))
            self.say(f"bot: {holding.key} UNKNOWN: the sell may have executed; looking it up, never resending")
            holding.unresolved = True
            await self._settle_lost_answer(holding)
            return
        self._on_result(holding, result)

    async def _settle_lost_answer(self, holding: Holding) -> None:
        for attempt in range(1, self.rules.reconcile_attempts + 1):
            result = await self.engine.reconcile(holding.key)
            if result.outcome is not ExitOutcome.UNKNOWN:
                holding.unresolved = False
                self._on_result(holding, result)
                return
            if self.stopping or attempt == self.rules.reconcile_attempts:
                break
            await anyio.sleep(self.rules.reconcile_pause)
        self.say(f"bot: {holding.key} still UNKNOWN ({result.error}); the next quote looks it up again")
        holding.exiting = False

    def _on_result(self, holding: Holding, result: ExitResult) -> None:
        self.report.outcomes.append((holding.key, result.outcome))
        outcome = result.outcome
        if outcome is ExitOutcome.IN_PROGRESS:
            # Another exit of this position is in flight; it gets (and handles) its own answer.
            self.say(f"bot: {holding.key} IN_PROGRESS: an exit is already in flight; nothing sent")
            return
        if outcome is ExitOutcome.CLOSED:
            self.report.closed_shares += result.shares_sold
            how = f"at limit {result.limit_price}" if result.limit_price is not None else "(found by lookup)"
            left = f", {result.residual_shares} left below the size step" if result.residual_shares else ""
            self._finish(holding, f"CLOSED sold {result.shares_sold} {how}{left}")
        elif outcome is ExitOutcome.ALREADY_EXITED:
            self._finish(holding, "ALREADY_EXITED: the exchange shows no shares; nothing sold")
        elif outcome is ExitOutcome.DUST:
            self._finish(holding, f"DUST: {result.residual_shares} below the minimum order; nothing sold")
        elif outcome in (ExitOutcome.NOT_FILLED, ExitOutcome.VERIFY_FAILED):
            # Nothing was sold and the position is OPEN: ask again after a pause if the rule still holds.
            holding.exiting = False
            holding.quiet_until = self._events + self.rules.cool_down
            why = result.error or "the lookup found no fill"
            self.say(f"bot: {holding.key} {outcome}: nothing sold ({why}); retry after a pause")
        else:  # UNKNOWN from a lookup that failed: handled by _settle_lost_answer
            raise AssertionError(f"unexpected outcome {outcome}")

    def _finish(self, holding: Holding, what: str) -> None:
        self.say(f"bot: {holding.key} {what}")
        del self.holdings[holding.token_id]
        if holding.key not in self.engine.unsettled():
            # A sale still settling on chain stays with the engine, which follows it.
            self.engine.forget(holding.key)
        if holding.bought_while_exiting:
            self._track(holding.token_id, holding.bought_while_exiting, holding.entry_while_exiting)

    def _track(self, token_id: str, shares: Decimal, price: Decimal) -> None:
        key = f"{token_id}#{next(self._serial)}"
        # last_buy_at opens the settlement window: a zero balance right after this buy is the exchange's
        # balance cache lagging, not an exit that already happened.
        self.engine.track(Position(key=key, token_id=token_id, shares=shares, last_buy_at=self.engine.clock.wall()))
        self.holdings[token_id] = Holding(key, token_id, shares, price, quiet_until=self._events)
        self.say(f"bot: tracking {key}: {shares} shares at {price}")


def _average(price_a: Decimal, shares_a: Decimal, price_b: Decimal, shares_b: Decimal) -> Decimal:
    return (price_a * shares_a + price_b * shares_b) / (shares_a + shares_b)


# -- running it --------------------------------------------------------------------------------------

async def run_bot(exchange: PaperExchange, feed: AsyncIterable[MarketEvent], *, stop: anyio.Event | None = None,
                  rules: ExitRules | None = None, say: Callable[[str], object] = print, lockstep: bool = False,
                  **engine_options: Any) -> BotReport:
    """Trade until the feed ends or `stop` is set, then finish every exit in flight and report.
    `engine_options` go to ExitEngine."""
    engine_options.setdefault("retry", RetryPolicy(max_attempts=2, step_ticks=1, max_slippage=Decimal("0.02")))
    async with ExitEngine(exchange, **engine_options) as engine:
        bot = Bot(engine, rules or ExitRules(), say)
        async with anyio.create_task_group() as exits:
            async with anyio.create_task_group() as trading:
                if stop is not None:
                    trading.start_soon(_cancel_when_set, stop, trading.cancel_scope)
                await bot.trade(feed, exits, lockstep=lockstep)
                trading.cancel_scope.cancel()  # the feed ended: stop waiting for `stop`
            bot.stopping = True
            in_flight = bot.report.started - bot.report.answered
            say(f"bot: stopping: {in_flight} exit(s) in flight; waiting for their answers")
        # Every exit the bot started has its answer here: the `exits` group waited for them, lookups
        # of lost answers included. Leaving ExitEngine's `async with` would also wait for any exit()
        # still running (shielded from cancellation), so no sell is ever left without a reader.
        bot.report.unresolved = [holding.key for holding in bot.holdings.values() if holding.unresolved]
    bot.report.exchange_filled_shares = sum(
        (sell.shares for sell in exchange.sells if sell.status is SellStatus.FILLED), Decimal(0))
    return bot.report


async def _cancel_when_set(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


async def stop_on_signal(stop: anyio.Event, say: Callable[[str], object] = print, *,
                         task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
    """Set `stop` on the first SIGINT (Ctrl-C) or SIGTERM. Then the handlers are given back, so a second
    Ctrl-C raises KeyboardInterrupt: an abort, which may leave a sell in flight unanswered."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # the handlers are in place before trading starts
        async for signum in signals:
            say(f"bot: {signal.Signals(signum).name}: finishing exits in flight (Ctrl-C again aborts)")
            stop.set()
            return


async def play(exchange: PaperExchange, events: Iterable[MarketEvent | LoseNextSellAnswer],
               interval: float = 0.0) -> AsyncIterator[MarketEvent]:
    """Make each event true on the paper exchange, then hand it to the bot: a buy adds shares, a quote
    replaces the book. `interval` seconds pass between events (0: just let other tasks run)."""
    for event in events:
        if isinstance(event, LoseNextSellAnswer):
            exchange.lose_next_sell_response()
            continue
        if isinstance(event, Buy):
            exchange.set_balance(event.token_id, exchange.balance(event.token_id) + event.shares)
        elif isinstance(event, Quote):
            exchange.set_bids(event.token_id, [(event.bid, event.depth)])
        yield event
        if interval > 0:
            await anyio.sleep(interval)
        else:
            await anyio.lowlevel.checkpoint()


def random_market(seed: int, tokens: tuple[str, ...] = ("ELECTION-YES", "BTC-100K-YES", "RAIN-NYC-YES"),
                  ) -> Iterator[MarketEvent | LoseNextSellAnswer]:
    """An endless, seeded market: bids walk by whole ticks, our buys fill now and then at bid + 1 tick."""
    rng = random.Random(seed)
    ticks = {token: rng.randint(30, 70) for token in tokens}
    while True:
        token = rng.choice(tokens)
        ticks[token] = min(98, max(2, ticks[token] + rng.choice((-2, -1, -1, 0, 1, 1, 2))))
        bid = Decimal(ticks[token]) / 100
        if rng.random() < 0.08:
            yield Buy(token, Decimal(rng.choice((5, 10, 20))), bid + Decimal("0.01"))
        if rng.random() < 0.03:
            yield LoseNextSellAnswer()
        yield Quote(token, bid, depth=Decimal(rng.choice((50, 200, 1000))))


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A trading bot that exits through exitguard (paper exchange).")
    parser.add_argument("--seed", type=int, default=1, help="market seed (default 1)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between market events (default 0.2)")
    parser.add_argument("--latency", type=float, default=0.05, help="paper exchange seconds per call (default 0.05)")
    parser.add_argument("--events", type=int, default=0, help="stop after this many market events (default: never)")
    args = parser.parse_args(argv)

    add_log_sink(level="WARNING")  # the bot opts in to the engine's warnings and errors, on stderr
    exchange = PaperExchange(latency=args.latency)
    market = random_market(args.seed)
    if args.events:
        market = itertools.islice(market, args.events)
    stop = anyio.Event()

    def say(line: str) -> None:
        print(line, flush=True)

    async with anyio.create_task_group() as signals:
        await signals.start(stop_on_signal, stop, say)
        report = await run_bot(exchange, play(exchange, market, args.interval), stop=stop, say=say)
        signals.cancel_scope.cancel()
    say(f"bot: stopped: exits started {report.started}, answered {report.answered}, "
        f"unresolved {len(report.unresolved)}; shares the bot saw sold {report.closed_shares}, "
        f"shares the exchange filled {report.exchange_filled_shares}")
    return 0 if report.closed_shares == report.exchange_filled_shares and not report.unresolved else 1


if __name__ == "__main__":
    try:
        code = anyio.run(main)
    except* KeyboardInterrupt:  # the second Ctrl-C, raised wherever the bot was (maybe inside a task group)
        print("bot: aborted by a second Ctrl-C: a sell in flight may be left unanswered", file=sys.stderr)
        code = 130
    sys.exit(code)
