"""`exitguard run`: play a scenario (the bundled demo by default) on the paper exchange and print a table."""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import anyio

from exitguard.cli.log_output import command_logs
from exitguard.cli.progress import ProgressLine
from exitguard.cli.scenario import (
    ScenarioReport,
    Step,
    bundled_demo,
    load_scenario,
    parse_scenario,
    run_scenario,
)
from exitguard.errors import ScenarioError
from exitguard.position import ExitOutcome, ExitResult
from exitguard.states import exact


def run_demo(path: Path | None, *, json_logs: bool, log_level: str, out: TextIO, progress: bool | None = None,
             err: TextIO | None = None, clock: Callable[[], float] = time.monotonic,
             log_file: Path | None = None) -> int:
    """`progress`: True draws the progress line on `err`, False never does, None does when `err` is a
    terminal. Nothing else in the output changes either way. Log lines at `log_level` and above go to
    `log_file`, or else to `err` (above the progress line); never to `out`, the table's stream."""
    err = sys.stderr if err is None else err
    line = ProgressLine(err, clock=clock) if (err.isatty() if progress is None else progress) else None
    with command_logs(err=err if line is None else line.above(err), level=log_level.upper(), json=json_logs,
                      log_file=log_file):
        return _run(path, out=out, err=err, line=line)


def _run(path: Path | None, *, out: TextIO, err: TextIO, line: ProgressLine | None) -> int:
    try:
        if path is None:
            name, text = bundled_demo()
            steps = parse_scenario(text, name)
        else:
            name, steps = str(path), load_scenario(path)
    except ScenarioError as error:
        print(f"exitguard: {error}", file=err)
        return 2
    print(f"exitguard run: {name} on the paper exchange\n", file=out)
    print(f"{'line':>4}  {'position':<16} {'request':<24} {'outcome':<15} {'state':<11} {'sold':>8}  note", file=out)
    # Rows that go to the terminal the progress line is on pass above it; rows to a file go straight.
    rows = line.above(out) if line is not None and out.isatty() else out

    def show(step: Step, result: ExitResult) -> None:
        request = ("reconcile" if step.op == "reconcile"
                   else f"{step.args['reason']} @{step.args['limit_price']}")
        print(f"{step.line:>4}  {result.key:<16} {request:<24} {result.outcome:<15} {result.state:<11} "
              f"{result.shares_sold:>8}  {_note(result)}", file=rows, flush=True)

    failure: ScenarioError | None = None
    try:
        report = anyio.run(lambda: run_scenario(steps, on_result=show, source=name,
                                                on_progress=None if line is None else line.update))
    except ScenarioError as error:
        failure = error
    finally:
        if line is not None:
            # With the table on the same terminal the summary says it all; otherwise the final counts stay.
            line.close(keep=not out.isatty())
    if failure is not None:
        print(f"exitguard: {failure}", file=err)
        return 2
    _summary(report, out)
    return 0


def _note(result: ExitResult) -> str:
    parts = []
    if result.verify_latency is not None:
        parts.append(f"verified {result.verified_balance} in {result.verify_latency * 1000:.2f} ms")
    if result.residual_shares:
        parts.append(f"residual {result.residual_shares}")
    if result.error:
        parts.append(result.error)
    return "; ".join(parts)


def _summary(report: ScenarioReport, out: TextIO) -> None:
    sold: dict[str, Decimal] = {}
    last: dict[str, ExitResult] = {}
    for result in report.results:
        with exact():
            sold[result.key] = sold.get(result.key, Decimal(0)) + result.shares_sold
        if result.outcome is not ExitOutcome.IN_PROGRESS:
            last[result.key] = result
    print("\nSummary", file=out)
    print(f"{'position':<16} {'expected':>9} {'verified':>9} {'sold':>8} {'residual':>9}  {'last outcome':<15} state",
          file=out)
    for key, state in report.final_states.items():
        final = last.get(key)
        if final is None:
            print(f"{key:<16} {'':>9} {'':>9} {'0':>8} {'':>9}  {'(no exit)':<15} {state}", file=out)
            continue
        verified = "-" if final.verified_balance is None else str(final.verified_balance)
        print(f"{key:<16} {final.expected_shares:>9} {verified:>9} {sold.get(key, Decimal(0)):>8} "
              f"{final.residual_shares:>9}  {final.outcome:<15} {state}", file=out)
    outcomes = Counter(str(result.outcome) for result in report.results)
    print("\noutcomes: " + ", ".join(f"{name} {count}" for name, count in sorted(outcomes.items())), file=out)

