"""Tracking 100,000 positions: time, memory per position, and cost per transition.

Next to the engine's figures, the naive designs the limits are chasing, measured in the same run on a
sample and scaled: one `transitions.Machine` per position, and one shared machine with `add_model`
(which scans the machine's model list on every add, so it grows quadratically).

Limits: tracking 100,000 positions in <= 0.3 s (issue 14; issue 5 asked <= 1 s) at <= 2 KiB per position,
logging at the library's default, no journal. The time limit is checked on a bulk load, one `track_many` call
(the API issue 14 added for it). One `track()` per position is printed beside it: each call asks loguru once
whether anyone wants its `position_tracked` event (about 1.5 us, even when nobody does), which a bulk load asks
once for all. Both figures include building the Position objects, as a bot would.

    python bench/tracking.py [--positions 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import gc
import time
import tracemalloc
from decimal import Decimal
from typing import NamedTuple

import anyio
from transitions import Machine

from exitguard import ExitEngine, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.states import MICRO, PositionRecord, State, fire

LIMIT_SECONDS = 0.3
LIMIT_BYTES = 2048
PRICE = Decimal("0.55")


class GcClock:
    """Seconds the garbage collector ran while it is installed (gc.callbacks): the share of a figure that is the
    interpreter's cycle collector walking every live object, not the engine's own work."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


class Round(NamedTuple):
    seconds: float
    gc_seconds: float
    building: float
    """Of `seconds`, building the Position objects (the bot's own cost; measured apart in the bulk round only)."""


async def loop_round(n: int) -> Round:
    """Build and track n positions one `track()` call each, in a running engine."""
    gc.collect()
    async with ExitEngine(PaperExchange(), settlement_poll_interval=None) as engine:
        with GcClock() as collector:
            started = time.perf_counter()
            for i in range(n):
                engine.track(Position(key=f"p{i}", token_id=f"t{i}", shares=Decimal("10")))
            elapsed = time.perf_counter() - started
        assert len(engine.states()) == n
    return Round(elapsed, collector.seconds, 0.0)


async def bulk_round(n: int) -> Round:
    """Build n positions and load them with one `track_many()` call, in a running engine."""
    gc.collect()
    async with ExitEngine(PaperExchange(), settlement_poll_interval=None) as engine:
        with GcClock() as collector:
            started = time.perf_counter()
            positions = [Position(key=f"p{i}", token_id=f"t{i}", shares=Decimal("10")) for i in range(n)]
            built = time.perf_counter()
            engine.track_many(positions)
            elapsed = time.perf_counter() - started
        assert len(engine.states()) == n
    return Round(elapsed, collector.seconds, built - started)


async def memory_per_position(n: int) -> float:
    """Bytes per tracked position, traced in a pass of its own (tracing slows allocation down)."""
    gc.collect()
    async with ExitEngine(PaperExchange(), settlement_poll_interval=None) as engine:
        keys = [(f"p{i}", f"t{i}") for i in range(n)]  # the bot's own strings, not the engine's cost
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for key, token in keys:
            engine.track(Position(key=key, token_id=token, shares=Decimal("10")))
        per_position = (tracemalloc.get_traced_memory()[0] - before) / n
        tracemalloc.stop()
    return per_position


def best_rounds(n: int, rounds: int) -> tuple[Round, Round]:
    """The best of `rounds` rounds of each way, alternating so that a burst of load from elsewhere weighs on both:
    these machines are noisy, and noise only ever adds time."""
    loops, bulks = [], []
    for _ in range(rounds):
        loops.append(anyio.run(loop_round, n))
        bulks.append(anyio.run(bulk_round, n))
    return min(loops), min(bulks)


def transition_cost(n: int) -> float:
    """Microseconds per transition of the shared machine: request_exit then verify_failed on n records."""
    records = [PositionRecord(f"p{i}", f"t{i}", 10 * MICRO) for i in range(n)]
    started = time.perf_counter()
    for i, record in enumerate(records):
        fire(record, "request_exit", reason="bench", limit_price=PRICE, attempt_id=f"a{i}")
        fire(record, "verify_failed", error="bench")
    elapsed = time.perf_counter() - started
    assert all(record.state is State.OPEN for record in records)
    return elapsed / (2 * n) * 1e6


