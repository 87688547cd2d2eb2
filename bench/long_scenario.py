"""A long scenario for `exitguard run`, and what its progress line costs.

Writes N positions as a scenario (balance, bids and track for each, then the exits: about 4 N steps)
with a mix of outcomes: most close, one in ten is already exited, one in twenty-five is dust, one in
fifty is never asked to exit and stays OPEN. Watch the progress line on a terminal:

    python bench/long_scenario.py --write /tmp/long.jsonl [--positions 25000] [--latency 0.0002]
    exitguard run /tmp/long.jsonl --log-level WARNING > /tmp/long.out

Without --write it plays the scenario in-process (logging off), with and without the progress hook,
and measures the hook's own work per step alone: on a shared 2-core machine two whole runs differ by
more than the hook costs, so the verdict rests on the measurement alone. Limit chased (issue 5): the
progress line must not slow a 100,000-step run noticeably, taken here as <= 2 % of a step's time.

    python bench/long_scenario.py [--positions 25000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import time
from decimal import Decimal
from pathlib import Path

import anyio
from loguru import logger

from exitguard import ExitEngine, Position
from exitguard.cli.progress import ProgressLine
from exitguard.cli.scenario import _StateTally, parse_scenario, run_scenario
from exitguard.exchange.paper import PaperExchange

LIMIT_PERCENT = 2.0


def scenario_lines(positions: int, latency: float = 0.0) -> list[str]:
    lines: list[dict[str, object]] = []
    if latency:
        lines.append({"op": "fault", "fault": "latency", "seconds": latency})
    for index in range(positions):
        token = f"T{index}"
        held = "0" if index % 10 == 1 else "3" if index % 25 == 2 else "10"
        lines.append({"op": "balance", "token": token, "shares": held})
        lines.append({"op": "bids", "token": token, "bids": [["0.60", "100"]]})
        lines.append({"op": "track", "key": f"p{index}", "token": token, "shares": "10"})
    for index in range(positions):
        if index % 50 != 3:
            lines.append({"op": "exit", "key": f"p{index}", "reason": "take_profit", "limit_price": "0.55"})
    return [json.dumps(line) for line in lines]


class _Terminal(io.StringIO):
    """Stands in for a terminal: the progress line draws as it would on one, into memory."""

    def isatty(self) -> bool:
        return True


async def _play(text: str, with_progress: bool) -> float:
    steps = parse_scenario(text, "long.jsonl")
    hook = ProgressLine(_Terminal(), width=200).update if with_progress else None
    gc.collect()
    started = time.process_time()
    await run_scenario(steps, on_progress=hook, source="long.jsonl")
    return time.process_time() - started


async def _hook_cost(positions: int, calls: int) -> float:
    """CPU seconds per step of what the progress adds to a step: the state tally's recount of the
    step's position and the progress line's update, on an engine tracking `positions` positions."""
    exchange = PaperExchange()
    async with ExitEngine(exchange) as engine:
        for index in range(positions):
            engine.track(Position(f"p{index}", f"T{index}", Decimal("10")))
        tally = _StateTally(engine)
        line = ProgressLine(_Terminal(), width=200)
        keys = [f"p{index % positions}" for index in range(calls)]
        started = time.process_time()
        for done, key in enumerate(keys, start=1):
            tally.recount(key)
            line.update(done, calls, tally.counts)
        return (time.process_time() - started) / calls


def measure(positions: int, repeats: int) -> None:
    logger.remove()
    text = "\n".join(scenario_lines(positions)) + "\n"
    steps = len(parse_scenario(text, "long.jsonl"))
    plain: list[float] = []
    shown: list[float] = []
    for turn in range(repeats):  # alternated, so that drift in the machine hits both alike
        for with_progress in ((False, True) if turn % 2 == 0 else (True, False)):
            (shown if with_progress else plain).append(anyio.run(_play, text, with_progress))
    base, with_line = min(plain), min(shown)
    per_step = base / steps
    hook = anyio.run(_hook_cost, positions, steps)
    share = hook / per_step * 100
    print(f"scenario: {positions:,} positions, {steps:,} steps; CPU time, best of {repeats}")
    print(f"  run without progress (baseline): {base:7.2f} s  {per_step * 1e6:7.1f} us/step")
    print(f"  run with the progress line:      {with_line:7.2f} s  {with_line / steps * 1e6:7.1f} us/step"
          f"  ({(with_line - base) / base * 100:+.1f} %)")
    spread = max((max(runs) - min(runs)) / min(runs) * 100 for runs in (plain, shown))
    print(f"  run-to-run spread of one setting: up to {spread:.1f} % (the difference above is read against it)")
    verdict = "ok" if share <= LIMIT_PERCENT else "OVER"
    print(f"  progress per step (tally + line, measured alone): {hook * 1e6:.2f} us = {share:.2f} % of a step"
          f"   limit <= {LIMIT_PERCENT:.0f} %   {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=25_000, help="positions (4 steps each; default 25,000)")
    parser.add_argument("--write", type=Path, help="write the scenario here instead of measuring")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds of paper-exchange latency per call, to slow the run down for watching")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.write is not None:
        args.write.write_text("\n".join(scenario_lines(args.positions, args.latency)) + "\n", encoding="utf-8")
        print(f"wrote {args.write}: {args.positions:,} positions")
        return
    measure(args.positions, args.repeats)


if __name__ == "__main__":
    main()
