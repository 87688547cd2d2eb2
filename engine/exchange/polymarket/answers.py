"""What each CLOB answer means for an exit, and what the other reads of the adapter return.

The answer to a POST /order is decided by one table, `WIRE_ANSWERS`: rows are tried in order, the first
whose `when` holds decides, and each row names its source. It gives the answer class (`SellAnswer`, carried
by the `ExchangeError` subclass it raises); what the engine then does with that class is decided in
`exitguard.states.answers.SELL_ANSWERS`. Only a definite, parsed "no" may be a not-filled class: whatever
the table cannot place falls through to its last row, UNKNOWN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from exitguard.errors import (
    ExchangeError,
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.port import Fill, LookupStatus, SellLookup, Settlement, SettlementStatus
from exitguard.exchange.rules import market_rules
from exitguard.states import MICRO, InvalidValue, MarketRules, SellPermit
from exitguard.states.answers import SellAnswer

if TYPE_CHECKING:
    from exitguard.exchange.polymarket.orders import SignedSell

SETTLED_TRADE_STATUSES = frozenset({"MINED", "CONFIRMED"})
FAILED_TRADE_STATUS = "FAILED"
ORDER_VERSION_MISMATCH = "order_version_mismatch"


def error_text(body: object) -> str:
    """The error message of a CLOB answer body: {"error": ...}, {"errorMsg": ...} or plain text."""
    if isinstance(body, dict):
        for field in ("error", "errorMsg", "message"):
            value = body.get(field)
            if value:
                return value if isinstance(value, str) else str(value)
        return str(body)
    return "" if body is None else str(body)


def is_version_mismatch(body: object) -> bool:
    return ORDER_VERSION_MISMATCH in error_text(body)


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a POST /order, read once: everything the rules of `WIRE_ANSWERS` look at."""

    status: int | None
    """None: no HTTP answer at all (the client's "Request exception!")."""
    body: object
    """As py-clob-client-v2 hands it over: parsed JSON, or the text when the body was not JSON."""
    order_id: str
    text: str
    """`error_text(body)`."""
    fields: dict[str, Any]
    """The body when it is a JSON object, else empty."""
    state: str
    """The order status the body reports, lower-case ("matched", "delayed", ...); "" when none."""
    answered: object
    """The order id the body reports, when it reports one."""

    @classmethod
    def of(cls, status: int | None, body: object, order_id: str) -> Reply:
        fields = body if isinstance(body, dict) else {}
        state = str(fields.get("status", "")).lower() if isinstance(body, dict) else ""
        answered = fields.get("orderID") or fields.get("orderId")
        return cls(status, body, order_id, error_text(body), fields, state, answered)


Match = Callable[[Reply], bool]


def no_status(reply: Reply) -> bool:
    return reply.status is None


def status_is(*statuses: int) -> Match:
    return lambda reply: reply.status in statuses


def server_error(reply: Reply) -> bool:
    return reply.status is not None and reply.status >= 500


def accepted(reply: Reply) -> bool:
    """200 with an object that reports no error: per the docs, a non-empty `errorMsg` means "not placed
    immediately" and `success` not true means "an issue placing the order"."""
    return reply.status == 200 and isinstance(reply.body, dict) and reply.body.get("success") is not False \
        and not reply.body.get("errorMsg")


def accepted_as(state: str) -> Match:
    return lambda reply: accepted(reply) and reply.state == state


def accepted_not_matched(reply: Reply) -> bool:
    return accepted(reply) and reply.state != "matched"


def accepted_for_another_order(reply: Reply) -> bool:
    return accepted(reply) and bool(reply.answered) and reply.answered != reply.order_id


def says(*words: str) -> Match:
    """The error text contains one of the words, in any case."""
    return lambda reply: any(word in reply.text.lower() for word in words)


def status_200_as(state: str) -> Match:
    return lambda reply: reply.status == 200 and reply.state == state


def client_error_or_200(reply: Reply) -> bool:
    return reply.status is not None and (400 <= reply.status < 500 or reply.status == 200)


def anything(reply: Reply) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class WireRule:
    when: Match
    result: type[ExchangeError] | type[Fill]
    """The typed error to raise (it carries the answer class), or Fill: parse the matched body."""
    says: str
    """The error's message after "order <id>: "; fields {status}, {text}, {state}, {answered}, {cause}."""
    meaning: str
    source: str

    @property
    def answer(self) -> SellAnswer:
        return self.result.answer if issubclass(self.result, ExchangeError) else SellAnswer.FILLED


