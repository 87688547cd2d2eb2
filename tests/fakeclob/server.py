"""HTTP/1.1 keep-alive server and routes. Stdlib only on the wire; state lives in `FakeClob`.

Per request, in this order: read the whole body (so a keep-alive connection stays in sync), record
the request, sleep `latency`, answer an injected fault without executing anything, otherwise execute;
if the response is to be lost, close the socket instead of writing it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, urlsplit

from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.utilities import (
    generate_orderbook_summary_hash,
    parse_raw_orderbook_summary,
)

from . import auth, engine
from .state import order_dict, trade_dict
from .wire import (
    END_CURSOR,
    ERR_ASSET_TYPE,
    ERR_DERIVE,
    ERR_INVALID_TOKEN,
    ERR_L1_AUTH,
    ERR_L2_AUTH,
    ERR_MARKET_NOT_FOUND,
    ERR_NO_BOOK,
    ERR_TRADE_PARAMS,
    MAX_UINT256,
    decode_cursor,
    encode_cursor,
    fmt_decimal,
    units,
)

if TYPE_CHECKING:
    from . import FakeClob

COLLATERAL_RAW = 1_000_000 * 10**6   # a fixed 1,000,000 pUSD: the engine only sells


class Answer(Exception):
    """Short-circuit a route with a status and body (dict/list/None -> JSON, str -> text)."""

    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


def _err(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The stdlib's backlog of 5 resets connections when a burst opens dozens at once (bench/burst.py);
    # the real CLOB sits behind a load balancer that does not.
    request_queue_size = 1024

    def __init__(self, clob: FakeClob) -> None:
        self.clob = clob
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up waiting (a test of the adapter's deadline) closes its end first; that is
        # the scenario under test, not a fault of the fake. Anything else is reported as usual.
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def drop_connections(self) -> None:
        """Close idle keep-alive sockets so their handler threads end with the server."""
        with self.connections_lock:
            for conn in list(self.connections):
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as httpx expects
    timeout = 60                    # an idle keep-alive connection is dropped after this
    server: Server

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as two writes; without NODELAY, Nagle + the peer's delayed ACK
        # add ~40 ms to every response, which would swamp any latency a test injects.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        with self.server.connections_lock:
            self.server.connections.discard(self.connection)
        super().finish()

    def log_message(self, format: str, *args: object) -> None:  # the stdlib's signature
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    # ---------------------------------------------------------------------------------------------

    def _serve(self) -> None:
        clob = self.server.clob
        split = urlsplit(self.path)
        path, query = split.path, dict(parse_qsl(split.query, keep_blank_values=True))
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        text = raw.decode("utf-8", errors="replace") if raw else None
        body = _parse_json(text)

        self.extra_headers: dict[str, str] = {}
        clob._record(self.command, path, query, body)
        if clob.latency:
            time.sleep(clob.latency)
        fault = clob._take_fault(path)
        if fault is not None:
            self._send(*fault)
            return
        lose = clob._take_loss(path)
        mangle = clob._take_mangle(path)
        try:
            status, out = 200, self._route(path, query, text, body)
        except Answer as answer:
            status, out = answer.status, answer.body
        except engine.Reject as reject:
            status, out = reject.status, reject.body
        except Exception:
            # A bug in the fake, not an exchange answer: say so loudly (pytest shows stderr) rather
            # than dropping the connection, which a client would read as a lost response.
            traceback.print_exc()
            status, out = 500, {"error": "fakeclob internal error (traceback on stderr)"}
        if mangle is not None:
            status, out = mangle  # executed above; the answer that comes back is not its own
        if lose:
            # Executed, but the reply never arrives: the client sees the connection close with no
            # response (httpx RemoteProtocolError -> PolyApiException status_code=None).
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        self._send(status, out)

    def _send(self, status: int, body: object) -> None:
        if isinstance(body, bytes):
            # Raw bytes as they are (an injected fault: not UTF-8, truncated, nested too deep), labelled JSON.
            self._write(status, body, "application/json")
            return
        if isinstance(body, str):
            payload, ctype = body.encode(), "text/plain; charset=utf-8"
        else:
            payload, ctype = json.dumps(body, separators=(",", ":")).encode(), "application/json"
        self._write(status, payload, ctype)

    def _write(self, status: int, payload: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in getattr(self, "extra_headers", {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    # --- routing ---------------------------------------------------------------------------------

    def _route(self, path: str, query: dict[str, str], text: str | None, body: object) -> object:
        method = self.command
        public = PUBLIC_GET.get(path) if method == "GET" else None
        if public is not None:
            return public(self.server.clob, query)
        for prefix, handler in PUBLIC_GET_PREFIX:
            if method == "GET" and path.startswith(prefix) and len(path) > len(prefix):
                return handler(self.server.clob, path[len(prefix):])
        if path in ("/auth/derive-api-key", "/auth/api-key") and method in ("GET", "POST"):
            return self._l1(path, method)
        if (method, path) in PRIVATE or (method == "GET" and path.startswith("/data/order/")):
            self._require_l2(method, path, text)
            if (method, path) == ("POST", "/order"):
                self._signer_slot()
            if path.startswith("/data/order/"):
                return get_order(self.server.clob, path[len("/data/order/"):])
            return PRIVATE[(method, path)](self.server.clob, query, body)
        raise Answer(404, "404 page not found")   # Go's default mux text [fake]

    def _require_l2(self, method: str, path: str, text: str | None) -> None:
        clob = self.server.clob
        if not auth.l2_ok(self.headers, method, path, text, clob.creds, clob.address):
            raise _err(401, ERR_L2_AUTH)

    def _signer_slot(self) -> None:
        """The per-signer order bucket (limits.py), after auth: its headers go on the reply, and without a
        token the order is refused 429 with the documented body, nothing executed (WIRE.md section 7)."""
        admitted, self.extra_headers = self.server.clob._signer_take(self.headers.get("POLY_ADDRESS") or "")
        if not admitted:
            raise _err(429, "Too Many Requests")

    def _l1(self, path: str, method: str) -> object:
        clob = self.server.clob
        signer = auth.l1_signer(self.headers, clob.chain_id)
        if signer is None:
            raise _err(401, ERR_L1_AUTH)
        if signer.lower() != clob.address.lower():
            raise _err(400, ERR_DERIVE)
        if (path, method) not in (("/auth/derive-api-key", "GET"), ("/auth/api-key", "POST")):
            raise Answer(405, "405 method not allowed")
        creds = clob.creds
        return {"apiKey": creds.api_key, "secret": creds.api_secret, "passphrase": creds.api_passphrase}


def _parse_json(text: str | None) -> object:
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


# --- public endpoints ------------------------------------------------------------------------------

def _market_for_query(clob: FakeClob, query: dict[str, str]):
    token = query.get("token_id")
    if not token:
        raise _err(400, ERR_INVALID_TOKEN)
    market = clob._state.market_of(token)
    if market is None:
        raise _err(404, ERR_MARKET_NOT_FOUND)
    return token, market


def get_tick_size(clob: FakeClob, query: dict[str, str]) -> object:
    with clob._state.lock:
        _, market = _market_for_query(clob, query)
        return {"minimum_tick_size": float(market.tick_size)}   # a JSON number, as the CLOB sends


def get_neg_risk(clob: FakeClob, query: dict[str, str]) -> object:
    with clob._state.lock:
        _, market = _market_for_query(clob, query)
        return {"neg_risk": market.neg_risk}


def get_fee_rate(clob: FakeClob, query: dict[str, str]) -> object:
    with clob._state.lock:
        _market_for_query(clob, query)
        return {"base_fee": 0}


def get_book(clob: FakeClob, query: dict[str, str]) -> object:
    state = clob._state
    token = query.get("token_id")
    if not token:
        raise _err(400, ERR_INVALID_TOKEN)
    with state.lock:
        market = state.market_of(token)
        if market is None or market.closed:  # a closed or resolved market has no book (WIRE.md section 2a)
            raise _err(404, ERR_NO_BOOK)
        # The real book lists bids ascending (best bid last); the client walks reversed(bids).
        bids = [{"price": fmt_decimal(lv.price), "size": units(lv.size_raw)}
                for lv in reversed(state.bids.get(token, []))]
        book = {
            "market": market.condition_id, "asset_id": token,
            "timestamp": str(int(time.time() * 1000)), "hash": "", "bids": bids, "asks": [],
            "min_order_size": fmt_decimal(market.min_order_size),
            "tick_size": fmt_decimal(market.tick_size), "neg_risk": market.neg_risk,
            "last_trade_price": "0.5",
        }
        # The server's SHA1 over the compact book; the client reproduces it (utilities.py).
        book["hash"] = generate_orderbook_summary_hash(parse_raw_orderbook_summary(book))
        return book


def get_markets_by_token(clob: FakeClob, token: str) -> object:
    with clob._state.lock:
        market = clob._state.market_of(token)
        if market is None:
            raise _err(404, ERR_MARKET_NOT_FOUND)
        return {"condition_id": market.condition_id, "primary_token_id": market.tokens[0],
                "secondary_token_id": market.tokens[1] if len(market.tokens) > 1 else None}


def get_clob_market(clob: FakeClob, condition_id: str) -> object:
    with clob._state.lock:
        market = clob._state.markets.get(condition_id)
        if market is None:
            raise _err(404, ERR_MARKET_NOT_FOUND)
        return {
            "c": market.condition_id,
            "t": [{"t": tok, "o": "Yes" if i == 0 else "No"} for i, tok in enumerate(market.tokens)],
            "mos": float(market.min_order_size), "mts": float(market.tick_size),
            "nr": market.neg_risk, "mbf": 0, "tbf": 0, "fd": {"r": 0, "e": 0, "to": True},
        }


PUBLIC_GET = {
    "/ok": lambda clob, q: "OK",
    "/time": lambda clob, q: int(time.time()),
    "/version": lambda clob, q: {"version": 2},
    "/tick-size": get_tick_size,
    "/neg-risk": get_neg_risk,
    "/fee-rate": get_fee_rate,
    "/book": get_book,
}
PUBLIC_GET_PREFIX = (
    ("/markets-by-token/", get_markets_by_token),
    ("/clob-markets/", get_clob_market),
)


# --- authenticated endpoints -----------------------------------------------------------------------

def get_balance_allowance(clob: FakeClob, query: dict[str, str], body: object) -> object:
    asset_type = query.get("asset_type")
    state = clob._state
    with state.lock:
        if asset_type == "COLLATERAL":
            balance = COLLATERAL_RAW
        elif asset_type in CONDITIONAL_LEDGERS:
            if not query.get("token_id"):
                raise _err(400, ERR_INVALID_TOKEN)
            # Each asset type reads its own ledger: a V2 position read as CONDITIONAL answers "0" (WIRE.md 3a).
            balance = _ledger_cache(state, asset_type).get(query["token_id"], 0)
        else:
            raise _err(400, ERR_ASSET_TYPE)
        return {"balance": str(balance), "allowances": _allowances(clob.chain_id, asset_type)}


CONDITIONAL_LEDGERS = ("CONDITIONAL", "CONDITIONAL-V2")
"""CTF token ids, Protocol V2 position ids (docs.polymarket.com protocol-v2-migration)."""


def _ledger_cache(state, asset_type: str) -> dict[str, int]:
    return state.v2_cache if asset_type == "CONDITIONAL-V2" else state.cache


def _ledger_chain(state, asset_type: str) -> dict[str, int]:
    return state.v2_chain if asset_type == "CONDITIONAL-V2" else state.chain


def _allowances(chain_id: int, asset_type: str | None = None) -> dict[str, str]:
    # V2 reports one allowance per spender; the fake's wallet has approved all of them. V2 positions are
    # spent by ExchangeV3 (docs: "Check its allowances entry for ExchangeV3").
    config = get_contract_config(chain_id)
    spenders = ((config.exchange_v3,) if asset_type == "CONDITIONAL-V2"
                else (config.exchange_v2, config.neg_risk_exchange_v2, config.neg_risk_adapter))
    return {spender: MAX_UINT256 for spender in spenders}


def update_balance_allowance(clob: FakeClob, query: dict[str, str], body: object) -> object:
    asset_type = query.get("asset_type")
    state = clob._state
    with state.lock:
        if asset_type in CONDITIONAL_LEDGERS:
            token = query.get("token_id")
            if not token:
                raise _err(400, ERR_INVALID_TOKEN)
            _ledger_cache(state, asset_type)[token] = _ledger_chain(state, asset_type).get(token, 0)
        elif asset_type != "COLLATERAL":
            raise _err(400, ERR_ASSET_TYPE)
    return ""   # empty 200 body (the client hands back "")


def post_order(clob: FakeClob, query: dict[str, str], body: object) -> object:
    return engine.post_order(clob._state, body, clob.creds.api_key, clob.address)


def get_order(clob: FakeClob, order_id: str) -> object:
    with clob._state.lock:
        order = clob._state.orders.get(order_id.lower())
        if order is not None and order.status != "LIVE" and clob.forget_finished_orders is not None:
            # A finished order dropped out of the endpoint (py-clob-client #217): `null`, or a 404 page.
            order = None
            if clob.forget_finished_orders == "404":
                raise Answer(404, "404 page not found")
        return order_dict(order) if order else None   # unknown id: 200 `null`


def get_trades(clob: FakeClob, query: dict[str, str], body: object) -> object:
    state = clob._state
    try:
        offset = decode_cursor(query.get("next_cursor") or "MA==")
        before = int(query["before"]) if query.get("before") else None
        after = int(query["after"]) if query.get("after") else None
    except ValueError:
        raise _err(400, ERR_TRADE_PARAMS) from None
    with state.lock:
        limit = state.trades_page_size
        if offset < 0:
            return {"data": [], "next_cursor": END_CURSOR, "limit": limit, "count": 0}
        selected = [t for t in reversed(state.trades)   # newest first
                    if _trade_matches(t, query, before, after)]
        page = selected[offset:offset + limit]
        end = offset + limit >= len(selected)
        return {"data": [trade_dict(t) for t in page],
                "next_cursor": END_CURSOR if end else encode_cursor(offset + limit),
                "limit": limit, "count": len(page)}


def _trade_matches(trade, query: dict[str, str], before: int | None, after: int | None) -> bool:
    if query.get("id") and trade.id != query["id"]:
        return False
    if query.get("asset_id") and trade.token_id != query["asset_id"]:
        return False
    if query.get("market") and trade.condition_id.lower() != query["market"].lower():
        return False
    if query.get("maker_address") and trade.maker_address.lower() != query["maker_address"].lower():
        return False
    if before is not None and trade.match_time > before:
        return False
    return after is None or trade.match_time >= after


def get_rate_limit_tier(clob: FakeClob, query: dict[str, str], body: object) -> object:
    # The shape is the fake's: the docs name the endpoint, not its body (WIRE.md section 7).
    return {"tier": clob.signer_tier(clob.address)}


PRIVATE = {
    ("GET", "/v1/user/rate-limit-tier"): get_rate_limit_tier,
    ("GET", "/balance-allowance"): get_balance_allowance,
    ("GET", "/balance-allowance/update"): update_balance_allowance,
    ("POST", "/order"): post_order,
    ("GET", "/data/trades"): get_trades,
}
