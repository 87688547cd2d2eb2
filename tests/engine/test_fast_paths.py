"""Issue 14 sections 2 and 3: the shortcuts taken on the hot paths give exactly what the long way gives.

Each shortcut (a raw balance read with int(), a Position's shares kept as given, the warm-ups' queue), and the
on-tick check, is compared with the path it skips, on the inputs where the two could part."""

from __future__ import annotations

import decimal
from decimal import Decimal

import anyio
import pytest

from exitguard import ExitEngine, Position
from exitguard.attempt import Slots
from exitguard.exchange.paper import PaperExchange
from exitguard.states import InvalidValue, MarketRules, QuantityOutOfBounds, micro_to_shares, parse_raw_balance
from exitguard.states.quantities import MAX_MICRO, is_canonical_shares, shares_to_micro


def long_way(value: str) -> int | str:
    """parse_raw_balance's exact Decimal path, whatever the string."""
    try:
        raw = Decimal(value.strip())
        if not raw.is_finite():
            return "refused"
        if raw < 0 or raw > MAX_MICRO or raw != raw.to_integral_value():
            return "refused"
        return int(raw)
    except decimal.InvalidOperation:
        return "refused"


@pytest.mark.parametrize("text", ["0", "5000000", "0005000000", " 12 \n", "1_000", "١٢", "+5", "-5", "5.0", "5e3",
                                  "", "  ", str(MAX_MICRO), str(MAX_MICRO + 1), "0" * 30 + "7", "9" * 40])
def test_a_raw_balance_string_reads_as_the_exact_decimal_path_reads_it(text: str) -> None:
    try:
        got: int | str = parse_raw_balance(text)
    except (InvalidValue, QuantityOutOfBounds):
        got = "refused"
    assert got == long_way(text)
    assert type(got) is type(long_way(text))


def test_a_raw_balance_above_the_bound_is_refused_naming_the_bound_on_the_fast_path_too() -> None:
    with pytest.raises(QuantityOutOfBounds, match="raw units"):
        parse_raw_balance(str(MAX_MICRO + 1))


@pytest.mark.parametrize("shares", ["10", "0.5", "1.50", "10.0", "1E+1", "0.000001", "1E-6", "123456.789",
                                    "100", "2.000000", "0100"])
def test_a_positions_shares_are_the_canonical_decimal_whether_kept_or_rebuilt(shares: str) -> None:
    given = Decimal(shares)
    position = Position(key="k", token_id="t", shares=given)
    canonical = micro_to_shares(shares_to_micro(given))
    assert position.shares.as_tuple() == canonical.as_tuple()
    assert str(position.shares) == str(canonical)
    assert is_canonical_shares(given) == (given.as_tuple() == canonical.as_tuple())


def test_a_decimal_subclass_is_rebuilt_as_a_plain_decimal() -> None:
    class Shares(Decimal):
        pass

    position = Position(key="k", token_id="t", shares=Shares("10"))
    assert type(position.shares) is Decimal and position.shares == 10


@pytest.mark.parametrize(("price", "tick"), [("0.55", "0.01"), ("0.550", "0.01"), ("0.555", "0.01"),
                                             ("0.5", "1E-100"), ("1E-999999999", "0.01"), ("0.0001", "0.0001"),
                                             ("0.12345", "0.001"), ("NaN", "0.01"), ("sNaN", "0.01")])
def test_the_on_tick_check_answers_as_the_exact_remainder_twice(price: str, tick: str) -> None:
    rules = MarketRules(tick_size=Decimal(tick))
    first = rules.price_is_on_tick(Decimal(price))
    again = rules.price_is_on_tick(Decimal(price))  # the same answer when asked again
    with decimal.localcontext(decimal.Context(prec=60)) as context:
        context.traps[decimal.InvalidOperation] = False
        remainder = Decimal(price) % Decimal(tick) if Decimal(price).is_finite() else None
        exact = remainder is not None and remainder.is_finite() and remainder == 0 \
            and not context.flags[decimal.Rounded]
    assert first == again == exact


