"""The `exitguard` program turns exitguard's records on for itself, and keeps them out of its tables:
WARNING and above on stderr by default, or everything from INFO into `--log-file` (issue 13, section 1)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from exitguard.cli.main import main
from exitguard.telemetry.logs import records_enabled

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} \| (\w+) +\| (\w+)")


def log_lines(text: str) -> list[tuple[str, str]]:
    """(level, event) of every log line in `text`."""
    return [(match[1], match[2]) for line in text.splitlines() if (match := LOG_LINE.match(line))]


def test_the_demo_prints_its_table_on_stdout_and_only_warnings_and_errors_on_stderr() -> None:
    # The program itself (console entry): loguru's default DEBUG handler must not print anything either.
    done = subprocess.run([sys.executable, "-m", "exitguard.cli.main", "run"], capture_output=True, text=True,
                          timeout=60)

    assert done.returncode == 0, done.stderr
    assert "Summary" in done.stdout and log_lines(done.stdout) == []
    logged = log_lines(done.stderr)
    assert len(logged) == len(done.stderr.splitlines())  # nothing but log lines there
    assert {level for level, _ in logged} <= {"WARNING", "ERROR"}
    assert ("ERROR", "exit_outcome_unknown") in logged


def test_log_file_takes_the_logs_from_info_and_leaves_stderr_and_the_table_alone(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"
    before = records_enabled()

    assert main(["run", "--log-file", str(log)]) == 0

    out, err = capsys.readouterr()
    assert err == ""
    assert "Summary" in out and log_lines(out) == []
    events = {event for _, event in log_lines(log.read_text(encoding="utf-8"))}
    assert {"exit_filled", "exit_balance_mismatch", "exit_outcome_unknown"} <= events
    assert "position_tracked" not in events  # DEBUG: below the file's default INFO
    assert records_enabled() == before  # in-process, main() leaves the caller's logging as it found it


def test_log_level_applies_to_the_log_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "run.log"

    assert main(["run", "--log-file", str(log), "--log-level", "debug"]) == 0

    assert capsys.readouterr().err == ""
    assert "position_tracked" in {event for _, event in log_lines(log.read_text(encoding="utf-8"))}


def test_an_unknown_log_level_is_bad_input(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--log-level", "loud"]) == 2

    out, err = capsys.readouterr()
    assert out == ""
    assert err.strip() == ("exitguard run: --log-level='LOUD': must be one of TRACE, DEBUG, INFO, SUCCESS, "
                           "WARNING, ERROR, CRITICAL")