CREATE_ORDER_DOCS = "docs.polymarket.com/developers/CLOB/orders/create-order"
ERROR_CODES_DOCS = "docs.polymarket.com/resources/error-codes"
WIRE_MD = "tests/fakeclob/WIRE.md"
MAY_HAVE_EXECUTED = "conservative default: may have executed"

WIRE_ANSWERS: tuple[WireRule, ...] = (
    WireRule(no_status, UnknownOutcome,
             says="connection lost without an answer; it may have executed ({cause})",
             meaning="transport error (refused, reset, closed without reply), before or after the order left",
             source="py-clob-client-v2 http_helpers/helpers.py `request`: httpx.RequestError -> PolyApiException"
                    f"(status_code=None, 'Request exception!'); {WIRE_MD} section 0; {MAY_HAVE_EXECUTED}"),
    WireRule(status_is(425), TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="matching engine restarting: order endpoints answer 425 Too Early",
             source="docs.polymarket.com/trading/matching-engine \"Handling HTTP 425\"; "
                    f"{WIRE_MD} section 4 (text body `service not ready`, py-clob-client #273)"),
    WireRule(status_is(429), TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="rate limited: `Too Many Requests`",
             source=f"{ERROR_CODES_DOCS} Global Errors 429; {WIRE_MD} section 4"),
    WireRule(status_is(503), TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="trading disabled or cancel-only: no new order accepted",
             source=f"{ERROR_CODES_DOCS} Global Errors 503; {WIRE_MD} section 4"),
    WireRule(status_is(401, 403), OrderRejected,
             says="HTTP {status}, credentials refused: {text}",
             meaning="credentials (or the caller's region) refused before the order is looked at",
             source=f"{ERROR_CODES_DOCS} Global Errors 401 (`Unauthorized/Invalid api key`, `Invalid L1 Request "
                    "headers`); docs.polymarket.com/api-reference/geoblock (orders from blocked regions are "
                    f"rejected, status not given); {WIRE_MD} section 1"),
    WireRule(server_error, UnknownOutcome,
             says="HTTP {status} after sending; it may have executed: {text}",
             meaning="server or gateway error (`order timed out`, `could not run the execution`, a 502 page)",
             source=f"{WIRE_MD} section 4 (500 rows; py-clob-client #331); py-clob-client-v2 helpers.py "
                    "`_is_transient_error` re-posts on 5xx and a re-post of an executed order is answered "
                    f"Duplicated; {MAY_HAVE_EXECUTED}"),
    # 200 with no error reported: the order reached the book, and only "matched" is a fill.
    WireRule(accepted_as("delayed"), UnknownOutcome,
             says="matching delayed by the exchange; look it up",
             meaning="accepted, matching deferred: it may still fill",
             source=f"{CREATE_ORDER_DOCS} Insert Statuses: `delayed` = \"order marketable, but subject to "
                    "matching delay\""),
    WireRule(accepted_as("unmatched"), OrderKilled,
             says="unmatched",
             meaning="accepted, marketable, not matched: taken as a FOK that did not fill",
             source=f"{CREATE_ORDER_DOCS} Insert Statuses: `unmatched` = \"order marketable, but failure "
                    "delaying, placement successful\""),
    WireRule(accepted_not_matched, UnknownOutcome,
             says="unexpected order status {state!r} for a FOK",
             meaning="accepted with a status a FOK should not have (`live`, none, unknown)",
             source=f"{CREATE_ORDER_DOCS} Insert Statuses (`live` = resting on the book); {MAY_HAVE_EXECUTED}"),
    WireRule(accepted_for_another_order, UnknownOutcome,
             says="the exchange answered for another order id {answered}",
             meaning="matched, but the reply names an order id other than the one signed",
             source=MAY_HAVE_EXECUTED),
    WireRule(accepted, Fill,
             says="",
             meaning="matched: the FOK sold the permit's shares; settlement on chain follows",
             source=f"{WIRE_MD} section 4 \"Success (matched FOK)\" (bodies from py-clob-client #217); "
                    f"{CREATE_ORDER_DOCS} Insert Statuses `matched`"),
    # Any other status: the error text decides, whichever status it came with.
    WireRule(says("duplicated"), UnknownOutcome,
             says="the exchange already has this order and it may have filled: {text}",
             meaning="an identical order already reached the exchange: this is a re-post of a sent order",
             source=f"{CREATE_ORDER_DOCS} INVALID_ORDER_DUPLICATED; {WIRE_MD} section 4 (`order 0x... is "
                    "invalid. Duplicated.`, the answer to a re-post of an order that executed)"),
    WireRule(says("not enough balance", "allowance"), InsufficientBalance,
             says="{text}",
             meaning="refused for lack of balance / allowance, per the exchange's balance cache",
             source=f"{CREATE_ORDER_DOCS} INVALID_ORDER_NOT_ENOUGH_BALANCE; {WIRE_MD} section 4 (`not enough "
                    "balance / allowance: the balance is not enough -> balance: 0, order amount: 5000000`)"),
    WireRule(says("fully filled", "fok", "no match"), OrderKilled,
             says="{text}",
             meaning="FOK (or FAK) killed: nothing to match at the limit",
             source=f"{CREATE_ORDER_DOCS} FOK_ORDER_NOT_FILLED_ERROR; {WIRE_MD} section 4 (FOK and FAK rows)"),
    WireRule(status_200_as("delayed"), UnknownOutcome,
             says="matching delayed by the exchange; look it up",
             meaning="200 reporting an error, with status `delayed`: it may still fill",
             source=f"{CREATE_ORDER_DOCS} ORDER_DELAYED (success: no) and Insert Statuses `delayed`"),
    WireRule(client_error_or_200, OrderRejected,
             says="HTTP {status}: {text}",
             meaning="any other 4xx, or a 200 reporting an error: refused (tick, minimum size, payload, signer)",
             source=f"{ERROR_CODES_DOCS}; {CREATE_ORDER_DOCS} Insert Error Messages; {WIRE_MD} section 4"),
    WireRule(anything, UnknownOutcome,
             says="unexpected HTTP {status}: {text}",
             meaning="anything else: 1xx, a 2xx other than 200, 3xx",
             source=MAY_HAVE_EXECUTED),
)
"""The answer to a POST /order: rows tried in order, the first match decides."""


