"""What each CLOB answer to a POST /order means for an exit.

One table, `WIRE_ANSWERS`: rows are tried in order, the first whose `when` holds decides, and each row names
its source. It gives the answer class (`SellAnswer`, carried by the `ExchangeError` subclass it raises); what
the engine then does with that class is decided in `exitguard.states.answers.SELL_ANSWERS`.

Only a definite, parsed "no" is a not-filled class: a documented refusal read from the exchange's own JSON
body (the `error` field of a 400/401/403, the `errorMsg` of a 200 that reports `success: false`), or a 425 /
429 / 503 with its documented body. A well-formed success names the order id we signed, a known status, and
for a match amounts consistent with the order. Everything else the engine cannot read after the request left
(an empty body, HTML, `null`, truncated JSON, bytes that are not UTF-8, an undocumented message, a gateway
408 / 5xx, a cut connection) falls to UNKNOWN: the order may have executed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exitguard.errors import (
    ExchangeError,
    InsufficientBalance,
    MarketClosed,
    OrderKilled,
    OrderRejected,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.polymarket.reads import wire_micro
from exitguard.exchange.port import Fill
from exitguard.states.answers import SellAnswer
from exitguard.states.quantities import exact

if TYPE_CHECKING:
    from exitguard.exchange.polymarket.orders import SignedSell

ORDER_VERSION_MISMATCH = "order_version_mismatch"
KNOWN_ORDER_STATES = frozenset({"matched", "live", "delayed", "unmatched"})
"""The insert statuses of the create-order docs; any other status is not a well-formed answer."""


def error_text(body: object) -> str:
    """Some text of an answer body, for messages only (never for deciding): its error field or the body."""
    if isinstance(body, dict):
        for field in ("error", "errorMsg", "message"):
            value = body.get(field)
            if value:
                return value if isinstance(value, str) else str(value)
        return str(body)
    return "" if body is None else str(body)


def is_version_mismatch(body: object) -> bool:
    return isinstance(body, dict) and body.get("error") == ORDER_VERSION_MISMATCH


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer to a POST /order, read once: everything the rules of `WIRE_ANSWERS` look at."""

    status: int | None
    """None: no HTTP answer at all (the client's "Request exception!")."""
    body: object
    """As py-clob-client-v2 hands it over: parsed JSON, or the text when the body was not JSON."""
    signed: SignedSell
    refusal: str
    """The exchange's own words of refusal, lower-case: the string `error` of a JSON object answering 400 (for
    401/403: only a documented credential refusal), or the string `errorMsg` of a 200 object with
    `success: false`; "" otherwise."""
    fields: dict[str, Any]
    """The body when it is a JSON object, else empty."""
    state: str
    """The order status the body reports, lower-case ("matched", "delayed", ...); "" when none."""
    answered: object
    """The order id the body reports, when it reports one."""

    @classmethod
    def of(cls, status: int | None, body: object, signed: SignedSell) -> Reply:
        fields = body if isinstance(body, dict) else {}
        state = fields.get("status")
        words: object = ""
        if status == 400:
            words = fields.get("error")
        elif status in (401, 403) and isinstance(fields.get("error"), str):
            # Only the credential refusals are documented for these statuses: nothing else is read as a "no".
            words = next((p for p in CREDENTIALS if p in fields["error"].lower()), "")
        elif status == 200 and fields.get("success") is False:
            words = fields.get("errorMsg")
        return cls(status, body, signed, words.lower() if isinstance(words, str) else "", fields,
                   state.lower() if isinstance(state, str) else "", fields.get("orderID", fields.get("orderId")))

    @property
    def text(self) -> str:
        """For messages: what the body says, cut short (an HTML page can be long)."""
        text = error_text(self.body)
        return text if len(text) <= 200 else text[:200] + "..."


Match = Callable[[Reply], bool]


def no_status(reply: Reply) -> bool:
    return reply.status is None


