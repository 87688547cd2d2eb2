"""Burst: N positions exit at once under the exchange's rate limits, through the real Polymarket adapter.

The documented limits (balance-allowance 200 / 10 s, POST /order 3,500 / 10 s) are scaled up by the
same factor for a short run. Every exit needs one balance read and one post, so the limits impose a
lower bound on the makespan: the balance bucket lets its burst through at once and then refills at
its rate, likewise the order bucket, and the slower of the two sets the bound. The figure is the
makespan divided by that bound (limit 1.05). The fake CLOB runs in its own process (so its HTTP
threads do not share the engine's interpreter lock), with a round-trip time added to every request.

Next to it, the naive baseline measured in the same run: the same exits one after another.

    python bench/burst.py [--exits 1000] [--factor 2] [--rtt 0.02]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

import anyio
from loguru import logger
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import ApiCreds

from exitguard import ExitEngine, ExitOutcome, Position
from exitguard.polymarket import DOCUMENTED_LIMITS, Family, PolymarketExchange

LIMIT = 1.05
TESTS = Path(__file__).resolve().parents[1] / "tests"
PRICE = Decimal("0.55")

SERVER = """
import json, sys, time
from decimal import Decimal
sys.path.insert(0, {tests!r})
from fakeclob import FakeClob
clob = FakeClob()
clob.start()
clob.settlement = "after_reply"
for i in range({tokens}):
    token = str(10**70 + i)
    clob.add_market(token, tick_size="0.01", min_order_size="5")
    clob.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    clob.set_balance(token, Decimal("10"))
clob.latency = {rtt}
print(json.dumps({{"host": clob.host, "key": clob.private_key, "creds": [clob.creds.api_key,
                  clob.creds.api_secret, clob.creds.api_passphrase]}}), flush=True)
sys.stdin.read()
"""


def bound(exits: int, factor: float) -> float:
    """Seconds the scaled limits need at the least for `exits` balance reads and `exits` posts."""
    worst = 0.0
    for family in (Family.BALANCE, Family.ORDER):
        limit = DOCUMENTED_LIMITS[family].scaled(factor)
        rate = limit.requests / limit.per_seconds
        worst = max(worst, max(0, exits - limit.requests) / rate)
    return worst


async def burst(client: ClobClient, tokens: list[str], factor: float, *,
                concurrent: bool) -> tuple[float, Counter[str]]:
    limits = {family: DOCUMENTED_LIMITS[family].scaled(factor) for family in DOCUMENTED_LIMITS}
    exchange = PolymarketExchange(client, rate_limits=limits)
    outcomes: list[ExitOutcome] = []
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for i, token in enumerate(tokens):
            engine.track(Position(key=f"p{i}", token_id=token, shares=Decimal("10")))
        for token in dict.fromkeys(tokens):
            await exchange.warm_up(token)  # markets warm before the clock starts, as for a bot's book

        async def one(i: int) -> None:
            outcomes.append((await engine.exit(f"p{i}", reason="burst", limit_price=PRICE)).outcome)

        started = time.perf_counter()
        if concurrent:
            async with anyio.create_task_group() as group:
                for i in range(len(tokens)):
                    group.start_soon(one, i)
        else:
            for i in range(len(tokens)):
                await one(i)
        elapsed = time.perf_counter() - started
    return elapsed, Counter(str(outcome) for outcome in outcomes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exits", type=int, default=1_000)
    # The fake CLOB checks every order's signature and HMAC in Python, in one process: on the 2-core
    # machine it serves about 290 requests/s, so limits above ~x5 measure the fake, not the engine.
    parser.add_argument("--factor", type=float, default=2.0, help="scale of the documented limits")
    parser.add_argument("--rtt", type=float, default=0.02, help="seconds the fake adds to every request")
    parser.add_argument("--naive-sample", type=int, default=100, help="sequential exits timed and scaled")
    args = parser.parse_args()
    logger.remove()
    total = args.exits + args.naive_sample
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(tests=str(TESTS), tokens=total, rtt=args.rtt)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        info = json.loads(server.stdout.readline())
        client = ClobClient(info["host"], 137, key=info["key"], creds=ApiCreds(*info["creds"]))
        tokens = [str(10**70 + i) for i in range(total)]
        makespan, closed = anyio.run(lambda: burst(client, tokens[:args.exits], args.factor, concurrent=True))
        naive, naive_closed = anyio.run(lambda: burst(client, tokens[args.exits:], args.factor, concurrent=False))
    finally:
        server.terminate()
        server.wait()
    if closed != {"CLOSED": args.exits} or naive_closed != {"CLOSED": args.naive_sample}:
        raise SystemExit(f"not every exit closed: burst {dict(closed)}, one by one {dict(naive_closed)}")
    limit_bound = bound(args.exits, args.factor)
    naive_scaled = naive / args.naive_sample * args.exits
    balance = DOCUMENTED_LIMITS[Family.BALANCE].scaled(args.factor)
    order = DOCUMENTED_LIMITS[Family.ORDER].scaled(args.factor)
    print(f"burst: {args.exits:,} positions exit at once; limits x{args.factor:g}: balance-allowance "
          f"{balance.requests:,} / {balance.per_seconds:g} s, POST /order {order.requests:,} / "
          f"{order.per_seconds:g} s; fake CLOB in its own process, {args.rtt * 1000:.0f} ms per request\n")
    print(f"{'':<44} {'seconds':>9} {'/ bound':>8}   limit")
    print(f"{'bound set by the rate limits':<44} {limit_bound:>9.2f} {1:>8.3f}")
    print(f"{'exitguard, all at once':<44} {makespan:>9.2f} {makespan / limit_bound:>8.3f}   <= {LIMIT:.2f}: "
          f"{'met' if makespan / limit_bound <= LIMIT else 'MISSED'}")
    print(f"{'naive: one after another (scaled from ' + format(args.naive_sample, ',') + ')':<44} "
          f"{naive_scaled:>9.2f} {naive_scaled / limit_bound:>8.3f}")


if __name__ == "__main__":
    main()
