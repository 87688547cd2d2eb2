"""The journal's rows as values: what a position and a transition look like on disk, and back.

Reading is strict: a row whose columns do not have the types the engine wrote (a damaged or hand-edited
file) raises ValueError/TypeError here, and the journal turns that into a JournalError naming the file.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Any

from exitguard.exchange.port import Fill
from exitguard.states import PositionRecord, SellPermit, State


@dataclass(frozen=True, slots=True)
class JournaledTransition:
    seq: int
    key: str
    source: str | None
    dest: str
    trigger: str
    payload: dict[str, Any]
    wall_time: str


@dataclass(frozen=True, slots=True)
class JournaledPosition:
    key: str
    token_id: str
    expected: int
    last_buy_at: datetime | None
    state: State
    attempts: int
    attempt_id: str | None
    reason: str | None
    limit_price: Decimal | None
    verified_balance: int | None
    sold: int
    residual: int
    unresolved: bool
    permit: SellPermit | None
    order_id: str | None
    """The order signed for the attempt in flight; written before it is posted (None: never posted)."""
    unsettled: Fill | None = None
    """CLOSED by a fill that is matched but not yet settled on chain."""
    avg_price: Decimal | None = None
    """The average price of the fill that closed the position (None: no fill, or one proven without its price)."""
    filled_order_id: str | None = None
    """The order that filled (None: no fill, or one proven without naming its order)."""

    def record(self) -> PositionRecord:
        return PositionRecord.restored(
            key=self.key, token_id=self.token_id, expected=self.expected, last_buy_at=self.last_buy_at,
            state=self.state, attempts=self.attempts, attempt_id=self.attempt_id, reason=self.reason,
            limit_price=self.limit_price, verified_balance=self.verified_balance, sold=self.sold,
            residual=self.residual, unresolved=self.unresolved, inflight=self.permit, avg_price=self.avg_price,
            filled_order_id=self.filled_order_id,
        )


Row = tuple[State | None, State, str, dict[str, object], datetime]
"""A transition as the book hands it to the journal: source (None: a track), destination, trigger, payload, time."""


def insert_rows(db: Any, record: PositionRecord, rows: Sequence[Row], *, order_id: str | None,
                unsettled: Fill | None) -> None:
    """The transitions' rows and the position's current row, inside the caller's transaction."""
    seq = None
    for source, dest, trigger, payload, wall_time in rows:
        seq = db.execute(
            "INSERT INTO transitions (key, source, dest, trigger, payload, wall_time) VALUES (?, ?, ?, ?, ?, ?)",
            (record.key, None if source is None else str(source), str(dest), trigger,
             json.dumps(plain(payload), sort_keys=True), wall_time.isoformat())).lastrowid
    permit = record.inflight or record.permit
    db.execute(
        "INSERT OR REPLACE INTO positions (key, token_id, expected, last_buy_at, state, attempts, attempt_id, "
        "reason, limit_price, verified_balance, sold, residual, unresolved, permit, order_id, seq, unsettled, "
        "avg_price, filled_order_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (record.key, record.token_id, record.expected,
         None if record.last_buy_at is None else record.last_buy_at.isoformat(), str(record.state),
         record.attempts, record.attempt_id, record.reason,
         None if record.limit_price is None else str(record.limit_price), record.verified_balance,
         record.sold, record.residual, int(record.unresolved), permit_json(permit), order_id,
         seq, fill_json(unsettled), None if record.avg_price is None else str(record.avg_price),
         record.filled_order_id))


def order_row(record: PositionRecord, order_id: str, wall_time: datetime) -> Row:
    """The order about to be posted for the attempt in flight, with the wall time it was noted at."""
    return (record.state, record.state, "order_signed", {"order_id": order_id, "attempt_id": record.attempt_id},
            wall_time)


