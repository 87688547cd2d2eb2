"""The exchange's user channel: order and trade events pushed over a WebSocket, read into port-level notices.

`UserChannel.follow(creds, notify)` runs until cancelled: connect, subscribe with the API credentials (type "user",
no market filter: every order of the API key), send the text `PING` every `ping_interval` seconds (the server
answers `PONG`), hand each event to `notify` as `ExchangeNotice`s (channel_events.py) and, when the socket drops
or goes silent, say so (`DISCONNECTED`) and reconnect with backoff. A subscription counts as accepted at the first
frame the server sends after it (our first `PING` is sent with it); `CONNECTED` follows, and the engine backfills
from REST then, since the channel replays nothing. A socket the server closes before that frame is a refused
subscription (bad API credentials, as far as a client can tell): a clear log event, no notice, a retry with
backoff. A malformed event is logged and skipped. Neither raises, and neither changes any state.

The subscription frame carries the API secret. It is revealed only into that frame; the websockets library logs
every frame at DEBUG (truncated, so a search-and-replace filter could miss half a secret), so the connection
logs through `ChannelLog`, which replaces our own outgoing text frames by a placeholder and masks the credentials
in anything else, on the library's own logger names (an application that turns `websockets` DEBUG on sees the
traffic, never the secret).

Time is injectable (`sleep`, `clock`): the keepalive and the backoff run on them, so tests run on virtual time.
The library needs asyncio (the engine's default anyio backend).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from exitguard.errors import ExchangeError
from exitguard.exchange.polymarket.channel_events import MalformedEvent, read_frame
from exitguard.exchange.polymarket.secrets import REDACTED, MaskedCreds, mask_text, masked
from exitguard.exchange.port import ExchangeNotice, NoticeKind
from exitguard.states import InvalidValue
from exitguard.telemetry.logs import emit

PRODUCTION_URL = "wss://ws-subscriptions-clob.polymarket.com/ws/user"
PRODUCTION_HOST = "https://clob.polymarket.com"
PING_INTERVAL = 10.0
"""Seconds: "Send PING every 10 seconds. The server responds with PONG" (docs, WebSocket overview, Heartbeats)."""
SILENT_AFTER = 3
"""Keepalive intervals without a single frame from the server after which the socket counts as dead: two PINGs
went unanswered."""
BACKOFF = (0.5, 30.0)
"""Seconds between reconnection attempts: the first, doubling up to the last; back to the first once a
subscription is accepted."""
OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
"""Seconds a dead socket may take to close before the next attempt starts anyway."""
LIBRARY_LOGGER = "websockets.client"


class ChannelLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The library's logger for one connection, with our outgoing text frames (the subscription and PINGs) shown
    as a placeholder and the credentials masked in every other record."""

    def __init__(self, creds: MaskedCreds) -> None:
        super().__init__(logging.getLogger(LIBRARY_LOGGER), {})
        self._secrets = [s.reveal() for s in creds.secrets() if s.reveal()]

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = f"{msg} (unformattable arguments)"
        if text.startswith("> TEXT"):
            text = "> TEXT [exitguard: our own frame (the subscription or a PING), not logged]"
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        kwargs.pop("extra", None)
        self.logger.log(level, "%s", mask_text(text), **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs


@dataclass(frozen=True, slots=True)
class ChannelHealth:
    connected: bool
    last_frame_age: float | None
    """Seconds since the server's last frame (an event or a PONG); None before the first."""


class _Refused(Exception):
    """The server closed the socket before answering anything after the subscription."""


class UserChannel:
    """Follows one user channel. `ping_interval=None` sends no keepalive (a local server that keeps idle sockets)."""

    def __init__(self, url: str, *, ping_interval: float | None = PING_INTERVAL,
                 backoff: tuple[float, float] = BACKOFF, sleep: Callable[[float], Awaitable[Any]] | None = None,
                 clock: Callable[[], float] | None = None, open_timeout: float = OPEN_TIMEOUT) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("ws", "wss"):
            raise InvalidValue("user_channel_url", masked(url), "must be a ws:// or wss:// URL")
        self.url = url
        self.ping_interval = ping_interval
        self.backoff = backoff
        self.sleep = sleep or anyio.sleep
        self.clock = clock or anyio.current_time
        self.open_timeout = open_timeout
        self.connected = False
        self.attempts = 0
        self._last_frame: float | None = None

    def __repr__(self) -> str:
        return f"UserChannel({self.where!r}, connected={self.connected})"

    @property
    def where(self) -> str:
        """The URL without anything but scheme, host and path (for logs)."""
        split = urlsplit(self.url)
        return f"{split.scheme}://{split.hostname}{'' if split.port is None else f':{split.port}'}{split.path}"

    def health(self) -> ChannelHealth:
        age = None if self._last_frame is None else max(0.0, self.clock() - self._last_frame)
        return ChannelHealth(self.connected, age)

    async def follow(self, creds: MaskedCreds, notify: Callable[[ExchangeNotice], None]) -> None:
        """Follow the channel until cancelled. Never raises for the channel's own troubles."""
        delay = self.backoff[0]
        while True:
            self.attempts += 1
            try:
                reason = await self._session(creds, notify)
                delay = self.backoff[0]  # it was accepted: the next drop starts the backoff afresh
            except _Refused as refused:
                emit("user_channel_auth_rejected", url=self.where, reason=str(refused), retry_in_s=delay)
                reason = None
            except (OSError, TimeoutError, WebSocketException) as err:
                emit("user_channel_connect_failed", url=self.where, error=_why(err), error_type=type(err).__name__,
                     retry_in_s=delay)
                reason = None
            if reason is not None:
                self.connected = False
                emit("user_channel_disconnected", url=self.where, reason=reason, retry_in_s=delay,
                     last_frame_age_s=self.health().last_frame_age)
                notify(ExchangeNotice(NoticeKind.DISCONNECTED))
            await self.sleep(delay)
            delay = min(delay * 2, self.backoff[1])

    async def _session(self, creds: MaskedCreds, notify: Callable[[ExchangeNotice], None]) -> str:
        """One connection: returns why it ended once it had been accepted; raises when it never was."""
        with anyio.fail_after(self.open_timeout):
            socket = await connect(self.url, logger=ChannelLog(creds), ping_interval=None, open_timeout=None,
                                   close_timeout=CLOSE_TIMEOUT, compression=None, max_size=2**22)
        async with socket:
            try:
                # A server that answers nothing, not even the PING, is no channel: the next attempt tries again.
                with anyio.fail_after(self.open_timeout):
                    await socket.send(_subscription(creds))
                    await socket.send("PING")
                    first = await socket.recv()
            except ConnectionClosed as err:
                if err.rcvd is None:
                    raise  # cut, not closed: nothing says the subscription was refused
                raise _Refused(f"the server closed the socket right after the subscription ({_why(err)}): "
                               "are the API credentials right?") from None
            self._last_frame = self.clock()
            self.connected = True
            emit("user_channel_connected", url=self.where, attempt=self.attempts)
            notify(ExchangeNotice(NoticeKind.CONNECTED))
            self._read(first, notify)
            ended, silent = "closed by the server", _Silence()
            async with anyio.create_task_group() as group:
                if self.ping_interval is not None:
                    group.start_soon(self._keepalive, socket, self.ping_interval, group.cancel_scope, silent)
                try:
                    async for frame in socket:
                        self._last_frame = self.clock()
                        self._read(frame, notify)
                except ConnectionClosed as err:
                    ended = f"dropped ({_why(err)})"
                group.cancel_scope.cancel()
            return "silent" if silent.noticed else ended

    def _read(self, frame: str | bytes, notify: Callable[[ExchangeNotice], None]) -> None:
        if frame in ("PONG", b"PONG"):
            return
        try:
            notices = read_frame(frame)
        except MalformedEvent as err:
            excerpt = frame if isinstance(frame, str) else frame.decode("utf-8", "replace")
            emit("user_channel_event_malformed", url=self.where, reason=str(err), excerpt=mask_text(excerpt[:160]))
            return
        for notice in notices:
            notify(notice)

    async def _keepalive(self, socket: ClientConnection, interval: float, session: anyio.CancelScope,
                         silent: _Silence) -> None:
        while True:
            await self.sleep(interval)
            quiet = self.clock() - (self._last_frame if self._last_frame is not None else -math.inf)
            if quiet >= interval * SILENT_AFTER:
                silent.noticed = True
                session.cancel()  # the socket is closed on the way out, within CLOSE_TIMEOUT
                return
            try:
                await socket.send("PING")
            except ConnectionClosed:
                return  # the reader sees the same close and says why


class _Silence:
    noticed = False


def _subscription(creds: MaskedCreds) -> str:
    """The subscription frame (docs, User Channel: auth {apiKey, secret, passphrase}, type "user", markets)."""
    return json.dumps({"auth": {"apiKey": creds.api_key, "secret": creds.api_secret,
                                "passphrase": creds.api_passphrase},
                       "type": "user", "markets": []})


def _why(err: BaseException) -> str:
    if isinstance(err, ConnectionClosed):
        close = err.rcvd
        if close is None:
            return "no close frame"
        return f"close code {close.code}: {close.reason}" if close.reason else f"close code {close.code}"
    if isinstance(err, InvalidStatus):
        return f"HTTP {err.response.status_code} on the upgrade"
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror.lower()
    return type(err).__name__


AUTO = "auto"
"""`user_channel_url` default: the production channel for the production host, none for any other."""


def user_channel(host: str, url: str | None) -> UserChannel | None:
    """The channel an adapter talking to `host` follows: `url` as given, None when off (None), AUTO: `default_url`."""
    chosen = default_url(host) if url == AUTO else url
    return None if chosen is None else UserChannel(chosen)


class FollowsUserChannel:
    """The port's optional `follow_fills` for the Polymarket adapter: follows its `user_channel` with its API
    credentials until cancelled; returns at once when it has no channel."""

    client: Any
    user_channel: UserChannel | None

    async def _ensure_creds(self) -> None:
        """The adapter's: derive the API credentials if the client has none."""
        raise NotImplementedError

    async def follow_fills(self, notify: Callable[[ExchangeNotice], None]) -> None:
        channel = self.user_channel
        if channel is None:
            return
        delay = channel.backoff[0]
        while True:
            try:
                await self._ensure_creds()
                break
            except ExchangeError as err:  # no credentials yet: nothing to subscribe with; try again later
                emit("user_channel_connect_failed", url=channel.where, error=f"API credentials: {err}",
                     error_type=type(err).__name__, retry_in_s=delay)
                await channel.sleep(delay)
                delay = min(delay * 2, channel.backoff[1])
        await channel.follow(MaskedCreds.of(self.client.creds), notify)


def default_url(host: str) -> str | None:
    """The user channel for a REST host: the production channel for the production host, else none (a test or
    staging host has no known channel: give `user_channel_url`)."""
    return PRODUCTION_URL if host.rstrip("/") == PRODUCTION_HOST else None
