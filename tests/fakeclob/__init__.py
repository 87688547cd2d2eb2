"""A wire-faithful fake Polymarket CLOB V2 that the real `py-clob-client-v2` talks to over loopback HTTP.

    from fakeclob import FakeClob
    with FakeClob() as clob:                       # 127.0.0.1, ephemeral port
        clob.add_market("123", tick_size="0.01", min_order_size="5")
        clob.set_bids("123", [(Decimal("0.55"), Decimal("100"))])
        clob.set_balance("123", Decimal("10"))
        clob.add_market(position_id, v2=True)      # a Protocol V2 market: PositionManager ledger, ExchangeV3
        client = clob.client()                     # a real ClobClient with the fake's wallet and creds

What the wire looks like, and where each fact comes from, is in WIRE.md beside this file. The server
is stdlib `http.server`; it borrows the client's own hashing/signing code so order ids and
signatures are checked exactly as the client computes them. All state (books, balances, orders,
trades, the request log and the switches) sits behind one re-entrant lock, `State.lock`.
"""

from __future__ import annotations

import base64
import threading
import time
import uuid
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from typing import Self

from eth_account import Account
from eth_utils import keccak
from py_clob_client_v2 import ClobClient
from py_clob_client_v2.clob_types import ApiCreds

from .channel import FakeUserChannel
from .engine import sorted_levels
from .limits import MODES, TIERS, SignerLimits
from .server import Server
from .state import (
    SETTLE_TO,
    SETTLEMENTS,
    TERMINAL_TRADE_STATUSES,
    Market,
    State,
    hex32,
    order_dict,
    trade_dict,
)
from .wire import DEFAULT_FAULT_BODIES, from_raw, to_raw

__all__ = ["FakeClob", "Request"]

# Hardhat/anvil account #0: a publicly known test key, never funded on any real chain.
TEST_PRIVATE_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@dataclass(frozen=True)
class Request:
    """One request as it arrived (also the failed and lost ones)."""

    method: str
    path: str                   # without query string
    query: dict[str, str]
    body: object | None         # parsed JSON, raw text when not JSON, None when empty
    at: float                   # time.monotonic() at arrival


@dataclass
class _Fault:
    remaining: int
    status: int
    path: str | None
    body: dict | str | bytes