def plain(value: object) -> object:
    """Payload values as JSON: Decimal as text (exact), dataclasses as objects, enums by value."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def permit_json(permit: SellPermit | None) -> str | None:
    if permit is None:
        return None
    return json.dumps({"shares": permit.shares, "verified_balance": permit.verified_balance,
                       "attempt_id": permit.attempt_id})


def fill_json(fill: Fill | None) -> str | None:
    if fill is None:
        return None
    return json.dumps({"shares": fill.shares, "avg_price": str(fill.avg_price), "order_id": fill.order_id,
                       "trade_ids": list(fill.trade_ids)})


def fill_of(text: str | None) -> Fill | None:
    if text is None:
        return None
    data = json.loads(text)
    trade_ids = data["trade_ids"]
    if not isinstance(trade_ids, list) or not all(isinstance(t, str) for t in trade_ids):
        raise TypeError(f"unsettled trade_ids is {trade_ids!r}, not a list of text")
    return Fill(shares=_integer(data["shares"], "unsettled shares"),
                avg_price=Decimal(_text(data["avg_price"], "unsettled avg_price")),
                order_id=_text(data["order_id"], "unsettled order_id"), trade_ids=tuple(trade_ids))


def permit_of(key: str, token_id: str, text: str | None) -> SellPermit | None:
    if text is None:
        return None
    data = json.loads(text)
    # The verification time was a monotonic reading of a process that is gone: the restored permit is
    # only ever used to look the order up, never to sell.
    return SellPermit(position_key=key, token_id=token_id, shares=_integer(data["shares"], "permit shares"),
                      verified_balance=_integer(data["verified_balance"], "permit verified_balance"),
                      verified_at=float("-inf"), attempt_id=_text(data["attempt_id"], "permit attempt_id"))


def _text(value: object, column: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{column} is {type(value).__name__} {value!r}, not text")
    return value


def _integer(value: object, column: str, *, optional: bool = False) -> Any:
    if value is None and optional:
        return None
    if type(value) is not int:
        raise TypeError(f"{column} is {type(value).__name__} {value!r}, not an integer")
    return value


def position_of(row: tuple[Any, ...]) -> JournaledPosition:
    """A `positions` row (in the column order of POSITION_COLUMNS) as a value; raises ValueError/TypeError."""
    (key, token, expected, last_buy, state, attempts, attempt_id, reason, limit_price, verified, sold,
     residual, unresolved, permit, order_id, unsettled, avg_price, filled_order_id) = row
    key, token = _text(key, "key"), _text(token, "token_id")
    if unresolved not in (0, 1):
        raise ValueError(f"unresolved is {unresolved!r}, not 0 or 1")
    last_buy = _text(last_buy, "last_buy_at", optional=True)
    limit_price = _text(limit_price, "limit_price", optional=True)
    avg_price = _text(avg_price, "avg_price", optional=True)
    return JournaledPosition(
        key=key, token_id=token, expected=_integer(expected, "expected"),
        last_buy_at=None if last_buy is None else datetime.fromisoformat(last_buy), state=State(state),
        attempts=_integer(attempts, "attempts"), attempt_id=_text(attempt_id, "attempt_id", optional=True),
        reason=_text(reason, "reason", optional=True),
        limit_price=None if limit_price is None else Decimal(limit_price),
        verified_balance=_integer(verified, "verified_balance", optional=True), sold=_integer(sold, "sold"),
        residual=_integer(residual, "residual"), unresolved=bool(unresolved),
        permit=permit_of(key, token, _text(permit, "permit", optional=True)),
        order_id=_text(order_id, "order_id", optional=True),
        unsettled=fill_of(_text(unsettled, "unsettled", optional=True)),
        avg_price=None if avg_price is None else Decimal(avg_price),
        filled_order_id=_text(filled_order_id, "filled_order_id", optional=True))


POSITION_COLUMNS = ("key, token_id, expected, last_buy_at, state, attempts, attempt_id, reason, limit_price, "
                    "verified_balance, sold, residual, unresolved, permit, order_id, unsettled, avg_price, "
                    "filled_order_id")


def transition_of(row: tuple[Any, ...]) -> JournaledTransition:
    """A `transitions` row (seq, key, source, dest, trigger, payload, wall_time); raises ValueError/TypeError."""
    seq, key, source, dest, trigger, payload, wall = row
    data = json.loads(_text(payload, "payload"))
    if not isinstance(data, dict):
        raise TypeError(f"payload is {type(data).__name__}, not an object")
    return JournaledTransition(_integer(seq, "seq"), _text(key, "key"), _text(source, "source", optional=True),
                               _text(dest, "dest"), _text(trigger, "trigger"), data, _text(wall, "wall_time"))


def order_times(history: list[JournaledTransition], order_id: str) -> tuple[datetime | None, datetime | None]:
    """From a position's journaled transitions: when `order_id` was noted before its post, and when it left
    our hands (the last `sent_at` journaled after that note), each None when the journal does not say."""
    noted: datetime | None = None
    sent: datetime | None = None
    for row in history:
        if row.trigger == "order_signed" and row.payload.get("order_id") == order_id:
            noted, sent = _parsed_time(row.wall_time), None
        elif noted is not None and isinstance(row.payload.get("sent_at"), str):
            sent = _parsed_time(row.payload["sent_at"]) or sent
    return noted, sent


def _parsed_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