class Warmed(PaperExchange):
    def __init__(self) -> None:
        super().__init__()
        self.warmed: list[str] = []

    async def warm_up(self, token_id: str) -> None:
        self.warmed.append(token_id)
        await super().warm_up(token_id)


def test_track_and_track_many_warm_every_new_token_once() -> None:
    async def run() -> list[str]:
        paper = Warmed()
        async with ExitEngine(paper, settlement_poll_interval=None) as engine:
            engine.track(Position(key="p0", token_id="t0", shares=Decimal("1")))
            engine.track_many([Position(key=f"p{i}", token_id=f"t{i}", shares=Decimal("1")) for i in range(30)])
            for _ in range(200):
                await anyio.lowlevel.checkpoint()
            return sorted(paper.warmed)

    assert anyio.run(run) == sorted(f"t{i}" for i in range(30))  # t0 once: track_many's p0 is already tracked


def test_the_exit_slots_queue_in_order_and_a_cancelled_waiter_gives_its_turn_on() -> None:
    async def run() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        release = anyio.Event()

        async def holder() -> None:
            async with slots:
                order.append("holder")
                await release.wait()

        async def waiter(name: str) -> None:
            async with slots:
                order.append(name)

        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as doomed:
                doomed.cancel()
                await waiter("cancelled before its turn")  # leaves the line at once
            group.start_soon(waiter, "first")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter, "second")
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert slots.free == 1
        return order

    assert anyio.run(run) == ["holder", "first", "second"]


def test_a_waiter_cancelled_as_its_turn_comes_leaks_no_slot() -> None:
    async def run() -> list[str]:
        slots = Slots(1)
        order: list[str] = []
        scopes: dict[str, anyio.CancelScope] = {}

        async def waiter(name: str) -> None:
            with anyio.CancelScope() as scope:
                scopes[name] = scope
                async with slots:
                    order.append(name)

        async with anyio.create_task_group() as group:
            await slots.__aenter__()
            group.start_soon(waiter, "handed then cancelled")
            await anyio.wait_all_tasks_blocked()
            group.start_soon(waiter, "next")
            await anyio.wait_all_tasks_blocked()
            await slots.__aexit__(None, None, None)  # the turn goes to the first in line...
            scopes["handed then cancelled"].cancel()  # ...which is cancelled before it runs
        assert slots.free == 1
        return order

    assert anyio.run(run)[-1] == "next"  # whether the cancelled one ran before its cancellation landed or not


def test_a_token_tracked_while_the_workers_are_busy_or_asleep_is_warmed() -> None:
    class Slow(Warmed):
        def __init__(self) -> None:
            super().__init__()
            self.gate = anyio.Event()

        async def warm_up(self, token_id: str) -> None:
            await self.gate.wait()
            await super().warm_up(token_id)

    async def settle() -> None:
        for _ in range(200):
            await anyio.lowlevel.checkpoint()

    async def run() -> list[str]:
        paper = Slow()
        async with ExitEngine(paper, settlement_poll_interval=None) as engine:
            await settle()  # the workers are asleep on an empty queue
            engine.track_many([Position(key=f"p{i}", token_id=f"t{i}", shares=Decimal("1")) for i in range(12)])
            await settle()  # 8 workers busy, 4 tokens queued
            engine.track(Position(key="busy", token_id="t-busy", shares=Decimal("1")))  # joins a non-empty queue
            paper.gate.set()
            await settle()  # all warmed: the workers are asleep again
            engine.track(Position(key="asleep", token_id="t-asleep", shares=Decimal("1")))
            await settle()
            return sorted(paper.warmed)

    assert anyio.run(run) == sorted([f"t{i}" for i in range(12)] + ["t-busy", "t-asleep"])
