"""Disk full and I/O errors while journaling (issue 11 B.9), and damaged journals (C.15): a typed JournalError
naming the file, nothing sent on an intent that is not durable, and no position left in VERIFYING."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest

from exitguard import ExitEngine, ExitOutcome, JournalError, ManualClock, Position
from exitguard.cli.main import main as cli
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal

PRICE = Decimal("0.55")
FULL = "database or disk is full"

pytestmark = pytest.mark.anyio


class FailingConnection:
    """The engine's SQLite connection, failing the statements `fails(sql, params)` picks as a full disk would."""

    def __init__(self, inner: sqlite3.Connection, disk: Disk) -> None:
        self.inner = inner
        self.disk = disk

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if self.disk.fails(sql, params):
            raise self.disk.error
        return self.inner.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.inner.in_transaction

    def close(self) -> None:
        self.inner.close()


class Disk:
    """Which journal writes fail: by trigger (the transitions row's) or by statement."""

    def __init__(self) -> None:
        self.failing_triggers: set[str] = set()
        self.failing_statements: set[str] = set()
        self.error: sqlite3.Error = sqlite3.OperationalError(FULL)
        self.connections: list[FailingConnection] = []

    def fails(self, sql: str, params: tuple[Any, ...]) -> bool:
        if any(sql.startswith(statement) for statement in self.failing_statements):
            return True
        return sql.startswith("INSERT INTO transitions") and params[3] in self.failing_triggers


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    disk = Disk()
    connect = sqlite3.connect

    def connecting(database: Any, *args: Any, **kwargs: Any) -> Any:
        db = connect(database, *args, **kwargs)
        if "mode=rwc" not in str(database):
            return db  # read-only peeks and readers
        wrapped = FailingConnection(db, disk)
        disk.connections.append(wrapped)
        return wrapped

    monkeypatch.setattr(sqlite3, "connect", connecting)
    return disk


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def market(clock: ManualClock) -> PaperExchange:
    paper = PaperExchange(clock=clock)
    for token in ("t1", "t2"):
        paper.set_balance(token, Decimal("10"))
        paper.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    return paper


def engine_on(paper: PaperExchange, path: Path, clock: ManualClock) -> ExitEngine:
    return ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None)


def tracked(engine: ExitEngine) -> None:
    engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
    engine.track(Position(key="p2", token_id="t2", shares=Decimal("10")))


# -- B.9: an intent that is not durable is never acted on ------------------------------------------

@pytest.mark.parametrize("trigger", ["request_exit", "balance_fetched", "order_signed"])
async def test_a_failed_intent_write_sends_nothing_reopens_and_raises(disk: Disk, clock: ManualClock, path: Path,
                                                                      trigger: str) -> None:
    paper = market(clock)
    async with engine_on(paper, path, clock) as engine:
        tracked(engine)
        disk.failing_triggers.add(trigger)

        with pytest.raises(JournalError, match=FULL) as refused:
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        assert refused.value.path == str(path)
        assert engine.states() == {"p1": "OPEN", "p2": "OPEN"} and engine.unresolved() == []
        assert paper.sells == [] and engine.journal is not None and engine.journal.failed is None
        disk.failing_triggers.clear()  # the disk has room again: the same engine exits, the intent is durable
        assert (await engine.exit("p1", reason="take_profit", limit_price=PRICE)).outcome is ExitOutcome.CLOSED
    assert len(paper.sells) == 1


