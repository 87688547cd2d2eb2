"""Issue 11 B.10: restart recovery is concurrent. A restart with a thousand unknown outcomes during an exchange
outage does not wait for a thousand lookup timeouts: the engine starts at once, positions that were not in
flight exit while the rest resolve in the background, a bounded number at a time. On virtual time."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import anyio
import pytest
from virtualtime import VIRTUAL_TIME, LoopClock

from exitguard import ExitEngine, ExitOutcome, Position
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.journal import Journal
from exitguard.states import MICRO, MarketRules, PositionRecord, SellPermit, assess_balance, fire, take_permit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")
UNKNOWN = 1000
LOOKUP_TIMEOUT = 10.0


@pytest.fixture
def anyio_backend() -> object:
    return VIRTUAL_TIME


class OutagePaper(PaperExchange):
    """Until `outage_ends` (virtual seconds), every order lookup hangs until the caller's timeout."""

    def __init__(self, clock: LoopClock) -> None:
        super().__init__(latency=0.1, clock=clock)
        self.outage_ends = 0.0
        self.looking = 0
        self.peak = 0

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None):  # noqa: ANN201
        self.looking += 1
        self.peak = max(self.peak, self.looking)
        try:
            if self.clock.monotonic() < self.outage_ends:
                await anyio.sleep_forever()
            return await super().lookup_sell(permit, order_id)
        finally:
            self.looking -= 1


def died_with_sells_in_flight(path: Path, clock: LoopClock, count: int) -> list[SellPermit]:
    """A journal as an engine leaves it when it dies with `count` sells posted and unanswered."""
    journal = Journal.open(path)
    permits = []
    now = clock.wall()
    try:
        for n in range(count):
            record = PositionRecord(f"p{n}", f"t{n}", 10 * MICRO)
            journal.track(record, now)

            def step(trigger: str, record: PositionRecord = record, **payload: object) -> None:
                source = record.state
                fire(record, trigger, **payload)
                journal.transition(record, source, trigger, payload, now)

            step("request_exit", reason="tp", limit_price=P, attempt_id=f"a{n}")
            verdict = assess_balance(10 * MICRO, 10 * MICRO, MarketRules(), last_buy_at=None, now=now,
                                     settlement_window=timedelta(0))
            step("balance_fetched", verdict=verdict, verified_at=clock.monotonic())
            permits.append(take_permit(record))
            journal.note_order(record, f"order-{n}", now)
            step("sell_unknown", error="the process died with the post in flight")
    finally:
        journal.close()
    return permits


async def test_a_restart_with_a_thousand_unknown_outcomes_in_an_outage_starts_at_once_and_resolves_them_bounded(
        tmp_path: Path) -> None:
    clock = LoopClock()
    paper = OutagePaper(clock)
    for n in range(UNKNOWN):
        paper.set_balance(f"t{n}", Decimal("10"))
        paper.set_bids(f"t{n}", [(Decimal("0.60"), Decimal("100"))])
    paper.set_balance("free", Decimal("10"))
    paper.set_bids("free", [(Decimal("0.60"), Decimal("100"))])
    path = tmp_path / "exits.journal"
    for permit in died_with_sells_in_flight(path, clock, UNKNOWN):
        await paper.sell(permit, P)  # each post reached the exchange and filled before the process died
    paper.outage_ends = clock.monotonic() + 120.0
    started = clock.monotonic()

    async with ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None,
                          verify_timeout=LOOKUP_TIMEOUT, resolve_concurrency=16) as engine:
        # Before: one lookup after the other, 1,000 x 10 s of timeouts before the first exit could start.
        assert clock.monotonic() - started < 1.0
        assert engine.recovery is not None and len(engine.recovery.resolving) == UNKNOWN
        assert len(engine.unresolved()) == UNKNOWN

        engine.track(Position("free", "free", Decimal("10")))
        free = await engine.exit("free", reason="tp", limit_price=P)
        assert free.outcome is ExitOutcome.CLOSED and clock.monotonic() - started < 5.0

        await anyio.sleep(100)  # still in the outage: lookups time out and are retried
        assert 1 < paper.peak <= 16
        assert engine.metrics.oldest_unresolved_age >= 100

        for _ in range(200):
            await anyio.sleep(30)
            if not engine.unresolved():
                break

        assert engine.unresolved() == [] and engine.metrics.oldest_unresolved_age == 0
        assert set(engine.states().values()) == {"CLOSED"}
    assert paper.peak <= 16
    filled = [s for s in paper.sells if s.status is SellStatus.FILLED]
    assert len(filled) == UNKNOWN + 1, "a lookup sent a sell"
