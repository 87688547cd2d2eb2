"""The write-ahead journal and restart recovery, in-process (the SIGKILL matrix is test_crash_recovery.py)."""

from __future__ import annotations

import itertools
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from exitguard import (
    DivergenceKind,
    ExitEngine,
    ExitOutcome,
    Fill,
    ManualClock,
    Position,
    PositionConflict,
    Settlement,
    SettlementStatus,
)
from exitguard.errors import JournalError, TransientError
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import SCHEMA_VERSION, Journal
from exitguard.journal import schema as journal_schema
from exitguard.states import MICRO, MarketRules, PositionRecord, SellPermit, State, assess_balance, fire, take_permit

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PRICE = Decimal("0.55")

pytestmark = pytest.mark.anyio


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


def crashed_in(path: Path, state: State, *, order_id: str | None = None, unresolved: bool = False) -> SellPermit | None:
    """Write a journal as an engine that died with position p1 in `state` would have left it."""
    journal = Journal.open(path)
    record = PositionRecord("p1", "tok", 10 * MICRO)
    journal.track(record, NOW)

    def step(trigger: str, **payload: object) -> None:
        source = record.state
        fire(record, trigger, **payload)
        journal.transition(record, source, trigger, payload, NOW)

    step("request_exit", reason="take_profit", limit_price=PRICE, attempt_id="a1")
    permit = None
    if state is State.SELLING:
        verdict = assess_balance(10 * MICRO, 10 * MICRO, MarketRules(), last_buy_at=None, now=NOW,
                                 settlement_window=timedelta(0))
        step("balance_fetched", verdict=verdict, verified_at=0.0)
        if order_id is not None:
            permit = take_permit(record)
            journal.note_order(record, order_id, NOW)
        if unresolved:
            step("sell_unknown", error="lost response")
    journal.close()
    return permit


ATTEMPTS = itertools.count(1)
"""Attempt ids stay unique across engines, as uuid4 ids are in production."""


def engine_on(exchange: PaperExchange, path: Path, clock: ManualClock) -> ExitEngine:
    return ExitEngine(exchange, journal=path, clock=clock, settlement_poll_interval=None,
                      attempt_ids=lambda: f"b{next(ATTEMPTS)}")


# -- writing ---------------------------------------------------------------------------------------

