"""Issue 14 §1: one fsync per exit, none on the event loop. The intent (request, verified balance, order id) is one
commit made durable by one fsync of the log in a worker thread before the post; the permit's age is judged after
it; outcomes and tracks go without an fsync; the journal's checkpoints run in a thread of their own, and writes
made meanwhile wait in order. Counting SQLite's own fsyncs needs a VFS shim (bench/fsyncs.py): it runs in a
subprocess, so that the shim never touches this one."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import threading
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import anyio
import pytest

from exitguard import ExitEngine, ExitOutcome, JournalError, ManualClock, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal, durable
from exitguard.journal.wal import CHECKPOINT_EVERY
from exitguard.states import PositionRecord, State

pytestmark = pytest.mark.anyio

PRICE = Decimal("0.55")
BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def engine_on(exchange: PaperExchange, path: Path, clock: ManualClock, **options: object) -> ExitEngine:
    return ExitEngine(exchange, journal=path, clock=clock, settlement_poll_interval=None, **options)  # type: ignore[arg-type]


def test_no_fsync_runs_on_the_event_loop_and_each_exit_makes_one(tmp_path: Path) -> None:
    exits = CHECKPOINT_EVERY + 44  # past the journal's checkpoints, in each phase
    done = subprocess.run([sys.executable, str(BENCH / "journal.py"), "--exits", str(exits), "--fsyncs-json",
                           "--dir", str(tmp_path)], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    counts = json.loads(done.stdout)
    if "unavailable" in counts:
        pytest.skip(counts["unavailable"])
    for phase in ("tracks", "sequential", "track_many", "concurrent"):
        assert counts[phase]["on_loop"] == 0, (phase, counts)
    assert counts["tracks"]["intent"] == counts["track_many"]["intent"] == 0  # a track waits for no fsync
    assert counts["tracks"]["fsyncs"] <= 3 * (exits // CHECKPOINT_EVERY + 1)  # only checkpoints, in their thread
    assert counts["sequential"]["intent"] == exits  # one per exit, the checkpoints' share beside it
    assert counts["concurrent"]["fsyncs"] <= exits  # exits waiting together share one
    assert counts["states"] == {"CLOSED": 2 * exits}


async def test_the_intent_is_one_commit_fsynced_before_the_post(exchange: PaperExchange, clock: ManualClock,
                                                                path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flushes: list[int] = []
    flush = durable.flush_file

    def counted(fd: int) -> None:
        flushes.append(threading.get_ident())
        flush(fd)

    monkeypatch.setattr(durable, "flush_file", counted)
    posted: list[int] = []

    class Witness(PaperExchange):
        async def sell(self, permit, limit_price, **options):  # type: ignore[no-untyped-def]
            posted.append(len(flushes))
            return await super().sell(permit, limit_price, **options)

    witness = Witness(clock=clock)
    witness.set_balance("tok", Decimal("10"))
    witness.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    async with engine_on(witness, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        assert flushes == []  # a track waits for no fsync
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    assert result.outcome is ExitOutcome.CLOSED
    assert posted == [1] and len(flushes) == 1  # one fsync per exit, before the post, none for the fill
    assert threading.get_ident() not in flushes  # in a worker thread, not on the event loop
    journal = Journal.open(path, readonly=True)
    commits = [(t.seq, t.trigger) for t in journal.history("p1")]
    journal.close()
    # The request, the verified balance and the order id: consecutive rows of one commit.
    assert [trigger for _, trigger in commits] == ["track", "request_exit", "balance_fetched", "order_signed",
                                                   "sell_filled"]


async def test_a_permit_that_ages_during_the_intents_fsync_sends_nothing(exchange: PaperExchange, clock: ManualClock,
                                                                         path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    flush = durable.flush_file

    def slow_disk(fd: int) -> None:
        clock.advance(5.0)  # past permit_max_age (2 s by default) while the fsync runs
        flush(fd)

    monkeypatch.setattr(durable, "flush_file", slow_disk)
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert result.outcome is ExitOutcome.NOT_FILLED and "nothing sent" in (result.error or "")
        assert engine.states() == {"p1": "OPEN"}
    assert exchange.sells == []


async def test_a_failed_fsync_of_the_intent_sends_nothing_and_fails_the_journal(
        exchange: PaperExchange, clock: ManualClock, path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(durable, "flush_file", broken_disk)
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        with pytest.raises(JournalError, match="fsync of its write-ahead log failed"):
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert engine.states() == {"p1": "OPEN"} and engine.unresolved() == []
        assert engine.journal is not None and "fsync" in (engine.journal.failed or "")
    assert exchange.sells == []


def test_writes_made_while_a_checkpoint_holds_the_journal_wait_and_land_in_order(path: Path) -> None:
    journal = Journal.open(path)
    journal.offload()
    release = threading.Event()
    wall = datetime(2026, 1, 1, tzinfo=UTC)
    try:
        journal.durability.open_window(release.wait)  # a checkpoint that takes as long as the test says
        records = [PositionRecord(f"p{n}", f"t{n}", 1_000_000) for n in range(3)]
        tickets = [journal.track(record, wall) for record in records]
        assert journal.writes == 0  # deferred: the window holds the connection
        record = records[0]
        for trigger in ("request_exit", "balance_fetched"):
            journal.transition(record, record.state, trigger, {}, wall)
        release.set()
        journal.flush()
        assert tickets == sorted(tickets) and journal.writes == 5
        assert [p.key for p in journal.positions()] == ["p1", "p2", "p0"]
        assert [t.trigger for t in journal.history("p0")] == ["track", "request_exit", "balance_fetched"]
        assert journal.positions()[-1].state is State.OPEN
    finally:
        journal.close()


def test_a_deferred_intent_that_fails_is_its_waiters_error_and_not_the_journals(path: Path) -> None:
    journal = Journal.open(path)
    journal.offload()
    release = threading.Event()
    try:
        record = PositionRecord("p1", "t1", 1_000_000)
        journal.track(record, datetime(2026, 1, 1, tzinfo=UTC))
        journal.flush()
        journal.durability.open_window(release.wait)
        journal.readonly = True  # the write is refused when the window makes it
        ticket = journal.note_order(record, "o1", datetime(2026, 1, 1, tzinfo=UTC))
        release.set()
        with pytest.raises(JournalError, match="opened read-only"):
            anyio.run(journal.durable, ticket)
        assert journal.failed is None
    finally:
        journal.readonly = False
        journal.close()
