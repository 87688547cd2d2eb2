"""The user channel (exitguard.exchange.polymarket.channel) against the fake CLOB's WebSocket, on loopback.

The keepalive and the reconnection backoff run on a stepped clock (channelkit.SteppedTime); only loopback I/O is
waited for. Worst answers first: a refused subscription, malformed events, a silent socket, a dropped one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal

import anyio
import pytest
from channelkit import SteppedTime, until
from fakeclob import FakeClob
from py_clob_client_v2.clob_types import OrderArgs, OrderType

from exitguard import ExchangeNotice, InvalidValue, NoticeKind
from exitguard.exchange.polymarket.channel import PRODUCTION_URL, UserChannel, default_url
from exitguard.exchange.polymarket.secrets import MaskedCreds, Secret

pytestmark = pytest.mark.anyio

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
TAKER = "0x" + "ab" * 32


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.add_market(TOKEN, tick_size="0.01", min_order_size="5")
        fake.channel.start()
        yield fake


def creds_of(clob: FakeClob, *, secret: str | None = None) -> MaskedCreds:
    return MaskedCreds(Secret(clob.creds.api_key), Secret(secret or clob.creds.api_secret),
                       Secret(clob.creds.api_passphrase))


@asynccontextmanager
async def following(channel: UserChannel, creds: MaskedCreds) -> AsyncIterator[list[ExchangeNotice]]:
    notices: list[ExchangeNotice] = []
    async with anyio.create_task_group() as group:
        group.start_soon(channel.follow, creds, notices.append)
        try:
            yield notices
        finally:
            group.cancel_scope.cancel()


def kinds(notices: list[ExchangeNotice]) -> list[NoticeKind]:
    return [n.kind for n in notices]


def trade(status: str, **extra: object) -> str:
    event = {"event_type": "trade", "type": "TRADE", "id": "t-1", "taker_order_id": TAKER, "asset_id": TOKEN,
             "status": status, "size": "10", "price": "0.6",
             "maker_orders": [{"order_id": "0x" + "cd" * 32, "matched_amount": "10", "price": "0.6"}]}
    event.update(extra)
    return json.dumps(event)


# -- the worst answers -----------------------------------------------------------------------------

async def test_a_refused_subscription_is_a_clear_log_event_and_never_a_notice(clob: FakeClob, logs) -> None:  # noqa: ANN001
    time = SteppedTime()
    channel = UserChannel(clob.channel.url or "", ping_interval=None, sleep=time.sleep, clock=time.clock)
    async with following(channel, creds_of(clob, secret="d3JvbmctYnV0LXdlbGwtZm9ybWVkLXNlY3JldA==")) as notices:
        await until(lambda: len(logs.named("user_channel_auth_rejected")) >= 3, "three refused subscriptions")
    assert notices == [] and not channel.connected and clob.channel.refused_auth >= 3
    refused = logs.named("user_channel_auth_rejected")
    assert [r["retry_in_s"] for r in refused[:3]] == [0.5, 1.0, 2.0]  # backoff, never a tight loop
    assert "1008" in refused[0]["reason"] and "credentials" in refused[0]["reason"]
    assert refused[0]["level"] == "ERROR"


@pytest.mark.parametrize("frame", [
    "not json at all",
    "[]",
    '{"event_type": "trade"}',
    '{"event_type": "price_change", "id": "x"}',
    '[{"event_type": "order", "id": "0x1", "type": "PLACEMENT"}, 7]',
    trade("SETTLING_SOMEHOW"),
    trade("MATCHED", taker_order_id=None, maker_orders=[]),
    trade("FAILED", maker_orders="0xnot-a-list"),
])
async def test_a_malformed_event_is_logged_skipped_and_changes_nothing(clob: FakeClob, logs, frame: str) -> None:  # noqa: ANN001
    channel = UserChannel(clob.channel.url or "", ping_interval=None)
    async with following(channel, creds_of(clob)) as notices:
        await until(lambda: clob.channel.connections == 1, "a subscribed socket")
        clob.channel.inject(frame)
        clob.channel.inject(trade("FAILED"))  # a good event after it still counts
        await until(lambda: NoticeKind.TRADE_FAILED in kinds(notices), "the good event")
    assert kinds(notices) == [NoticeKind.CONNECTED, NoticeKind.TRADE_FAILED, NoticeKind.TRADE_FAILED]
    assert [n.order_id for n in notices[1:]] == [TAKER, "0x" + "cd" * 32]
    assert notices[1].returned_shares == 10_000_000 and notices[1].trade_id == "t-1"
    malformed = logs.named("user_channel_event_malformed")
    assert len(malformed) == 1 and malformed[0]["reason"]


async def test_a_silent_socket_is_noticed_by_the_keepalive_and_reconnected(clob: FakeClob, logs) -> None:  # noqa: ANN001
    time = SteppedTime(running=False)
    channel = UserChannel(clob.channel.url or "", ping_interval=10.0, sleep=time.sleep, clock=time.clock)
    async with following(channel, creds_of(clob)) as notices:
        await until(lambda: notices == [ExchangeNotice(NoticeKind.CONNECTED)], "connected")
        clob.channel.silence()  # the socket stays open; nothing comes back, not even a PONG
        time.run()
        await until(lambda: NoticeKind.DISCONNECTED in kinds(notices), "the silence noticed")
        time.hold()
    dropped = logs.named("user_channel_disconnected")[0]
    assert dropped["reason"] == "silent" and dropped["last_frame_age_s"] == 30.0  # three PING intervals
    assert clob.channel.pings >= 3  # it kept asking before giving up


async def test_a_dropped_socket_is_reconnected_with_backoff_and_says_so(clob: FakeClob, logs) -> None:  # noqa: ANN001
    time = SteppedTime()
    channel = UserChannel(clob.channel.url or "", ping_interval=None, sleep=time.sleep, clock=time.clock)
    async with following(channel, creds_of(clob)) as notices:
        await until(lambda: notices, "connected")
        clob.channel.down()
        await until(lambda: len(logs.named("user_channel_connect_failed")) >= 2, "refused reconnections")
        clob.channel.up()
        await until(lambda: kinds(notices).count(NoticeKind.CONNECTED) == 2, "reconnected")
    assert kinds(notices) == [NoticeKind.CONNECTED, NoticeKind.DISCONNECTED, NoticeKind.CONNECTED]
    assert "503" in logs.named("user_channel_connect_failed")[0]["error"]
    delays = [r["retry_in_s"] for r in logs.named("user_channel_connect_failed")]
    assert delays[:2] == [1.0, 2.0] and max(delays) <= 30.0  # after the drop's own 0.5
    assert clob.channel.subscriptions[0] == {"auth": {"apiKey": clob.creds.api_key, "secret": clob.creds.api_secret,
                                                      "passphrase": clob.creds.api_passphrase},
                                             "type": "user", "markets": []}


async def test_the_secret_never_reaches_any_log_even_the_websockets_debug_log(
        clob: FakeClob, logs, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    caplog.set_level(logging.DEBUG)  # every stdlib logger, the websockets library's included
    time = SteppedTime()
    channel = UserChannel(clob.channel.url or "", ping_interval=None, sleep=time.sleep, clock=time.clock)
    async with following(channel, creds_of(clob)) as notices:
        await until(lambda: notices, "connected")
        clob.channel.inject("garbage " + clob.creds.api_secret)  # a malformed frame quoting it back
        clob.channel.drop()
        await until(lambda: kinds(notices).count(NoticeKind.CONNECTED) == 2, "reconnected")
    async with following(channel, creds_of(clob, secret="YW5vdGhlci1zZWNyZXQtdGhhdC1pcy13cm9uZw==")):
        await until(lambda: logs.named("user_channel_auth_rejected"), "refused")
    frames = [r.getMessage() for r in caplog.records if r.name.startswith("websockets")]
    assert any(m.startswith("> TEXT [exitguard") for m in frames), frames[:5]  # the library did log the frames
    secrets = [clob.creds.api_secret, clob.creds.api_passphrase, clob.creds.api_secret[:12],
               "YW5vdGhlci1zZWNyZXQt"]
    ours = [r for r in caplog.records if not r.name.startswith("fakeclob")]  # the fake's own logs are not under test
    texts = [r.getMessage() for r in ours] + [repr(r) for r in logs.records] + [repr(channel)]
    for text in texts:
        for secret in secrets:
            assert secret not in text


# -- the happy path --------------------------------------------------------------------------------

async def test_trades_are_announced_from_the_code_that_moves_them_so_rest_agrees(clob: FakeClob) -> None:
    clob.settlement = "instant"  # matched, then confirmed at once (post_order would poll 30 s for a hash otherwise)
    clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
    clob.set_balance(TOKEN, Decimal("10"))
    channel = UserChannel(clob.channel.url or "", ping_interval=None)
    client = clob.client()
    async with following(channel, creds_of(clob)) as notices:
        await until(lambda: clob.channel.connections == 1, "subscribed")
        order = await anyio.to_thread.run_sync(lambda: client.create_order(
            OrderArgs(token_id=TOKEN, price=0.55, size=10.0, side="SELL")))
        await anyio.to_thread.run_sync(lambda: client.post_order(order, OrderType.FOK))
        await until(lambda: NoticeKind.TRADE_SETTLED in kinds(notices), "the settlement")
    rest = clob.trades[0]
    ours = [n for n in notices if n.order_id == rest["taker_order_id"]]
    assert [(n.kind, n.trade_id) for n in ours] == [
        (NoticeKind.TRADED, rest["id"]), (NoticeKind.TRADE_SETTLED, rest["id"]),
        (NoticeKind.TRADED, None)]  # the order's own UPDATE comes last
    assert all(n.token_id == TOKEN for n in ours)


def test_the_production_channel_is_the_default_only_for_the_production_host() -> None:
    assert default_url("https://clob.polymarket.com") == PRODUCTION_URL
    assert default_url("https://clob.polymarket.com/") == PRODUCTION_URL
    assert default_url("http://127.0.0.1:8080") is None
    with pytest.raises(InvalidValue, match="user_channel_url"):
        UserChannel("https://clob.polymarket.com")
