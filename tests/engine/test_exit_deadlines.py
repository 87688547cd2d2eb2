"""Issue 14 section 2: the exit path's shortcuts (cancel scopes built from the backend's own class, the on-tick
check answered once per exit, results built slot by slot) give exactly what the long way gives. The deadlines
are the ones that matter most: a verification or a sell that hangs ends as it always did, on virtual time."""

from __future__ import annotations

import asyncio
import math
from dataclasses import fields
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from virtualtime import VIRTUAL_TIME, LoopClock

from exitguard import ExitEngine, ExitOutcome, ExitResult, InvalidValue, Position
from exitguard.book import PositionBook
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.reports import Reporter
from exitguard.scopes import Scopes
from exitguard.states import FINAL_STATES, MarketRules, PositionRecord, State, micro_to_shares
from exitguard.telemetry.divergence import DivergenceDetector
from exitguard.telemetry.metrics import EngineMetrics
from exitguard.verify import Verifier, check_tick

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


class Hanging(PaperExchange):
    """A paper exchange whose balance read (`hang="balance"`) or post (`hang="sell"`) never answers."""

    def __init__(self, clock: LoopClock, hang: str) -> None:
        super().__init__(clock=clock)
        self.hang = hang
        self.posts = 0

    async def get_balance(self, token_id: str) -> object:
        if self.hang == "balance":
            await anyio.sleep_forever()
        return await super().get_balance(token_id)

    async def sell(self, permit: Any, limit_price: Decimal, **options: Any) -> Any:
        self.posts += 1
        if self.hang == "sell":
            await anyio.sleep_forever()
        return await super().sell(permit, limit_price, **options)


def hanging(hang: str) -> tuple[Hanging, LoopClock]:
    clock = LoopClock()
    paper = Hanging(clock, hang)
    paper.set_balance("t1", Decimal("10"))
    paper.set_bids("t1", [(Decimal("0.60"), Decimal("100"))])
    return paper, clock


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_a_balance_read_that_never_answers_fails_the_verification_at_its_deadline(logs) -> None:  # noqa: ANN001
    paper, clock = hanging("balance")
    async with ExitEngine(paper, clock=clock, verify_timeout=3.0, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "t1", Decimal("10")))
        await engine.market("t1")
        started = clock.monotonic()
        result = await engine.exit("p1", reason="tp", limit_price=P)
        took = clock.monotonic() - started
    assert took == pytest.approx(3.0)
    assert (result.outcome, result.state, result.error) == (ExitOutcome.VERIFY_FAILED, "OPEN", "no answer within 3.0s")
    assert paper.posts == 0
    [failed] = logs.named("balance_verify_failed")
    assert (failed["error"], failed["error_type"]) == ("no answer within 3.0s", "TimeoutError")
    assert engine.metrics.verify_failures == 1


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_a_post_that_never_answers_is_an_unknown_outcome_at_its_deadline_with_its_order_journaled(
        tmp_path: Path, logs) -> None:  # noqa: ANN001
    paper, clock = hanging("sell")
    path = tmp_path / "exits.journal"
    async with ExitEngine(paper, journal=path, clock=clock, sell_timeout=4.0, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "t1", Decimal("10")))
        await engine.market("t1")
        started = clock.monotonic()
        result = await engine.exit("p1", reason="tp", limit_price=P)
        took = clock.monotonic() - started
        unresolved = engine.unresolved()
    assert took == pytest.approx(4.0)
    error = "no answer within 4.0s (TimeoutError)"
    assert (result.outcome, result.state, result.error, result.order_id) == (ExitOutcome.UNKNOWN, "SELLING", error,
                                                                             None)
    assert (unresolved, paper.posts) == (["p1"], 1)
    [unknown] = logs.named("exit_outcome_unknown")
    assert (unknown["error"], unknown["error_type"]) == (error, "TimeoutError")
    journal = Journal.open(path, readonly=True)
    try:
        history = journal.history("p1")
    finally:
        journal.close()
    assert [row.trigger for row in history] == ["track", "request_exit", "balance_fetched", "order_signed",
                                                "sell_unknown"]
    assert history[-1].payload["error"] == error


