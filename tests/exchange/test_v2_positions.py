"""Protocol V2 positions through the real py-clob-client-v2, over loopback HTTP, against the fake CLOB.

A V2 position's shares sit in the PositionManager ledger (`asset_type=CONDITIONAL-V2`) and its orders are signed
for ExchangeV3 (EIP-712 domain "3"). Read through the CTF ledger (`CONDITIONAL`) the position answers "0", which
an exit engine would take for "already exited": the worst answer, tested first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from eth_utils import keccak
from fakeclob import FakeClob
from py_clob_client_v2.clob_types import (
    AssetType,
    BalanceAllowanceParams,
    OrderArgsV2,
    OrderType,
    PartialCreateOrderOptions,
)
from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.exceptions import PolyApiException
from py_clob_client_v2.order_utils import ExchangeOrderBuilderV2

from exitguard import DivergenceKind, ExitEngine, ExitOutcome, ManualClock, Position, SettlementStatus
from exitguard.exchange.polymarket.positions import Ledger, is_v2_position_id
from exitguard.polymarket import PolymarketExchange

P = Decimal("0.55")


def v2_position_id(market: str, outcome: int, module: int = 1) -> str:
    """A position id as Protocol V2 builds it (the SDK's `decodeV2OutcomePositionId` reads it back): the module in
    the top byte (1 binary, 2 neg-risk, 3 combinatorial), the market's 16-byte hash in bits 120..247, bits 40..103
    reserved (zero), the outcome index in the low byte."""
    digest = int.from_bytes(keccak(text=f"v2-market:{market}")[:16], "big")
    return str((module << 248) | (digest << 120) | outcome)


V2_YES = v2_position_id("btc-above-100k", 0)
V2_NEG_RISK = v2_position_id("fed-cuts-3", 1, module=2)
CTF_TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
"""A CTF token id: a keccak hash, with bits 40..103 not all clear."""


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        for token, v2 in ((V2_YES, True), (CTF_TOKEN, False)):
            fake.add_market(token, tick_size="0.01", min_order_size="5", v2=v2)
            fake.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
            fake.set_balance(token, Decimal("10"))
        yield fake


@pytest.fixture
def exchange(clob: FakeClob) -> PolymarketExchange:
    return PolymarketExchange(clob.client(), call_timeout=5.0)


@pytest.fixture
async def engine(exchange: PolymarketExchange) -> AsyncIterator[ExitEngine]:
    async with ExitEngine(exchange, settlement_poll_interval=None) as running:
        yield running


async def tracked(engine: ExitEngine, exchange: PolymarketExchange, key: str = "p1", token: str = V2_YES,
                  shares: str = "10", **extra: object) -> None:
    engine.track(Position(key=key, token_id=token, shares=Decimal(shares), **extra))  # type: ignore[arg-type]
    await exchange.warm_up(token)


def balance_asset_types(clob: FakeClob) -> list[str]:
    return [r.query.get("asset_type", "") for r in clob.requests if r.path.startswith("/balance-allowance")]


def posted(clob: FakeClob) -> list[dict]:
    return [body["order"] for body in clob.posted_orders if isinstance(body, dict)]


def hash_for(order: dict, *, contract: str, version: str) -> str:
    """The order's EIP-712 hash in the given domain, from the posted fields (the fake parses them the same way)."""
    from fakeclob.signing import parse
    parsed = parse(order, 137, False)
    builder = ExchangeOrderBuilderV2(contract, 137, signer=None, domain_version=version)
    typed = {**parsed.typed_data, "domain": {**parsed.typed_data["domain"], "version": version,
                                             "verifyingContract": contract}}
    return str(builder.build_order_hash(typed))


pytestmark = pytest.mark.anyio


def test_the_ids_are_of_the_kinds_the_tests_claim() -> None:
    assert is_v2_position_id(V2_YES) and is_v2_position_id(V2_NEG_RISK) and not is_v2_position_id(CTF_TOKEN)
    # Both realistic uint256s, neither a small integer (which is a V2 id by the bit rule, positions.py).
    assert int(V2_YES) >> 248 == 1 and int(V2_NEG_RISK) >> 248 == 2 and int(CTF_TOKEN) > 2**250


# -- the worst answer: the CTF ledger says 0 --------------------------------------------------------

def test_a_v2_position_read_through_the_ctf_ledger_answers_zero(clob: FakeClob) -> None:
    """The live hazard, as the exchange shows it to any client: the same position, two ledgers."""
    client = clob.client()
    ctf = client.get_balance_allowance(BalanceAllowanceParams(asset_type=AssetType.CONDITIONAL, token_id=V2_YES))
    v2 = client.get_balance_allowance(BalanceAllowanceParams(asset_type=Ledger.POSITION_MANAGER, token_id=V2_YES))
    assert (ctf["balance"], v2["balance"]) == ("0", "10000000")
    assert get_contract_config(137).exchange_v3 in v2["allowances"]


async def test_a_v2_position_whose_ctf_reading_is_zero_exits_for_exactly_its_shares(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine, logs) -> None:  # noqa: ANN001
    await tracked(engine, exchange)
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("10")
    assert not logs.named("exit_already_complete") and engine.state("p1") == "CLOSED"
    assert balance_asset_types(clob) == ["CONDITIONAL-V2"]
    assert [o["makerAmount"] for o in posted(clob)] == ["10000000"] and posted(clob)[0]["tokenId"] == V2_YES
    assert clob.chain_balance(V2_YES) == 0 and clob.chain_balance(CTF_TOKEN) == 10


async def test_seven_of_ten_shares_held_on_v2_sells_exactly_seven(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    clob.set_balance(V2_YES, Decimal("7"))
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="stop_loss", limit_price=P)
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("7")
    assert [o["makerAmount"] for o in posted(clob)] == ["7000000"]
    assert engine.divergence.by_kind[DivergenceKind.BALANCE_MISMATCH] == 1
    assert clob.chain_balance(V2_YES) == 0


async def test_a_fresh_v2_buy_lagging_in_the_cache_is_refreshed_in_its_own_ledger(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    clob.set_balance(V2_YES, Decimal("0"))
    clob.credit(V2_YES, Decimal("10"))  # on chain, not yet in the exchange's cache
    await tracked(engine, exchange, last_buy_at=datetime.now(UTC))
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("10")
    assert set(balance_asset_types(clob)) == {"CONDITIONAL-V2"} and engine.metrics.balance_refreshes == 1


# -- signing: ExchangeV3, domain "3" ----------------------------------------------------------------

def test_a_v2_position_signed_for_the_ctf_domain_is_refused_by_the_exchange(clob: FakeClob) -> None:
    """What the old adapter sent: a V2 position signed as a CTF token (domain "2", CTFExchangeV2)."""
    client = clob.client()
    order = client.create_order(OrderArgsV2(token_id=V2_YES, price=0.55, size=10, side="SELL"),
                                PartialCreateOrderOptions(tick_size="0.01", neg_risk=False, version=2))
    with pytest.raises(PolyApiException) as refused:
        client.post_order(order, OrderType.FOK)
    assert refused.value.status_code == 400 and refused.value.error_msg == {"error": "invalid signature"}
    assert clob.orders == {} and clob.chain_balance(V2_YES) == 10


def test_the_clients_own_v3_order_is_accepted_and_a_ctf_token_signed_v3_is_refused(clob: FakeClob) -> None:
    clob.settlement = "instant"  # else the client's post_order polls /data/trades for 30 s
    client = clob.client()
    order = client.create_order(OrderArgsV2(position_id=V2_YES, price=0.55, size=10, side="SELL"),
                                PartialCreateOrderOptions(tick_size="0.01"))
    assert client.post_order(order, OrderType.FOK)["status"] == "matched"
    wrong = client.create_order(OrderArgsV2(position_id=CTF_TOKEN, price=0.55, size=10, side="SELL"),
                                PartialCreateOrderOptions(tick_size="0.01"))
    with pytest.raises(PolyApiException) as refused:
        client.post_order(wrong, OrderType.FOK)
    assert refused.value.error_msg == {"error": "invalid signature"} and clob.chain_balance(CTF_TOKEN) == 10


async def test_the_order_of_a_v2_position_is_signed_for_exchange_v3(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    config = get_contract_config(137)
    [order] = posted(clob)
    assert result.outcome is ExitOutcome.CLOSED and result.order_id in clob.orders
    assert result.order_id == hash_for(order, contract=config.exchange_v3, version="3")
    assert result.order_id != hash_for(order, contract=config.exchange_v2, version="2")


async def test_a_ctf_token_is_still_signed_for_ctf_exchange_v2(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    await tracked(engine, exchange, token=CTF_TOKEN)
    clob.reset_requests()
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    [order] = posted(clob)
    assert result.outcome is ExitOutcome.CLOSED and balance_asset_types(clob) == ["CONDITIONAL"]
    assert result.order_id == hash_for(order, contract=get_contract_config(137).exchange_v2, version="2")


async def test_a_v2_position_whose_book_claims_neg_risk_is_still_signed_for_exchange_v3(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine) -> None:
    """ExchangeV3 settles every V2 module, neg-risk ones too (module 2 in the id's top byte): the id decides."""
    clob.add_market(V2_NEG_RISK, tick_size="0.01", min_order_size="5", neg_risk=True, v2=True)
    clob.set_bids(V2_NEG_RISK, [(Decimal("0.60"), Decimal("100"))])
    clob.set_balance(V2_NEG_RISK, Decimal("10"))
    await tracked(engine, exchange, token=V2_NEG_RISK)
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    [order] = posted(clob)
    assert result.outcome is ExitOutcome.CLOSED and result.shares_sold == Decimal("10")
    assert result.order_id == hash_for(order, contract=get_contract_config(137).exchange_v3, version="3")


def test_the_order_id_of_a_v2_position_is_its_hash_in_the_v3_domain_whatever_the_book_says() -> None:
    from py_clob_client_v2.signer import Signer

    from exitguard.exchange.polymarket.orders import ExactAmountsBuilder, order_hash, sign_sell
    from exitguard.states import MarketRules, SellPermit

    builder = ExactAmountsBuilder(Signer("0x" + "4c" * 32, 137))
    permit = SellPermit(position_key="p", token_id=V2_YES, shares=7_000_000, verified_balance=7_000_000,
                        verified_at=0.0, attempt_id="a1")
    signed = sign_sell(builder, permit, P, MarketRules(), neg_risk=True, chain_id=137)
    v3 = ExchangeOrderBuilderV2(get_contract_config(137).exchange_v3, 137, builder.signer, domain_version="3")
    assert signed.order_id == v3.build_order_hash(v3.build_order_typed_data(signed.order))
    assert order_hash(signed.order, builder, neg_risk=False, chain_id=137) == signed.order_id
    assert (signed.order.tokenId, signed.order.makerAmount) == (V2_YES, "7000000")


# -- unknown outcomes and settlement ----------------------------------------------------------------

@pytest.mark.parametrize("forget", [None, "404"], ids=["order_endpoint", "trades_only"])
async def test_an_unknown_sell_of_a_v2_position_is_resolved_by_its_v3_order_hash(
        clob: FakeClob, forget: str | None) -> None:
    clock = ManualClock(datetime.now(UTC))
    exchange = PolymarketExchange(clob.client(), call_timeout=5.0)
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None,
                          resolve_backoff=(3600.0, 3600.0)) as engine:
        await tracked(engine, exchange)
        clob.forget_finished_orders = forget
        clob.lose_next_response("/order")
        lost = await engine.exit("p1", reason="take_profit", limit_price=P)
        assert lost.outcome is ExitOutcome.UNKNOWN and clob.chain_balance(V2_YES) == 0
        [order_id] = clob.orders  # the id the exchange computed, in the ExchangeV3 domain
        settled = await engine.reconcile("p1")
        assert (settled.outcome, settled.order_id) == (ExitOutcome.CLOSED, order_id)
        assert clob.count("POST", "/order") == 1


async def test_a_v2_fill_is_followed_until_its_settlement(clob: FakeClob, exchange: PolymarketExchange,
                                                          engine: ExitEngine) -> None:
    await tracked(engine, exchange)
    result = await engine.exit("p1", reason="take_profit", limit_price=P)
    assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == ["p1"]
    assert await engine.check_settlements() == {"p1": SettlementStatus.PENDING}
    clob.settle_trades("CONFIRMED")
    assert await engine.check_settlements() == {"p1": SettlementStatus.SETTLED}


async def test_a_failed_v2_settlement_returns_the_shares_to_the_v2_ledger_and_they_exit_again(
        clob: FakeClob, exchange: PolymarketExchange, engine: ExitEngine, logs) -> None:  # noqa: ANN001
    await tracked(engine, exchange)
    await engine.exit("p1", reason="take_profit", limit_price=P)
    clob.settle_trades("FAILED")
    assert clob.chain_balance(V2_YES) == 10  # back in the PositionManager ledger
    assert await engine.check_settlements() == {"p1": SettlementStatus.FAILED}
    returned = logs.named("exit_settlement_failed")[0]["returned_position"]
    again = await engine.exit(returned, reason="settlement_failed", limit_price=P)
    assert again.outcome is ExitOutcome.CLOSED and again.shares_sold == Decimal("10")
    assert clob.chain_balance(V2_YES) == 0 and clob.chain_balance(CTF_TOKEN) == 10
