"""`exitguard run`'s live progress: one rewritten line on a terminal with the positions by state, and
nothing at all when the output is not a terminal.

No test sleeps: the clock is a function the test moves, and "a terminal" is an in-memory stream whose
isatty() says yes. `screen()` plays the written text the way a terminal shows it (carriage return,
erase-to-end-of-line, newline), so a test can check what a person would see.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from exitguard import ExitEngine
from exitguard.cli.main import main
from exitguard.cli.progress import CLEAR_TO_END, ProgressLine
from exitguard.cli.run import run_demo
from exitguard.cli.scenario import bundled_demo, parse_scenario, run_scenario
from exitguard.telemetry.logs import records_enabled

SOURCE = "scenario.jsonl"

# Each step, and the positions by state once it has run.
STEPS_AND_STATES: list[tuple[str, dict[str, int]]] = [
    ('{"op": "balance", "token": "A", "shares": "10"}', {}),
    ('{"op": "bids", "token": "A", "bids": [["0.60", "100"]]}', {}),
    ('{"op": "track", "key": "a", "token": "A", "shares": "10"}', {"OPEN": 1}),
    ('{"op": "balance", "token": "B", "shares": "0"}', {"OPEN": 1}),
    ('{"op": "track", "key": "b", "token": "B", "shares": "5"}', {"OPEN": 2}),
    ('{"op": "fault", "fault": "lose_sell_response"}', {"OPEN": 2}),
    ('{"op": "exit", "key": "a", "reason": "take_profit", "limit_price": "0.55"}', {"OPEN": 1, "SELLING": 1}),
    ('{"op": "exit", "key": "b", "reason": "stop_loss", "limit_price": "0.55"}', {"SELLING": 1, "RECONCILED": 1}),
    ('{"op": "reconcile", "key": "a"}', {"CLOSED": 1, "RECONCILED": 1}),
]
SCENARIO = "".join(line + "\n" for line, _ in STEPS_AND_STATES)


class Terminal(io.StringIO):
    """An in-memory stream that says it is a terminal. Streams made with the same `screen` list also
    append every write to it, in order, as two streams on one terminal would interleave."""

    def __init__(self, screen: list[str] | None = None) -> None:
        super().__init__()
        self.screen = screen

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if self.screen is not None:
            self.screen.append(text)
        return super().write(text)


class SteppingClock:
    """Monotonic seconds that move only when the test says so, or by `tick` on every reading."""

    def __init__(self, tick: float = 0.0) -> None:
        self.now = 100.0
        self.tick = tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def screen(raw: str) -> list[str]:
    """The lines a terminal shows after receiving `raw`; the last, unfinished line is included when
    something is left on it."""
    lines: list[str] = []
    line: list[str] = []
    column = 0
    index = 0
    while index < len(raw):
        if raw.startswith(CLEAR_TO_END, index):
            del line[column:]
            index += len(CLEAR_TO_END)
            continue
        char = raw[index]
        if char == "\r":
            column = 0
        elif char == "\n":
            lines.append("".join(line))
            line, column = [], 0
        else:
            if column < len(line):
                line[column] = char
            else:
                line.append(char)
            column += 1
        index += 1
    if line:
        lines.append("".join(line))
    return lines


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`exitguard run` adds its log handler and turns exitguard's records on for the command only: after it,
    they are as they were (its handler is gone: nothing is left to log into a closed capture)."""
    before = records_enabled()
    yield
    assert records_enabled() == before


# -- the line ----------------------------------------------------------------------------------------


def test_line_is_not_drawn_before_one_interval_has_passed() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)

    clock.now += 0.2
    line.update(10, 100, {"OPEN": 10})

    assert stream.getvalue() == ""


def test_line_shows_steps_elapsed_and_the_states_that_hold_positions() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)

    clock.now += 0.3
    line.update(1234, 10_000, {"OPEN": 12, "VERIFYING": 3, "SELLING": 1, "CLOSED": 900, "DUST": 0})

    assert stream.getvalue() == ("\rprogress: 1,234/10,000 steps  0.3 s  OPEN 12  VERIFYING 3  SELLING 1  "
                                 "CLOSED 900" + CLEAR_TO_END)


