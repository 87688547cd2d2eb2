"""Issue 11, C.14 (and C.11 for scenario values and CLI flags): a scenario file that is not UTF-8, nested
absurdly deep, or full of huge exponents is a ScenarioError naming the line and the field; `exitguard run`
prints one line and exits 2. `exitguard exit` refuses absurd quantities naming the flag."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest

from exitguard.cli import exit as exit_command
from exitguard.cli.run import run_demo
from exitguard.cli.scenario import ScenarioError, load_scenario, parse_scenario

TRACK = '{"op": "track", "key": "p1", "token": "T", "shares": "10"}\n'


def run_file(path: Path) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_demo(path, json_logs=False, log_level="CRITICAL", out=out, progress=False, err=err)
    return code, out.getvalue(), err.getvalue()


def test_a_scenario_that_is_not_utf8_names_the_line_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(TRACK.encode() + '{"op": "exit", "key": "p1", "reason": "caf\xe9", "limit_price": "0.5"}\n'
                     .encode("latin-1"))

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert (caught.value.line, caught.value.field) == (2, "<line>")
    assert "UTF-8" in str(caught.value)

    code, out, err = run_file(path)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and f"{path}:2:" in err


@pytest.mark.parametrize("depth", [50, 100_000])
def test_a_scenario_nested_absurdly_deep_is_a_scenario_error_naming_the_line(tmp_path: Path, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    path = tmp_path / "deep.jsonl"
    path.write_text(TRACK + '{"op": "bids", "token": "T", "bids": ' + nested + "}\n", encoding="utf-8")

    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert caught.value.line == 2
    assert caught.value.field in ("bids", "<line>")
    assert "nested deeper" in str(caught.value)

    code, _, err = run_file(path)
    assert code == 2
    assert err.count("\n") == 1 and f"{path}:2:" in err


HUGE = [
    pytest.param('{"op": "balance", "token": "T", "shares": "1e999999"}', "shares", id="shares-exponent"),
    pytest.param('{"op": "balance", "token": "T", "shares": "1E+999999999999999999"}', "shares",
                 id="shares-exponent-past-decimal"),
    pytest.param('{"op": "balance", "token": "T", "shares": ' + "9" * 5000 + "}", "<line>", id="int-5000-digits"),
    pytest.param('{"op": "balance", "token": "T", "shares": ' + "9" * 4000 + "}", "shares", id="int-4000-digits"),
    pytest.param('{"op": "track", "key": "p2", "token": "U", "shares": "1e13"}', "shares", id="beyond-bound"),
    pytest.param('{"op": "bids", "token": "T", "bids": [["0.5", "1e999999"]]}', "bids[0].size", id="bid-size"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "1e999999"}', "limit_price",
                 id="limit-price"),
    pytest.param('{"op": "exit", "key": "p1", "reason": "r", "limit_price": "0.5", "copies": 1' + "0" * 100 + "}",
                 "copies", id="copies-10^100"),
    pytest.param('{"op": "fault", "fault": "latency", "seconds": 1e999}', "seconds", id="seconds-infinite"),
    pytest.param('{"op": "fault", "fault": "balance_lag", "token": "T", "delay": ' + "9" * 400 + "}", "delay",
                 id="delay-10^400"),
]


@pytest.mark.parametrize("line, field", HUGE)
def test_huge_exponents_in_a_scenario_are_a_scenario_error_naming_line_and_field(line: str, field: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(TRACK + line + "\n", "s.jsonl")

    assert (caught.value.line, caught.value.field) == (2, field)
    assert len(str(caught.value)) < 400  # a megabyte of digits does not come back as a megabyte of message


@pytest.mark.parametrize("line, field", HUGE[:2])
def test_exitguard_run_prints_one_line_and_exits_2_on_a_huge_exponent(tmp_path: Path, line: str, field: str) -> None:
    path = tmp_path / "huge.jsonl"
    path.write_text(TRACK + line + "\n", encoding="utf-8")

    code, out, err = run_file(path)

    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and f"{path}:2: field {field!r}" in err


@pytest.mark.parametrize("flag, value", [("--shares", "1e999999"), ("--shares", "1e13"), ("--shares", "1e-999999999"),
                                         ("--paper-balance", "1e999999"), ("--limit-price", "1e999999")])
def test_exitguard_exit_refuses_an_absurd_quantity_naming_the_flag_and_sends_nothing(flag: str, value: str) -> None:
    argv = {"--token": "tok", "--shares": "10", "--limit-price": "0.5", flag: value}
    parser = argparse.ArgumentParser()
    exit_command.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["exit", *[item for pair in argv.items() for item in pair], "--log-level", "CRITICAL"])
    out, err = io.StringIO(), io.StringIO()

    code = exit_command.run(args, out=out, err=err, environ={})

    assert code == 2
    assert out.getvalue() == ""
    assert err.getvalue().count("\n") == 1 and err.getvalue().startswith(f"exitguard exit: {flag}=")