def names_another_order(reply: Reply) -> bool:
    return reply.answered is not None and str(reply.answered).lower() != reply.signed.order_id.lower()


def status_with_error(status: int, *phrases: str) -> Match:
    """`status` with a JSON object whose string `error` contains one of the documented phrases."""
    def match(reply: Reply) -> bool:
        error = reply.fields.get("error")
        return reply.status == status and isinstance(error, str) and any(p in error.lower() for p in phrases)
    return match


def service_not_ready(reply: Reply) -> bool:
    """425 with the engine-restart body the client has been seen to receive: text `service not ready`, or the
    same words (or `Too Early`) as the JSON error."""
    if reply.status != 425:
        return False
    if isinstance(reply.body, str):
        return reply.body.strip().lower() == "service not ready"
    return status_with_error(425, "service not ready", "too early")(reply)


def gateway_or_server_error(reply: Reply) -> bool:
    return reply.status is not None and (reply.status == 408 or reply.status >= 500)


def well_formed(reply: Reply) -> bool:
    """200, a JSON object with `success: true`, no error message, our order id, a known status."""
    return (reply.status == 200 and reply.fields.get("success") is True and not reply.fields.get("errorMsg")
            and reply.answered is not None and not names_another_order(reply) and reply.state in KNOWN_ORDER_STATES)


def well_formed_match(reply: Reply) -> bool:
    """A match reporting exactly the order's shares (a FOK fills whole) for proceeds above 0 and at most one
    dollar a share: anything else (no amounts, negative, more than the order, an exponent that overflows) is
    absurd, and absurd is unreadable."""
    if not (well_formed(reply) and reply.state == "matched"):
        return False
    making, taking = wire_micro(reply.fields.get("makingAmount")), wire_micro(reply.fields.get("takingAmount"))
    lists = [reply.fields.get(name, []) for name in ("tradeIDs", "transactionsHashes")]
    return (making == reply.signed.shares and taking is not None and 0 < taking <= making
            and all(ids is None or isinstance(ids, list) and all(isinstance(i, str) for i in ids) for ids in lists))


def accepted_as(state: str) -> Match:
    return lambda reply: well_formed(reply) and reply.state == state


def reports_state(state: str) -> Match:
    return lambda reply: reply.status == 200 and reply.state == state


def refused_with(*phrases: str) -> Match:
    """The exchange's own words of refusal (see `Reply.refusal`) contain one of the documented phrases."""
    return lambda reply: any(phrase in reply.refusal for phrase in phrases)


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

KILLED = ("couldn't be fully filled", "no orders found to match with fak order")
"""FOK_ORDER_NOT_FILLED_ERROR and the FAK text ("... FOK orders are fully filled or killed.")."""
NOT_ENOUGH_BALANCE = ("not enough balance / allowance",)
CREDENTIALS = ("unauthorized/invalid api key", "invalid l1 request headers")
"""ERROR_CODES_DOCS Global Errors 401: the request was refused before the order was looked at."""
MALFORMED = (
    "invalid order payload", ORDER_VERSION_MISMATCH, "the order owner has to be the owner of the api key",
    "the order signer address has to be the address of the api key", "invalid token id", "invalid signature",
    "invalid amounts", "breaks minimum tick size rule", "lower than the minimum", "invalid expiration",
    "market not found", "maker address not allowed",
    # MARKET_NOT_READY ("system not accepting orders for market yet"): a market not open *yet*, never a closed one.
    "the market is not yet ready to process new orders", *CREDENTIALS,
)
"""Refusals of the order as written, or of its sender, before matching: tick, minimum size, amounts, payload,
signer, credentials, market state."""


def refused_for_closed_market(reply: Reply) -> bool:
    """The exchange refused the order because the market's book is gone: `the orderbook <condition> does not
    exist` (the id sits between the words), or the book endpoints' `No orderbook exists for the requested token
    id`. "not yet ready to process new orders" names no orderbook: it is no closed market."""
    words = reply.refusal
    return "no orderbook exists" in words or ("orderbook" in words and "does not exist" in words)