class AnswersAsTheDeadlineStrikes(PaperExchange):
    """The balance answer lands in the very loop iteration in which the verification's deadline strikes, just before
    it: the answer is in, the deadline has fired, and no await has run since."""

    def __init__(self, clock: LoopClock) -> None:
        super().__init__(clock=clock)
        self.answer: asyncio.Future[str] | None = None

    def answer_at(self, when: float) -> None:
        # Scheduled before the exit enters its verification's scope: of two timers due at one time, the first
        # scheduled runs first, so the answer comes in, then the deadline strikes, in one loop iteration.
        loop = asyncio.get_running_loop()
        self.answer = loop.create_future()
        loop.call_at(when, self.answer.set_result, "10000000")

    async def get_balance(self, token_id: str) -> object:
        assert self.answer is not None
        return await self.answer


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_a_balance_that_arrives_as_the_verification_deadline_strikes_is_sold_under_the_sells_own_deadline(
        logs) -> None:  # noqa: ANN001
    clock = LoopClock()
    paper = AnswersAsTheDeadlineStrikes(clock)
    paper.set_balance("t1", Decimal("10"))
    paper.set_bids("t1", [(Decimal("0.60"), Decimal("100"))])
    async with ExitEngine(paper, clock=clock, verify_timeout=3.0, settlement_poll_interval=None) as engine:
        engine.track(Position("p1", "t1", Decimal("10")))
        await engine.market("t1")
        paper.answer_at(asyncio.get_running_loop().time() + 3.0)  # the deadline of the verification that follows
        result = await engine.exit("p1", reason="tp", limit_price=P)
    assert (result.outcome, result.state, result.error) == (ExitOutcome.CLOSED, "CLOSED", None)
    assert (len(paper.sells), logs.named("exit_outcome_unknown"), logs.named("balance_verify_failed")) == (1, [], [])


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_the_scopes_are_the_backends_own_with_anyios_deadline() -> None:
    scopes = Scopes()
    before = scopes.within(5.0)  # before bind: anyio's own dispatch
    scopes.bind()
    after = scopes.within(5.0)
    assert type(before) is type(after) is type(anyio.CancelScope())
    assert before.deadline == after.deadline == anyio.current_time() + 5.0  # virtual time stands still here
    assert scopes.scope().deadline == math.inf
    with scopes.within(2.0) as scope:
        await anyio.sleep(3.0)
    assert scope.cancelled_caught and anyio.current_time() == pytest.approx(2.0)


def test_the_on_tick_check_answers_as_check_tick_whatever_was_checked_before() -> None:
    def long_way(price: Decimal, rules: MarketRules) -> str | None:
        try:
            check_tick(price, rules)
        except InvalidValue as err:
            return str(err)
        return None

    verify = Verifier(PaperExchange(), EngineMetrics())
    price, cents, tenths = Decimal("0.55"), MarketRules(), MarketRules(tick_size=Decimal("0.1"))
    asked = [(price, cents), (price, cents), (price, tenths), (price, cents), (Decimal("0.555"), cents),
             (Decimal("0.5"), tenths), (price, tenths), (Decimal("0.55"), MarketRules()), (price, cents)]
    for pair in asked:
        refused = verify.off_tick(*pair)
        assert (None if refused is None else str(refused)) == long_way(*pair)
        if refused is None:
            verify.check_tick(*pair)
        else:
            with pytest.raises(InvalidValue, match="not on the market's tick size"):
                verify.check_tick(*pair)


def record_in(state: State, *, verified: int | None, sold: int, residual: int) -> PositionRecord:
    record = PositionRecord("k1", "t1", 10_250_000)
    record.state, record.verified_balance, record.sold, record.residual = state, verified, sold, residual
    record.avg_price, record.filled_order_id = Decimal("0.6"), "o-9"
    return record


def the_long_way(record: PositionRecord, outcome: ExitOutcome, **given: Any) -> ExitResult:
    """ExitResult through its constructor, as `Reporter.finish` built it before its fields were set one by one."""
    closed = outcome is ExitOutcome.CLOSED
    return ExitResult(
        key=record.key, outcome=outcome, state=str(record.state),
        shares_sold=micro_to_shares(record.sold if closed else 0), expected_shares=micro_to_shares(record.expected),
        verified_balance=None if record.verified_balance is None else micro_to_shares(record.verified_balance),
        residual_shares=micro_to_shares(record.residual) if record.state in FINAL_STATES else Decimal(0),
        verify_latency=given.get("latency"), attempts=given["attempts"], limit_price=given.get("price"),
        order_id=given.get("order_id") if given.get("order_id") is not None or not closed else record.filled_order_id,
        error=given.get("error"), avg_price=record.avg_price if closed else None)


@pytest.mark.parametrize(("state", "outcome", "verified", "sold", "residual"), [
    (State.CLOSED, ExitOutcome.CLOSED, 10_250_000, 10_250_000, 0),
    (State.CLOSED, ExitOutcome.CLOSED, 10_255_000, 10_250_000, 5_000),
    (State.OPEN, ExitOutcome.NOT_FILLED, 10_250_000, 0, 0),
    (State.OPEN, ExitOutcome.VERIFY_FAILED, None, 0, 0),
    (State.DUST, ExitOutcome.DUST, 40_000, 0, 40_000),
    (State.RECONCILED, ExitOutcome.ALREADY_EXITED, 0, 0, 0),
    (State.SELLING, ExitOutcome.UNKNOWN, 10_250_000, 0, 0),
])
@pytest.mark.parametrize("given", [
    {"attempts": 1, "price": P, "latency": 0.012, "order_id": None, "error": None},
    {"attempts": 2, "price": None, "latency": None, "order_id": "o-1", "error": "why"},
])
def test_a_result_is_every_field_its_constructor_would_have_set(state: State, outcome: ExitOutcome,
                                                                verified: int | None, sold: int, residual: int,
                                                                given: dict[str, Any]) -> None:
    report = Reporter(PositionBook(LoopClock()), EngineMetrics(), DivergenceDetector())
    record = record_in(state, verified=verified, sold=sold, residual=residual)
    result = report.finish(record, outcome, **given)
    expected = the_long_way(record, outcome, **given)
    for field in fields(ExitResult):
        got, want = getattr(result, field.name), getattr(expected, field.name)
        assert (got, type(got)) == (want, type(want)), field.name
        if isinstance(want, Decimal):
            assert got.as_tuple() == want.as_tuple(), field.name
    assert result == expected and hash(result) == hash(expected) and repr(result) == repr(expected)
