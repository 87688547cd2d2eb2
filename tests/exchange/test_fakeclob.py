"""The fake CLOB, driven only through the real py-clob-client-v2 over loopback HTTP.

Each test pins one wire behaviour the adapter relies on (see tests/fakeclob/WIRE.md for sources).
Orders are posted with `settlement = "instant"` or through the client's own lower-level pieces
(`_l2_headers` + `_post`), because `post_order` polls /data/trades for up to 30 s when a reply
carries trade ids without transaction hashes. No sleeps; only the server each test starts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import pytest
from fakeclob import FakeClob
from py_clob_client_v2 import ClobClient
from py_clob_client_v2.clob_types import (
    ApiCreds,
    AssetType,
    BalanceAllowanceParams,
    OrderArgsV2,
    OrderType,
    PartialCreateOrderOptions,
    RequestArgs,
    TradeParams,
)
from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.exceptions import PolyApiException
from py_clob_client_v2.headers.headers import create_level_2_headers
from py_clob_client_v2.order_utils import ExchangeOrderBuilderV2, Side
from py_clob_client_v2.order_utils.model.order_data_v2 import (
    OrderDataV2,
    order_to_json_v2,
)
from py_clob_client_v2.signer import Signer

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    """10 shares of TOKEN (tick 0.01, minimum 5) against bids 4 @ 0.57 and 30 @ 0.55."""
    with FakeClob() as fake:
        fake.add_market(TOKEN, tick_size="0.01", min_order_size="5")
        fake.set_bids(TOKEN, [(Decimal("0.55"), Decimal("30")), (Decimal("0.57"), Decimal("4"))])
        fake.set_balance(TOKEN, Decimal("10"))
        yield fake


@pytest.fixture
def client(clob: FakeClob) -> ClobClient:
    return clob.client()


def conditional(token: str = TOKEN) -> BalanceAllowanceParams:
    return BalanceAllowanceParams(asset_type=AssetType.CONDITIONAL, token_id=token)


def sell(client: ClobClient, size: float, price: float = 0.55):
    return client.create_order(OrderArgsV2(token_id=TOKEN, price=price, size=size, side="SELL"))


def post_raw(client: ClobClient, order, order_type: str = OrderType.FOK):
    """post_order without its settlement polling: the same payload, headers and POST."""
    payload = order_to_json_v2(order, client.creds.api_key, order_type)
    serialized = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
    headers = create_level_2_headers(client.signer, client.creds, RequestArgs(
        method="POST", request_path="/order", body=payload, serialized_body=serialized))
    return client._post(f"{client.host}/order", headers=headers, data=serialized)


def rejection(call) -> PolyApiException:
    with pytest.raises(PolyApiException) as caught:
        call()
    return caught.value


def hand_signed(clob: FakeClob, maker_amount: int, taker_amount: int):
    """A SELL signed with exact raw amounts (the client's builder would round them)."""
    contract = get_contract_config(clob.chain_id).exchange_v2
    builder = ExchangeOrderBuilderV2(contract, clob.chain_id, Signer(clob.private_key, clob.chain_id))
    return builder.build_signed_order(OrderDataV2(
        maker=clob.address, signer=clob.address, tokenId=TOKEN, makerAmount=str(maker_amount),
        takerAmount=str(taker_amount), side=Side.SELL))


# --- lookups and auth ---------------------------------------------------------------------------------

def test_lookups_the_client_makes_before_an_order(clob: FakeClob, client: ClobClient) -> None:
    assert client.get_tick_size(TOKEN) == "0.01"
    assert client.get_neg_risk(TOKEN) is False
    assert client.get_version() == 2
    assert client.get_ok() == "OK"
    assert isinstance(client.get_server_time(), int)
    info = client.get_clob_market_info(client._get(f"{clob.host}/markets-by-token/{TOKEN}")["condition_id"])
    assert info["t"][0] == {"t": TOKEN, "o": "Yes"} and info["mts"] == 0.01 and info["nr"] is False
    book = client.get_order_book(TOKEN)
    assert [b["price"] for b in book["bids"]] == ["0.55", "0.57"]          # best bid last
    assert client.get_order_book_hash(book) == book["hash"]


def test_unknown_token_is_a_404(client: ClobClient) -> None:
    error = rejection(lambda: client.get_tick_size("999"))
    assert (error.status_code, error.error_msg) == (404, {"error": "market not found"})
    error = rejection(lambda: client.get_order_book("999"))
    assert error.error_msg == {"error": "No orderbook exists for the requested token id"}


def test_wrong_secret_is_refused_with_401(clob: FakeClob) -> None:
    wrong = ApiCreds(clob.creds.api_key, "c2VjcmV0LXNlY3JldC1zZWNyZXQ=", clob.creds.api_passphrase)
    client = ClobClient(clob.host, clob.chain_id, key=clob.private_key, creds=wrong)
    error = rejection(lambda: client.get_balance_allowance(conditional()))
    assert (error.status_code, error.error_msg) == (401, {"error": "Unauthorized/Invalid api key"})


def test_l1_derives_the_registered_credentials(clob: FakeClob) -> None:
    client = ClobClient(clob.host, clob.chain_id, key=clob.private_key)
    assert client.derive_api_key() == clob.creds
    stranger = ClobClient(clob.host, clob.chain_id, key="0x" + "11" * 32)
    assert rejection(stranger.derive_api_key).status_code == 400


# --- balance ----------------------------------------------------------------------------------------

def test_balance_is_a_raw_string_from_the_lagging_cache(clob: FakeClob, client: ClobClient) -> None:
    assert client.get_balance_allowance(conditional())["balance"] == "10000000"
    clob.credit(TOKEN, Decimal("4.8935"))                    # a fresh buy lands on chain
    assert client.get_balance_allowance(conditional())["balance"] == "10000000"
    assert client.update_balance_allowance(conditional()) == ""
    assert client.get_balance_allowance(conditional())["balance"] == "14893500"
    assert clob.cached_balance(TOKEN) == clob.chain_balance(TOKEN) == Decimal("14.8935")


# --- POST /order ------------------------------------------------------------------------------------

def test_matched_fok_reply_trades_and_balances(clob: FakeClob, client: ClobClient) -> None:
    clob.settlement = "instant"
    reply = client.post_order(sell(client, 6), OrderType.FOK)
    # 4 @ 0.57 + 2 @ 0.55: the better bid first, price improvement to the seller.
    assert reply["status"] == "matched" and reply["success"] is True and reply["errorMsg"] == ""
    assert (reply["makingAmount"], reply["takingAmount"]) == ("6", "3.38")
    assert len(reply["tradeIDs"]) == len(reply["transactionsHashes"]) == 2
    assert clob.chain_balance(TOKEN) == clob.cached_balance(TOKEN) == Decimal("4")
    order = client.get_order(reply["orderID"])
    assert (order["status"], order["size_matched"], order["original_size"]) == ("MATCHED", "6", "6")
    assert order["associate_trades"] == reply["tradeIDs"]
    trades = client.get_trades(TradeParams(id=reply["tradeIDs"][0]))
    assert [(t["size"], t["price"], t["status"]) for t in trades] == [("4", "0.57", "CONFIRMED")]
    assert trades[0]["transaction_hash"] == reply["transactionsHashes"][0]


def test_order_id_is_the_hash_the_client_computes(clob: FakeClob, client: ClobClient) -> None:
    clob.settlement = "instant"
    order = sell(client, 5)
    contract = get_contract_config(clob.chain_id).exchange_v2
    builder = ExchangeOrderBuilderV2(contract, clob.chain_id, client.signer)
    expected = builder.build_order_hash(builder.build_order_typed_data(order))
    assert client.post_order(order, OrderType.FOK)["orderID"] == expected


def test_manual_settlement_then_confirmed_or_failed(clob: FakeClob, client: ClobClient) -> None:
    reply = post_raw(client, sell(client, 6))
    assert "transactionsHashes" not in reply and len(reply["tradeIDs"]) == 2
    pending = client.get_trades(TradeParams(asset_id=TOKEN))
    assert {(t["status"], t["transaction_hash"]) for t in pending} == {("MATCHED", "")}

    first, second = reply["tradeIDs"]
    assert clob.settle_trades("CONFIRMED", [first]) == [first]
    assert client.get_trades(TradeParams(id=first))[0]["transaction_hash"].startswith("0x")
    clob.settle_trades("FAILED", [second])                   # 2 shares go back on chain
    assert client.get_trades(TradeParams(id=second))[0]["status"] == "FAILED"
    assert (clob.chain_balance(TOKEN), clob.cached_balance(TOKEN)) == (Decimal("6"), Decimal("4"))
    client.update_balance_allowance(conditional())
    assert client.get_balance_allowance(conditional())["balance"] == "6000000"


def test_fok_that_cannot_fill_is_killed_and_then_duplicated(clob: FakeClob, client: ClobClient) -> None:
    order = sell(client, 5, price=0.58)                      # no bid at or above 0.58
    error = rejection(lambda: post_raw(client, order))
    assert error.status_code == 400
    assert error.error_msg["error"] == "order couldn't be fully filled. FOK orders are fully filled or killed."
    killed = client.get_order(error.error_msg["orderID"])
    assert (killed["status"], killed["size_matched"]) == ("CANCELED", "0")
    assert clob.chain_balance(TOKEN) == Decimal("10")
    again = rejection(lambda: post_raw(client, order))
    assert again.error_msg == {"error": f"order {killed['id']} is invalid. Duplicated."}


def test_not_enough_balance_reads_the_cache(clob: FakeClob, client: ClobClient) -> None:
    clob.set_balance(TOKEN, Decimal("0"))
    clob.credit(TOKEN, Decimal("5"))                          # on chain, not yet in the cache
    error = rejection(lambda: post_raw(client, sell(client, 5)))
    assert error.error_msg == {"error": "not enough balance / allowance: the balance is not enough "
                                        "-> balance: 0, order amount: 5000000"}
    assert clob.orders == {}                                 # refused before matching: not recorded


def test_price_off_the_tick_is_refused(clob: FakeClob, client: ClobClient) -> None:
    order = sell(client, 5)                                   # client cached tick 0.01: price 0.55
    clob.add_market(TOKEN, tick_size="0.1")                  # the market's tick changes
    error = rejection(lambda: post_raw(client, order))
    assert error.error_msg["error"].endswith("is invalid. Price (0.55) breaks minimum tick size rule: 0.1")


def test_size_below_the_market_minimum_is_refused(client: ClobClient) -> None:
    error = rejection(lambda: post_raw(client, sell(client, 4.99)))
    assert error.error_msg["error"].endswith("is invalid. Size (4.99) lower than the minimum: 5")


def test_size_finer_than_a_hundredth_is_refused(clob: FakeClob, client: ClobClient) -> None:
    error = rejection(lambda: post_raw(client, hand_signed(clob, 5_005_000, 2_752_750)))
    assert error.error_msg["error"].startswith("invalid amounts, the sell orders maker amount supports")


def test_tampered_order_fails_the_signature_check(client: ClobClient) -> None:
    order = sell(client, 5)
    order.makerAmount = "6000000"                             # signed for 5 shares, posted for 6
    error = rejection(lambda: post_raw(client, order))
    assert error.error_msg == {"error": "invalid signature"}


def test_v1_order_is_a_version_mismatch(clob: FakeClob, client: ClobClient) -> None:
    order = client.create_order(OrderArgsV2(token_id=TOKEN, price=0.55, size=5, side="SELL"),
                                PartialCreateOrderOptions(version=1))
    error = rejection(lambda: client.post_order(order, OrderType.FOK))
    assert error.error_msg == {"error": "order_version_mismatch"}


# --- /data/order and /data/trades -------------------------------------------------------------------

def test_unknown_order_id_is_null(client: ClobClient) -> None:
    assert client.get_order("0x" + "ab" * 32) is None


def test_trades_paginate_to_lte(clob: FakeClob, client: ClobClient) -> None:
    clob.settlement = "instant"
    clob.trades_page_size = 4
    clob.set_bids(TOKEN, [(Decimal("0.50"), Decimal("1"))] * 10)
    client.post_order(sell(client, 10, price=0.5), OrderType.FOK)       # ten levels, ten trades
    first = client.get_trades_paginated(TradeParams(asset_id=TOKEN))
    assert (first["count"], first["limit"], first["next_cursor"]) == (4, 4, "NA==")
    clob.reset_requests()
    trades = client.get_trades(TradeParams(asset_id=TOKEN))
    assert len(trades) == 10 and len({t["id"] for t in trades}) == 10
    cursors = [r.query["next_cursor"] for r in clob.requests]
    assert cursors == ["MA==", "NA==", "OA=="]
    last = client.get_trades_paginated(TradeParams(asset_id=TOKEN), next_cursor="OA==")
    assert (last["count"], last["next_cursor"]) == (2, "LTE=")


# --- switches ---------------------------------------------------------------------------------------

def test_fail_next_answers_without_executing(clob: FakeClob, client: ClobClient) -> None:
    order = sell(client, 5)
    clob.fail_next(1, 503, path="/order")
    error = rejection(lambda: post_raw(client, order))
    assert error.status_code == 503
    assert error.error_msg == {"error": "Trading is currently disabled. Check polymarket.com for updates"}
    assert clob.orders == {} and clob.chain_balance(TOKEN) == Decimal("10")
    clob.fail_next(1, 425)
    assert rejection(lambda: client.get_balance_allowance(conditional())).error_msg == "service not ready"
    clob.fail_next(1, 429, path="/order")
    assert rejection(lambda: post_raw(client, order)).error_msg == {"error": "Too Many Requests"}
    assert post_raw(client, order)["status"] == "matched"       # the switch is spent
    assert clob.count("POST", "/order") == 3 and len(clob.posted_orders) == 3


def test_lost_response_executes_and_is_found_by_lookup(clob: FakeClob, client: ClobClient) -> None:
    order = sell(client, 5)
    clob.lose_next_response("/order")
    error = rejection(lambda: post_raw(client, order))
    assert (error.status_code, error.error_msg) == (None, "Request exception!")
    assert clob.chain_balance(TOKEN) == Decimal("5")           # it did execute
    (order_id,) = clob.orders
    assert client.get_order(order_id)["status"] == "MATCHED"   # the connection is usable again


def test_after_reply_settlement_confirms_trades_but_answers_without_hashes() -> None:
    from decimal import Decimal as D

    from py_clob_client_v2.clob_types import OrderArgsV2, OrderType, TradeParams

    with FakeClob() as clob:
        clob.add_market("555", tick_size="0.01", min_order_size="5")
        clob.set_bids("555", [(D("0.60"), D("100"))])
        clob.set_balance("555", D("10"))
        clob.settlement = "after_reply"
        client = clob.client()
        order = client.create_order(OrderArgsV2(token_id="555", price=0.55, size=10, side="SELL"))
        answer = client.post_order(order, OrderType.FOK)  # polls /data/trades once: already CONFIRMED
        assert answer["status"] == "matched" and answer["transactionsHashes"]
        assert clob.count("GET", "/data/trades") == 1
        [trade] = client.get_trades(TradeParams(id=answer["tradeIDs"][0]))
        assert trade["status"] == "CONFIRMED"
