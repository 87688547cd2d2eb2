"""Issue 11 A.5: a permit's freshness is checked when the order is about to leave, after every wait (a sender
slot, a worker thread, a rate-limit slot, signing), not before them. The paper burst runs on virtual time."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest
from virtualtime import VIRTUAL_TIME, LoopClock

from exitguard import ExitEngine, ExitOutcome, ManualClock, PermitExpired, Position, SellDeadline
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.states import SellPermit

pytestmark = pytest.mark.anyio

P = Decimal("0.55")
MAX_AGE = 2.0


@pytest.mark.parametrize("anyio_backend", [VIRTUAL_TIME])
async def test_a_burst_of_hundreds_of_exits_at_400ms_never_sends_on_a_stale_verification(logs) -> None:  # noqa: ANN001
    clock = LoopClock()
    # Eight senders at 400 ms a sell: the burst queues for seconds after its verifications.
    paper = PaperExchange(latency=0.4, clock=clock, max_concurrent_sells=8)
    tokens = [f"t{n}" for n in range(300)]
    for token in tokens:
        paper.set_balance(token, Decimal("10"))
        paper.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    results = []
    async with ExitEngine(paper, clock=clock, permit_max_age=MAX_AGE, max_concurrent_exits=300,
                          settlement_poll_interval=None) as engine:
        for token in tokens:
            engine.track(Position(token, token, Decimal("10")))

        async def one(key: str) -> None:
            results.append(await engine.exit(key, reason="burst", limit_price=P))

        async with anyio.create_task_group() as group:
            for token in tokens:
                group.start_soon(one, token)

    sent = [sell for sell in paper.sells]
    assert sent, "nothing was sent at all"
    ages = [sell.sent_at - sell.verified_at for sell in sent]  # type: ignore[operator]
    assert max(ages) <= MAX_AGE, f"an order left on a verification {max(ages):.3f}s old"
    expired = [r for r in results if r.outcome is ExitOutcome.NOT_FILLED and "expired" in (r.error or "")]
    assert len(expired) > 100, "the burst did not outlast its permits: the test proves nothing"
    assert len(expired) == len(logs.named("exit_permit_expired"))
    assert {r.state for r in expired} == {"OPEN"}
    assert len(results) == len(tokens) and all(s.status is SellStatus.FILLED for s in sent)
    assert len(sent) + len(expired) == len(tokens)


async def test_the_paper_exchange_refuses_to_send_past_the_deadline(clock: ManualClock) -> None:
    paper = PaperExchange(clock=clock)
    paper.set_balance("tok", Decimal("10"))
    paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    permit = SellPermit("p1", "tok", 10_000_000, 10_000_000, clock.monotonic(), "a1")
    deadline = SellDeadline(clock.monotonic() + MAX_AGE, clock.monotonic)
    clock.advance(MAX_AGE + 0.001)

    with pytest.raises(PermitExpired, match="nothing sent"):
        await paper.sell(permit, P, deadline=deadline)

    assert paper.sells == [] and paper.calls == [] and paper.balance("tok") == Decimal("10")


async def test_the_polymarket_adapter_checks_the_permit_after_signing(monkeypatch: pytest.MonkeyPatch) -> None:
    from fakeclob import FakeClob

    from exitguard.exchange.polymarket import adapter
    from exitguard.polymarket import PolymarketExchange

    token = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
    clock = ManualClock()
    original = adapter.sign_sell

    def slow_signing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - signing outlives the permit
        clock.advance(MAX_AGE + 1)
        return original(*args, **kwargs)

    monkeypatch.setattr(adapter, "sign_sell", slow_signing)
    with FakeClob() as clob:
        clob.stock(token)
        exchange = PolymarketExchange(clob.client(), clock=clock)
        async with ExitEngine(exchange, clock=clock, permit_max_age=MAX_AGE, settlement_poll_interval=None) as engine:
            engine.track(Position("p1", token, Decimal("10")))
            await exchange.warm_up(token)

            result = await engine.exit("p1", reason="tp", limit_price=P)

        assert (result.outcome, result.state) == (ExitOutcome.NOT_FILLED, "OPEN")
        assert "expired" in (result.error or "") and "nothing sent" in (result.error or "")
        assert clob.count("POST", "/order") == 0 and clob.chain_balance(token) == Decimal("10")