async def test_every_transition_is_journaled_with_its_payload(exchange: PaperExchange, clock: ManualClock,
                                                              path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    journal = Journal.open(path, readonly=True)
    trail = [(t.source, t.dest, t.trigger) for t in journal.history("p1")]
    assert trail == [(None, "OPEN", "track"), ("OPEN", "VERIFYING", "request_exit"),
                     ("VERIFYING", "SELLING", "balance_fetched"), ("SELLING", "SELLING", "order_signed"),
                     ("SELLING", "CLOSED", "sell_filled")]
    fetched = journal.history("p1")[2].payload
    assert fetched["verdict"] == {"actual": 10 * MICRO, "expected": 10 * MICRO, "kind": "sellable",
                                  "residual": 0, "sell": 10 * MICRO}
    assert journal.history("p1")[1].payload["limit_price"] == "0.55"  # exact, as text
    [position] = journal.positions()
    assert (position.state, position.sold, position.order_id) == (State.CLOSED, 10 * MICRO, None)


async def test_the_order_id_is_durable_before_the_order_is_posted(exchange: PaperExchange, clock: ManualClock,
                                                                  path: Path) -> None:
    seen: list[tuple[State, str | None]] = []

    class Witness(PaperExchange):
        async def sell(self, permit, limit_price, **options):  # type: ignore[no-untyped-def]
            # Another connection reads what is on disk at the moment of the post.
            [row] = Journal.open(path, readonly=True).positions()
            seen.append((row.state, row.order_id))
            return await super().sell(permit, limit_price, **options)

    witness = Witness(clock=clock)
    witness.set_balance("tok", Decimal("10"))
    witness.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    async with engine_on(witness, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    assert seen == [(State.SELLING, "paper-1")] and result.order_id == "paper-1"


async def test_forget_keeps_the_trail(exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        engine.forget("p1")
    journal = Journal.open(path, readonly=True)
    assert journal.positions() == [] and len(journal.history("p1")) == 5


# -- recovery --------------------------------------------------------------------------------------

async def test_positions_come_back_with_their_states(exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    exchange.set_balance("t2", Decimal("10"))
    exchange.set_bids("t2", [(Decimal("0.60"), Decimal("100"))])
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        engine.track(Position(key="p2", token_id="t2", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
    async with engine_on(exchange, path, clock) as engine:
        assert engine.states() == {"p1": "CLOSED", "p2": "OPEN"}
        result = await engine.exit("p2", reason="take_profit", limit_price=PRICE)
        assert result.outcome is ExitOutcome.CLOSED
        with pytest.raises(PositionConflict):
            engine.track(Position(key="p2", token_id="t2", shares=Decimal("1")))


async def test_verifying_comes_back_open_without_touching_the_exchange(exchange: PaperExchange, clock: ManualClock,
                                                                       path: Path, logs) -> None:  # noqa: ANN001
    crashed_in(path, State.VERIFYING)
    async with engine_on(exchange, path, clock) as engine:
        assert engine.state("p1") == "OPEN"
        assert engine.recovery is not None and engine.recovery.reopened == ["p1"]
        assert exchange.calls == []
    assert logs.named("recovery_summary")[0]["positions"] == 1


async def test_selling_without_an_order_id_was_never_posted(exchange: PaperExchange, clock: ManualClock,
                                                            path: Path) -> None:
    crashed_in(path, State.SELLING)
    async with engine_on(exchange, path, clock) as engine:
        assert engine.state("p1") == "OPEN" and exchange.calls == []
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert result.outcome is ExitOutcome.CLOSED and len(exchange.sells) == 1


async def test_a_post_that_reached_the_exchange_is_found_and_never_repeated(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    permit = crashed_in(path, State.SELLING, order_id="paper-1")
    assert permit is not None
    await exchange.sell(permit, PRICE)  # the post went out just before the process died
    async with engine_on(exchange, path, clock) as engine:
        # Recovery hands the possibly sent order to the background resolver (issue 11 B.10); one round of
        # lookups, asked for here, finds the fill.
        assert engine.recovery is not None and engine.recovery.resolving == ["p1"]
        assert {key: r.outcome for key, r in (await engine.resolve_unknowns()).items()} == {"p1": ExitOutcome.CLOSED}
        assert engine.state("p1") == "CLOSED"
        assert engine.divergence.by_kind[DivergenceKind.UNKNOWN_OUTCOME_RESOLVED] == 1
    assert len(exchange.sells) == 1 and exchange.balance("tok") == 0


async def test_a_post_that_never_arrived_reopens_after_the_lookup(exchange: PaperExchange, clock: ManualClock,
                                                                  path: Path) -> None:
    crashed_in(path, State.SELLING, order_id="paper-7")
    clock.advance(60)  # past the lookup horizon: an order that never showed can no longer arrive
    async with engine_on(exchange, path, clock) as engine:
        assert engine.recovery is not None and engine.recovery.resolving == ["p1"]
        assert exchange.calls == []  # recovery itself asks nothing: the lookups run in the background
        assert {key: r.outcome for key, r in (await engine.resolve_unknowns()).items()} == {
            "p1": ExitOutcome.NOT_FILLED}
        assert engine.state("p1") == "OPEN"
        assert [c.operation for c in exchange.calls][:1] == ["lookup_sell"]
        result = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert result.outcome is ExitOutcome.CLOSED
    assert len(exchange.sells) == 1


async def test_an_unresolved_outcome_whose_lookup_fails_stays_unknown_until_a_lookup_works(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    permit = crashed_in(path, State.SELLING, order_id="paper-1", unresolved=True)
    assert permit is not None
    await exchange.sell(permit, PRICE)
    exchange.fail_next("lookup_sell", error=TransientError("lookup down"))
    async with engine_on(exchange, path, clock) as engine:
        assert engine.state("p1") == "SELLING" and engine.unresolved() == ["p1"]
        assert engine.recovery is not None and engine.recovery.resolving == ["p1"]
        # exit() tries a lookup at once (issue 11 A.3): it fails, so the outcome is still unknown; nothing sent.
        still = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert (still.outcome, engine.state("p1")) == (ExitOutcome.UNKNOWN, "SELLING")
        settled = await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert (settled.outcome, engine.state("p1")) == (ExitOutcome.CLOSED, "CLOSED")
    assert len(exchange.sells) == 1


async def test_a_position_tracked_before_entering_must_match_the_journal(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    same = engine_on(exchange, path, clock)
    same.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    async with same:
        assert same.states() == {"p1": "OPEN"}
    other = engine_on(exchange, path, clock)
    other.track(Position(key="p1", token_id="tok", shares=Decimal("3")))
    with pytest.raises(PositionConflict, match="journaled"):
        async with other:
            pass
    async with engine_on(exchange, path, clock) as engine:  # the refused start released the lock
        assert engine.states() == {"p1": "OPEN"}


# -- one engine per journal ------------------------------------------------------------------------

async def test_a_second_engine_on_the_same_journal_fails_at_once(exchange: PaperExchange, clock: ManualClock,
                                                                 path: Path) -> None:
    async with engine_on(exchange, path, clock):
        with pytest.raises(JournalError, match="in use by another engine"):
            async with engine_on(exchange, path, clock):
                pass
    async with engine_on(exchange, path, clock):
        pass


# -- bad journals ----------------------------------------------------------------------------------

def foreign_database(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE customers (id INTEGER)")
    db.commit()
    db.close()


def newer_journal(path: Path) -> None:
    Journal.open(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.commit()
    db.close()


def garbage(path: Path) -> None:
    path.write_bytes(b"not a database, just bytes " * 200)


def truncated_journal(path: Path) -> None:
    Journal.open(path).close()
    data = path.read_bytes()
    path.write_bytes(data[:100] + b"\x00" * 50 + data[150:])


@pytest.mark.parametrize(("make", "words"), [
    (garbage, "not a readable SQLite journal"),
    (foreign_database, "not an exitguard journal"),
    (newer_journal, "newer than this exitguard understands"),
    (truncated_journal, "journal"),
])
async def test_bad_journals_are_refused_at_start_and_left_untouched(
        exchange: PaperExchange, clock: ManualClock, path: Path, make, words: str) -> None:  # noqa: ANN001
    make(path)
    before = path.read_bytes()
    with pytest.raises(JournalError, match=words) as caught:
        async with engine_on(exchange, path, clock):
            pass
    assert str(path) in str(caught.value)
    assert path.read_bytes() == before and exchange.calls == []


async def test_a_journal_in_a_missing_folder_or_on_a_folder_is_refused(exchange: PaperExchange, clock: ManualClock,
                                                                       tmp_path: Path) -> None:
    for bad in (tmp_path / "missing" / "j.db", tmp_path):
        with pytest.raises(JournalError, match=str(bad)):
            async with engine_on(exchange, bad, clock):
                pass


async def test_an_older_schema_is_migrated_in_place(exchange: PaperExchange, clock: ManualClock, path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    monkeypatch.setattr(journal_schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(journal_schema.MIGRATIONS, SCHEMA_VERSION + 1,
                        ["ALTER TABLE positions ADD COLUMN note TEXT"])
    async with engine_on(exchange, path, clock) as engine:
        assert engine.states() == {"p1": "OPEN"}
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
    assert "note" in [row[1] for row in db.execute("PRAGMA table_info(positions)")]


async def test_a_version_1_journal_is_migrated_and_keeps_its_positions(exchange: PaperExchange, clock: ManualClock,
                                                                       path: Path) -> None:
    db = sqlite3.connect(path)
    for statement in journal_schema.MIGRATIONS[1]:
        db.execute(statement)
    db.execute("INSERT INTO positions (key, token_id, expected, state, attempts, sold, residual, unresolved, seq) "
               "VALUES ('p1', 'tok', 10000000, 'OPEN', 0, 0, 0, 0, 1)")
    db.execute(f"PRAGMA application_id = {journal_schema.APPLICATION_ID}")
    db.execute("PRAGMA user_version = 1")
    db.commit()
    db.close()
    async with engine_on(exchange, path, clock) as engine:
        assert engine.states() == {"p1": "OPEN"}
        assert (await engine.exit("p1", reason="take_profit", limit_price=PRICE)).outcome is ExitOutcome.CLOSED
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


async def test_a_sale_still_settling_is_followed_after_a_restart(clock: ManualClock, path: Path) -> None:
    class Settling(PaperExchange):
        status = SettlementStatus.PENDING

        async def sell(self, permit, limit_price, **options):  # type: ignore[no-untyped-def]
            fill = await super().sell(permit, limit_price, **options)
            return Fill(fill.shares, fill.avg_price, fill.order_id, trade_ids=("trade-1",))

        async def settlement(self, fill: Fill) -> Settlement:
            return Settlement(self.status, returned_shares=fill.shares if self.status is SettlementStatus.FAILED
                              else 0)

    exchange = Settling(clock=clock)
    exchange.set_balance("tok", Decimal("10"))
    exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=PRICE)
        assert engine.unsettled() == ["p1"]
    exchange.status = SettlementStatus.FAILED
    async with engine_on(exchange, path, clock) as engine:
        assert engine.unsettled() == ["p1"]
        assert await engine.check_settlements() == {"p1": SettlementStatus.FAILED}
        assert engine.states() == {"p1": "CLOSED", "p1~returned-1": "OPEN"}
    async with engine_on(exchange, path, clock) as engine:
        assert engine.unsettled() == [] and engine.state("p1~returned-1") == "OPEN"
    trail = [t.trigger for t in Journal.open(path, readonly=True).history("p1")]
    assert trail[-2:] == ["settlement_pending", "failed"]


def _make_read_only(target: Path) -> Callable[[], None]:
    """Read-only even for root: the immutable attribute when running as root (file modes do not stop
    root), file modes otherwise. Returns the undo."""
    if os.geteuid() != 0:
        mode = target.stat().st_mode
        target.chmod(0o555 if target.is_dir() else 0o444)
        return lambda: target.chmod(mode)
    done = subprocess.run(["chattr", "+i", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make {target} read-only for root here: {done.stderr.strip()}")
    return lambda: subprocess.run(["chattr", "-i", str(target)], check=True)


@pytest.mark.parametrize("read_only", ["file", "folder"])
async def test_a_read_only_journal_is_refused_at_start_and_left_untouched(
        exchange: PaperExchange, clock: ManualClock, read_only: str) -> None:
    folder = Path(tempfile.mkdtemp(prefix="exitguard-ro-"))
    path = folder / "exits.journal"
    undo: list[Callable[[], None]] = []
    try:
        async with engine_on(exchange, path, clock) as engine:
            engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        assert not (folder / "exits.journal.lock").exists()  # the lock is on the journal file itself
        before = path.read_bytes()
        undo.append(_make_read_only(path if read_only == "file" else folder))
        with pytest.raises(JournalError) as caught:
            async with engine_on(exchange, path, clock):
                pass
        assert str(path) in str(caught.value)
        assert "cannot write" in str(caught.value) or "cannot create the lock file" in str(caught.value)
        assert path.read_bytes() == before and exchange.calls == []
    finally:
        for step in undo:
            step()
        shutil.rmtree(folder)


async def test_a_refused_start_leaves_the_positions_tracked_before_it(exchange: PaperExchange, clock: ManualClock,
                                                                      path: Path) -> None:
    async with engine_on(exchange, path, clock) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
    other = engine_on(exchange, path, clock)
    other.track(Position(key="p1", token_id="tok", shares=Decimal("3")))
    other.track(Position(key="p2", token_id="t2", shares=Decimal("4")))
    with pytest.raises(PositionConflict):
        async with other:
            pass
    assert other.states() == {"p1": "OPEN", "p2": "OPEN"}
    assert other.journal is None


async def test_a_lookup_that_breaks_during_recovery_leaves_the_outcome_unknown_and_releases_the_journal(
        exchange: PaperExchange, clock: ManualClock, path: Path) -> None:
    crashed_in(path, State.SELLING, order_id="paper-9")

    class Broken(PaperExchange):
        async def lookup_sell(self, permit, order_id=None):  # type: ignore[no-untyped-def]
            raise RuntimeError("adapter bug")

    # Recovery no longer waits for lookups (issue 11 B.10): the engine starts, and a lookup that raises
    # proves nothing, so the outcome stays unknown instead of escaping from exit().
    async with engine_on(Broken(clock=clock), path, clock) as broken:
        assert (await broken.exit("p1", reason="tp", limit_price=PRICE)).outcome is ExitOutcome.UNKNOWN
        assert broken.state("p1") == "SELLING"
    clock.advance(60)  # past the lookup horizon
    async with engine_on(exchange, path, clock) as engine:  # the lock was released
        await engine.resolve_unknowns()
        assert engine.state("p1") == "OPEN"