def wire_rule(status: int | None, body: object, signed: SignedSell) -> WireRule:
    """The row of `WIRE_ANSWERS` that decides this answer."""
    return _rule(Reply.of(status, body, signed.order_id))


def _rule(reply: Reply) -> WireRule:
    return next(rule for rule in WIRE_ANSWERS if rule.when(reply))


def post_answer(status: int | None, body: object, signed: SignedSell) -> Fill | ExchangeError:
    """The answer to one POST /order of a FOK SELL, as a Fill or the typed error to raise."""
    reply = Reply.of(status, body, signed.order_id)
    rule = _rule(reply)
    if not issubclass(rule.result, ExchangeError):
        return _matched_fill(reply.fields, signed)
    message = rule.says.format(status=status, text=reply.text, state=reply.state, answered=reply.answered,
                               cause=reply.text or "transport error")
    return rule.result(f"order {signed.order_id}: {message}", status=status)


def _matched_fill(body: dict[str, Any], signed: SignedSell) -> Fill:
    order = signed.order_id
    shares = _micro(body.get("makingAmount"))
    proceeds = _micro(body.get("takingAmount"))
    if shares is None or shares <= 0:
        # Matched without a usable amount: a FOK fills whole, so the permit's shares were sold.
        shares = signed.shares
    avg = (Decimal(proceeds) / Decimal(shares)) if proceeds else Decimal(signed.taker_amount) / Decimal(shares)
    trade_ids = tuple(str(t) for t in (body.get("tradeIDs") or []) if t)
    settled = bool(body.get("transactionsHashes"))
    return Fill(shares=shares, avg_price=avg, order_id=order, trade_ids=() if settled else trade_ids)


def _micro(value: object) -> int | None:
    """A decimal amount in token units ("4.35") as integer micro-units; None when absent or unreadable."""
    amount = _decimal(value)
    micro = None if amount is None else amount * MICRO
    return None if micro is None or micro != micro.to_integral_value() else int(micro)


def read_error(what: str, status: int | None, body: object) -> ExchangeError:
    """A failed read (balance, market, lookup): nothing changed on the exchange, whatever the answer."""
    text = error_text(body) or "no answer"
    if status is None:
        return TransientError(f"{what}: connection failed: {text}")
    return TransientError(f"{what}: HTTP {status}: {text}", status=status)


@dataclass(frozen=True, slots=True)
class OrderRef:
    """What a lookup knows of the order it looks for: all of it in the process that signed it; after a
    restart, the journaled id and the permit."""

    order_id: str
    token_id: str
    shares: int
    taker_amount: int | None = None
    signed_at: int | None = None

    @classmethod
    def of(cls, signed: SignedSell) -> OrderRef:
        return cls(signed.order_id, signed.token_id, signed.shares, signed.taker_amount, signed.signed_at)

    @classmethod
    def recovered(cls, order_id: str, permit: SellPermit) -> OrderRef:
        return cls(order_id, permit.token_id, permit.shares)


def associated_trades(order: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(t) for t in (order.get("associate_trades") or []) if t)


