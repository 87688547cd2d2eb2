"""What each CLOB answer means for an exit. Pure functions of (status, body): one place to read, and
to test, the whole mapping from the wire to the engine's three kinds of "no" and its one "yes".

| answer | meaning | raised / returned |
|---|---|---|
| 200, `success`, status `matched` | filled on the book | `Fill` (settlement followed later) |
| 200/400 "couldn't be fully filled" (FOK) | killed, nothing sold | `OrderKilled` |
| 400 "not enough balance / allowance" | memory and exchange disagree | `InsufficientBalance` |
| 400 tick / minimum size / invalid order / version mismatch | malformed, nothing sold | `OrderRejected` |
| 400 "Duplicated" | an identical order already reached the exchange | `UnknownOutcome` |
| 200 status `delayed` | accepted, matching deferred | `UnknownOutcome` (look up) |
| 429, 425, 503 | rate limited / restarting / paused: not processed | `TransientError` |
| 401, 403 | credentials refused: not processed | `OrderRejected` |
| other 5xx, no status (transport), timeout | may have executed | `UnknownOutcome` |
"""

from __future__ import annotations

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
from exitguard.states import MICRO, InvalidValue, MarketRules, SellPermit

if TYPE_CHECKING:
    from exitguard.exchange.polymarket.orders import SignedSell

TRANSIENT_STATUSES = frozenset({425, 429, 503})
"""Documented as "not processed": too many requests, engine restarting, trading paused."""
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


def post_answer(status: int | None, body: object, signed: SignedSell) -> Fill | ExchangeError:
    """The answer to one POST /order of a FOK SELL, as a Fill or the typed error to raise."""
    order = signed.order_id
    if status is None:
        return UnknownOutcome(f"order {order}: connection lost without an answer; it may have executed "
                              f"({error_text(body) or 'transport error'})")
    text = error_text(body)
    lowered = text.lower()
    if status in TRANSIENT_STATUSES:
        return TransientError(f"order {order}: HTTP {status}, not processed: {text}", status=status)
    if status in (401, 403):
        return OrderRejected(f"order {order}: HTTP {status}, credentials refused: {text}", status=status)
    if status >= 500:
        return UnknownOutcome(f"order {order}: HTTP {status} after sending; it may have executed: {text}",
                              status=status)
    if status == 200 and isinstance(body, dict) and body.get("success") is not False and not body.get("errorMsg"):
        return _posted(body, signed)
    if "duplicated" in lowered:
        return UnknownOutcome(f"order {order}: the exchange already has this order and it may have filled: "
                              f"{text}", status=status)
    if "not enough balance" in lowered or "allowance" in lowered:
        return InsufficientBalance(f"order {order}: {text}", status=status)
    if "fully filled" in lowered or "fok" in lowered or "no match" in lowered:
        return OrderKilled(f"order {order}: {text}", status=status)
    if status == 200 and isinstance(body, dict) and str(body.get("status", "")).lower() == "delayed":
        return UnknownOutcome(f"order {order}: matching delayed by the exchange; look it up", status=status)
    if 400 <= status < 500 or status == 200:
        return OrderRejected(f"order {order}: HTTP {status}: {text}", status=status)
    return UnknownOutcome(f"order {order}: unexpected HTTP {status}: {text}", status=status)


def _posted(body: dict[str, Any], signed: SignedSell) -> Fill | ExchangeError:
    order = signed.order_id
    state = str(body.get("status", "")).lower()
    if state == "delayed":
        return UnknownOutcome(f"order {order}: matching delayed by the exchange; look it up", status=200)
    if state != "matched":
        # A FOK is matched or killed; anything else (live, unmatched) means it did not fill as a FOK must.
        if state == "unmatched":
            return OrderKilled(f"order {order}: unmatched", status=200)
        return UnknownOutcome(f"order {order}: unexpected order status {state!r} for a FOK", status=200)
    answered = body.get("orderID") or body.get("orderId")
    if answered and answered != order:
        return UnknownOutcome(f"order {order}: the exchange answered for another order id {answered}", status=200)
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
        rules = MarketRules.of(tick_size=book["tick_size"], min_order_size=book["min_order_size"])
    except (KeyError, InvalidValue) as err:
        raise TransientError(f"order book for token_id={token_id}: no usable tick_size/min_order_size "
                             f"({err})") from None
    return TokenMarket(rules, bool(book.get("neg_risk", False)))