def test_line_lists_states_in_the_machines_order() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)

    clock.now += 75.0
    line.update(5, 5, {"DUST": 1, "RECONCILED": 2, "CLOSED": 3, "OPEN": 4})

    assert screen(stream.getvalue()) == ["progress: 5/5 steps  0:01:15  OPEN 4  CLOSED 3  RECONCILED 2  DUST 1"]


def test_line_is_redrawn_at_most_once_per_interval() -> None:
    clock, stream = SteppingClock(tick=0.01), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)

    for done in range(1, 1001):  # 1,000 updates over 10 seconds
        line.update(done, 1000, {"OPEN": done})

    # The first draw waits one interval; then one every 25 readings of the clock: 40 in 10 seconds.
    assert stream.getvalue().count("\rprogress:") == 40
    assert screen(stream.getvalue()) == ["progress: 1,000/1,000 steps  10.0 s  OPEN 1,000"]


def test_line_reads_a_live_mapping_when_it_draws() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)
    counts = {"OPEN": 1}
    line.update(1, 3, counts)

    counts["OPEN"] = 3
    clock.now += 1.0
    line.update(3, 3, counts)

    assert "OPEN 3" in screen(stream.getvalue())[-1]


def test_line_is_cut_one_column_short_of_the_terminal_width() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=42)

    clock.now += 1.0
    line.update(50_000, 100_000, {"OPEN": 50_000, "CLOSED": 50_000})

    (shown,) = screen(stream.getvalue())
    assert shown == "progress: 50,000/100,000 steps  1.0 s  OP"
    assert len(shown) == 41


def test_close_without_keep_leaves_the_terminal_line_empty() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)
    clock.now += 1.0
    line.update(1, 2, {"OPEN": 1})

    line.close(keep=False)

    assert screen(stream.getvalue()) == []


def test_close_with_keep_leaves_the_final_counts_once() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)
    clock.now += 1.0
    line.update(1, 2, {"OPEN": 1})
    clock.now += 1.0
    line.update(2, 2, {"CLOSED": 1})  # drawn: one interval since the last draw

    line.close(keep=True)

    assert screen(stream.getvalue()) == ["progress: 2/2 steps  2.0 s  CLOSED 1"]


def test_writes_above_the_line_clear_it_and_put_it_back_underneath() -> None:
    clock, stream = SteppingClock(), Terminal()
    line = ProgressLine(stream, clock=clock, interval=0.25, width=120)
    clock.now += 1.0
    line.update(1, 2, {"OPEN": 1})
    log = line.above(stream)

    log.write("12:00:00.000 | WARNING | exit_balance_mismatch key=p1\n")
    log.write("12:00:00.001 | INFO    | exit_filled key=p1\n")

    assert screen(stream.getvalue()) == [
        "12:00:00.000 | WARNING | exit_balance_mismatch key=p1",
        "12:00:00.001 | INFO    | exit_filled key=p1",
        "progress: 1/2 steps  1.0 s  OPEN 1",
    ]


# -- positions by state, counted as the scenario runs ---------------------------------------------------


@pytest.mark.anyio
async def test_run_scenario_reports_positions_by_state_after_every_step() -> None:
    seen: list[tuple[int, int, dict[str, int]]] = []

    def on_progress(done: int, total: int, states: Mapping[str, int]) -> None:
        seen.append((done, total, {state: count for state, count in states.items() if count}))

    await run_scenario(parse_scenario(SCENARIO, SOURCE), on_progress=on_progress, source=SOURCE)

    total = len(STEPS_AND_STATES)
    assert seen == [(done, total, states) for done, (_, states) in enumerate(STEPS_AND_STATES, start=1)]


@pytest.mark.anyio
async def test_run_scenario_counts_of_the_demo_end_at_its_final_states() -> None:
    name, text = bundled_demo()
    steps = parse_scenario(text, name)
    last: dict[str, int] = {}
    calls = 0

    def on_progress(done: int, total: int, states: Mapping[str, int]) -> None:
        nonlocal calls, last
        calls += 1
        last = {state: count for state, count in states.items() if count}

    report = await run_scenario(steps, on_progress=on_progress, source=name)

    final: dict[str, int] = {}
    for state in report.final_states.values():
        final[state] = final.get(state, 0) + 1
    assert calls == len(steps)
    assert last == final