class Model:
    pass


def machine_per_model(sample: int) -> tuple[float, float]:
    """Bytes and seconds per position with one Machine each (the obvious transitions design)."""
    states = [str(s) for s in State]
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    machines = []
    for _ in range(sample):
        model = Model()
        machine = Machine(model=model, states=states, initial="OPEN", auto_transitions=False)
        machine.add_transition("request_exit", "OPEN", "VERIFYING")
        machine.add_transition("verify_failed", "VERIFYING", "OPEN")
        machines.append(machine)
    elapsed = time.perf_counter() - started
    size = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return size / sample, elapsed / sample


def shared_machine_add_model(sample: int) -> float:
    """Seconds to add `sample` models to one shared machine with add_model."""
    machine = Machine(model=None, states=[str(s) for s in State], initial="OPEN", auto_transitions=False)
    models = [Model() for _ in range(sample)]
    started = time.perf_counter()
    for model in models:
        machine.add_model(model)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--positions", type=int, default=100_000)
    parser.add_argument("--sample", type=int, default=10_000, help="positions for the naive designs")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each way to track; the best counts")
    args = parser.parse_args()
    # Logging as the library leaves it: loguru's default handler in place, exitguard's records disabled
    # (the application has not opted in), which must cost next to nothing.
    n = args.positions
    loop, bulk = best_rounds(n, args.rounds)
    per_position = anyio.run(memory_per_position, n)
    per_transition = transition_cost(n)
    naive_bytes, naive_seconds = machine_per_model(args.sample)
    # add_model costs a constant per model plus a scan of the models already there: fit t = a*m + b*m^2
    # on two sample sizes and evaluate at n.
    small, large = args.sample, 2 * args.sample
    t_small, t_large = shared_machine_add_model(small), shared_machine_add_model(large)
    b = max(0.0, (t_large - 2 * t_small) / (2 * small**2))
    a = (t_small - b * small**2) / small
    add_model_at_n = a * n + b * n**2
    growth = t_large / t_small

    print(f"tracking {n:,} positions (engine running, paper exchange, logging at the library's default: "
          f"exitguard disabled; best of {args.rounds} rounds)\n")
    print(f"{'':<52} {'figure':>14}   limit")
    print(f"{'build them and load them with one track_many() call':<52} {bulk.seconds:>12.2f} s   "
          f"<= {LIMIT_SECONDS:.1f} s: {'met' if bulk.seconds <= LIMIT_SECONDS else 'MISSED'}")
    print(f"{'  of which building the Positions (the bot)':<52} {bulk.building:>12.2f} s")
    print(f"{'  of which the garbage collector':<52} {bulk.gc_seconds:>12.2f} s")
    print(f"{'build them and track() each one (informational)':<52} {loop.seconds:>12.2f} s   "
          f"(a loguru call per position_tracked event, {loop.gc_seconds:.2f} s of garbage collection)")
    print(f"{'memory per position (tracemalloc)':<52} {per_position:>12.0f} B   <= {LIMIT_BYTES} B: "
          f"{'met' if per_position <= LIMIT_BYTES else 'MISSED'}")
    print(f"{'cost per transition (shared machine, fire)':<52} {per_transition:>11.1f} us")
    print(f"\nnaive designs, measured on {args.sample:,} positions in this run and scaled to {n:,}:")
    print(f"{'one Machine per position: memory per position':<52} {naive_bytes:>12.0f} B   "
          f"({naive_bytes * n / 2**20:,.0f} MiB at {n:,})")
    print(f"{'one Machine per position: time to build':<52} {naive_seconds * n:>12.2f} s")
    print(f"{'shared machine with add_model: time to add':<52} {add_model_at_n:>12.2f} s   "
          f"(fitted: {small:,} took {t_small:.2f} s, {large:,} took {t_large:.2f} s, {growth:.1f}x)")


if __name__ == "__main__":
    main()
