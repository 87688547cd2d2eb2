"""Issue 14 section 2: attempt ids are a random per-engine prefix and a counter (no uuid4 per attempt), and stay
unique across restarts on one journal."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import ExitEngine, ManualClock, Position
from exitguard.attempt import attempt_ids
from exitguard.exchange.paper import PaperExchange

pytestmark = pytest.mark.anyio


def test_ids_count_up_under_a_prefix_drawn_per_engine() -> None:
    first, second = attempt_ids(), attempt_ids()
    ids = [first() for _ in range(1000)]
    assert len(set(ids)) == 1000
    prefix = ids[0].rsplit("-", 1)[0]
    assert ids[:2] == [f"{prefix}-1", f"{prefix}-2"] and len(prefix) == 16
    assert second().rsplit("-", 1)[0] != prefix


async def test_a_restarted_engine_never_reuses_an_attempt_id_its_journal_holds(clock: ManualClock,
                                                                                tmp_path: Path) -> None:
    path = tmp_path / "exits.journal"
    paper = PaperExchange(clock=clock)
    for run in range(3):
        paper.set_balance(f"t{run}", Decimal("10"))
        paper.set_bids(f"t{run}", [(Decimal("0.60"), Decimal("100"))])
        async with ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None) as engine:
            engine.track(Position(key=f"p{run}", token_id=f"t{run}", shares=Decimal("10")))
            await engine.exit(f"p{run}", reason="tp", limit_price=Decimal("0.55"))
    seen = [sell.attempt_id for sell in paper.sells]
    assert len(seen) == 3 and len(set(seen)) == 3
    assert len({attempt.rsplit("-", 1)[0] for attempt in seen}) == 3
