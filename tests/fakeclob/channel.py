"""The user channel of the fake CLOB: a WebSocket on loopback pushing order and trade events (WIRE.md section 8).

Events come from the same code that moves orders and trades (`State.publish`, called where a trade is matched and
where `State.settle` moves it on, and where an order is recorded), so the channel and the REST endpoints always
agree. Built on the websockets library's threading server; every connection has a sender thread fed by a queue,
so publishing under the state's lock never waits for a socket.

    url = clob.channel.start()          # ws://127.0.0.1:<port>/ws/user
    clob.channel.down() / up()          # drop every socket and refuse upgrades (503) / accept again
    clob.channel.drop()                 # drop every socket now; reconnections are accepted
    clob.channel.silence(True)          # no PONG and no event on any socket (a dead socket that stays open)
    clob.channel.hold() / release()     # events wait in a queue / are sent (delayed events)
    clob.channel.inject(text)           # a raw frame to every subscribed socket (malformed events)
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from dataclasses import dataclass, field
from socket import SHUT_RDWR
from typing import TYPE_CHECKING, Any

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from .state import OTHER_OWNER, Order, Trade
from .wire import fmt_decimal, units

if TYPE_CHECKING:
    from . import FakeClob

PATH = "/ws/user"
INVALID_AUTH = (1008, "INVALID AUTH")
"""What the fake does with a subscription whose credentials are wrong [fake: the docs say only "Authentication
failed"; reports of the real channel describe the socket being closed]."""

_QUIET = logging.getLogger("fakeclob.channel")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False  # the fake's own traffic (our subscription, with its secret) is not what tests inspect


def trade_event(trade: Trade) -> dict[str, Any]:
    """A `trade` event of the user channel (WIRE.md section 8), from the trade as it is now."""
    maker_side_owner = OTHER_OWNER
    return {
        "event_type": "trade", "type": "TRADE", "id": trade.id, "taker_order_id": trade.taker_order_id,
        "market": trade.condition_id, "asset_id": trade.token_id, "side": trade.side, "size": units(trade.size_raw),
        "price": fmt_decimal(trade.price), "fee_rate_bps": "0", "status": trade.status,
        "match_time": str(trade.match_time), "last_update": str(trade.last_update), "outcome": trade.outcome,
        "owner": trade.owner, "trade_owner": trade.owner, "timestamp": str(trade.last_update),
        "maker_orders": [{
            "order_id": trade.maker_order_id, "owner": maker_side_owner, "matched_amount": units(trade.size_raw),
            "price": fmt_decimal(trade.price), "asset_id": trade.token_id, "outcome": trade.outcome,
        }],
    }


def order_event(order: Order) -> dict[str, Any]:
    """An `order` event (WIRE.md section 8): PLACEMENT for a resting order, UPDATE once something matched,
    CANCELLATION for a killed or cancelled one."""
    change = ("CANCELLATION" if order.status == "CANCELED" else "UPDATE" if order.matched_raw else "PLACEMENT")
    return {
        "event_type": "order", "type": change, "id": order.id, "owner": order.owner, "order_owner": order.owner,
        "market": order.condition_id, "asset_id": order.token_id, "side": order.side,
        "original_size": units(order.original_raw), "size_matched": units(order.matched_raw), "price": order.price,
        "associate_trades": list(order.trade_ids) or None, "outcome": order.outcome, "order_type": order.order_type,
        "status": order.status, "maker_address": order.maker_address, "expiration": order.expiration,
        "created_at": str(order.created_at), "timestamp": str(order.created_at),
    }


@dataclass(eq=False)
class _Socket:
    connection: ServerConnection
    outgoing: queue.Queue[str | None] = field(default_factory=queue.Queue)
    subscribed: bool = False
    markets: frozenset[str] = frozenset()


class FakeUserChannel:
    def __init__(self, clob: FakeClob) -> None:
        self.clob = clob
        self.url: str | None = None
        self.subscriptions: list[object] = []
        """Every subscription frame received, parsed (the tests check its shape)."""
        self.pings = 0
        self.refused_auth = 0
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[_Socket] = set()
        self._held: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._down = False
        self._silent = False
        self._holding = False

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> str:
        if self.url is not None:
            return self.url
        self._server = serve(self._serve, "127.0.0.1", 0, process_request=self._upgrade, logger=_QUIET,
                             compression=None)
        port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"fakeclob-ws-{port}", daemon=True)
        self._thread.start()
        self.clob._state.listeners.append(self._publish)
        self.url = f"ws://127.0.0.1:{port}{PATH}"
        return self.url

    def stop(self) -> None:
        if self._server is None:
            return
        self.drop()
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._publish in self.clob._state.listeners:
            self.clob._state.listeners.remove(self._publish)
        self._server = self._thread = None
        self.url = None

    # -- switches ----------------------------------------------------------------------------------

    def drop(self) -> None:
        """Close every socket at once (no close frame: a cut connection)."""
        with self._lock:
            sockets = list(self._sockets)
        for socket in sockets:
            socket.outgoing.put(None)
            try:
                socket.connection.socket.shutdown(SHUT_RDWR)
            except OSError:
                pass

    def down(self) -> None:
        with self._lock:
            self._down = True
        self.drop()

    def up(self) -> None:
        with self._lock:
            self._down = False

    def silence(self, on: bool = True) -> None:
        with self._lock:
            self._silent = on

    def hold(self) -> None:
        with self._lock:
            self._holding = True

    def release(self) -> None:
        with self._lock:
            self._holding, held, self._held = False, self._held, []
        for event in held:
            self._send(event, None)

    def inject(self, text: str) -> None:
        self._send(None, text)

    @property
    def connections(self) -> int:
        with self._lock:
            return sum(1 for s in self._sockets if s.subscribed)

    # -- the server --------------------------------------------------------------------------------

    def _upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        with self._lock:
            down = self._down
        if down:
            return connection.respond(503, "user channel down\n")
        if request.path != PATH:
            return connection.respond(404, "not found\n")
        return None

    def _serve(self, connection: ServerConnection) -> None:
        socket = _Socket(connection)
        sender = threading.Thread(target=self._sender, args=(socket,), daemon=True)
        sender.start()
        with self._lock:
            self._sockets.add(socket)
        try:
            for message in connection:
                self._receive(socket, message)
        except (ConnectionClosed, OSError):
            pass
        finally:
            with self._lock:
                self._sockets.discard(socket)
            socket.outgoing.put(None)

    def _receive(self, socket: _Socket, message: str | bytes) -> None:
        if message == "PING":
            with self._lock:
                self.pings += 1
                silent = self._silent
            if not silent:
                socket.outgoing.put("PONG")
            return
        try:
            body = json.loads(message)
        except ValueError:
            return
        if not isinstance(body, dict) or body.get("type") != "user":
            return
        with self._lock:
            self.subscriptions.append(body)
        auth = body.get("auth") if isinstance(body.get("auth"), dict) else {}
        creds = self.clob.creds
        if (auth.get("apiKey"), auth.get("secret"), auth.get("passphrase")) != (
                creds.api_key, creds.api_secret, creds.api_passphrase):
            with self._lock:
                self.refused_auth += 1
            socket.connection.close(*INVALID_AUTH)
            return
        markets = body.get("markets") or []
        socket.markets = frozenset(str(m) for m in markets if isinstance(m, str))
        socket.subscribed = True

    def _sender(self, socket: _Socket) -> None:
        while (text := socket.outgoing.get()) is not None:
            try:
                socket.connection.send(text)
            except (ConnectionClosed, OSError):
                return

    # -- events ------------------------------------------------------------------------------------

    def _publish(self, kind: str, record: Trade | Order) -> None:
        """State.publish's listener, called under the state's lock where the trade or order changed."""
        event = trade_event(record) if isinstance(record, Trade) else order_event(record)
        with self._lock:
            if self._holding:
                self._held.append(event)
                return
        self._send(event, None)

    def _send(self, event: dict[str, Any] | None, raw: str | None) -> None:
        text = raw if event is None else json.dumps(event)
        with self._lock:
            if self._silent:
                return
            targets = [s for s in self._sockets if s.subscribed and (
                event is None or not s.markets or event.get("market") in s.markets)]
        for socket in targets:
            socket.outgoing.put(text)
