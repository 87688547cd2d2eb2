"""The user channel's events, read into port-level notices (tests/fakeclob/WIRE.md section 8 has the shapes).

Read defensively: the channel is a second source of what the REST reads say, so a frame this module cannot read
is refused whole (`MalformedEvent`, which the channel logs) and changes nothing. What it reads:
- `trade` events (`status` MATCHED -> MINED -> CONFIRMED, or RETRYING -> FAILED): one notice per order the trade
  names (the taker's `taker_order_id`, each of `maker_orders[].order_id`); the engine keeps those it knows.
  MATCHED / RETRYING: the order traded; MINED / CONFIRMED: the trade settled; FAILED: the trade's shares went back
  (the taker's `size`, a maker's `matched_amount`).
- `order` events (`type` PLACEMENT / UPDATE / CANCELLATION): an UPDATE with something matched says the order traded,
  a CANCELLATION that it ended; a PLACEMENT says nothing the engine acts on.
A frame is one event object or a list of them (the channel batches).
"""

from __future__ import annotations

import json
from typing import Any

from exitguard.exchange.polymarket.reads import wire_micro
from exitguard.exchange.port import ExchangeNotice, NoticeKind

TRADE_STATUSES = {
    "MATCHED": NoticeKind.TRADED,
    "RETRYING": NoticeKind.TRADED,
    "MINED": NoticeKind.TRADE_SETTLED,
    "CONFIRMED": NoticeKind.TRADE_SETTLED,
    "FAILED": NoticeKind.TRADE_FAILED,
}
ORDER_TYPES = {"PLACEMENT", "UPDATE", "CANCELLATION"}


class MalformedEvent(ValueError):
    """A frame of the user channel that is not an event this module can read (nothing in it is acted on)."""


def read_frame(frame: str | bytes) -> list[ExchangeNotice]:
    """The notices in one text frame of the user channel. Raises MalformedEvent for anything unreadable."""
    try:
        body = json.loads(frame)
    except (ValueError, UnicodeDecodeError):
        raise MalformedEvent("not JSON") from None
    events = body if isinstance(body, list) else [body]
    if not events or not all(isinstance(event, dict) for event in events):
        raise MalformedEvent("not an event object or a list of them")
    notices: list[ExchangeNotice] = []
    for event in events:
        kind = event.get("event_type")
        if kind == "trade":
            notices += _trade(event)
        elif kind == "order":
            notices += _order(event)
        else:
            raise MalformedEvent(f"unknown event_type {_short(kind)}")
    return notices


def _trade(event: dict[str, Any]) -> list[ExchangeNotice]:
    trade_id, status, token = _text(event, "id"), str(event.get("status", "")).upper(), _text(event, "asset_id")
    kind = TRADE_STATUSES.get(status)
    if trade_id is None or kind is None:
        raise MalformedEvent(f"trade event without an id or with status {_short(event.get('status'))}")
    makers = event.get("maker_orders") or []
    if not isinstance(makers, list) or not all(isinstance(m, dict) for m in makers):
        raise MalformedEvent(f"trade {trade_id}: maker_orders is not a list of objects")
    # (order id, shares it traded): the taker's size, each maker's matched amount.
    orders = [(_text(event, "taker_order_id"), event.get("size"))]
    orders += [(_text(m, "order_id"), m.get("matched_amount")) for m in makers]
    named = [(order, size) for order, size in orders if order is not None]
    if not named:
        raise MalformedEvent(f"trade {trade_id}: names no order")
    return [ExchangeNotice(kind, order_id=order, trade_id=trade_id, token_id=token,
                           returned_shares=(wire_micro(size) or 0) if kind is NoticeKind.TRADE_FAILED else 0)
            for order, size in named]


def _order(event: dict[str, Any]) -> list[ExchangeNotice]:
    order_id, change, token = _text(event, "id"), str(event.get("type", "")).upper(), _text(event, "asset_id")
    if order_id is None or change not in ORDER_TYPES:
        raise MalformedEvent(f"order event without an id or with type {_short(event.get('type'))}")
    if change == "CANCELLATION":
        return [ExchangeNotice(NoticeKind.ORDER_ENDED, order_id=order_id, token_id=token)]
    if change == "UPDATE" and (wire_micro(event.get("size_matched")) or 0) > 0:
        return [ExchangeNotice(NoticeKind.TRADED, order_id=order_id, token_id=token)]
    return []


def _text(event: dict[str, Any], name: str) -> str | None:
    value = event.get(name)
    return value if isinstance(value, str) and value else None


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
