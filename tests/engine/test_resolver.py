"""Issue 11 A.3: unknown outcomes resolve themselves, in the background, with backoff and bounded concurrency;
exit() of an unresolved position looks it up at once. On virtual time (tests/virtualtime.py): no real waits."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest
from virtualtime import VIRTUAL_TIME, LoopClock

from exitguard import ExitEngine, ExitOutcome, Position, TransientError
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.states import SellPermit
from exitguard.telemetry.prometheus import render

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


@pytest.fixture
def anyio_backend() -> object:
    return VIRTUAL_TIME


class LookupPaper(PaperExchange):
    """Records when each lookup starts and how many run at once; `down` lookups answer 503."""

    def __init__(self, clock: LoopClock, latency: float = 0.0) -> None:
        super().__init__(latency, clock=clock)
        self.lookups_at: list[float] = []
        self.looking = 0
        self.peak = 0
        self.down = False

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None):  # noqa: ANN201
        self.lookups_at.append(self.clock.monotonic())
        self.looking += 1
        self.peak = max(self.peak, self.looking)
        try:
            if self.down:
                await anyio.sleep(self.latency)
                raise TransientError("paper: exchange down", status=503)
            return await super().lookup_sell(permit, order_id)
        finally:
            self.looking -= 1


def market(paper: PaperExchange, token: str, shares: str = "10", bids: str = "100") -> None:
    paper.set_balance(token, Decimal(shares))
    paper.set_bids(token, [(Decimal("0.60"), Decimal(bids))])


def filled(paper: PaperExchange) -> list[object]:
    return [s for s in paper.sells if s.status is SellStatus.FILLED]


async def test_an_unknown_outcome_resolves_itself_without_any_call_from_the_bot() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "tok")
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.UNKNOWN

        await anyio.sleep(1.0)  # the bot does nothing; the engine looks the order up after 0.5 s

        assert (engine.state("p1"), engine.unresolved()) == ("CLOSED", [])
    assert len(paper.lookups_at) == 1 and len(filled(paper)) == 1


async def test_background_lookups_back_off_from_half_a_second_doubling_to_thirty(logs) -> None:  # noqa: ANN001
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "tok")
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        paper.down = True
        await engine.exit("p1", reason="tp", limit_price=P)
        became_unknown = clock.monotonic()

        await anyio.sleep(140)
        paper.down = False
        await anyio.sleep(31)

        assert engine.state("p1") == "CLOSED"
    starts = [became_unknown, *paper.lookups_at]
    gaps = [round(b - a, 6) for a, b in zip(starts, starts[1:], strict=False)]
    assert gaps == [0.5, 1, 2, 4, 8, 16, 30, 30, 30, 30, 30][:len(gaps)] and len(gaps) >= 9
    planned = [r["retry_in_s"] for r in logs.named("unknown_outcome_retry_scheduled")]
    assert planned[:7] == [1, 2, 4, 8, 16, 30, 30]


async def test_background_lookups_are_bounded_in_concurrency() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock, latency=1.0)
    tokens = [f"t{n}" for n in range(40)]
    for token in tokens:
        market(paper, token)
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None, resolve_concurrency=4) as engine:
        for token in tokens:
            engine.track(Position(token, token, Decimal("10")))
        paper.lose_next_sell_response(len(tokens))
        async with anyio.create_task_group() as group:
            for token in tokens:
                group.start_soon(lambda key=token: engine.exit(key, reason="tp", limit_price=P))
        assert sorted(engine.unresolved()) == sorted(tokens)

        await anyio.sleep(60)

        assert engine.unresolved() == []
    assert paper.peak == 4
    assert len(filled(paper)) == len(tokens)


async def test_exit_of_an_unresolved_position_that_filled_reports_the_fill_and_sends_nothing() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "tok")
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.UNKNOWN

        again = await engine.exit("p1", reason="tp", limit_price=P)  # at once: no background lookup yet

        assert (again.outcome, again.state, again.shares_sold) == (ExitOutcome.CLOSED, "CLOSED", Decimal("10"))
    assert len(paper.sells) == 1 and len(paper.lookups_at) == 1


async def test_exit_of_an_unresolved_position_proven_not_filled_verifies_and_sells_afresh() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "tok", bids="1")  # too thin: the FOK is killed, and its answer lost
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        assert (await engine.exit("p1", reason="tp", limit_price=P)).outcome is ExitOutcome.UNKNOWN
        paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])

        again = await engine.exit("p1", reason="tp", limit_price=P)

        assert (again.outcome, again.shares_sold) == (ExitOutcome.CLOSED, Decimal("10"))
    assert [s.status for s in paper.sells] == [SellStatus.KILLED, SellStatus.FILLED]
    operations = [c.operation for c in paper.calls]
    assert operations.index("lookup_sell") < len(operations) - 1 - operations[::-1].index("get_balance")


async def test_exit_of_an_unresolved_position_still_unknown_answers_unknown_and_sends_nothing() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "tok")
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="tp", limit_price=P)
        paper.down = True

        again = await engine.exit("p1", reason="tp", limit_price=P)

        assert (again.outcome, again.state) == (ExitOutcome.UNKNOWN, "SELLING")
        assert engine.unresolved() == ["p1"]
    assert len(paper.sells) == 1


async def test_in_progress_means_only_that_another_exit_of_the_position_is_running() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock, latency=0.2)
    market(paper, "tok")
    paper.lose_next_sell_response()
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="tp", limit_price=P)
        results = []

        async def one() -> None:
            results.append(await engine.exit("p1", reason="tp", limit_price=P))

        async with anyio.create_task_group() as group:
            group.start_soon(one)
            group.start_soon(one)

    assert sorted(r.outcome for r in results) == [ExitOutcome.CLOSED, ExitOutcome.IN_PROGRESS]
    assert len(paper.sells) == 1 and len(paper.lookups_at) == 1


async def test_the_age_of_the_oldest_unresolved_outcome_is_a_metric() -> None:
    clock = LoopClock()
    paper = LookupPaper(clock)
    market(paper, "a")
    market(paper, "b")
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None) as engine:
        assert engine.metrics.oldest_unresolved_age == 0
        paper.down = True
        for token in ("a", "b"):
            engine.track(Position(token, token, Decimal("10")))
            paper.lose_next_sell_response()
            await engine.exit(token, reason="tp", limit_price=P)
            await anyio.sleep(5)

        assert engine.metrics.oldest_unresolved_age == pytest.approx(10)
        assert engine.metrics.snapshot()["oldest_unresolved_age_s"] == pytest.approx(10)
        assert b"exitguard_oldest_unresolved_outcome_age_seconds 10.0" in render(engine)

        paper.down = False
        await anyio.sleep(31)
        assert engine.unresolved() == [] and engine.metrics.oldest_unresolved_age == 0
