"""The fake exchange's books: markets, resting bids, balances, orders and trades.

Everything is guarded by one re-entrant lock (`State.lock`): HTTP handler threads and the test thread
both mutate it. Amounts are raw integers (6-decimal units); prices are Decimal. The wire shapes
(`order_dict`, `trade_dict`) are built from these records on demand, so no float ever appears.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from eth_utils import keccak

from .wire import fmt_decimal, units

# Resting bids belong to "other traders"; one address stands for all of them.
OTHER_TRADER = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
OTHER_OWNER = "00000000-0000-4000-8000-000000000002"

SETTLEMENTS = ("manual", "instant", "after_reply")
"""manual: trades stay MATCHED until settle_trades(); instant: CONFIRMED, hashes in the POST reply;
after_reply: CONFIRMED right after the match, but the reply carries only tradeIDs, as the real CLOB's
does (settlement is later than the answer), so the client's post_order polls /data/trades once."""
TERMINAL_TRADE_STATUSES = ("CONFIRMED", "FAILED")
SETTLE_TO = ("MINED", "CONFIRMED", "RETRYING", "FAILED")


def hex32(text: str) -> str:
    return "0x" + keccak(text=text).hex()


@dataclass
class Market:
    condition_id: str
    tick_size: Decimal
    min_order_size: Decimal
    neg_risk: bool
    tokens: list[str]                      # [Yes, No]; a synthetic sibling fills the second slot
    synthetic: set[str] = field(default_factory=set)
    v2: bool = False
    """A Protocol V2 market: its shares sit in the PositionManager ledger and its orders are signed for
    ExchangeV3 (WIRE.md section 3a)."""
    closed: bool = False
    """Closed or resolved (`FakeClob.close_market`): no order book, orders refused (WIRE.md section 2a)."""

    def outcome(self, token_id: str) -> str:
        return "Yes" if self.tokens and self.tokens[0] == token_id else "No"


@dataclass
class Level:
    """One resting bid of another trader."""

    price: Decimal
    size_raw: int
    order_id: str


@dataclass
class Order:
    id: str
    status: str                            # LIVE | MATCHED | CANCELED
    owner: str
    maker_address: str
    condition_id: str
    token_id: str
    side: str
    original_raw: int                      # shares
    matched_raw: int
    price: str                             # limit price as the wire shows it
    outcome: str
    expiration: str
    order_type: str
    trade_ids: list[str]
    created_at: int


@dataclass
class Trade:
    id: str
    taker_order_id: str
    condition_id: str
    token_id: str
    side: str                              # the taker's side
    price: Decimal                         # the maker level's price
    size_raw: int
    status: str
    match_time: int
    last_update: int
    outcome: str
    owner: str
    maker_address: str
    maker_order_id: str
    transaction_hash: str = ""


def order_dict(order: Order) -> dict:
    """GET /data/order/{id} shape (see WIRE.md §5)."""
    return {
        "id": order.id, "status": order.status, "owner": order.owner,
        "maker_address": order.maker_address, "market": order.condition_id,
        "asset_id": order.token_id, "side": order.side,
        "original_size": units(order.original_raw), "size_matched": units(order.matched_raw),
        "price": order.price, "outcome": order.outcome, "expiration": order.expiration,
        "order_type": order.order_type, "associate_trades": list(order.trade_ids),
        "created_at": order.created_at,
    }


def trade_dict(trade: Trade) -> dict:
    """GET /data/trades item shape (see WIRE.md §6)."""
    maker_side = "BUY" if trade.side == "SELL" else "SELL"
    return {
        "id": trade.id, "taker_order_id": trade.taker_order_id, "market": trade.condition_id,
        "asset_id": trade.token_id, "side": trade.side, "size": units(trade.size_raw),
        "fee_rate_bps": "0", "price": fmt_decimal(trade.price), "status": trade.status,
        "match_time": str(trade.match_time), "last_update": str(trade.last_update),
        "outcome": trade.outcome, "bucket_index": 0, "owner": trade.owner,
        "maker_address": trade.maker_address, "transaction_hash": trade.transaction_hash,
        "trader_side": "TAKER",
        "maker_orders": [{
            "order_id": trade.maker_order_id, "owner": OTHER_OWNER, "maker_address": OTHER_TRADER,
            "matched_amount": units(trade.size_raw), "price": fmt_decimal(trade.price),
            "fee_rate_bps": "0", "asset_id": trade.token_id, "outcome": trade.outcome,
            "side": maker_side,
        }],
    }


class State:
    def __init__(self, chain_id: int) -> None:
        self.chain_id = chain_id
        self.lock = threading.RLock()
        self.markets: dict[str, Market] = {}           # by condition id
        self.token_market: dict[str, str] = {}         # token id -> condition id
        self.bids: dict[str, list[Level]] = {}         # token id -> best first
        self.chain: dict[str, int] = {}                # on-chain balance, raw (the CTF ledger)
        self.cache: dict[str, int] = {}                # the server's cached balance, raw (the CTF ledger)
        self.v2_chain: dict[str, int] = {}             # the same two for the PositionManager ledger
        self.v2_cache: dict[str, int] = {}
        self.orders: dict[str, Order] = {}             # every order that reached matching
        self.not_ready: dict[str, int] = {}            # condition id -> orders still refused "not yet ready"
        self.trades: list[Trade] = []
        self.listeners: list[Callable[[str, Trade | Order], None]] = []
        """Called under the lock with ("trade", trade) or ("order", order) as either changes (the user channel)."""
        self.settlement = "manual"
        self.trades_page_size = 100
        self._ids = 0

    def next_id(self) -> int:
        self._ids += 1
        return self._ids

    def trade_id(self) -> str:
        # Deterministic UUIDs (the real ids are UUIDs): same run, same ids.
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"fakeclob-trade-{self.next_id()}"))

    def market_of(self, token_id: str) -> Market | None:
        condition = self.token_market.get(token_id)
        return self.markets.get(condition) if condition else None

    def ledger(self, token_id: str) -> tuple[dict[str, int], dict[str, int]]:
        """(chain, cache) of the ledger that holds this token: PositionManager for a V2 market, else CTF."""
        market = self.market_of(token_id)
        return (self.v2_chain, self.v2_cache) if market is not None and market.v2 else (self.chain, self.cache)

    def settle(self, trade: Trade, status: str, now: int) -> None:
        """Move one pending trade on to `status`."""
        if status == "FAILED" and trade.side == "SELL":
            # The on-chain transfer reverted: the shares are the seller's again. The server cache
            # is not told; it catches up on /balance-allowance/update, as the real one does.
            chain = self.ledger(trade.token_id)[0]
            chain[trade.token_id] = chain.get(trade.token_id, 0) + trade.size_raw
        if status in ("MINED", "CONFIRMED"):
            trade.transaction_hash = hex32(f"tx:{trade.id}")
        trade.status = status
        trade.last_update = now
        self.publish("trade", trade)

    def publish(self, kind: str, record: Trade | Order) -> None:
        """A trade or an order changed: tell the listeners (the user channel), from the code that changed it."""
        for listener in list(self.listeners):
            listener(kind, record)