class FakeClob:
    def __init__(self, chain_id: int = 137) -> None:
        self.chain_id = chain_id
        self._state = State(chain_id)
        self.private_key = TEST_PRIVATE_KEY
        self.address = Account.from_key(TEST_PRIVATE_KEY).address
        self.creds = ApiCreds(
            api_key=str(uuid.uuid5(uuid.NAMESPACE_URL, f"fakeclob-api-key:{self.address}")),
            api_secret=base64.urlsafe_b64encode(keccak(text=f"secret:{self.address}")).decode(),
            api_passphrase=keccak(text=f"passphrase:{self.address}").hex(),
        )
        self.latency = 0.0
        self.forget_finished_orders: str | None = None
        """None: /data/order shows every order; "null" or "404": a finished (matched or killed) order is
        answered as unknown, as the real endpoint does for finished orders (py-clob-client #217)."""
        self.host: str | None = None
        self._requests: list[Request] = []
        self._posted: list[object] = []
        self._faults: list[_Fault] = []
        self._losses: list[str] = []
        self._mangles: list[tuple[str, int, dict | str | bytes]] = []
        self._signers = SignerLimits()
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self.channel = FakeUserChannel(self)
        """The user channel (WebSocket), started on demand: `clob.channel.start()` returns its URL (channel.py)."""

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        if self._server is not None:
            raise RuntimeError("FakeClob already started")
        self._server = Server(self)
        port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.01},
                                        name=f"fakeclob-{port}", daemon=True)
        self._thread.start()
        self.host = f"http://127.0.0.1:{port}"
        return self.host

    def stop(self) -> None:
        self.channel.stop()
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.drop_connections()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self, **kwargs: object) -> ClobClient:
        """A real ClobClient bound to this server, wallet and API credentials."""
        if self.host is None:
            raise RuntimeError("start() the FakeClob first")
        return ClobClient(self.host, self.chain_id, key=self.private_key, creds=self.creds, **kwargs)

    # --- markets, book, balances -----------------------------------------------------------------

    def stock(self, token_id: str, shares: Decimal = Decimal("10")) -> None:
        """The tests' usual market: `token_id` listed (tick 0.01, minimum 5 shares), a bid of 100 at 0.60, and
        `shares` held."""
        self.add_market(token_id, tick_size="0.01", min_order_size="5")
        self.set_bids(token_id, [(Decimal("0.60"), Decimal("100"))])
        self.set_balance(token_id, shares)

    def add_market(self, token_id: str, *, tick_size: str = "0.01", min_order_size: str = "5",
                   neg_risk: bool = False, condition_id: str | None = None, v2: bool | None = None) -> None:
        """Register a token. Tokens of one condition share tick, minimum and neg-risk (as on
        Polymarket); a market added with one token gets a synthetic "No" sibling for /clob-markets,
        which a later add_market(..., condition_id=same) replaces.

        `v2=True`: a Protocol V2 market (Gamma's `version: "v2"`), declared, never guessed from the id, as the
        exchange knows it from the market: its balances sit in the PositionManager ledger (`CONDITIONAL-V2`;
        read as `CONDITIONAL` they are 0) and its orders must be signed for ExchangeV3 (domain "3").
        Use a realistic V2 position id for its token (see tests/exchange/test_v2_positions.py). `None` keeps
        what the market was (a new one is CTF), so a later add_market that changes the tick keeps the ledger."""
        state = self._state
        with state.lock:
            condition = condition_id or hex32(f"condition:{token_id}")
            known = state.token_market.get(token_id)
            if known is not None and known != condition:
                raise ValueError(f"token {token_id} already belongs to market {known}")
            market = state.markets.get(condition)
            if market is None:
                sibling = str(int.from_bytes(keccak(text=f"sibling:{token_id}"), "big"))
                if v2 and token_id.isdigit():
                    sibling = str(int(token_id) ^ 1)  # a V2 market's other outcome: the id's low byte
                market = Market(condition, Decimal(tick_size), Decimal(min_order_size), neg_risk,
                                [token_id, sibling], {sibling}, v2=bool(v2))
                state.markets[condition] = market
                state.token_market[sibling] = condition
            else:
                market.tick_size, market.min_order_size = Decimal(tick_size), Decimal(min_order_size)
                market.neg_risk = neg_risk
                market.v2 = market.v2 if v2 is None else v2
                if token_id not in market.tokens:
                    placeholder = next(iter(market.synthetic), None)
                    if placeholder is not None:
                        market.synthetic.discard(placeholder)
                        state.token_market.pop(placeholder, None)
                        market.tokens[market.tokens.index(placeholder)] = token_id
                    else:
                        market.tokens.append(token_id)
            state.token_market[token_id] = condition
            state.bids.setdefault(token_id, [])

    def close_market(self, token_id: str) -> None:
        """The token's market closes (or resolves): GET /book answers 404 `No orderbook exists for the requested
        token id` and POST /order 400 `the orderbook <condition> does not exist`; balances stay (the shares are
        redeemed on chain). For the whole condition, as on Polymarket. WIRE.md section 2a."""
        with self._state.lock:
            market = self._state.market_of(token_id)
            if market is None:
                raise KeyError(f"add_market({token_id!r}) first")
            market.closed = True

    def market_not_ready(self, token_id: str, count: int = 1) -> None:
        """The next `count` orders for the token's market are refused `the market is not yet ready to process new
        orders` (MARKET_NOT_READY: not open *yet*, which is no closed market). WIRE.md section 2a."""
        with self._state.lock:
            market = self._state.market_of(token_id)
            if market is None:
                raise KeyError(f"add_market({token_id!r}) first")
            self._state.not_ready[market.condition_id] = count

    def set_bids(self, token_id: str, levels: list[tuple[Decimal, Decimal]]) -> None:
        """Replace the resting bids of other traders: (price, size in shares), any order."""
        state = self._state
        with state.lock:
            if state.market_of(token_id) is None:
                raise KeyError(f"add_market({token_id!r}) first")
            rows = []
            for n, (price, size) in enumerate(levels):
                if isinstance(price, float):
                    raise TypeError("use Decimal, int or str for prices, never float")
                price = Decimal(str(price))
                if not 0 < price < 1:
                    raise ValueError(f"bid price {price} outside (0, 1)")
                rows.append((price, to_raw(size), hex32(f"maker:{token_id}:{n}:{state.next_id()}")))
            state.bids[token_id] = sorted_levels(rows)

    def set_balance(self, token_id: str, shares: Decimal) -> None:
        """Chain balance and the server's cached balance both become `shares`, in the token's ledger (the
        PositionManager for a V2 market, else CTF): add_market first for a V2 market."""
        with self._state.lock:
            chain, cache = self._state.ledger(token_id)
            chain[token_id] = cache[token_id] = to_raw(shares)

    def credit(self, token_id: str, shares: Decimal) -> None:
        """A fresh buy lands on chain; the server's cache lags until /balance-allowance/update."""
        with self._state.lock:
            chain = self._state.ledger(token_id)[0]
            chain[token_id] = chain.get(token_id, 0) + to_raw(shares)

    def chain_balance(self, token_id: str) -> Decimal:
        with self._state.lock:
            return from_raw(self._state.ledger(token_id)[0].get(token_id, 0))

    def cached_balance(self, token_id: str) -> Decimal:
        with self._state.lock:
            return from_raw(self._state.ledger(token_id)[1].get(token_id, 0))

    # --- settlement ------------------------------------------------------------------------------

    @property
    def settlement(self) -> str:
        return self._state.settlement

    @settlement.setter
    def settlement(self, mode: str) -> None:
        if mode not in SETTLEMENTS:
            raise ValueError(f"settlement must be one of {SETTLEMENTS}")
        self._state.settlement = mode

    @property
    def trades_page_size(self) -> int:
        return self._state.trades_page_size

    @trades_page_size.setter
    def trades_page_size(self, size: int) -> None:
        if size < 1:
            raise ValueError("page size must be positive")
        self._state.trades_page_size = size

    def settle_trades(self, status: str = "CONFIRMED", trade_ids: list[str] | None = None) -> list[str]:
        """Move pending trades (all, or the given ids) to MINED/CONFIRMED (with a transaction hash),
        RETRYING, or FAILED (the sold shares go back to the chain balance; the cache lags). The order record is
        left as matched: the real CLOB keeps reporting MATCHED for fills that never settle
        (py-clob-client-v2 #34). Returns the ids moved."""
        if status not in SETTLE_TO:
            raise ValueError(f"status must be one of {SETTLE_TO}")
        state = self._state
        with state.lock:
            known = {t.id for t in state.trades}
            unknown = set(trade_ids or ()) - known
            if unknown:
                raise KeyError(f"unknown trade ids {sorted(unknown)}")
            now = int(time.time())
            moved = []
            for trade in state.trades:
                if trade.status in TERMINAL_TRADE_STATUSES:
                    continue
                if trade_ids is not None and trade.id not in trade_ids:
                    continue
                state.settle(trade, status, now)
                moved.append(trade.id)
            return moved

    # --- switches --------------------------------------------------------------------------------

    def fail_next(self, n: int, status: int, *, path: str | None = None,
                  body: dict | str | bytes | None = None) -> None:
        """The next `n` requests (whose path starts with `path`, if given) get `status` with the
        real body for it, and nothing is executed. `body` bytes are sent as they are (labelled JSON):
        an answer that is not UTF-8, truncated, or nested too deep to parse."""
        if n < 1:
            raise ValueError("n must be positive")
        if body is None:
            body = DEFAULT_FAULT_BODIES.get(status, {"error": HTTPStatus(status).phrase})
        with self._state.lock:
            self._faults.append(_Fault(n, status, path, body))

    def lose_next_response(self, path: str = "/order") -> None:
        """The next request on `path` (prefix) is executed, then its connection is closed unanswered."""
        with self._state.lock:
            self._losses.append(path)

    def mangle_next_response(self, status: int, body: dict | str | bytes, path: str = "/order") -> None:
        """The next request on `path` (prefix) is executed, then answered with `status` and `body` instead of
        its real answer (a proxy's page, a truncated or mangled body after the order went through)."""
        with self._state.lock:
            self._mangles.append((path, status, body))

    # --- per-signer order limits (limits.py, WIRE.md section 7) -------------------------------------

    def set_signer_tier(self, tier: str, address: str | None = None, *, after_orders: int = 0) -> None:
        """The signer's tier (default: this fake's wallet). Every signer starts at `standard`. With
        `after_orders=n` the change lands after the next n orders (a tier refresh in mid-burst)."""
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {list(TIERS)}")
        with self._state.lock:
            if after_orders > 0:
                self._signers.switches.append((self._signers._seen + after_orders, address or self.address, tier))
            else:
                self._signers.set_tier(address or self.address, tier)

    def drain_signer(self, address: str | None = None) -> None:
        """Empty the signer's order bucket now, as another bot trading with the same signer would."""
        with self._state.lock:
            self._signers.drain(address or self.address)

    def signer_tier(self, address: str | None = None) -> str:
        with self._state.lock:
            return self._signers.tier_of(address or self.address)

    @property
    def signer_limits(self) -> str:
        """"enforce" (429 without a token), "warn" (`Poly-RateLimit-Warning: true`, executed) or "off"."""
        return self._signers.mode

    @signer_limits.setter
    def signer_limits(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        with self._state.lock:
            self._signers.mode = mode

    def set_signer_clock(self, clock: object) -> None:
        """The buckets' clock (`monotonic()` and `wall()`, as exitguard's Clock): a test's virtual time."""
        with self._state.lock:
            self._signers.clock = clock

    @property
    def signer_rejections(self) -> int:
        """429s the per-signer limiter has sent."""
        with self._state.lock:
            return self._signers.rejected

    # --- inspection ------------------------------------------------------------------------------

    @property
    def requests(self) -> list[Request]:
        with self._state.lock:
            return list(self._requests)

    def count(self, method: str, path_prefix: str) -> int:
        with self._state.lock:
            return sum(1 for r in self._requests if r.method == method and r.path.startswith(path_prefix))

    @property
    def orders(self) -> dict[str, dict]:
        """Every order that reached matching (filled, resting or killed), in the /data/order shape."""
        with self._state.lock:
            return {oid: order_dict(order) for oid, order in self._state.orders.items()}

    @property
    def trades(self) -> list[dict]:
        """Every trade, oldest first, in the /data/trades shape (the endpoint itself is newest first)."""
        with self._state.lock:
            return [trade_dict(t) for t in self._state.trades]

    @property
    def posted_orders(self) -> list[object]:
        """Every POST /order body received, parsed, including rejected, failed and lost ones."""
        with self._state.lock:
            return list(self._posted)

    def reset_requests(self) -> None:
        with self._state.lock:
            self._requests.clear()
            self._posted.clear()

    # --- hooks for the server --------------------------------------------------------------------

    def _record(self, method: str, path: str, query: dict[str, str], body: object) -> None:
        with self._state.lock:
            self._requests.append(Request(method, path, query, body, time.monotonic()))
            if method == "POST" and path == "/order":
                self._posted.append(body)

    def _take_fault(self, path: str) -> tuple[int, dict | str | bytes] | None:
        with self._state.lock:
            for fault in self._faults:
                if fault.path is None or path.startswith(fault.path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault.status, fault.body
        return None

    def _take_mangle(self, path: str) -> tuple[int, dict | str | bytes] | None:
        with self._state.lock:
            for i, (prefix, status, body) in enumerate(self._mangles):
                if path.startswith(prefix):
                    del self._mangles[i]
                    return status, body
        return None

    def _signer_take(self, address: str) -> tuple[bool, dict[str, str]]:
        with self._state.lock:
            return self._signers.take(address)

    def _take_loss(self, path: str) -> bool:
        with self._state.lock:
            for i, prefix in enumerate(self._losses):
                if path.startswith(prefix):
                    del self._losses[i]
                    return True
        return False
