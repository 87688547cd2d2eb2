"""Engine overhead per exit: CPU microseconds the engine adds around the exchange's own calls.

Runs N exits on the paper exchange with zero latency, logging off, and compares with a naive exit
(balance read + sell, no state machine, no guards) measured in the same run on the same exchange.
Limit chased (issue 5): <= 300 us per exit without the journal.

    python bench/engine_overhead.py [N]
"""

from __future__ import annotations

import sys
import time
from decimal import Decimal

import anyio
from loguru import logger

from exitguard import ExitEngine, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.states import SellPermit, parse_raw_balance

LIMIT_US = 300.0
PRICE = Decimal("0.55")


def market(n: int) -> PaperExchange:
    exchange = PaperExchange()
    for index in range(n):
        exchange.set_balance(f"t{index}", Decimal("10"))
        exchange.set_bids(f"t{index}", [(Decimal("0.60"), Decimal("10"))])
    return exchange


async def engine_exits(n: int) -> float:
    exchange = market(n)
    async with ExitEngine(exchange) as engine:
        for index in range(n):
            engine.track(Position(f"p{index}", f"t{index}", Decimal("10")))
        started = time.process_time()
        for index in range(n):
            await engine.exit(f"p{index}", reason="bench", limit_price=PRICE)
        return time.process_time() - started


async def naive_exits(n: int) -> float:
    """The exchange calls alone, as a bare script would make them: the floor the engine adds to."""
    exchange = market(n)
    started = time.process_time()
    for index in range(n):
        token = f"t{index}"
        balance = parse_raw_balance(await exchange.get_balance(token))
        await exchange.market_rules(token)
        permit = SellPermit(f"p{index}", token, balance, balance, time.monotonic(), f"a{index}")
        await exchange.sell(permit, PRICE)
    return time.process_time() - started


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000
    logger.remove()
    naive = anyio.run(naive_exits, n) / n * 1e6
    full = anyio.run(engine_exits, n) / n * 1e6
    overhead = full - naive
    print(f"exits: {n} on the paper exchange, zero latency, logging off")
    print(f"naive exit (exchange calls only): {naive:8.1f} us CPU per exit")
    print(f"ExitEngine exit:                  {full:8.1f} us CPU per exit")
    print(f"engine overhead:                  {overhead:8.1f} us per exit   (limit {LIMIT_US:.0f} us: "
          f"{'OK' if overhead <= LIMIT_US else 'OVER'})")


if __name__ == "__main__":
    main()