WIRE_ANSWERS: tuple[WireRule, ...] = (
    WireRule(no_status, UnknownOutcome,
             says="connection lost without an answer; it may have executed ({cause})",
             meaning="transport error (refused, reset, closed without reply), before or after the order left",
             source="py-clob-client-v2 http_helpers/helpers.py `request`: httpx.RequestError -> PolyApiException"
                    f"(status_code=None, 'Request exception!'); {WIRE_MD} section 0; {MAY_HAVE_EXECUTED}"),
    WireRule(names_another_order, UnknownOutcome,
             says="the exchange answered for another order id {answered}",
             meaning="a body naming an order id other than the one signed: not an answer about our order",
             source=MAY_HAVE_EXECUTED),
    WireRule(service_not_ready, TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="matching engine restarting: order endpoints answer 425 Too Early",
             source="docs.polymarket.com/trading/matching-engine \"Handling HTTP 425\"; "
                    f"{WIRE_MD} section 4 (text body `service not ready`, py-clob-client #273)"),
    WireRule(status_with_error(429, "too many requests"), TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="rate limited: `{\"error\": \"Too Many Requests\"}`",
             source=f"{ERROR_CODES_DOCS} Global Errors 429; {WIRE_MD} section 4"),
    WireRule(status_with_error(503, "trading is currently"), TransientError,
             says="HTTP {status}, not processed: {text}",
             meaning="trading disabled, paused or cancel-only: no new order accepted",
             source=f"{ERROR_CODES_DOCS} Global Errors 503 (`Trading is currently disabled...`, `... cancel-only"
                    f"...`); {WIRE_MD} section 4"),
    WireRule(gateway_or_server_error, UnknownOutcome,
             says="HTTP {status} after sending; it may have executed: {text}",
             meaning="gateway or server error (408, 500, 502, 504, a 503 without its documented body; "
                     "`order timed out`, `could not run the execution`)",
             source=f"{WIRE_MD} section 4 (500 rows; py-clob-client #331); py-clob-client-v2 helpers.py "
                    "`_is_transient_error` re-posts on 5xx and a re-post of an executed order is answered "
                    f"Duplicated; {MAY_HAVE_EXECUTED}"),
    # 200 with no error reported: the order reached the book, and only a well-formed "matched" is a fill.
    WireRule(well_formed_match, Fill,
             says="",
             meaning="matched: the FOK sold the permit's shares; settlement on chain follows",
             source=f"{WIRE_MD} section 4 \"Success (matched FOK)\" (bodies from py-clob-client #217); "
                    f"{CREATE_ORDER_DOCS} Insert Statuses `matched`"),
    WireRule(accepted_as("unmatched"), OrderKilled,
             says="unmatched",
             meaning="accepted, marketable, not matched: taken as a FOK that did not fill",
             source=f"{CREATE_ORDER_DOCS} Insert Statuses: `unmatched` = \"order marketable, but failure "
                    "delaying, placement successful\""),
    WireRule(reports_state("delayed"), UnknownOutcome,
             says="matching delayed by the exchange; look it up",
             meaning="a 200 reporting status `delayed`, whatever else it says: it may still fill",
             source=f"{CREATE_ORDER_DOCS} Insert Statuses `delayed` = \"order marketable, but subject to "
                    "matching delay\" and ORDER_DELAYED (success: no)"),
    # The exchange's own words of refusal (400/401/403 `error`, or a 200's `errorMsg` with success false).
    WireRule(refused_with("duplicated"), UnknownOutcome,
             says="the exchange already has this order and it may have filled: {text}",
             meaning="an identical order already reached the exchange: this is a re-post of a sent order",
             source=f"{CREATE_ORDER_DOCS} INVALID_ORDER_DUPLICATED; {WIRE_MD} section 4 (`order 0x... is "
                    "invalid. Duplicated.`, the answer to a re-post of an order that executed)"),
    WireRule(refused_with(*NOT_ENOUGH_BALANCE), InsufficientBalance,
             says="{text}",
             meaning="refused for lack of balance / allowance, per the exchange's balance cache",
             source=f"{CREATE_ORDER_DOCS} INVALID_ORDER_NOT_ENOUGH_BALANCE; {WIRE_MD} section 4 (`not enough "
                    "balance / allowance: the balance is not enough -> balance: 0, order amount: 5000000`)"),
    WireRule(refused_with(*KILLED), OrderKilled,
             says="{text}",
             meaning="FOK (or FAK) killed: nothing to match at the limit",
             source=f"{CREATE_ORDER_DOCS} FOK_ORDER_NOT_FILLED_ERROR; {WIRE_MD} section 4 (FOK and FAK rows)"),
    WireRule(refused_for_closed_market, MarketClosed,
             says="HTTP {status}, the market no longer trades: {text}",
             meaning="refused: the market closed or resolved and its order book is gone; nothing sold, and no "
                     "retry can sell (the shares are redeemed on chain)",
             source=f"{WIRE_MD} section 2a (`the orderbook <condition id> does not exist` on POST /order of a "
                    f"resolved market, seen in public bots' logs; `No orderbook exists for the requested token id`, "
                    f"{ERROR_CODES_DOCS} Order Book, answered for resolved markets: pmxt #836)"),
    WireRule(refused_with(*MALFORMED), OrderRejected,
             says="HTTP {status}: {text}",
             meaning="refused before matching: tick, minimum size, amounts, payload, signer, credentials, market",
             source=f"{ERROR_CODES_DOCS} (Global Errors 401, Order Book, Markets); {CREATE_ORDER_DOCS} Insert "
                    f"Error Messages; {WIRE_MD} sections 1 and 4"),
    WireRule(anything, UnknownOutcome,
             says="unreadable or undocumented answer (HTTP {status}); it may have executed: {text}",
             meaning="anything else: an empty, `null`, HTML, truncated or non-UTF-8 body, an undocumented "
                     "message (`could not insert order`, `could not run the execution`, `error delaying the "
                     "order`), a 2xx without the expected fields or with absurd ones, a 1xx / 3xx / 404",
             source=MAY_HAVE_EXECUTED),
)
"""The answer to a POST /order: rows tried in order, the first match decides."""