async def test_a_failed_outcome_write_fails_the_journal_until_a_restart(disk: Disk, clock: ManualClock,
                                                                        path: Path) -> None:
    paper = market(clock)
    async with engine_on(paper, path, clock) as engine:
        tracked(engine)
        disk.failing_triggers.add("sell_filled")

        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        assert result.outcome is ExitOutcome.CLOSED  # the truth, in memory; the journal still shows the order
        assert engine.journal is not None and FULL in (engine.journal.failed or "")
        with pytest.raises(JournalError, match="no new exit or track until the engine restarts"):
            await engine.exit("p2", reason="take_profit", limit_price=PRICE)
        with pytest.raises(JournalError, match="no new exit or track"):
            engine.track(Position(key="p3", token_id="t3", shares=Decimal("1")))
        assert engine.states() == {"p1": "CLOSED", "p2": "OPEN"}
    disk.failing_triggers.clear()
    async with engine_on(paper, path, clock) as engine:  # restarted on a healthy journal
        assert engine.recovery is not None and engine.recovery.resolving == ["p1"]  # its order is looked up
        assert (await engine.exit("p2", reason="take_profit", limit_price=PRICE)).outcome is ExitOutcome.CLOSED
    assert len(paper.sells) == 2  # p1 was never sold again


async def test_a_failed_track_write_is_refused_and_fails_the_journal(disk: Disk, clock: ManualClock,
                                                                     path: Path) -> None:
    paper = market(clock)
    async with engine_on(paper, path, clock) as engine:
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
        disk.failing_statements.add("INSERT INTO transitions")

        with pytest.raises(JournalError, match=FULL):
            engine.track(Position(key="p2", token_id="t2", shares=Decimal("10")))

        assert engine.states() == {"p1": "OPEN"}  # not tracked: the caller knows
        disk.failing_statements.clear()
        with pytest.raises(JournalError, match="a write failed earlier"):
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert engine.states() == {"p1": "OPEN"} and paper.sells == []


async def test_a_really_full_database_is_a_journal_error_naming_the_file(disk: Disk, clock: ManualClock,
                                                                         path: Path) -> None:
    async with engine_on(market(clock), path, clock) as engine:
        [db] = disk.connections
        pages = db.inner.execute("PRAGMA page_count").fetchone()[0]
        db.inner.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own SQLITE_FULL from here

        with pytest.raises(JournalError, match=f"journal {path}: write failed \\({FULL}\\)"):
            engine.track(Position(key="k" * 200_000, token_id="t1", shares=Decimal("10")))
        assert engine.states() == {}


async def test_a_damaged_page_at_the_first_write_is_a_journal_error(disk: Disk, clock: ManualClock,
                                                                    path: Path) -> None:
    paper = market(clock)
    async with engine_on(paper, path, clock) as engine:
        tracked(engine)
        disk.failing_statements.add("INSERT OR REPLACE INTO positions")
        disk.error = sqlite3.DatabaseError("database disk image is malformed")

        with pytest.raises(JournalError, match=f"journal {path}: .*malformed"):
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert engine.states() == {"p1": "OPEN", "p2": "OPEN"} and paper.sells == []


# -- C.15: damaged rows are the journal's errors, never a raw traceback -----------------------------

async def build_p1(path: Path) -> None:
    clock = ManualClock()
    async with engine_on(market(clock), path, clock) as engine:
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)


def journal_with_p1(path: Path) -> None:
    anyio.run(build_p1, path)


@pytest.mark.parametrize(("damage", "words"), [
    ("UPDATE positions SET token_id = X'00ff'", "token_id is bytes b'\\x00\\xff', not text"),
    ("UPDATE positions SET expected = '10 shares'", "expected is str"),
    ("UPDATE positions SET state = 'SOLD'", "'SOLD' is not a valid State"),
    ("UPDATE positions SET unresolved = 7", "unresolved is 7"),
    ("UPDATE positions SET permit = '{\"shares\": \"all\"}'", "unreadable row"),
    ("UPDATE positions SET verified_balance = 'lots'", "verified_balance is str"),
    ("UPDATE positions SET key = NULL", "key is NoneType"),
])
async def test_a_row_with_bad_values_is_a_journal_error_at_start(path: Path, clock: ManualClock, damage: str,
                                                                 words: str) -> None:
    await build_p1(path)
    with sqlite3.connect(path) as db:
        db.execute(damage)
    db.close()

    with pytest.raises(JournalError, match="unreadable row") as refused:
        async with engine_on(PaperExchange(clock=clock), path, clock):
            pass
    assert refused.value.path == str(path) and words in str(refused.value)


