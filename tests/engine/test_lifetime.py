"""Issue 11 B.6: the engine's lifetime. Calls started while it shuts down are refused with EngineClosed; nothing
changes after the journal is closed; exits in flight get a bounded grace period, and one that outlives it is
cancelled and left UNKNOWN with its order id journaled."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from virtualtime import VIRTUAL_TIME, LoopClock

from exitguard import EngineClosed, ExitEngine, ExitOutcome, ManualClock, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.states import SellPermit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


class GatedPaper(PaperExchange):
    """Sells wait at a gate before they reach the exchange (`hang`: they never come back)."""

    def __init__(self, clock: object, *, hang: bool = False) -> None:
        super().__init__(clock=clock)  # type: ignore[arg-type]
        self.at_gate = anyio.Event()
        self.gate = anyio.Event()
        self.hang = hang

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # noqa: ANN201
        self.at_gate.set()
        if self.hang:
            await anyio.sleep_forever()
        await self.gate.wait()
        return await super().sell(permit, limit_price, **options)  # type: ignore[arg-type]


def market(paper: PaperExchange, *tokens: str) -> None:
    for token in tokens:
        paper.set_balance(token, Decimal("10"))
        paper.set_bids(token, [(Decimal("0.60"), Decimal("100"))])


async def test_calls_started_while_the_engine_shuts_down_are_refused_with_engine_closed(clock: ManualClock) -> None:
    paper = GatedPaper(clock)
    market(paper, "t1", "t2")
    engine = ExitEngine(paper, clock=clock, settlement_poll_interval=None)
    running, leave = anyio.Event(), anyio.Event()
    results = []

    async def run_engine() -> None:
        async with engine:
            running.set()
            await leave.wait()  # then the block ends: the engine waits for p1's exit in flight

    async with anyio.create_task_group() as group:
        group.start_soon(run_engine)
        await running.wait()
        engine.track(Position("p1", "t1", Decimal("10")))
        engine.track(Position("p2", "t2", Decimal("10")))

        async def exit_p1() -> None:
            results.append(await engine.exit("p1", reason="tp", limit_price=P))

        group.start_soon(exit_p1)
        await paper.at_gate.wait()
        leave.set()
        for _ in range(5):
            await anyio.lowlevel.checkpoint()
        calls_before = list(paper.calls)

        with pytest.raises(EngineClosed, match="shutting down"):
            await engine.exit("p2", reason="tp", limit_price=P)
        with pytest.raises(EngineClosed, match="shutting down"):
            await engine.reconcile("p2")
        with pytest.raises(EngineClosed):
            engine.track(Position("p3", "t3", Decimal("10")))
        assert paper.calls == calls_before

        paper.gate.set()
    assert [r.outcome for r in results] == [ExitOutcome.CLOSED]
    assert engine.states() == {"p1": "CLOSED", "p2": "OPEN"}


async def test_after_the_journal_is_closed_no_position_changes_in_memory_alone(tmp_path: Path,
                                                                                clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    market(paper, "t1")
    engine = ExitEngine(paper, journal=tmp_path / "exits.journal", clock=clock, settlement_poll_interval=None)
    async with engine:
        engine.track(Position("p1", "t1", Decimal("10")))
        await engine.exit("p1", reason="tp", limit_price=P)

    with pytest.raises(EngineClosed):
        engine.track(Position("p2", "t2", Decimal("10")))
    with pytest.raises(EngineClosed):
        engine.forget("p1")
    assert engine.states() == {"p1": "CLOSED"}
    journal = Journal.open(tmp_path / "exits.journal", readonly=True)
    try:
        assert [row.key for row in journal.positions()] == ["p1"]
    finally:
        journal.close()


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_an_exit_that_outlives_the_shutdown_grace_is_cancelled_and_left_unknown_with_its_order_journaled(
        tmp_path: Path, logs) -> None:  # noqa: ANN001
    clock = LoopClock()
    paper = GatedPaper(clock, hang=True)  # the post never comes back
    market(paper, "t1")
    path = tmp_path / "exits.journal"
    results = []
    with anyio.fail_after(60):  # virtual seconds: an engine that waited for the exit forever fails here
        async with anyio.create_task_group() as group:
            async with ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None,
                                  shutdown_grace=10.0) as engine:
                engine.track(Position("p1", "t1", Decimal("10")))

                async def exit_p1() -> None:
                    results.append(await engine.exit("p1", reason="tp", limit_price=P))

                group.start_soon(exit_p1)
                await paper.at_gate.wait()
                started_closing = clock.monotonic()
            closed_after = clock.monotonic() - started_closing

    assert closed_after == pytest.approx(10.0)
    [result] = results
    assert (result.outcome, result.state, result.order_id) == (ExitOutcome.UNKNOWN, "SELLING", "paper-1")
    [expired] = logs.named("shutdown_grace_expired")
    assert {k: v for k, v in expired.items() if k not in ("event", "level")} == {"grace_s": 10.0, "calls_cancelled": 1}
    assert logs.named("exit_interrupted")[0]["unresolved"] is True
    journal = Journal.open(path, readonly=True)
    try:
        [row] = journal.positions()
    finally:
        journal.close()
    assert (row.state, row.unresolved, row.order_id) == ("SELLING", True, "paper-1")