def wire_rule(status: int | None, body: object, signed: SignedSell) -> WireRule:
    """The row of `WIRE_ANSWERS` that decides this answer."""
    return _rule(Reply.of(status, body, signed))


def _rule(reply: Reply) -> WireRule:
    return next(rule for rule in WIRE_ANSWERS if rule.when(reply))


def post_answer(status: int | None, body: object, signed: SignedSell) -> Fill | ExchangeError:
    """The answer to one POST /order of a FOK SELL, as a Fill or the typed error to raise."""
    reply = Reply.of(status, body, signed)
    rule = _rule(reply)
    if not issubclass(rule.result, ExchangeError):
        return _matched_fill(reply.fields, signed)
    message = rule.says.format(status=status, text=reply.text, state=reply.state, answered=reply.answered,
                               cause=reply.text or "transport error")
    return rule.result(f"order {signed.order_id}: {message}", status=status)


def _matched_fill(body: dict[str, Any], signed: SignedSell) -> Fill:
    """A match `well_formed_match` accepted: the order's shares for the reported proceeds."""
    shares, proceeds = signed.shares, wire_micro(body.get("takingAmount")) or 0
    with exact():
        avg = Decimal(proceeds) / Decimal(shares)
    trade_ids = tuple(str(t) for t in (body.get("tradeIDs") or []) if t)
    settled = bool(body.get("transactionsHashes"))
    return Fill(shares=shares, avg_price=avg, order_id=signed.order_id, trade_ids=() if settled else trade_ids)
