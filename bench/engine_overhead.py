"""Engine CPU per exit, as a ratio to the bare exchange calls measured in the same run (issue 14 section 2).

Runs N exits on the paper exchange with zero latency, logging at the library's default (exitguard disabled),
and the same exchange calls made by a bare script: a balance read and a sell, no state machine, no guards.
Both on warm tokens (the market's rules already known, as after the warm-up that track() starts); beside
them the cold figure: an exit whose rules are read too (in parallel with the balance), against a script that
reads them first. CPU time (process_time), several rounds, the best of each: these machines are noisy.

Limit (issue 14): engine CPU per warm exit <= 1.5x the bare calls.

    python bench/engine_overhead.py [N] [ROUNDS]
"""

from __future__ import annotations

import sys
import time
from decimal import Decimal

import anyio

from exitguard import ExitEngine, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.states import SellPermit, parse_raw_balance

LIMIT = 1.5
LIMIT_US = 300.0
"""Issue 5's absolute limit on the engine's overhead per exit (bench/journal.py prints it beside the journal's)."""
PRICE = Decimal("0.55")


def market(n: int) -> PaperExchange:
    exchange = PaperExchange()
    for index in range(n):
        exchange.set_balance(f"t{index}", Decimal("10"))
        exchange.set_bids(f"t{index}", [(Decimal("0.60"), Decimal("10"))])
    return exchange


async def engine_exits(n: int, warm: bool) -> float:
    exchange = market(n)
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for index in range(n):
            engine.track(Position(f"p{index}", f"t{index}", Decimal("10")))
            if warm:
                await engine.market(f"t{index}")
        started = time.process_time()
        for index in range(n):
            await engine.exit(f"p{index}", reason="bench", limit_price=PRICE)
        return time.process_time() - started


async def bare_exits(n: int, warm: bool) -> float:
    """The exchange calls alone, as a bare script would make them: the floor the engine adds to."""
    exchange = market(n)
    started = time.process_time()
    for index in range(n):
        token = f"t{index}"
        if not warm:
            await exchange.market_rules(token)
        balance = parse_raw_balance(await exchange.get_balance(token))
        permit = SellPermit(f"p{index}", token, balance, balance, time.monotonic(), f"a{index}")
        await exchange.sell(permit, PRICE)
    return time.process_time() - started


async def naive_exits(n: int) -> float:
    """The calls of a cold exit made bare (rules, balance, sell): bench/journal.py's floor."""
    return await bare_exits(n, False)


def best_of(n: int, warm: bool, rounds: int) -> tuple[float, float]:
    """Microseconds of CPU per exit, bare and through the engine: rounds alternate, so that a burst of load
    from elsewhere weighs on both sides; the best round of each counts."""
    bare, full = [], []
    for _ in range(rounds):
        bare.append(anyio.run(bare_exits, n, warm))
        full.append(anyio.run(engine_exits, n, warm))
    return min(bare) / n * 1e6, min(full) / n * 1e6


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3_000
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    print(f"exits: {n} per round, best of {rounds} rounds, paper exchange, zero latency, logging at the library's "
          "default\n")
    print(f"{'':<44} {'bare calls':>11} {'ExitEngine':>11} {'ratio':>7}   limit")
    for warm in (True, False):
        bare, full = best_of(n, warm, rounds)
        ratio = full / bare
        name = "warm token (balance + sell)" if warm else "cold: rules read too (informational)"
        verdict = f"<= {LIMIT}x: {'met' if ratio <= LIMIT else 'MISSED'}" if warm else ""
        print(f"{name:<44} {bare:>8.1f} us {full:>8.1f} us {ratio:>6.2f}x   {verdict}", flush=True)


if __name__ == "__main__":
    main()