@pytest.mark.anyio
async def test_run_scenario_progress_does_not_walk_every_position_each_step(
        monkeypatch: pytest.MonkeyPatch) -> None:
    walks = 0
    states = ExitEngine.states

    def counted(engine: ExitEngine) -> dict[str, str]:
        nonlocal walks
        walks += 1
        return states(engine)

    monkeypatch.setattr(ExitEngine, "states", counted)
    steps = parse_scenario(SCENARIO, SOURCE)

    await run_scenario(steps, on_progress=lambda done, total, states: None, source=SOURCE)

    assert walks == 2  # once to start the tally, once for the report's final states


# -- exitguard run --------------------------------------------------------------------------------------


def without_timings(text: str) -> str:
    """The run's output with the measured verification latencies taken out (they differ run to run)."""
    return re.sub(r" in \d+\.\d+ ms", " in _ ms", text)


def test_cli_run_draws_progress_on_a_terminal_stderr_and_leaves_stdout_as_it_was(
        cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")
    plain_out = io.StringIO()
    assert run_demo(path, json_logs=False, log_level="CRITICAL", out=plain_out, err=io.StringIO()) == 0
    out, err = io.StringIO(), Terminal()

    code = run_demo(path, json_logs=False, log_level="CRITICAL", out=out, err=err, clock=SteppingClock(tick=0.1))

    assert code == 0
    assert without_timings(out.getvalue()) == without_timings(plain_out.getvalue())
    assert err.getvalue().count("\rprogress:") > 1  # drawn during the run, not only at its end
    # stdout is a file here, so the final counts stay on the terminal, once, on their own line.
    (final,) = screen(err.getvalue())
    assert final.startswith("progress: 9/9 steps") and final.endswith("  CLOSED 1  RECONCILED 1")


def test_cli_run_prints_nothing_extra_when_stderr_is_not_a_terminal(cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()

    assert run_demo(path, json_logs=False, log_level="CRITICAL", out=out, err=err, clock=SteppingClock(tick=0.1)) == 0

    assert err.getvalue() == ""
    assert "progress:" not in out.getvalue()
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_cli_run_no_progress_keeps_a_terminal_quiet(cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")
    err = Terminal()

    assert run_demo(path, json_logs=False, log_level="CRITICAL", out=io.StringIO(), err=err, progress=False,
                clock=SteppingClock(tick=0.1)) == 0

    assert err.getvalue() == ""


def test_cli_run_table_rows_pass_above_the_line_on_a_shared_terminal(cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")
    shared: list[str] = []
    out, err = Terminal(shared), Terminal(shared)

    assert run_demo(path, json_logs=False, log_level="CRITICAL", out=out, err=err, clock=SteppingClock(tick=0.1)) == 0

    assert "progress:" in err.getvalue()
    # What the person at the terminal sees is the table and summary alone: the line went away at the end
    # and never broke a row.
    assert screen("".join(shared)) == out.getvalue().splitlines()


def test_cli_run_log_lines_pass_above_the_line(cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")
    err = Terminal()

    assert run_demo(path, json_logs=False, log_level="INFO", out=io.StringIO(), err=err,
                clock=SteppingClock(tick=0.1)) == 0

    shown = screen(err.getvalue())
    logs, final = shown[:-1], shown[-1]
    assert [line for line in logs if "exit_already_complete" in line]  # the run logged while the line was up
    assert all(" | " in line and "progress:" not in line for line in logs)
    assert final.startswith("progress: 9/9 steps")


def test_cli_run_with_progress_forced_on_draws_even_when_stderr_is_not_a_terminal(
        cli_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO, encoding="utf-8")

    assert main(["run", str(path), "--progress", "--log-level", "CRITICAL"]) == 0
    captured = capsys.readouterr()

    assert screen(captured.err)[-1].startswith("progress: 9/9 steps")
    assert "progress:" not in captured.out


def test_cli_run_refused_step_clears_the_way_for_the_error(cli_logging: None, tmp_path: Path) -> None:
    path = tmp_path / SOURCE
    path.write_text(SCENARIO + '{"op": "exit", "key": "a", "reason": "again", "limit_price": "0.55"}\n',
                    encoding="utf-8")
    err = Terminal()

    assert run_demo(path, json_logs=False, log_level="CRITICAL", out=io.StringIO(), err=err,
                clock=SteppingClock(tick=0.1)) == 2

    shown = screen(err.getvalue())
    assert shown[-2].startswith("progress: 9/10 steps")
    assert shown[-1].startswith(f"exitguard: {path}:10:")
