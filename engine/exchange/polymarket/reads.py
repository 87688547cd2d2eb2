"""What the adapter's reads return: an order lookup, the trades that witness a fill, settlement, the book.

A lookup that finds nothing is not a "no". `/data/order/{id}` forgets finished orders (py-clob-client #217)
and an order can still arrive after its request was answered, so this module only reports what the exchange
showed; the engine decides (exitguard.states.answers.CONCLUSIONS). What it can report:
- FILLED: the order is matched, or a trade of ours names it;
- NOT_FILLED: the exchange shows the order itself terminal with nothing matched (a killed FOK);
- PENDING: the order is live or delayed, or its status is one this module cannot read;
- NOT_FOUND: the order endpoint knows nothing of it *and* a trade query that succeeded shows no trade of it.
A trade query that fails, or answers with something other than a list of trades, raises: a failed query
is not an empty one.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from exitguard.errors import ExchangeError, MarketClosed, TransientError
from exitguard.exchange.port import Fill, LookupStatus, SellLookup, Settlement, SettlementStatus
from exitguard.exchange.rules import market_rules
from exitguard.states import InvalidValue, MarketRules, SellPermit, shares_to_micro
from exitguard.states.quantities import exact

if TYPE_CHECKING:
    from exitguard.exchange.polymarket.orders import SignedSell

SETTLED_TRADE_STATUSES = frozenset({"MINED", "CONFIRMED"})
FAILED_TRADE_STATUS = "FAILED"
PENDING_ORDER_STATUSES = frozenset({"LIVE", "DELAYED"})
"""The order is on the exchange and may still match (WIRE.md section 5; create-order Insert Statuses)."""
UNFILLED_ORDER_STATUSES = frozenset({"CANCELED", "UNMATCHED"})
"""Terminal without a match, when nothing is matched and no trade is associated: a killed FOK reads
`CANCELED` (WIRE.md section 5, the WS channel's `CANCELED_order couldn't...`); `unmatched` is the insert
status of a marketable order that did not match."""
CLOCK_SKEW = 300
"""Seconds subtracted from the order's own timestamp when trades are queried by time: the exchange's match
time and our clock may disagree, and a window too narrow would miss our own trade."""


def wire_micro(value: object) -> int | None:
    """An amount in token units as the wire writes it ("4.35") -> micro-units; None when absent, not a number,
    finer than a micro-unit, or beyond the library's bound (an exponent that overflows is unreadable too)."""
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        return shares_to_micro(str(value) if isinstance(value, (int, float)) else value, "amount")
    except (InvalidValue, ArithmeticError):
        return None


def wire_price(value: object) -> Decimal | None:
    """A price or a size as a finite Decimal within the library's bound; None when unreadable."""
    micro = wire_micro(value)
    if micro is None:
        return None
    with exact():
        return Decimal(micro).scaleb(-6)


BOOK_GONE = "no orderbook exists for the requested token id"
"""GET /book (and /price, /midpoint, /spread) of a token without a book: 404 with this `error`. A market that
closed or resolved has none (WIRE.md section 2a; docs error-codes "Order Book"); of those endpoints the adapter
reads only /book."""


def book_gone(status: int | None, body: object) -> bool:
    """The documented 404 of a token whose order book is gone: the market no longer trades."""
    error = body.get("error") if isinstance(body, dict) else None
    return status == 404 and isinstance(error, str) and BOOK_GONE in error.lower()


def read_error(what: str, status: int | None, body: object) -> ExchangeError:
    """A failed read (balance, market, lookup): nothing changed on the exchange, whatever the answer. The one
    answer that says more is a book that is gone: MarketClosed, no retry will find one."""
    text = _error_text(body) or "no answer"
    if book_gone(status, body):
        return MarketClosed(f"{what}: HTTP {status}: {text}: the market no longer trades", status=status)
    if status is None:
        return TransientError(f"{what}: connection failed: {text}")
    return TransientError(f"{what}: HTTP {status}: {text}", status=status)


def transport_cause(err: BaseException, *, start: BaseException | None = None) -> str:
    """Why a request never got an answer, read from the exception chain under `err` (from `start` itself when
    given): the operating system's words ("connection refused", "name or service not known") when an OSError
    is in the chain, "timed out" for a timeout, else the transport's own exception named (never its text: it may
    quote a URL with a query). For an operator's message: `cannot reach <host>: <cause>`."""
    seen: set[int] = set()
    link: BaseException | None = start if start is not None else err.__cause__ or err.__context__
    named = ""
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and (words := _os_words(link)):
            return words
        if isinstance(link, TimeoutError) or "Timeout" in type(link).__name__:
            return "timed out"
        named = named or type(link).__name__
        link = link.__cause__ or link.__context__
    return f"transport error ({named})" if named else "no answer (the connection failed)"


def _os_words(err: OSError) -> str:
    """The system's message for the error: the resolver's own for a failed lookup, else the errno's (asyncio
    writes "Connect call failed (...)" where the system says "Connection refused")."""
    if isinstance(err, socket.gaierror) or not err.errno or err.errno < 0:
        return (err.strerror or "").lower()
    return os.strerror(err.errno).lower()


def _error_text(body: object) -> str:
    if isinstance(body, dict):
        value = body.get("error") or body.get("errorMsg") or body.get("message")
        return str(value)[:200] if value else str(body)[:200]
    return "" if body is None else str(body)[:200]


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

    @property
    def trades_after(self) -> int | None:
        """The start of the trade query's window (unix seconds); None: the whole history of the token."""
        return None if self.signed_at is None else self.signed_at - CLOCK_SKEW


def associated_trades(order: dict[str, Any]) -> tuple[str, ...]:
    return tuple(str(t) for t in (order.get("associate_trades") or []) if t)


def order_status(order: dict[str, Any]) -> str:
    """MATCHED / CANCELED / LIVE / DELAYED / UNMATCHED, whatever the spelling: the docs show
    `ORDER_STATUS_LIVE`, traffic shows `MATCHED`, and a killed FOK can read `CANCELED_order couldn't...`."""
    status = str(order.get("status", "")).upper().removeprefix("ORDER_STATUS_")
    return "CANCELED" if status.startswith(("CANCELED", "CANCELLED")) else status


def is_order(body: object, ref: OrderRef) -> bool:
    """A /data/order answer that describes an order: an object with a status, and our id if it names one.
    Anything else (`null`, "", an error object, HTML) is "not known to the order endpoint"."""
    if not isinstance(body, dict) or not body.get("status"):
        return False
    named = body.get("id")
    return named is None or str(named).lower() == ref.order_id.lower()


def order_lookup(order: dict[str, Any], trades: list[dict[str, Any]], ref: OrderRef) -> SellLookup:
    """GET /data/order/{id} (and its associated trades) for a FOK we sent.

    Amounts are read unit-free: a FOK matches all or nothing, so "size_matched equals original_size"
    means the signed shares were sold, whether the exchange writes sizes raw or in shares."""
    status = order_status(order)
    matched, original = wire_price(order.get("size_matched")), wire_price(order.get("original_size"))
    if status in PENDING_ORDER_STATUSES:
        return SellLookup(LookupStatus.PENDING)
    if trades or associated_trades(order) or (matched and matched > 0) or status == "MATCHED":
        sold = ref.shares
        if matched is not None and original and 0 < matched < original:
            with exact():
                sold = int(Decimal(ref.shares) * matched / original)
        return SellLookup(LookupStatus.FILLED, _fill(ref, sold, trades, order.get("price")))
    if status in UNFILLED_ORDER_STATUSES and not matched:
        return SellLookup(LookupStatus.NOT_FILLED)
    # A status nobody documents: it says nothing either way.
    return SellLookup(LookupStatus.PENDING)


def trades_of(answer: object, ref: OrderRef) -> list[dict[str, Any]]:
    """Our order's trades in a /data/trades answer (all pages). Raises when the answer is not a list of trade
    objects: an unreadable answer is a failed query, never an empty one."""
    if not isinstance(answer, list) or not all(isinstance(t, dict) for t in answer):
        raise TransientError(f"trade lookup for order {ref.order_id}: unreadable answer {str(answer)[:200]}")
    wanted = ref.order_id.lower()
    return [t for t in answer if str(t.get("taker_order_id", "")).lower() == wanted
            or any(isinstance(m, dict) and str(m.get("order_id", "")).lower() == wanted
                   for m in t.get("maker_orders") or [])]


def lookup_from_trades(answer: object, ref: OrderRef) -> SellLookup:
    """The order is unknown to /data/order: did any trade take it? FILLED, or NOT_FOUND when the query
    succeeded and shows none (raises when it did not succeed)."""
    ours = trades_of(answer, ref)
    if not ours:
        return SellLookup(LookupStatus.NOT_FOUND)
    sold = min(ref.shares, sum(wire_micro(t.get("size")) or 0 for t in ours)) or ref.shares
    return SellLookup(LookupStatus.FILLED, _fill(ref, sold, ours, None))


def _fill(ref: OrderRef, sold: int, trades: list[dict[str, Any]], price: object) -> Fill:
    with exact():
        sizes = [(wire_price(t.get("size")) or Decimal(0), wire_price(t.get("price")) or Decimal(0)) for t in trades]
        total = sum((size for size, _ in sizes), Decimal(0))
        if total:
            avg = sum((size * each for size, each in sizes), Decimal(0)) / total
        else:
            avg = wire_price(price) or Decimal(ref.taker_amount or 0) / Decimal(ref.shares)
    pending = tuple(str(t["id"]) for t in trades if t.get("id")
                    and str(t.get("status", "")).upper() not in SETTLED_TRADE_STATUSES)
    return Fill(shares=sold, avg_price=avg, order_id=ref.order_id, trade_ids=pending)


def settlement(fill: Fill, trades: list[dict[str, Any]]) -> Settlement:
    """Where a fill's trades stand on chain. Any FAILED trade returns its shares; all MINED/CONFIRMED is
    settled; anything else (MATCHED, RETRYING, not visible yet) is pending."""
    by_id = {str(t.get("id")): t for t in trades}
    failed = [t for t in by_id.values() if str(t.get("status", "")).upper() == FAILED_TRADE_STATUS]
    if failed:
        returned = sum(wire_micro(t.get("size")) or 0 for t in failed)
        return Settlement(SettlementStatus.FAILED, returned_shares=min(returned, fill.shares) or fill.shares)
    if all(str(by_id.get(t, {}).get("status", "")).upper() in SETTLED_TRADE_STATUSES for t in fill.trade_ids):
        return Settlement(SettlementStatus.SETTLED)
    return Settlement(SettlementStatus.PENDING)


@dataclass(frozen=True, slots=True)
class TokenMarket:
    rules: MarketRules
    neg_risk: bool
    """Neg-risk markets settle through another exchange contract: it is part of what an order signs, and so
    of the order's id (the EIP-712 domain's verifying contract)."""


def market_from_book(token_id: str, book: object) -> TokenMarket:
    """Tick size, minimum order size and neg-risk from GET /book (one round trip per token)."""
    if not isinstance(book, dict):
        raise TransientError(f"order book for token_id={token_id}: unreadable answer {str(book)[:200]}")
    if book.get("closed") is True:
        # No source shows /book carrying `closed` (the market objects do: WIRE.md section 2a); read if it ever
        # does, since a book of a closed market must never be taken for one to sell into.
        raise MarketClosed(f"order book for token_id={token_id}: the market is closed")
    try:
        rules = market_rules(tick_size=book["tick_size"], min_order_size=book["min_order_size"])
    except (KeyError, InvalidValue) as err:
        raise TransientError(f"order book for token_id={token_id}: no usable tick_size/min_order_size "
                             f"({err})") from None
    neg_risk = book.get("neg_risk", False)
    if not isinstance(neg_risk, bool):
        # The flag picks the contract the order is signed for, and so the order's id: never guessed.
        raise TransientError(f"order book for token_id={token_id}: unreadable neg_risk {neg_risk!r}")
    return TokenMarket(rules, neg_risk)
