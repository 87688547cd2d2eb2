"""The short adversarial run in CI (issue 11, point D): every profile of hostile faults, a few seeds, a few
hundred steps each, on the paper exchange in virtual time. bench/adversarial.py runs the long one (>= 10,000
steps per seed). A failure prints the broken promise, the issue point it belongs to, the command that replays
it, and the steps that touched the position."""

from __future__ import annotations

import random
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from adversarial.hostile import Fault, HostileExchange, Post, Told, Truth
from adversarial.paper_run import PROFILES, run_paper
from adversarial.virtual_time import LoopClock, VirtualTimeLoop
from adversarial.watch import Watch
from exitguard import ExitEngine, ExitOutcome, PaperExchange, Position
from exitguard.states import SellPermit

SEEDS = (1, 2)
STEPS = 500

PENDING: dict[str, str] = {}
"""Profiles that still break a promise, by the issue point that will fix them (xfail strict: remove the entry
when the point lands)."""


def _cases() -> list[object]:
    return [pytest.param(seed, name, id=f"{name}-seed{seed}",
                         marks=[pytest.mark.xfail(strict=True, reason=PENDING[name])] if name in PENDING else [])
            for name in PROFILES for seed in SEEDS]


@pytest.mark.parametrize(("seed", "profile"), _cases())
def test_the_promise_holds_on_a_hostile_paper_exchange(seed: int, profile: str, tmp_path: Path) -> None:
    report = run_paper(seed, STEPS, PROFILES[profile], tmp_path)
    assert not report.violations, report.explain()
    assert report.steps == STEPS and report.checks > STEPS


def test_a_seed_replays_exactly(tmp_path: Path) -> None:
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    first = run_paper(5, 300, PROFILES["hostile"], tmp_path / "first")
    second = run_paper(5, 300, PROFILES["hostile"], tmp_path / "second")
    assert first.trace == second.trace and first.faults == second.faults
    assert sum(first.faults.values()) > 50, "the hostile profile injected almost nothing"


# -- regressions: seeds that broke a promise, kept by name ------------------------------------------------------

def test_a_sell_answer_that_is_no_fill_is_unknown(tmp_path: Path) -> None:
    """Found by the malformed_fills profile (seed 0, step 86): an adapter whose sell() returns None after the
    order executed. The engine read `.shares` off it and exit() raised AttributeError; the order did sell.
    Fixed by issue 11 A.1: an answer that is no readable Fill is UNKNOWN (engine/sell.py `readable_fill`)."""

    async def main() -> tuple[object, str, bool]:
        clock = LoopClock()
        paper = PaperExchange(clock=clock)
        paper.set_balance("tok", Decimal("10"))
        paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
        hostile = HostileExchange(paper, clock, random.Random(0), {Fault.MALFORMED_FILL: 1.0})
        async with ExitEngine(hostile, clock=clock, settlement_poll_interval=None) as engine:
            engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
            try:
                result: object = (await engine.exit("p1", reason="t", limit_price=Decimal("0.55"))).outcome
            except Exception as err:  # noqa: BLE001 - the point of the test
                result = err
            return result, engine.state("p1"), "p1" in engine.unresolved()

    outcome, state, unresolved = anyio.run(main, backend_options={"loop_factory": VirtualTimeLoop})
    assert outcome is ExitOutcome.UNKNOWN and state == "SELLING" and unresolved


# -- the suite's own instruments ----------------------------------------------------------------------------------

def _post(key: str, attempt: str, posted_at: float, told: Told, truth: Truth) -> Post:
    permit = SellPermit(position_key=key, token_id="tok", shares=5_000_000, verified_balance=5_000_000,
                        verified_at=posted_at, attempt_id=attempt)
    return Post(key, permit, Decimal("0.55"), posted_at=posted_at, told=told, truth=truth)


@pytest.mark.parametrize(("truth", "age", "rule"), [
    (Truth.FILLED, 60.0, "no second sell after an unknown outcome that filled"),
    (Truth.TRAVELLING, 60.0, "no second sell while an order can still arrive"),
    (Truth.UNSENT, 5.0, "nothing found is not a no before the horizon"),
])
def test_the_watch_flags_a_second_sell_after_an_unknown_outcome(truth: Truth, age: float, rule: str) -> None:
    watch = Watch(now=lambda: 100.0 + age, horizon=30.0, permit_max_age=2.0)
    old = _post("p1", "a1", 100.0, Told.UNKNOWN, truth)
    watch.posted(_post("p1", "a2", 100.0 + age, Told.WAITING, Truth.UNSENT), [old])
    assert [v.rule for v in watch.violations] == [rule]


def test_the_watch_lets_a_second_sell_follow_a_resolution_it_could_prove() -> None:
    watch = Watch(now=lambda: 200.0, horizon=30.0, permit_max_age=2.0)
    earlier = [_post("p1", "a1", 100.0, Told.UNKNOWN, Truth.UNSENT),   # never arrived; the horizon has passed
               _post("p1", "a2", 150.0, Told.UNKNOWN, Truth.KILLED),   # the exchange shows it terminal, unfilled
               _post("p1", "a3", 160.0, Told.NO, Truth.KILLED)]        # a definite no
    watch.posted(_post("p1", "a4", 200.0, Told.WAITING, Truth.UNSENT), earlier)
    assert watch.violations == []


def test_the_watch_flags_a_stale_permit_and_a_stale_cache_when_the_order_leaves() -> None:
    watch = Watch(now=lambda: 103.0, horizon=30.0, permit_max_age=2.0)
    watch.left(_post("p1", "a1", 100.0, Told.WAITING, Truth.UNSENT), stale_cache=True)
    assert [v.point for v in watch.violations] == ["A.5", "A.4"]


def test_virtual_time_jumps_to_the_next_timer() -> None:
    async def main() -> tuple[float, bool]:
        with anyio.move_on_after(30.0) as scope:
            await anyio.sleep(3600.0)
        return anyio.current_time(), scope.cancelled_caught

    assert anyio.run(main, backend_options={"loop_factory": VirtualTimeLoop}) == (30.0, True)