@pytest.mark.parametrize("payload", ["not json", "[1, 2]", "null"])
def test_a_transition_with_a_bad_payload_is_a_journal_error_in_history(path: Path, payload: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    journal_with_p1(path)
    with sqlite3.connect(path) as db:
        db.execute("UPDATE transitions SET payload = ? WHERE trigger = 'request_exit'", (payload,))
    db.close()

    with pytest.raises(JournalError, match=f"journal {path}: transition"):
        Journal.open(path, readonly=True).history("p1")
    assert cli(["history", "p1", "--journal", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"exitguard history: journal {path}: transition")


# -- C.15: status and history on a read-only filesystem --------------------------------------------

def read_only(target: Path) -> Callable[[], None]:
    """Read-only even for root (the immutable attribute; file modes do not stop root). Returns the undo."""
    if os.geteuid() != 0:
        mode = target.stat().st_mode
        target.chmod(0o555)
        return lambda: target.chmod(mode)
    done = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make {target} read-only for root here: {done.stderr.strip()}")
    return lambda: subprocess.run(["chattr", "-i", str(target)], check=True)


@pytest.fixture
def read_only_folder() -> Iterator[tuple[Path, list[Callable[[], None]]]]:
    folder = Path(tempfile.mkdtemp(prefix="exitguard ro #1?"))  # characters a naive file: URI misreads
    undo: list[Callable[[], None]] = []
    try:
        yield folder, undo
    finally:
        for step in reversed(undo):
            step()
        shutil.rmtree(folder)


def test_status_and_history_work_in_a_read_only_folder(read_only_folder: tuple[Path, list[Callable[[], None]]],
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    folder, undo = read_only_folder
    path = folder / "exits.journal"
    journal_with_p1(path)  # closed cleanly: no log, no index beside it
    undo.append(read_only(folder))

    assert cli(["status", "--journal", str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"journal {path}: 1 position(s): CLOSED 1")
    assert cli(["history", "p1", "--journal", str(path)]) == 0
    assert "now CLOSED" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["exits.journal"]


def test_status_reads_a_crashed_journal_in_a_read_only_folder(read_only_folder: tuple[Path, list[Callable[[], None]]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder, undo = read_only_folder
    path = folder / "exits.journal"
    script = (f"import os\nfrom datetime import UTC, datetime\nfrom exitguard.journal import Journal\n"
              f"from exitguard.states import PositionRecord\nj = Journal.open({str(path)!r})\n"
              f"j.track(PositionRecord('p1', 't1', 1_000_000), datetime(2026, 1, 1, tzinfo=UTC))\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    undo.append(read_only(folder))

    assert cli(["status", "--journal", str(path)]) == 0  # the log and its index are there: read through them
    assert "1 position(s): OPEN 1" in capsys.readouterr().out


def test_status_of_a_log_it_cannot_index_in_a_read_only_folder_says_what_to_do(
        read_only_folder: tuple[Path, list[Callable[[], None]]], capsys: pytest.CaptureFixture[str]) -> None:
    folder, undo = read_only_folder
    path = folder / "exits.journal"
    script = (f"import os\nfrom datetime import UTC, datetime\nfrom exitguard.journal import Journal\n"
              f"from exitguard.states import PositionRecord\nj = Journal.open({str(path)!r})\n"
              f"j.track(PositionRecord('p1', 't1', 1_000_000), datetime(2026, 1, 1, tzinfo=UTC))\nos._exit(0)\n")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    (folder / "exits.journal-shm").unlink()
    undo.append(read_only(folder))

    assert cli(["status", "--journal", str(path)]) == 2
    assert "copy the journal with its -wal and -shm files to a writable folder" in capsys.readouterr().err
