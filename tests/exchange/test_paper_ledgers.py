"""The paper exchange's two ledgers (exitguard.exchange.paper_ledger): CTF token ids and Protocol V2 position ids,
each read and refreshed in the ledger its id names, as the Polymarket adapter does."""

from __future__ import annotations

from decimal import Decimal

import pytest
from eth_utils import keccak

from exitguard import ExitEngine, ExitOutcome, Position
from exitguard.exchange.ledgers import Ledger
from exitguard.exchange.paper import PaperExchange

CTF_TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
V2_POSITION = str((1 << 248) | (int.from_bytes(keccak(text="v2-market:paper")[:16], "big") << 120) | 1)
"""Module 1 (binary), a 16-byte market hash in bits 120..247, bits 40..103 clear, outcome 1: as Protocol V2
builds position ids (tests/exchange/test_ledgers.py)."""

pytestmark = pytest.mark.anyio


@pytest.fixture
def paper() -> PaperExchange:
    exchange = PaperExchange()
    for token in (CTF_TOKEN, V2_POSITION):
        exchange.set_balance(token, Decimal("10"))
        exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    return exchange


async def test_each_id_is_read_in_its_own_ledger(paper: PaperExchange) -> None:
    assert (await paper.get_balance(V2_POSITION), await paper.get_balance(CTF_TOKEN)) == ("10000000", "10000000")
    assert paper.ledger_reads == [(Ledger.POSITION_MANAGER, V2_POSITION), (Ledger.CTF, CTF_TOKEN)]


def test_a_ledger_holds_nothing_of_an_id_it_does_not_name(paper: PaperExchange) -> None:
    assert paper.ledger_balance(Ledger.POSITION_MANAGER, V2_POSITION) == Decimal("10")
    assert paper.ledger_balance(Ledger.CTF, V2_POSITION) == 0
    assert paper.ledger_balance(Ledger.CTF, CTF_TOKEN) == Decimal("10")
    assert paper.ledger_balance(Ledger.POSITION_MANAGER, CTF_TOKEN) == 0


async def test_misreading_v2_through_the_ctf_ledger_reads_zero_and_refreshes_nothing(paper: PaperExchange) -> None:
    paper.lag_balance(V2_POSITION)  # the cache moves only on a refresh
    paper.set_balance(V2_POSITION, Decimal("12"))
    paper.misread_v2_through_ctf()
    assert await paper.get_balance(V2_POSITION) == "0"
    await paper.refresh_balance(V2_POSITION)
    assert await paper.get_balance(CTF_TOKEN) == "10000000"  # a CTF token is where the CTF ledger looks
    paper.misread_v2_through_ctf(False)
    assert await paper.get_balance(V2_POSITION) == "10000000"  # that refresh went to the wrong ledger
    await paper.refresh_balance(V2_POSITION)
    assert await paper.get_balance(V2_POSITION) == "12000000"


async def test_the_hazard_an_engine_misreading_v2_forgets_a_full_position(paper: PaperExchange) -> None:
    """What the routing prevents: every share still held, reported ALREADY_EXITED."""
    paper.misread_v2_through_ctf()
    async with ExitEngine(paper, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id=V2_POSITION, shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.ALREADY_EXITED and paper.balance(V2_POSITION) == 10


async def test_a_v2_position_routed_by_its_id_exits_for_exactly_its_shares(paper: PaperExchange) -> None:
    paper.set_balance(V2_POSITION, Decimal("7"))
    async with ExitEngine(paper, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id=V2_POSITION, shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("7")
    assert paper.balance(V2_POSITION) == 0 and paper.balance(CTF_TOKEN) == 10
    assert {ledger for ledger, token in paper.ledger_reads if token == V2_POSITION} == {Ledger.POSITION_MANAGER}


async def test_a_failed_v2_settlement_returns_the_shares_to_its_ledger(paper: PaperExchange) -> None:
    paper.defer_settlement(V2_POSITION)
    async with ExitEngine(paper, settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id=V2_POSITION, shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.CLOSED
        paper.settle(failed=True)
    assert paper.ledger_balance(Ledger.POSITION_MANAGER, V2_POSITION) == Decimal("10")
    assert await paper.get_balance(V2_POSITION) == "10000000"
