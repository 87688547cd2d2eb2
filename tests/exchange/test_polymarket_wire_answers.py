"""The answer to a POST /order, for every (status, body) the exchange, its gateway or the network can hand
back, pinned cell by cell: a change to `WIRE_ANSWERS` that moves any cell is seen.

polymarket_wire_answers.json is the specification: regenerated for issue 11 A.1 (only a documented refusal
parsed from the exchange's own JSON body is a "no"; everything unreadable is UNKNOWN), every cell reviewed.
A deliberate change of an answer edits its cells there, in the same change."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from exitguard.errors import ExchangeError, answer_of
from exitguard.exchange.polymarket import answers
from exitguard.exchange.polymarket.orders import SignedSell
from exitguard.exchange.port import Fill
from exitguard.states.answers import SellAnswer

ORDER = "0x" + "ab" * 32
OTHER_ORDER = "0x" + "cd" * 32
SIGNED = SignedSell(order=None, order_id=ORDER, shares=4_350_000, taker_amount=2_392_500, token_id="123",
                    signed_at=1_767_225_600)

STATUSES: tuple[int | None, ...] = (None, 200, 201, 302, 400, 401, 403, 404, 408, 425, 429, 500, 502, 503, 504)

KILLED = "order couldn't be fully filled. FOK orders are fully filled or killed."
BALANCE = "not enough balance / allowance: the balance is not enough -> balance: 0, order amount: 5000000"

DROP = object()
"""A field `matched()` leaves out of the body."""


def matched(**changes: object) -> dict[str, object]:
    body: dict[str, object] = {"errorMsg": "", "orderID": ORDER, "takingAmount": "2.61", "makingAmount": "4.35",
                               "status": "matched", "success": True, "tradeIDs": ["t1", "t2"]}
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


INSERT_ERRORS = {
    "min tick": "order is invalid. Price breaks minimum tick size rules",
    "min size": "order is invalid. Size lower than the minimum",
    "duplicated": "order is invalid. Duplicated. Same order has already been placed, can't be placed again",
    "balance": "not enough balance / allowance",
    "expiration": "invalid expiration",
    "insert": "could not insert order",
    "execution": "could not run the execution",
    "delayed": "order match delayed due to market conditions",
    "delaying": "error delaying the order",
    "fok": "order couldn't be fully filled, FOK orders are fully filled/killed",
    "not ready": "the market is not yet ready to process new orders",
}

BODIES: dict[str, object] = {
    # POST /order errors, tests/fakeclob/WIRE.md section 4 (and its global / lookup errors)
    "invalid payload": {"error": "Invalid order payload"},
    "version mismatch": {"error": "order_version_mismatch"},
    "owner": {"error": "the order owner has to be the owner of the API KEY"},
    "signer": {"error": "the order signer address has to be the address of the API KEY"},
    "token": {"error": "Invalid token id"},
    "signature": {"error": "invalid signature"},
    "duplicated": {"error": f"order {ORDER} is invalid. Duplicated."},
    "amounts": {"error": "invalid amounts, the sell orders maker amount supports a max accuracy of 2 decimals, "
                         "taker amount a max of 4 decimals"},
    "tick": {"error": f"order {ORDER} is invalid. Price (0.555) breaks minimum tick size rule: 0.01"},
    "min size": {"error": f"order {ORDER} is invalid. Size (4.99) lower than the minimum: 5"},
    "balance": {"error": BALANCE},
    "fok killed": {"error": KILLED, "orderID": ORDER},
    "fak no match": {"error": "no orders found to match with FAK order. FAK orders are partially filled or killed "
                              "if no match is found.", "orderID": ORDER},
    "too many requests": {"error": "Too Many Requests"},
    "service not ready": "service not ready",
    "trading disabled": {"error": "Trading is currently disabled. Check polymarket.com for updates"},
    "cancel only": {"error": "Trading is currently cancel-only. New orders are not accepted, but cancels are "
                             "allowed."},
    "order timed out": {"error": "order timed out"},
    "execution": {"error": "could not run the execution"},
    "internal": {"error": "Internal server error"},
    "unauthorized": {"error": "Unauthorized/Invalid api key"},
    "l1 headers": {"error": "Invalid L1 Request headers"},
    "no orderbook": {"error": "No orderbook exists for the requested token id"},
    # issue 12 point 4: a market that closed or resolved (tests/fakeclob/WIRE.md section 2a)
    "orderbook gone": {"error": f"the orderbook 0x{'12' * 32} does not exist"},
    "errorMsg orderbook gone": {"success": False, "errorMsg": f"the orderbook 0x{'12' * 32} does not exist"},
    "market does not exist": {"error": "market does not exist"},
    "market not found": {"error": "market not found"},
    # "Insert Error Messages" of docs.polymarket.com/developers/CLOB/orders/create-order, as {"error"} and errorMsg
    **{f"insert {code}": {"error": text} for code, text in INSERT_ERRORS.items()},
    **{f"errorMsg {code}": {"success": False, "errorMsg": text} for code, text in INSERT_ERRORS.items()},
    "deposit wallet": {"error": "maker address not allowed, please use the deposit wallet flow"},
    # the texts of test_polymarket_units.py
    "units tick": {"error": "invalid order: price (0.555), breaks minimum tick size rule: 0.01"},
    "units min size": {"error": "Size (1) lower than the minimum: 5"},
    "bare duplicated": {"error": "Duplicated"},
    "bare balance": {"error": "not enough balance / allowance"},
    "too early": {"error": "Too Early"},
    "paused": {"error": "trading is currently paused"},
    "internal error": {"error": "internal error"},
    "bad gateway text": "Bad Gateway",
    "request exception": "Request exception!",
    # 200-shaped bodies of an order that reached the book
    "matched": matched(),
    "matched settled": matched(transactionsHashes=["0x" + "ef" * 32]),
    "matched upper case": matched(status="MATCHED"),
    "matched orderId spelling": matched(orderID=DROP, orderId=ORDER),
    "matched no order id": matched(orderID=DROP),
    "matched other order": matched(orderID=OTHER_ORDER),
    "matched no amounts": matched(makingAmount=DROP, takingAmount=DROP),
    "matched zero shares": matched(makingAmount="0"),
    "matched partial": matched(makingAmount="2", takingAmount="1.2"),
    "matched unreadable amounts": matched(makingAmount="abc", takingAmount="NaN"),
    "matched sub-micro amount": matched(makingAmount="4.3500001"),
    "matched no success field": matched(success=DROP),
    "matched success false": matched(success=False),
    "matched with errorMsg": matched(errorMsg="not enough balance / allowance"),
    "delayed": matched(status="delayed", tradeIDs=[]),
    "delayed success false": {"success": False, "errorMsg": "", "status": "delayed"},
    "delayed with errorMsg": {"success": False, "errorMsg": "matching deferred", "status": "delayed"},
    "delayed balance errorMsg": {"success": False, "errorMsg": "not enough balance / allowance", "status": "delayed"},
    "unmatched": matched(status="unmatched", tradeIDs=[]),
    "live": matched(status="live", tradeIDs=[]),
    "no status field": {"success": True, "errorMsg": ""},
    "status null": matched(status=None),
    "success false balance": {"success": False, "errorMsg": BALANCE},
    "success false killed": {"success": False, "errorMsg": KILLED},
    "success false duplicated": {"success": False, "errorMsg": "Duplicated"},
    "success false signature": {"success": False, "errorMsg": "invalid signature"},
    "success false empty": {"success": False, "errorMsg": ""},
    # two signals in one body: which rule comes first decides
    "live other order": matched(status="live", orderID=OTHER_ORDER),
    "matched with error duplicated": matched(error="Duplicated"),
    "duplicated and balance": {"error": "order is invalid. Duplicated. not enough balance / allowance"},
    "balance and fok": {"error": "not enough balance / allowance for FOK order"},
    "killed and delayed": {"success": False, "errorMsg": KILLED, "status": "delayed"},
    "success false unmatched": {"success": False, "errorMsg": "", "status": "unmatched"},
    # shapes nobody documents: gateways, proxies, truncation
    "message field": {"message": "Internal server error"},
    "error not a string": {"error": {"code": 1, "detail": "not enough balance"}},
    "error empty": {"error": ""},
    "allowance only": {"error": "allowance not set for the exchange"},
    "untyped dict mentioning FOK": {"orderType": "FOK", "detail": "bad"},
    "empty dict": {},
    "none": None,
    "empty text": "",
    "plain OK": "OK",
    "json list": [],
    "html 502": "<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
                "</center><hr><center>cloudflare</center></body></html>",
    "html 429 cloudflare": "<!DOCTYPE html><html><head><title>Access denied | clob.polymarket.com used Cloudflare "
                           "to restrict access</title></head><body>Error 1015 You are being rate limited</body></html>",
    "html 403 cloudflare": "<!DOCTYPE html><html><head><title>Attention Required! | Cloudflare</title></head>"
                           "<body>Sorry, you have been blocked</body></html>",
    "truncated json text": '{"errorMsg":"","orderID":"' + ORDER + '","takingAmount":"2.61","status":"mat',
    # issue 11 A.1: bodies that are not well-formed answers (the client hands non-UTF-8 bytes over decoded
    # with U+FFFD), and 2xx bodies whose fields are absurd
    "non-utf8 bytes": "\ufffd\ufffd\u0000{\"status\":\ufffd",
    "html 425": "<html><body><h1>425 Too Early</h1></body></html>",
    "html 503 maintenance": "<html><body>Service Temporarily Unavailable</body></html>",
    "matched negative amount": matched(makingAmount="-4.35"),
    "matched more than the order": matched(makingAmount="5", takingAmount="3"),
    "matched exponent overflow": matched(makingAmount="1e999999999", takingAmount="1e999999999"),
    "matched proceeds above a dollar a share": matched(takingAmount="5"),
    "matched unknown status": matched(status="settled"),
    "matched tradeIDs not a list": matched(tradeIDs="t1"),
    "matched upper-case order id": matched(orderID="0x" + "AB" * 32),
    "unmatched other order": matched(status="unmatched", tradeIDs=[], orderID=OTHER_ORDER),
}

GOLDEN = Path(__file__).with_name("polymarket_wire_answers.json")


def described(answer: Fill | ExchangeError) -> list[Any]:
    if isinstance(answer, Fill):
        return ["Fill", answer.shares, str(answer.avg_price), short(answer.order_id), list(answer.trade_ids)]
    return [type(answer).__name__, short(str(answer)), answer.status]


def short(text: str) -> str:
    return text.replace(ORDER, "{order}").replace(OTHER_ORDER, "{other}")


def observed() -> dict[str, list[Any]]:
    return {f"{status} {name}": described(answers.post_answer(status, body, SIGNED))
            for status in STATUSES for name, body in BODIES.items()}


def test_every_wire_answer_is_what_it_was_when_pinned() -> None:
    expected = json.loads(GOLDEN.read_text())
    actual = observed()
    moved = {cell: (expected.get(cell), now) for cell, now in actual.items() if expected.get(cell) != now}
    assert not moved, "answers moved (pinned, now): " + json.dumps(moved, indent=1)
    assert actual.keys() == expected.keys()


def test_the_rule_that_decides_names_the_answer_class_given() -> None:
    wrong = []
    for status in STATUSES:
        for name, body in BODIES.items():
            answer = answers.post_answer(status, body, SIGNED)
            given = SellAnswer.FILLED if isinstance(answer, Fill) else answer_of(answer)
            if answers.wire_rule(status, body, SIGNED).answer is not given:
                wrong.append(f"{status} {name}")
    assert wrong == []


def test_every_rule_decides_some_cell_of_the_grid() -> None:
    deciding = {answers.wire_rule(status, body, SIGNED) for status in STATUSES for body in BODIES.values()}
    assert [rule.meaning for rule in answers.WIRE_ANSWERS if rule not in deciding] == []


def test_every_rule_has_a_source_and_the_last_leaves_the_outcome_unknown() -> None:
    assert all(rule.source.strip() and rule.meaning.strip() for rule in answers.WIRE_ANSWERS)
    assert answers.WIRE_ANSWERS[-1].answer is SellAnswer.UNKNOWN


def test_one_row_alone_gives_a_fill() -> None:
    fills = {rule.meaning for rule in answers.WIRE_ANSWERS if rule.answer is SellAnswer.FILLED}
    assert len(fills) == 1
