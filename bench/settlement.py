"""Settlement: how long a failed settlement goes unnoticed, followed through the user channel and by polling alone.

A sale is filled through the real Polymarket adapter against the fake CLOB (in this process, loopback HTTP and
WebSocket); then its trade fails on chain (`settle_trades("FAILED")`, which also announces it on the fake's user
channel) and the clock runs until the engine has acted on it: the sale's following ended and the returned shares
tracked as a new position. With the channel, the engine acts on the announcement; by polling alone, on the next
`settlement_poll_interval` tick, so detection takes up to that interval (half of it on average) plus one round trip.
Both figures print next to the poll interval.

    python bench/settlement.py [--trials 5] [--poll 2.0]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from decimal import Decimal
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fakeclob import FakeClob  # noqa: E402

from exitguard import ExitEngine, ExitOutcome, Position  # noqa: E402
from exitguard.exchange.polymarket.channel import UserChannel  # noqa: E402
from exitguard.polymarket import PolymarketExchange  # noqa: E402

PRICE = Decimal("0.55")


async def detection(clob: FakeClob, token: str, poll: float, channel: bool, phase: float) -> float:
    """Seconds from the failure on chain to the engine having acted on it."""
    clob.add_market(token, tick_size="0.01", min_order_size="5")
    clob.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    clob.set_balance(token, Decimal("10"))
    exchange = PolymarketExchange(clob.client(), user_channel_url=clob.channel.url if channel else None)
    if exchange.user_channel is not None:
        exchange.user_channel = UserChannel(exchange.user_channel.url)
    async with exchange, ExitEngine(exchange, settlement_poll_interval=poll) as engine:
        while channel and not engine.metrics.user_channel_connected:
            await anyio.sleep(0.001)
        engine.track(Position(key="p", token_id=token, shares=Decimal("10")))
        await exchange.warm_up(token)
        result = await engine.exit("p", reason="bench", limit_price=PRICE)
        assert result.outcome is ExitOutcome.CLOSED and engine.unsettled() == ["p"], result
        # At a different point of the poll's cycle in each trial, as real failures would come.
        await anyio.sleep(poll * phase)
        started = time.perf_counter()
        clob.settle_trades("FAILED")
        while engine.unsettled():
            await anyio.sleep(0.0005)
        return time.perf_counter() - started


async def main(trials: int, poll: float) -> None:
    with FakeClob() as clob:
        clob.channel.start()
        found: dict[bool, list[float]] = {True: [], False: []}
        for trial in range(trials):
            for channel in (True, False):
                token = str(10**70 + 2 * trial + int(channel))
                found[channel].append(await detection(clob, token, poll, channel, (trial + 0.5) / trials))
    print(f"failed settlement detected, {trials} trials each, settlement_poll_interval = {poll:.1f} s")
    for channel, label in ((True, "user channel (poll still running)"), (False, "polling alone")):
        seconds = found[channel]
        print(f"  {label:34} median {statistics.median(seconds) * 1000:8.1f} ms   "
              f"max {max(seconds) * 1000:8.1f} ms")
    ratio = statistics.median(found[False]) / statistics.median(found[True])
    print(f"  the channel notices it {ratio:.0f}x sooner (median); polling's bound is the interval, {poll:.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--poll", type=float, default=2.0)
    args = parser.parse_args()
    anyio.run(main, args.trials, args.poll)
