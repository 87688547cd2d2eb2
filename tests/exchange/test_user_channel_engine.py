"""The engine following fills and settlement from the Polymarket user channel (exitguard.fills), through the real
client against the fake CLOB: its REST endpoints and its WebSocket announce the same trades, from the same code.

The channel's keepalive is off and its backoff runs on a stepped clock; the engine's settlement poll is an hour
long, so whatever is noticed within the test was noticed through the channel (or its backfill), never the poll.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from channelkit import SteppedTime, until
from fakeclob import TEST_PRIVATE_KEY, FakeClob
from py_clob_client_v2.client import ClobClient

from exitguard import DivergenceKind, ExitEngine, ExitOutcome, InvalidValue, ManualClock, PaperExchange, Position
from exitguard.exchange.polymarket.channel import PRODUCTION_URL, UserChannel
from exitguard.polymarket import PolymarketExchange, PolymarketSettings
from exitguard.telemetry.prometheus import render

pytestmark = pytest.mark.anyio

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
HOUR = 3600.0


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN)
        fake.channel.start()
        yield fake


@pytest.fixture
def exchange(clob: FakeClob) -> PolymarketExchange:
    exchange = PolymarketExchange(clob.client(), user_channel_url=clob.channel.url)
    time = SteppedTime()
    exchange.user_channel = UserChannel(clob.channel.url or "", ping_interval=None, sleep=time.sleep,
                                        clock=time.clock)
    return exchange


@asynccontextmanager
async def running(exchange: PolymarketExchange, **options: object) -> AsyncIterator[ExitEngine]:
    options = {"settlement_poll_interval": HOUR, "clock": ManualClock(datetime.now(UTC)), **options}
    async with ExitEngine(exchange, **options) as engine:  # type: ignore[arg-type]
        await until(lambda: engine.metrics.user_channel_connected, "the channel connected")
        yield engine


async def sold(engine: ExitEngine, exchange: PolymarketExchange, key: str = "p1") -> None:
    engine.track(Position(key=key, token_id=TOKEN, shares=Decimal("10")))
    await exchange.warm_up(TOKEN)
    result = await engine.exit(key, reason="take_profit", limit_price=Decimal("0.55"))
    assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == [key]


# -- the worst cases first -------------------------------------------------------------------------

async def test_a_settlement_that_fails_while_the_channel_is_down_is_caught_by_the_backfill(
        clob: FakeClob, exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    async with running(exchange) as engine:
        await sold(engine, exchange)
        clob.channel.down()
        await until(lambda: engine.metrics.user_channel_connected is False, "the drop noticed")
        clob.settle_trades("FAILED")  # announced to nobody: no socket is open
        assert engine.unsettled() == ["p1"] and not logs.named("exit_settlement_failed")
        clob.reset_requests()
        clob.channel.up()
        await until(lambda: logs.named("exit_settlement_failed"), "the failure found by the backfill")
        backfill = logs.named("user_channel_backfill")[-1]
        assert (backfill["unsettled"], backfill["error"]) == (1, None)
        assert clob.count("GET", "/data/trades") >= 1  # found through REST: the channel replays nothing
        returned = logs.named("exit_settlement_failed")[0]["returned_position"]
        assert engine.state(returned) == "OPEN" and engine.unsettled() == []
        assert engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1


async def test_a_failed_settlement_is_acted_on_when_announced_long_before_the_poll(
        clob: FakeClob, exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    async with running(exchange) as engine:
        await sold(engine, exchange)
        clob.reset_requests()
        clob.settle_trades("FAILED")
        await until(lambda: logs.named("exit_settlement_failed"), "the failure announced")
        assert clob.requests == []  # no REST call at all: the event itself was acted on
        failed = logs.named("exit_settlement_failed")[0]
        assert failed["returned"] == Decimal("10") and engine.state(failed["returned_position"]) == "OPEN"
        assert engine.unsettled() == [] and engine.divergence.by_kind[DivergenceKind.SETTLEMENT_FAILED] == 1
        # The returned shares are exited like any position: verified first, then sold.
        clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
        again = await engine.exit(failed["returned_position"], reason="settlement_failed",
                                  limit_price=Decimal("0.55"))
        assert again.outcome is ExitOutcome.CLOSED and again.shares_sold == Decimal("10")
        assert clob.count("POST", "/order") == 1


@pytest.mark.parametrize("events", ["after the lost answer", "whenever they come"])
async def test_a_trade_of_an_order_whose_answer_was_lost_settles_the_unknown_at_once(
        clob: FakeClob, exchange: PolymarketExchange, logs, events: str) -> None:  # noqa: ANN001
    # The engine's clock stands still: the resolver's backoff never comes due, only the channel can help. Events
    # that come before the answer is given up are remembered; the first lookup then runs at once.
    async with running(exchange) as engine:
        engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
        await exchange.warm_up(TOKEN)
        if events == "after the lost answer":
            clob.channel.hold()  # as a slow channel would send them
        clob.lose_next_response("/order")
        result = await engine.exit("p1", reason="take_profit", limit_price=Decimal("0.55"))
        assert result.outcome is ExitOutcome.UNKNOWN and engine.unresolved() == ["p1"]
        clob.channel.release()
        await until(lambda: engine.state("p1") == "CLOSED", "the unknown settled by the trade")
        assert engine.unresolved() == [] and clob.count("POST", "/order") == 1
        assert logs.named("exit_outcome_resolved")


async def test_malformed_events_change_nothing_in_the_engine(clob: FakeClob, exchange: PolymarketExchange,
                                                             logs) -> None:  # noqa: ANN001
    async with running(exchange) as engine:
        await sold(engine, exchange)
        trade_id = clob.trades[0]["id"]
        for frame in ({"event_type": "trade", "id": trade_id, "status": "FAILED"},  # names no order
                      {"event_type": "trade", "id": trade_id, "status": "FAILD", "taker_order_id": "0x1"},
                      "FAILED", {"event_type": "order", "type": "CANCELLATION"}):
            clob.channel.inject(frame if isinstance(frame, str) else json.dumps(frame))
        await until(lambda: len(logs.named("user_channel_event_malformed")) == 4, "all four refused")
        assert engine.unsettled() == ["p1"] and engine.states() == {"p1": "CLOSED"}
        assert not logs.named("exit_settlement_failed") and engine.metrics.user_channel_connected


async def test_a_settled_trade_ends_the_following_without_a_poll(clob: FakeClob,
                                                                 exchange: PolymarketExchange, logs) -> None:  # noqa: ANN001
    async with running(exchange) as engine:
        await sold(engine, exchange)
        clob.reset_requests()
        clob.settle_trades("MINED")
        await until(lambda: engine.unsettled() == [], "the settlement announced")
        assert clob.requests == [] and logs.named("exit_settled")
        snapshot = engine.metrics.snapshot()
        assert snapshot["user_channel_connected"] is True and snapshot["user_channel_event_age_s"] is not None
        assert b"exitguard_user_channel_connected 1.0" in render(engine)


async def test_an_adapter_whose_channel_breaks_leaves_polling_in_charge(logs) -> None:  # noqa: ANN001
    class Broken(PaperExchange):
        async def follow_fills(self, notify: object) -> None:
            raise RuntimeError("no channel today")

    async with ExitEngine(Broken(), settlement_poll_interval=HOUR) as engine:
        await until(lambda: logs.named("user_channel_failed"), "the failure logged")
        assert engine.metrics.user_channel_connected is False
        assert logs.named("user_channel_failed")[0]["error"] == "no channel today"
    async with ExitEngine(PaperExchange()) as engine:  # no capability: nothing to follow, no metric
        assert engine.metrics.user_channel_connected is None
        assert b"exitguard_user_channel" not in render(engine)


def test_the_production_host_follows_the_production_channel_by_default(clob: FakeClob) -> None:
    production = ClobClient("https://clob.polymarket.com", 137, key=TEST_PRIVATE_KEY)
    assert PolymarketExchange(production).user_channel.url == PRODUCTION_URL  # type: ignore[union-attr]
    assert PolymarketExchange(production, user_channel_url=None).user_channel is None
    assert PolymarketExchange(clob.client()).user_channel is None  # another host: off unless given
    given = PolymarketExchange(clob.client(), user_channel_url=clob.channel.url)
    assert given.user_channel is not None and given.user_channel.url == clob.channel.url


def test_the_setting_picks_the_channel_or_turns_it_off() -> None:
    env = {"POLYMARKET_PRIVATE_KEY": TEST_PRIVATE_KEY}

    def channel(**more: str) -> str | None:
        exchange = PolymarketExchange.from_settings(PolymarketSettings.from_env({**env, **more}))
        return None if exchange.user_channel is None else exchange.user_channel.url

    assert channel() == PRODUCTION_URL
    assert channel(POLYMARKET_USER_CHANNEL_URL="off") is None
    assert channel(POLYMARKET_USER_CHANNEL_URL="ws://127.0.0.1:9/ws/user") == "ws://127.0.0.1:9/ws/user"
    assert channel(POLYMARKET_HOST="http://127.0.0.1:9") is None
    with pytest.raises(InvalidValue, match="POLYMARKET_USER_CHANNEL_URL"):
        channel(POLYMARKET_USER_CHANNEL_URL="https://ws-subscriptions-clob.polymarket.com/ws/user")