def order_status(order: dict[str, Any]) -> str:
    """MATCHED / CANCELED / LIVE / DELAYED / UNMATCHED, whatever the spelling: the docs show
    `ORDER_STATUS_LIVE`, traffic shows `MATCHED`, and a killed FOK can read `CANCELED_order couldn't...`."""
    status = str(order.get("status", "")).upper().removeprefix("ORDER_STATUS_")
    return "CANCELED" if status.startswith(("CANCELED", "CANCELLED")) else status


def order_lookup(order: dict[str, Any], trades: list[dict[str, Any]], signed: OrderRef) -> SellLookup:
    """GET /data/order/{id} (and its trades) for a FOK we sent: filled, not filled, or still pending.

    Amounts are read unit-free: a FOK matches all or nothing, so "size_matched equals original_size"
    means the signed shares were sold, whether the exchange writes sizes raw or in shares."""
    status = order_status(order)
    matched, original = _decimal(order.get("size_matched")), _decimal(order.get("original_size"))
    if status in ("LIVE", "DELAYED"):
        raise UnknownOutcome(f"order {signed.order_id}: still {status} on the exchange; look it up again")
    if trades or (matched and matched > 0) or status == "MATCHED":
        if matched is not None and original and 0 < matched < original:
            sold = int(Decimal(signed.shares) * matched / original)
        else:
            sold = signed.shares
        return SellLookup(LookupStatus.FILLED, _fill(signed, sold, trades, order.get("price")))
    return SellLookup(LookupStatus.NOT_FILLED)


def lookup_from_trades(trades: object, signed: OrderRef) -> SellLookup:
    """The order is unknown to /data/order: did any trade of the token take it as taker order?"""
    ours = [t for t in trades or [] if isinstance(t, dict) and t.get("taker_order_id") == signed.order_id] \
        if isinstance(trades, list) else []
    if not ours:
        return SellLookup(LookupStatus.NOT_FOUND)
    sold = min(signed.shares, sum(_micro(t.get("size")) or 0 for t in ours)) or signed.shares
    return SellLookup(LookupStatus.FILLED, _fill(signed, sold, ours, None))


def _fill(signed: OrderRef, sold: int, trades: list[dict[str, Any]], price: object) -> Fill:
    proceeds = sum((_decimal(t.get("size")) or Decimal(0)) * (_decimal(t.get("price")) or Decimal(0))
                   for t in trades)
    sizes = sum((_decimal(t.get("size")) or Decimal(0)) for t in trades)
    if sizes:
        avg = proceeds / sizes
    else:
        avg = _decimal(price) or Decimal(signed.taker_amount or 0) / Decimal(signed.shares)
    pending = tuple(str(t["id"]) for t in trades if t.get("id")
                    and str(t.get("status", "")).upper() not in SETTLED_TRADE_STATUSES)
    return Fill(shares=sold, avg_price=avg, order_id=signed.order_id, trade_ids=pending)


def _decimal(value: object) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


def settlement(fill: Fill, trades: list[dict[str, Any]]) -> Settlement:
    """Where a fill's trades stand on chain. Any FAILED trade returns its shares; all MINED/CONFIRMED is
    settled; anything else (MATCHED, RETRYING, not visible yet) is pending."""
    by_id = {str(t.get("id")): t for t in trades}
    failed = [t for t in by_id.values() if str(t.get("status", "")).upper() == FAILED_TRADE_STATUS]
    if failed:
        returned = sum(_micro(t.get("size")) or 0 for t in failed)
        return Settlement(SettlementStatus.FAILED, returned_shares=min(returned, fill.shares) or fill.shares)
    if all(str(by_id.get(t, {}).get("status", "")).upper() in SETTLED_TRADE_STATUSES for t in fill.trade_ids):
        return Settlement(SettlementStatus.SETTLED)
    return Settlement(SettlementStatus.PENDING)


@dataclass(frozen=True, slots=True)
class TokenMarket:
    rules: MarketRules
    neg_risk: bool
    """Neg-risk markets settle through another exchange contract: it is part of what an order signs."""


def market_from_book(token_id: str, book: object) -> TokenMarket:
    """Tick size, minimum order size and neg-risk from GET /book (one round trip per token)."""
    if not isinstance(book, dict):
        raise TransientError(f"order book for token_id={token_id}: unreadable answer {str(book)[:200]}")
    try:
        rules = market_rules(tick_size=book["tick_size"], min_order_size=book["min_order_size"])
    except (KeyError, InvalidValue) as err:
        raise TransientError(f"order book for token_id={token_id}: no usable tick_size/min_order_size "
                             f"({err})") from None
    return TokenMarket(rules, bool(book.get("neg_risk", False)))
