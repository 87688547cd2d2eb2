"""The adapter's pure parts: settings, answer mapping, exact signing, token buckets (no network)."""

from __future__ import annotations

from decimal import Decimal

import anyio
import pytest
from py_clob_client_v2.clob_types import CreateOrderOptions, OrderArgsV2
from py_clob_client_v2.order_builder.builder import OrderBuilder
from py_clob_client_v2.signer import Signer

from exitguard import ManualClock
from exitguard.errors import (
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.polymarket import answers, reads
from exitguard.exchange.polymarket.orders import ExactAmountsBuilder, sign_sell
from exitguard.exchange.polymarket.ratelimit import Family, Limit, RateLimited, RateLimits, TokenBucket
from exitguard.exchange.port import Fill, SettlementStatus
from exitguard.exchange.rules import market_rules
from exitguard.polymarket import PolymarketSettings
from exitguard.states import InvalidValue, MarketRules, PermitError, SellPermit

KEY = "0x" + "4c" * 32
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQ="
PASSPHRASE = "pass-phrase-9f3"


CTF_TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
"""A CTF token id (a hash): "123" would be a Protocol V2 position id by the bit rule, signed for ExchangeV3."""


def permit(shares: int = 4_350_000, attempt: str = "a1", token: str = CTF_TOKEN) -> SellPermit:
    return SellPermit(position_key="p", token_id=token, shares=shares, verified_balance=shares, verified_at=0.0,
                      attempt_id=attempt)


@pytest.fixture
def builder() -> ExactAmountsBuilder:
    return ExactAmountsBuilder(Signer(KEY, 137))


# -- settings --------------------------------------------------------------------------------------

FULL_ENV = {
    "POLYMARKET_PRIVATE_KEY": KEY,
    "POLYMARKET_API_KEY": "key-1",
    "POLYMARKET_API_SECRET": SECRET,
    "POLYMARKET_API_PASSPHRASE": PASSPHRASE,
}


def test_settings_from_env_read_every_variable() -> None:
    env = {**FULL_ENV, "POLYMARKET_HOST": "http://127.0.0.1:9/", "POLYMARKET_CHAIN_ID": "80002",
           "POLYMARKET_SIGNATURE_TYPE": "2", "POLYMARKET_FUNDER": "0x" + "ab" * 20}
    settings = PolymarketSettings.from_env(env)
    assert (settings.host, settings.chain_id, settings.signature_type) == ("http://127.0.0.1:9", 80002, 2)
    assert settings.has_api_creds and settings.funder == "0x" + "ab" * 20


def test_settings_repr_and_str_never_show_secrets() -> None:
    settings = PolymarketSettings.from_env(FULL_ENV)
    for text in (repr(settings), str(settings), f"{settings}"):
        for secret in (KEY, KEY[2:], SECRET, PASSPHRASE):
            assert secret not in text
        assert "<redacted>" in text


@pytest.mark.parametrize(("env", "variable"), [
    ({}, "POLYMARKET_PRIVATE_KEY"),
    ({"POLYMARKET_PRIVATE_KEY": "0x1234"}, "POLYMARKET_PRIVATE_KEY"),
    ({**FULL_ENV, "POLYMARKET_CHAIN_ID": "abc"}, "POLYMARKET_CHAIN_ID"),
    ({**FULL_ENV, "POLYMARKET_CHAIN_ID": "1"}, "POLYMARKET_CHAIN_ID"),
    ({**FULL_ENV, "POLYMARKET_HOST": "clob.polymarket.com"}, "POLYMARKET_HOST"),
    ({**FULL_ENV, "POLYMARKET_SIGNATURE_TYPE": "7"}, "POLYMARKET_SIGNATURE_TYPE"),
    ({**FULL_ENV, "POLYMARKET_SIGNATURE_TYPE": "1"}, "POLYMARKET_FUNDER"),
    ({**FULL_ENV, "POLYMARKET_FUNDER": "0x12"}, "POLYMARKET_FUNDER"),
    ({"POLYMARKET_PRIVATE_KEY": KEY, "POLYMARKET_API_KEY": "k"}, "POLYMARKET_API_SECRET"),
])
def test_bad_settings_name_the_variable_and_never_echo_a_secret(env: dict[str, str], variable: str) -> None:
    with pytest.raises(InvalidValue) as caught:
        PolymarketSettings.from_env(env)
    assert variable in str(caught.value)
    for secret in (KEY, SECRET, PASSPHRASE, "0x1234"):
        if "PRIVATE_KEY" in variable or secret != "0x1234":
            assert secret not in str(caught.value)


# -- exact signing ---------------------------------------------------------------------------------

def test_the_clients_float_rounding_would_sell_less_than_asked(builder: ExactAmountsBuilder) -> None:
    """The trait the adapter works around: 4.35 shares become 4.34 in the client's own builder."""
    order = OrderBuilder(Signer(KEY, 137)).build_order(
        OrderArgsV2(token_id="123", price=0.55, size=4.35, side="SELL"),
        CreateOrderOptions(tick_size="0.01", neg_risk=False))
    assert order.makerAmount == "4340000"


@pytest.mark.parametrize("shares", [4_350_000, 5_000_000, 1_230_000, 999_990_000, 10_000])
def test_signed_order_sells_exactly_the_permits_shares(builder: ExactAmountsBuilder, shares: int) -> None:
    signed = sign_sell(builder, permit(shares), Decimal("0.55"), MarketRules(), neg_risk=False, chain_id=137)
    assert int(signed.order.makerAmount) == shares
    assert Decimal(signed.order.takerAmount) == Decimal(shares) * Decimal("0.55")
    assert signed.order_id.startswith("0x") and len(signed.order_id) == 66


def test_order_ids_differ_between_neg_risk_and_plain_contracts(builder: ExactAmountsBuilder) -> None:
    signed = sign_sell(builder, permit(), Decimal("0.55"), MarketRules(), neg_risk=False, chain_id=137)
    from exitguard.exchange.polymarket.orders import order_hash
    assert order_hash(signed.order, builder, neg_risk=False, chain_id=137) == signed.order_id
    assert order_hash(signed.order, builder, neg_risk=True, chain_id=137) != signed.order_id


def test_taker_amount_rounds_down_to_four_decimals_on_fine_ticks(builder: ExactAmountsBuilder) -> None:
    rules = market_rules(tick_size="0.001", min_order_size="1")
    signed = sign_sell(builder, permit(10_010_000), Decimal("0.555"), rules, neg_risk=False, chain_id=137)
    assert signed.order.makerAmount == "10010000"
    assert signed.order.takerAmount == "5555500"  # 5.55555 USDC rounded down to 5.5555


def test_amounts_that_are_not_whole_micro_units_are_refused(builder: ExactAmountsBuilder) -> None:
    with pytest.raises(PermitError):
        sign_sell(builder, permit(4_350_001), Decimal("0.55"), MarketRules(), neg_risk=False, chain_id=137)


# -- answer mapping --------------------------------------------------------------------------------

@pytest.fixture
def signed(builder: ExactAmountsBuilder) -> answers.SignedSell:  # type: ignore[name-defined]
    return sign_sell(builder, permit(), Decimal("0.55"), MarketRules(), neg_risk=False, chain_id=137)


def test_matched_reply_is_a_fill_with_trades_to_follow(signed) -> None:  # type: ignore[no-untyped-def]
    body = {"success": True, "errorMsg": "", "orderID": signed.order_id, "status": "matched",
            "makingAmount": "4.35", "takingAmount": "2.6100", "tradeIDs": ["t1"], "transactionsHashes": []}
    fill = answers.post_answer(200, body, signed)
    assert fill == Fill(shares=4_350_000, avg_price=Decimal("0.6"), order_id=signed.order_id, trade_ids=("t1",))


def test_matched_reply_with_hashes_is_already_settled(signed) -> None:  # type: ignore[no-untyped-def]
    body = {"success": True, "errorMsg": "", "orderID": signed.order_id, "status": "matched",
            "makingAmount": "4.35", "takingAmount": "2.3925", "tradeIDs": ["t1"], "transactionsHashes": ["0xab"]}
    fill = answers.post_answer(200, body, signed)
    assert isinstance(fill, Fill) and fill.trade_ids == ()


@pytest.mark.parametrize(("status", "body", "kind"), [
    (400, {"error": "order couldn't be fully filled. FOK orders are fully filled or killed."}, OrderKilled),
    (400, {"error": "not enough balance / allowance"}, InsufficientBalance),
    (400, {"error": "invalid order: price (0.555), breaks minimum tick size rule: 0.01"}, OrderRejected),
    (400, {"error": "Size (1) lower than the minimum: 5"}, OrderRejected),
    (400, {"error": "order_version_mismatch"}, OrderRejected),
    (400, {"error": "Duplicated"}, UnknownOutcome),
    (429, {"error": "Too Many Requests"}, TransientError),
    (425, {"error": "Too Early"}, TransientError),
    (503, {"error": "trading is currently paused"}, TransientError),
    (401, {"error": "Unauthorized/Invalid api key"}, OrderRejected),
    (500, {"error": "internal error"}, UnknownOutcome),
    (502, "Bad Gateway", UnknownOutcome),
    (None, "Request exception!", UnknownOutcome),
    (200, {"success": True, "errorMsg": "", "status": "delayed"}, UnknownOutcome),
])
def test_each_answer_maps_to_the_engines_kind(signed, status, body, kind) -> None:  # type: ignore[no-untyped-def]
    answer = answers.post_answer(status, body, signed)
    assert type(answer) is kind
    assert answer.definitely_not_filled is (kind not in (UnknownOutcome,))


def test_settlement_of_trades() -> None:
    fill = Fill(shares=5_000_000, avg_price=Decimal("0.6"), order_id="0x1", trade_ids=("t1", "t2"))
    assert reads.settlement(fill, [{"id": "t1", "status": "MINED"}]).status is SettlementStatus.PENDING
    assert reads.settlement(fill, [{"id": "t1", "status": "CONFIRMED"},
                                     {"id": "t2", "status": "MINED"}]).status is SettlementStatus.SETTLED
    failed = reads.settlement(fill, [{"id": "t1", "status": "CONFIRMED"},
                                       {"id": "t2", "status": "FAILED", "size": "2"}])
    assert failed.status is SettlementStatus.FAILED and failed.returned_shares == 2_000_000


# -- token buckets ---------------------------------------------------------------------------------

class VirtualTime:
    def __init__(self) -> None:
        self.clock = ManualClock()

    async def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await anyio.lowlevel.checkpoint()


@pytest.mark.anyio
async def test_bucket_admits_a_burst_then_the_refill_rate() -> None:
    time = VirtualTime()
    bucket = TokenBucket(Limit(200, 10.0), now=time.clock.monotonic, sleep=time.sleep)
    start = time.clock.monotonic()
    admitted = []
    for _ in range(600):
        await bucket.acquire()
        admitted.append(time.clock.monotonic() - start)
    # Any 10 s window holds at most the burst plus what refilled during it.
    for i, start in enumerate(admitted):
        inside = sum(1 for t in admitted[i:] if t < start + 10.0)
        assert inside <= 200 + 200
    assert admitted[199] == 0.0 and admitted[-1] == pytest.approx(20.0, abs=0.06)


@pytest.mark.anyio
async def test_concurrent_waiters_leave_in_rate_order() -> None:
    time = VirtualTime()
    limits = RateLimits({Family.BALANCE: Limit(2, 1.0)}, now=time.clock.monotonic, sleep=time.sleep)
    admitted: list[float] = []
    start = time.clock.monotonic()

    async def one() -> None:
        await limits.acquire(Family.BALANCE)
        admitted.append(time.clock.monotonic() - start)

    async with anyio.create_task_group() as tg:
        for _ in range(6):
            tg.start_soon(one)
    assert admitted == pytest.approx([0.0, 0.0, 0.5, 1.0, 1.5, 2.0])


@pytest.mark.parametrize(("requests", "seconds"), [(0, 1.0), (True, 1.0), (5, 0), (5, -1.0), (2.5, 1.0)])
def test_bad_limits_name_the_field(requests: object, seconds: object) -> None:
    with pytest.raises(InvalidValue):
        Limit(requests, seconds)  # type: ignore[arg-type]


@pytest.mark.anyio
async def test_a_wait_longer_than_allowed_takes_nothing_and_says_when() -> None:
    time = VirtualTime()
    bucket = TokenBucket(Limit(1, 10.0), now=time.clock.monotonic, sleep=time.sleep)
    await bucket.acquire(max_wait=0.5)
    with pytest.raises(RateLimited, match="next slot in 10.000 s"):
        await bucket.acquire(max_wait=0.5)
    time.clock.advance(10.0)
    await bucket.acquire(max_wait=0.5)  # the refused call took nothing
