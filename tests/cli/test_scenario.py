"""Scenarios (JSON lines) and the `exitguard` command that replays them.

Every malformed line is refused before anything runs, with the source, the line number and the field;
a step the engine refuses at run time stops the run naming its line.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

import exitguard
from exitguard.cli.main import main
from exitguard.cli.scenario import (
    ScenarioError,
    Step,
    bundled_demo,
    load_scenario,
    parse_scenario,
    run_scenario,
)
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.position import ExitOutcome, ExitResult
from exitguard.telemetry.logs import records_enabled

SOURCE = "bad.jsonl"

# Four lines before the line under test: a comment, a blank line and two valid steps.
PREFIX = (
    "# a scenario\n"
    "\n"
    '{"op": "balance", "token": "T", "shares": "10"}\n'
    '{"op": "track", "key": "p1", "token": "T", "shares": "10"}\n'
)
BAD_LINE = 5


def parse_error(line: str, prefix: str = PREFIX) -> ScenarioError:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(prefix + line + "\n", SOURCE)
    return caught.value


def assert_names(err: ScenarioError, line: int, field: str) -> None:
    assert (err.source, err.line, err.field) == (SOURCE, line, field)
    text = str(err)
    assert text.startswith(f"{SOURCE}:{line}:"), text
    assert f"field {field!r}" in text, text


# -- parsing ---------------------------------------------------------------------------------------


def test_bundled_demo_parses() -> None:
    name, text = bundled_demo()

    steps = parse_scenario(text, name)

    assert name == "demo.jsonl"
    assert steps
    assert {step.op for step in steps} >= {"market", "balance", "bids", "track", "exit", "fault", "reconcile"}
    tracked = {step.args["key"] for step in steps if step.op == "track"}
    assert {step.args["key"] for step in steps if step.op in ("exit", "reconcile")} <= tracked


def test_bundled_demo_line_numbers_match_the_file() -> None:
    name, text = bundled_demo()
    lines = text.splitlines()

    for step in parse_scenario(text, name):
        assert f'"op": "{step.op}"' in lines[step.line - 1]


def test_parsed_steps_hold_exact_values() -> None:
    steps = parse_scenario(
        '{"op": "engine", "max_attempts": 2, "step_ticks": 1, "max_slippage": "0.02"}\n'
        '{"op": "bids", "token": "T", "bids": [["0.60", "100"], ["0.59", "2.5"]]}\n'
        '{"op": "track", "key": "p1", "token": "T", "shares": "9.4735"}\n'
        '{"op": "exit", "key": "p1", "reason": "stop_loss", "limit_price": "0.55", "copies": 2}\n',
        SOURCE,
    )

    assert steps == [
        Step(1, "engine", {"max_attempts": 2, "step_ticks": 1, "max_slippage": Decimal("0.02")}),
        Step(2, "bids", {"token": "T", "bids": [(Decimal("0.60"), Decimal("100")),
                                                (Decimal("0.59"), Decimal("2.5"))]}),
        Step(3, "track", {"key": "p1", "token": "T", "shares": Decimal("9.4735")}),
        Step(4, "exit", {"key": "p1", "reason": "stop_loss", "limit_price": Decimal("0.55"), "copies": 2}),
    ]


def test_blank_and_comment_lines_are_skipped_but_counted() -> None:
    text = (
        "# header comment\n"
        "\n"
        '{"op": "balance", "token": "T", "shares": "10"}\n'
        "   \n"
        "   # an indented comment\n"
        '{"op": "track", "key": "p1", "token": "T", "shares": "10"}\n'
        "\n"
        '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55"}\n'
    )

    steps = parse_scenario(text, SOURCE)

    assert [(step.line, step.op) for step in steps] == [(3, "balance"), (6, "track"), (8, "exit")]


def test_error_line_number_counts_blank_and_comment_lines() -> None:
    err = parse_error('{"op": "balance", "token": "T"}', prefix="# one\n\n# three\n\n")

    assert_names(err, 5, "shares")


def test_empty_scenario_parses_to_no_steps() -> None:
    assert parse_scenario("", SOURCE) == []
    assert parse_scenario("# only a comment\n\n", SOURCE) == []


MALFORMED_LINES = [
    pytest.param('{"op": "balance", "token": "T", "shares": "10"', "<line>", id="invalid-json"),
    pytest.param("op=balance token=T", "<line>", id="not-json"),
    pytest.param('["balance", "T", "10"]', "<line>", id="array"),
    pytest.param('"balance"', "<line>", id="string"),
    pytest.param("42", "<line>", id="number"),
    pytest.param('{"op": "buy", "token": "T", "shares": "10"}', "op", id="unknown-op"),
    pytest.param('{"token": "T", "shares": "10"}', "op", id="missing-op"),
    pytest.param('{"op": "balance", "shares": "10"}', "token", id="missing-token"),
    pytest.param('{"op": "balance", "token": "T"}', "shares", id="missing-shares"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r"}', "limit_price", id="missing-limit-price"),
    pytest.param('{"op": "balance", "token": "T", "shares": "10", "price": "0.5"}', "price", id="unknown-field"),
    pytest.param('{"op": "reconcile", "key": "p1", "force": true}', "force", id="unknown-field-reconcile"),
    pytest.param('{"op": "balance", "token": "T", "shares": "abc"}', "shares", id="shares-not-a-number"),
    pytest.param('{"op": "balance", "token": "T", "shares": "1.0000001"}', "shares", id="shares-sub-micro"),
    pytest.param('{"op": "balance", "token": "T", "shares": true}', "shares", id="shares-bool"),
    pytest.param('{"op": "balance", "token": "T", "shares": "-5"}', "shares", id="shares-negative-balance"),
    pytest.param('{"op": "track", "key": "p9", "token": "U", "shares": "-5"}', "shares", id="shares-negative-track"),
    pytest.param('{"op": "balance", "token": "", "shares": "10"}', "token", id="empty-token"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "1.5"}', "limit_price",
                 id="price-above-one"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0"}', "limit_price", id="price-zero"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "abc"}', "limit_price",
                 id="price-not-a-number"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": 1}', "limit_price", id="price-int"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "", "limit_price": "0.55"}', "reason", id="empty-reason"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55", "copies": 0}', "copies",
                 id="copies-zero"),
    pytest.param('{"op": "market", "token": "T", "tick_size": "2"}', "tick_size", id="bad-tick"),
    pytest.param('{"op": "bids", "token": "T", "bids": "0.60 x 100"}', "bids", id="bids-not-a-list"),
    pytest.param('{"op": "bids", "token": "T", "bids": {"0.60": "100"}}', "bids", id="bids-object"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["0.60"]]}', "bids[0]", id="bid-one-element"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["0.60", "100", "x"]]}', "bids[0]", id="bid-three-elements"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["0.60", "100"], "0.59"]}', "bids[1]", id="bid-not-a-pair"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["1.60", "100"]]}', "bids[0].price", id="bid-bad-price"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["0.60", "lots"]]}', "bids[0].size", id="bid-bad-size"),
    pytest.param('{"op": "exit", "key": "p2", "reason": "r", "limit_price": "0.55"}', "key", id="exit-untracked"),
    pytest.param('{"op": "reconcile", "key": "p2"}', "key", id="reconcile-untracked"),
    pytest.param('{"op": "fault", "fault": "explode"}', "fault", id="unknown-fault"),
    pytest.param('{"op": "fault", "operation": "sell"}', "fault", id="fault-missing-kind"),
    pytest.param('{"op": "fault", "fault": "fail_next"}', "operation", id="fail-next-missing-operation"),
    pytest.param('{"op": "fault", "fault": "fail_next", "operation": "buy"}', "operation",
                 id="fail-next-unknown-operation"),
    pytest.param('{"op": "fault", "fault": "fail_next", "operation": "sell", "error": "boom"}', "error",
                 id="fail-next-unknown-error"),
    pytest.param('{"op": "fault", "fault": "balance_lag"}', "token", id="balance-lag-missing-token"),
    pytest.param('{"op": "fault", "fault": "corrupt_balance", "raw": "NaN"}', "token",
                 id="corrupt-balance-missing-token"),
    pytest.param('{"op": "fault", "fault": "corrupt_balance", "token": "T"}', "raw",
                 id="corrupt-balance-missing-raw"),
    pytest.param('{"op": "fault", "fault": "latency"}', "seconds", id="latency-missing-seconds"),
    pytest.param('{"op": "fault", "fault": "latency", "seconds": -1}', "seconds", id="latency-negative"),
    pytest.param('{"op": "engine", "max_attempts": 2}', "op", id="engine-not-first"),
    pytest.param('{"op": "engine", "max_attempts": 0}', "op", id="engine-not-first-and-bad"),
]


@pytest.mark.parametrize(("line", "field"), MALFORMED_LINES)
def test_malformed_line_names_source_line_and_field(line: str, field: str) -> None:
    assert_names(parse_error(line), BAD_LINE, field)


@pytest.mark.parametrize(("line", "field"), [
    pytest.param('{"op": "engine", "max_attempts": 0}', "max_attempts", id="attempts-zero"),
    pytest.param('{"op": "engine", "step_ticks": -1}', "step_ticks", id="step-negative"),
    pytest.param('{"op": "engine", "max_slippage": "x"}', "max_slippage", id="slippage-not-a-number"),
    pytest.param('{"op": "engine", "max_slippage": "-0.01"}', "max_slippage", id="slippage-negative"),
    pytest.param('{"op": "engine", "retries": 2}', "retries", id="unknown-field"),
])
def test_malformed_engine_line_names_its_field(line: str, field: str) -> None:
    assert_names(parse_error(line, prefix=""), 1, field)


def test_engine_line_is_accepted_first_even_after_comments() -> None:
    steps = parse_scenario('# settings\n\n{"op": "engine", "max_attempts": 3}\n', SOURCE)

    assert steps == [Step(3, "engine", {"max_attempts": 3})]


def test_exit_of_a_key_tracked_only_on_a_later_line_is_refused() -> None:
    text = (
        '{"op": "exit", "key": "late", "reason": "r", "limit_price": "0.55"}\n'
        '{"op": "track", "key": "late", "token": "T", "shares": "10"}\n'
    )
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(text, SOURCE)

    assert_names(caught.value, 1, "key")
    assert "'late'" in str(caught.value)


def test_the_refused_value_appears_in_the_message() -> None:
    err = parse_error('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "1.5"}')

    assert "'1.5'" in str(err)


@pytest.mark.parametrize(("line", "field"), [
    pytest.param('{"op": "balance", "token": "T", "shares": 10.5}', "shares", id="shares"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": 0.55}', "limit_price", id="limit-price"),
    pytest.param('{"op": "bids", "token": "T", "bids": [[0.6, "100"]]}', "bids[0].price", id="bid-price"),
])
def test_json_float_quantity_is_refused_naming_source_line_and_field(line: str, field: str) -> None:
    err = parse_error(line)

    assert_names(err, BAD_LINE, field)
    assert "JSON float" in str(err)


@pytest.mark.parametrize("line", [
    pytest.param('{"op": "fault", "fault": "latency", "seconds": 0.05}', id="latency"),
    pytest.param('{"op": "fault", "fault": "balance_lag", "token": "T", "delay": 0.5}', id="balance-lag"),
])
def test_documented_fractional_seconds_fault_parses(line: str) -> None:
    steps = parse_scenario(line, SOURCE)

    assert len(steps) == 1 and steps[0].op == "fault"


def test_whole_seconds_fault_parses() -> None:
    steps = parse_scenario('{"op": "fault", "fault": "latency", "seconds": 0}\n'
                           '{"op": "fault", "fault": "balance_lag", "token": "T", "delay": null}\n', SOURCE)

    assert [step.args for step in steps] == [
        {"fault": "latency", "seconds": 0.0},
        {"fault": "balance_lag", "token": "T", "delay": None},
    ]


@pytest.mark.parametrize("name", [pytest.param("nope.jsonl", id="missing-file"), pytest.param(".", id="directory")])
def test_load_scenario_of_an_unreadable_path_is_a_scenario_error(tmp_path: Path, name: str) -> None:
    path = tmp_path / name

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)

    assert caught.value.source == str(path)
    assert caught.value.field == "<file>"
    assert str(caught.value).startswith(f"{path}:")
    assert "cannot read" in str(caught.value)


def test_load_scenario_names_the_file_in_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(PREFIX + '{"op": "balance", "token": "T", "shares": "x"}\n', encoding="utf-8")

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)

    assert (caught.value.source, caught.value.line, caught.value.field) == (str(path), BAD_LINE, "shares")


def test_load_scenario_reads_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(PREFIX, encoding="utf-8")

    assert [step.op for step in load_scenario(path)] == ["balance", "track"]


# -- running ---------------------------------------------------------------------------------------

SMALL = """\
{"op": "market", "token": "A", "tick_size": "0.01", "min_order_size": "5"}
{"op": "balance", "token": "A", "shares": "10"}
{"op": "bids", "token": "A", "bids": [["0.60", "100"]]}
{"op": "track", "key": "sold", "token": "A", "shares": "10"}
{"op": "exit", "key": "sold", "reason": "take_profit", "limit_price": "0.55"}
{"op": "balance", "token": "B", "shares": "10"}
{"op": "bids", "token": "B", "bids": [["0.40", "100"]]}
{"op": "track", "key": "killed", "token": "B", "shares": "10"}
{"op": "exit", "key": "killed", "reason": "stop_loss", "limit_price": "0.55"}
{"op": "balance", "token": "C", "shares": "10"}
{"op": "track", "key": "flaky", "token": "C", "shares": "10"}
{"op": "fault", "fault": "fail_next", "operation": "get_balance", "error": "transient"}
{"op": "exit", "key": "flaky", "reason": "stop_loss", "limit_price": "0.55"}
{"op": "track", "key": "idle", "token": "D", "shares": "1"}
"""


@pytest.mark.anyio
async def test_run_scenario_gives_the_expected_outcomes_and_final_states() -> None:
    report = await run_scenario(parse_scenario(SMALL, SOURCE), source=SOURCE)

    assert [(result.key, result.outcome) for result in report.results] == [
        ("sold", ExitOutcome.CLOSED),
        ("killed", ExitOutcome.NOT_FILLED),
        ("flaky", ExitOutcome.VERIFY_FAILED),
    ]
    assert report.final_states == {"sold": "CLOSED", "killed": "OPEN", "flaky": "OPEN", "idle": "OPEN"}
    assert report.results[0].shares_sold == Decimal("10")


@pytest.mark.anyio
async def test_run_scenario_plays_on_the_given_exchange() -> None:
    paper = PaperExchange()

    await run_scenario(parse_scenario(SMALL, SOURCE), exchange=paper, source=SOURCE)

    assert [(sell.token_id, sell.shares, sell.status) for sell in paper.sells] == [
        ("A", Decimal("10"), SellStatus.FILLED),
        ("B", Decimal("10"), SellStatus.KILLED),
    ]
    assert paper.balance("A") == 0
    assert paper.balance("B") == Decimal("10")
    assert paper.balance("C") == Decimal("10")


@pytest.mark.anyio
async def test_run_scenario_reports_each_result_with_its_step() -> None:
    seen: list[tuple[int, str, ExitOutcome]] = []

    def on_result(step: Step, result: ExitResult) -> None:
        seen.append((step.line, result.key, result.outcome))

    await run_scenario(parse_scenario(SMALL, SOURCE), on_result=on_result, source=SOURCE)

    assert seen == [(5, "sold", ExitOutcome.CLOSED), (9, "killed", ExitOutcome.NOT_FILLED),
                    (13, "flaky", ExitOutcome.VERIFY_FAILED)]


@pytest.mark.anyio
async def test_run_scenario_engine_line_sets_the_retry_policy() -> None:
    text = (
        '{"op": "engine", "max_attempts": 2, "step_ticks": 1, "max_slippage": "0.02"}\n'
        '{"op": "balance", "token": "T", "shares": "10"}\n'
        '{"op": "bids", "token": "T", "bids": [["0.54", "100"]]}\n'
        '{"op": "track", "key": "p1", "token": "T", "shares": "10"}\n'
        '{"op": "exit", "key": "p1", "reason": "stop_loss", "limit_price": "0.55"}\n'
    )
    paper = PaperExchange()

    report = await run_scenario(parse_scenario(text, SOURCE), exchange=paper, source=SOURCE)

    (result,) = report.results
    assert result.outcome is ExitOutcome.CLOSED
    assert (result.attempts, result.limit_price) == (2, Decimal("0.54"))
    assert [(sell.limit_price, sell.status) for sell in paper.sells] == [
        (Decimal("0.55"), SellStatus.KILLED), (Decimal("0.54"), SellStatus.FILLED)]


@pytest.mark.anyio
async def test_run_scenario_copies_race_and_only_one_sells() -> None:
    text = PREFIX + '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n' \
                    '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55", "copies": 3}\n'
    paper = PaperExchange()

    report = await run_scenario(parse_scenario(text, SOURCE), exchange=paper, source=SOURCE)

    assert sorted(result.outcome for result in report.results) == sorted(
        [ExitOutcome.CLOSED, ExitOutcome.IN_PROGRESS, ExitOutcome.IN_PROGRESS])
    assert len(paper.sells) == 1
    assert report.final_states == {"p1": "CLOSED"}


@pytest.mark.anyio
async def test_run_scenario_lost_response_then_reconcile_closes() -> None:
    text = PREFIX + (
        '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n'
        '{"op": "fault", "fault": "lose_sell_response"}\n'
        '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55"}\n'
        '{"op": "reconcile", "key": "p1"}\n'
    )
    paper = PaperExchange()

    report = await run_scenario(parse_scenario(text, SOURCE), exchange=paper, source=SOURCE)

    assert [result.outcome for result in report.results] == [ExitOutcome.UNKNOWN, ExitOutcome.CLOSED]
    assert len(paper.sells) == 1
    assert report.final_states == {"p1": "CLOSED"}


@pytest.mark.anyio
async def test_run_scenario_bundled_demo_final_states() -> None:
    name, text = bundled_demo()

    report = await run_scenario(parse_scenario(text, name), source=name)

    assert report.final_states == {
        "normal": "CLOSED", "already-exited": "RECONCILED", "mismatch": "CLOSED", "race": "CLOSED",
        "dust": "DUST", "killed": "OPEN", "lost-response": "CLOSED",
    }


@pytest.mark.anyio
@pytest.mark.parametrize(("steps", "line", "field", "says", "sold", "held"), [
    pytest.param(
        '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n'
        '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55"}\n'
        '{"op": "exit", "key": "p1", "reason": "again", "limit_price": "0.55"}\n'
        '{"op": "balance", "token": "T", "shares": "99"}\n',  # line 8: never runs
        7, "key", "CLOSED", 1, "0", id="exit-of-a-closed-position"),
    pytest.param(
        '{"op": "market", "token": "T", "tick_size": "0.1"}\n'
        '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n'
        '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55"}\n',
        7, "limit_price", "0.55", 0, "10", id="limit-price-off-tick"),
    pytest.param(
        '{"op": "track", "key": "p2", "token": "T", "shares": "5"}\n',
        BAD_LINE, "key", "'p1'", 0, "10", id="tracking-a-held-token-again"),
])
async def test_step_refused_at_run_time_stops_the_run_naming_the_line(
        steps: str, line: int, field: str, says: str, sold: int, held: str) -> None:
    paper = PaperExchange()

    with pytest.raises(ScenarioError) as caught:
        await run_scenario(parse_scenario(PREFIX + steps, SOURCE), exchange=paper, source=SOURCE)

    assert_names(caught.value, line, field)
    assert says in str(caught.value)
    assert len(paper.sells) == sold
    assert paper.balance("T") == Decimal(held)


@pytest.mark.anyio
async def test_run_scenario_refusal_uses_the_default_source_name() -> None:
    text = PREFIX + '{"op": "track", "key": "p1", "token": "U", "shares": "5"}\n'

    with pytest.raises(ScenarioError) as caught:
        await run_scenario(parse_scenario(text, SOURCE))

    assert str(caught.value).startswith(f"<scenario>:{BAD_LINE}:")


# -- the command line ------------------------------------------------------------------------------


@pytest.fixture
def cli_logging() -> Iterator[None]:
    """`exitguard run` adds its log handler and turns exitguard's records on for the command only: after it,
    they are as they were (its handler is gone: nothing is left to log into a closed capture)."""
    before = records_enabled()
    yield
    assert records_enabled() == before


def table_rows(out: str) -> list[tuple[str, str, list[str]]]:
    """The per-exit rows of `exitguard run` (they start with the line number) as (position, outcome, words):
    the outcome is the first word after the position that names an ExitOutcome."""
    rows = []
    for line in out.splitlines():
        words = line.split()
        if words and words[0].isdigit():
            outcome = next(word for word in words[2:] if word in ExitOutcome.__members__)
            rows.append((words[1], outcome, words))
    return rows


def summary_rows(out: str) -> dict[str, list[str]]:
    lines = out.splitlines()
    start = lines.index("Summary") + 2
    rows: dict[str, list[str]] = {}
    for line in lines[start:]:
        if not line.strip():
            break
        fields = line.split()
        rows[fields[0]] = fields
    return rows


def test_cli_run_of_the_demo_exits_zero_and_shows_every_outcome(
        cli_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    out = capsys.readouterr().out

    assert "demo.jsonl" in out
    shown = {outcome for _, outcome, _ in table_rows(out)}
    assert shown >= {"CLOSED", "ALREADY_EXITED", "DUST", "NOT_FILLED", "IN_PROGRESS", "UNKNOWN"}


def test_cli_run_of_the_demo_shows_the_mismatch_sold_below_expected(
        cli_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    out = capsys.readouterr().out

    key, expected, verified, sold, residual, outcome, state = summary_rows(out)["mismatch"]
    assert (key, expected, verified, sold, residual) == ("mismatch", "10", "9.4735", "9.47", "0.0035")
    assert (outcome, state) == ("CLOSED", "CLOSED")
    mismatch_rows = [(outcome, words) for key, outcome, words in table_rows(out) if key == "mismatch"]
    assert [outcome for outcome, _ in mismatch_rows] == ["CLOSED"]
    assert "9.47" in mismatch_rows[0][1]


def test_cli_run_of_the_demo_prints_the_outcome_counts(
        cli_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 0
    out = capsys.readouterr().out

    counts = [line for line in out.splitlines() if line.startswith("outcomes: ")]
    assert len(counts) == 1
    for outcome in ("ALREADY_EXITED", "CLOSED", "DUST", "IN_PROGRESS", "NOT_FILLED", "UNKNOWN"):
        assert f"{outcome} " in counts[0]


@pytest.mark.parametrize(("text", "names"), [
    pytest.param(PREFIX + '{"op": "balance", "token": "T", "shares": "ten"}\n', [f"{{path}}:{BAD_LINE}:", "'shares'"],
                 id="bad-line"),
    pytest.param(None, ["{path}"], id="missing-file"),
])
def test_cli_run_of_an_unreadable_scenario_exits_two_with_nothing_on_stdout(
        cli_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str | None,
        names: list[str]) -> None:
    path = tmp_path / "scenario.jsonl"
    if text is not None:
        path.write_text(text, encoding="utf-8")

    assert main(["run", str(path)]) == 2
    captured = capsys.readouterr()

    for name in names:
        assert name.format(path=path) in captured.err
    assert captured.out == ""


def test_cli_run_refused_at_run_time_exits_two_naming_the_line(
        cli_logging: None, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "twice.jsonl"
    path.write_text(PREFIX + (
        '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n'
        '{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.55"}\n'
        '{"op": "exit", "key": "p1", "reason": "again", "limit_price": "0.55"}\n'
    ), encoding="utf-8")

    assert main(["run", str(path)]) == 2
    captured = capsys.readouterr()

    assert f"{path}:7:" in captured.err
    assert "'key'" in captured.err


def test_cli_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["--version"])

    assert caught.value.code == 0
    assert capsys.readouterr().out.strip() == f"exitguard {exitguard.__version__}"


def test_cli_without_a_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        main([])

    assert caught.value.code == 2
    assert "usage" in capsys.readouterr().err


@pytest.mark.anyio
async def test_a_scenario_can_close_a_market_and_its_exit_ends_market_closed() -> None:
    text = ('{"op": "balance", "token": "T", "shares": "10"}\n'
            '{"op": "bids", "token": "T", "bids": [["0.60", "100"]]}\n'
            '{"op": "track", "key": "p1", "token": "T", "shares": "10"}\n'
            '{"op": "fault", "fault": "close_market", "token": "T"}\n'
            '{"op": "exit", "key": "p1", "reason": "take_profit", "limit_price": "0.55"}\n')
    paper = PaperExchange()

    report = await run_scenario(parse_scenario(text, SOURCE), exchange=paper, source=SOURCE)

    assert [(r.key, r.outcome, r.state) for r in report.results] == [("p1", ExitOutcome.MARKET_CLOSED, "OPEN")]
    assert paper.sells == [] and paper.balance("T") == Decimal(10)


def test_a_close_market_fault_needs_its_token() -> None:
    assert_names(parse_error('{"op": "fault", "fault": "close_market"}'), BAD_LINE, "token")
