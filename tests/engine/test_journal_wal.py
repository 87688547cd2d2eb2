"""A lost or cut write-ahead log is detected at the next start, never silently lost (issue 11 B.8).

The "crash" is a process that writes through the journal and ends with `os._exit`: nothing closes the
journal, as after SIGKILL (every commit is in the log file when it returns, fsync'd or not).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import ExitEngine, ManualClock, Position
from exitguard.errors import JournalError
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.journal.wal import CHECKPOINT_EVERY, WAL_HEADER, accept_lost_log, log_path
from exitguard.journal.wal import main as wal_main

pytestmark = pytest.mark.anyio


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def crash_after_tracking(path: Path, count: int, *, first: int = 1) -> None:
    """A process tracks positions p<first> .. through the journal, then dies without closing it."""
    script = f"""
import os
from datetime import UTC, datetime
from exitguard.journal import Journal
from exitguard.states import PositionRecord
journal = Journal.open({str(path)!r})
for n in range({first}, {first + count}):
    journal.track(PositionRecord(f"p{{n}}", f"t{{n}}", 1_000_000), datetime(2026, 1, 1, tzinfo=UTC))
os._exit(0)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def keys(path: Path) -> list[str]:
    journal = Journal.open(path)
    try:
        return [p.key for p in journal.positions()]
    finally:
        journal.close()


def engine_on(path: Path, clock: ManualClock) -> ExitEngine:
    return ExitEngine(PaperExchange(clock=clock), journal=path, clock=clock, settlement_poll_interval=None)


def test_an_intact_log_after_a_crash_brings_every_position_back(path: Path) -> None:
    crash_after_tracking(path, 3)
    assert log_path(path).stat().st_size > WAL_HEADER  # the log holds what the main file does not

    assert keys(path) == ["p1", "p2", "p3"]


async def test_a_deleted_log_after_a_crash_refuses_the_start_and_changes_nothing(path: Path,
                                                                               clock: ManualClock) -> None:
    crash_after_tracking(path, 3)
    log_path(path).unlink()  # "a stray file": the tracks it held are gone
    before = path.read_bytes()

    with pytest.raises(JournalError, match="did not close it cleanly and its write-ahead log .* is missing") as refused:
        async with engine_on(path, clock):
            pass

    assert refused.value.path == str(path)
    assert path.read_bytes() == before


async def test_an_emptied_log_after_a_crash_refuses_the_start(path: Path, clock: ManualClock) -> None:
    crash_after_tracking(path, 3)
    log_path(path).write_bytes(b"")  # `: > exits.journal-wal`

    with pytest.raises(JournalError, match=r"write-ahead log .* is empty \(0 bytes\)"):
        async with engine_on(path, clock):
            pass


def test_a_log_cut_below_the_length_it_had_reached_refuses_the_start(path: Path) -> None:
    crash_after_tracking(path, CHECKPOINT_EVERY + 20)  # past one of the journal's own checkpoints: a floor
    size = log_path(path).stat().st_size
    with open(log_path(path), "r+b") as log:
        log.truncate(size // 2)

    with pytest.raises(JournalError, match=rf"truncated \({size // 2} bytes; it had reached \d+\)"):
        Journal.open(path)


def test_a_crash_right_after_the_journals_own_checkpoint_is_not_taken_for_a_lost_log(path: Path) -> None:
    # The open mark is one commit: the last track is the checkpoint's, and nothing follows it.
    crash_after_tracking(path, CHECKPOINT_EVERY - 1)

    assert len(keys(path)) == CHECKPOINT_EVERY - 1


def test_crashes_again_and_again_keep_every_position(path: Path) -> None:
    for round_ in range(3):
        crash_after_tracking(path, CHECKPOINT_EVERY // 2 + 7, first=round_ * 1000)
    assert len(keys(path)) == 3 * (CHECKPOINT_EVERY // 2 + 7)


async def test_a_clean_stop_leaves_no_log_and_starts_without_one(path: Path, clock: ManualClock) -> None:
    async with engine_on(path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("1")))
    assert not log_path(path).exists()

    async with engine_on(path, clock) as engine:
        assert engine.states() == {"p1": "OPEN"}


def test_a_journal_dropped_unclosed_is_closed_cleanly_not_left_to_sqlite(path: Path) -> None:
    # SQLite's own close of the last connection checkpoints and removes the log; with the file still marked
    # unclean, the next start would be refused for a log that was lost by nobody.
    script = f"""
from datetime import UTC, datetime
from exitguard.journal import Journal
from exitguard.states import PositionRecord
journal = Journal.open({str(path)!r})
journal.track(PositionRecord("p1", "t1", 1_000_000), datetime(2026, 1, 1, tzinfo=UTC))
"""  # the interpreter ends with the journal open
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr

    assert keys(path) == ["p1"]


def test_the_operator_may_start_from_the_main_file_after_checking_the_exchange(path: Path) -> None:
    crash_after_tracking(path, 3)
    log_path(path).unlink()
    with pytest.raises(JournalError, match="accept-lost-log"):
        Journal.open(path)

    assert wal_main(["--accept-lost-log", str(path)]) == 0

    assert keys(path) == []  # what the lost log held is not coming back; the journal opens again
    accept_lost_log(path)  # harmless on a clean journal


def test_an_open_mark_is_in_the_main_file_while_the_engine_runs(path: Path) -> None:
    journal = Journal.open(path)
    try:
        # The main file alone (no log: immutable read) already says "unclean", with the holder's pid.
        db = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
        assert db.execute("SELECT clean, holder_pid FROM journal_state").fetchone() == (0, os.getpid())
        db.close()
    finally:
        journal.close()
    db = sqlite3.connect(f"{path.as_uri()}?immutable=1", uri=True)
    assert db.execute("SELECT clean, holder_pid FROM journal_state").fetchone() == (1, None)
    db.close()
