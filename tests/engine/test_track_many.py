"""Issue 14 section 3: `track_many` loads a book all or nothing, in one journal write, idempotent as `track`."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from exitguard import ExitEngine, InvalidValue, JournalError, ManualClock, Position, PositionConflict
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.pytest_plugin import capturing_events

pytestmark = pytest.mark.anyio

TEN = Decimal("10")


def book(n: int) -> list[Position]:
    return [Position(key=f"p{i}", token_id=f"t{i}", shares=TEN) for i in range(n)]


def engine_on(clock: ManualClock, journal: Path | None = None) -> ExitEngine:
    return ExitEngine(PaperExchange(clock=clock), journal=journal, clock=clock, settlement_poll_interval=None)


class FailingInsert:
    """The journal's connection, failing the transition row of one key as a full disk would."""

    def __init__(self, inner: sqlite3.Connection, key: str) -> None:
        self.inner, self.key = inner, key

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        if sql.startswith("INSERT INTO transitions") and params[0] == self.key:
            raise sqlite3.OperationalError("database or disk is full")
        return self.inner.execute(sql, params)

    @property
    def in_transaction(self) -> bool:
        return self.inner.in_transaction

    def close(self) -> None:
        self.inner.close()


async def test_a_journal_write_failing_halfway_tracks_none_of_them(clock: ManualClock, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "exits.journal"
    connect = sqlite3.connect

    def connecting(database: Any, *args: Any, **kwargs: Any) -> Any:
        db = connect(database, *args, **kwargs)
        return FailingInsert(db, "p2") if "mode=rwc" in str(database) else db

    monkeypatch.setattr(sqlite3, "connect", connecting)
    async with engine_on(clock, path) as engine:
        with pytest.raises(JournalError, match="disk is full"):
            engine.track_many(book(4))
        assert engine.states() == {}
    monkeypatch.setattr(sqlite3, "connect", connect)
    journal = Journal.open(path, readonly=True)
    try:
        assert journal.positions() == []
    finally:
        journal.close()


async def test_a_bad_position_in_the_middle_raises_naming_it_and_tracks_nothing(clock: ManualClock) -> None:
    async with engine_on(clock) as engine:
        positions: list[Any] = [*book(2), "p2", *book(4)[3:]]
        with pytest.raises(InvalidValue, match=r"positions\[2\]"):
            engine.track_many(positions)
        assert engine.states() == {}


async def test_a_conflict_anywhere_in_the_batch_tracks_nothing(clock: ManualClock) -> None:
    async with engine_on(clock) as engine:
        engine.track(Position(key="held", token_id="t3", shares=TEN))
        with pytest.raises(PositionConflict, match="key='p3'.*already held by live position 'held'"):
            engine.track_many(book(5))
        assert engine.states() == {"held": "OPEN"}
        twice = [*book(2), Position(key="again", token_id="t0", shares=TEN)]
        with pytest.raises(PositionConflict, match="key='again'.*held by live position 'p0'"):
            engine.track_many(twice)
        differing = [*book(2), Position(key="p1", token_id="t1", shares=Decimal("11"))]
        with pytest.raises(PositionConflict, match="key='p1'"):
            engine.track_many(differing)
        assert engine.states() == {"held": "OPEN"}


async def test_a_buy_in_the_future_is_named_with_its_index_and_key(clock: ManualClock) -> None:
    future = Position(key="late", token_id="tx", shares=TEN, last_buy_at=clock.wall() + timedelta(minutes=5))
    async with engine_on(clock) as engine:
        with pytest.raises(InvalidValue, match=r"positions\[1\]\.last_buy_at.*key='late'"):
            engine.track_many([*book(1), future])
        assert engine.states() == {}


async def test_it_is_idempotent_like_track_and_journals_in_one_write(clock: ManualClock, tmp_path: Path) -> None:
    path = tmp_path / "exits.journal"
    async with engine_on(clock, path) as engine:
        engine.track(Position(key="p0", token_id="t0", shares=TEN))
        assert engine.journal is not None
        writes = engine.journal.writes
        engine.track_many(book(50))
        assert engine.journal.writes == writes + 1
        engine.track_many(book(50))  # the bot loads the same book again: nothing changes, nothing is written
        engine.track_many([book(3)[2], book(3)[2]])
        assert engine.journal.writes == writes + 1
        assert engine.counts_by_state() == {"OPEN": 50}
    async with engine_on(clock, path) as engine:
        assert engine.states() == {f"p{i}": "OPEN" for i in range(50)}
        engine.track_many(book(50))  # re-tracked after the journal restored them: still nothing new
        assert engine.counts_by_state() == {"OPEN": 50}


async def test_each_new_position_is_logged_once_in_order_and_a_known_one_is_not(clock: ManualClock) -> None:
    async with engine_on(clock) as engine:
        engine.track(Position(key="p0", token_id="t0", shares=TEN))
        with capturing_events() as events:
            engine.track_many([*book(3), Position(key="p9", token_id="t9", shares=Decimal("0.5"))])
    assert [(r["key"], r["token"], r["shares"]) for r in events.named("position_tracked")] == [
        ("p1", "t1", TEN), ("p2", "t2", TEN), ("p9", "t9", Decimal("0.5"))]


async def test_an_untouched_position_is_open_everywhere_and_the_record_built_on_first_use_is_the_one_kept(
        clock: ManualClock) -> None:
    exchange = PaperExchange(clock=clock)
    exchange.set_balance("t1", Decimal("12"))
    exchange.set_bids("t1", [(Decimal("0.60"), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        engine.track_many(book(3))
        assert engine.states() == {"p0": "OPEN", "p1": "OPEN", "p2": "OPEN"}
        assert engine.counts_by_state() == {"OPEN": 3}
        assert engine.unresolved() == []
        engine.update("p1", shares=Decimal("12"))  # the first use: p1's record is built, and changed
        with pytest.raises(PositionConflict, match="shares tracked 12 but 10 now"):
            engine.track(Position(key="p1", token_id="t1", shares=TEN))
        result = await engine.exit("p1", reason="test", limit_price=Decimal("0.55"))
        assert result.shares_sold == Decimal("12")
        assert engine.states() == {"p0": "OPEN", "p1": "CLOSED", "p2": "OPEN"}
        assert engine.counts_by_state() == {"OPEN": 2, "CLOSED": 1}
        engine.track(Position(key="p2", token_id="t2", shares=TEN))  # as tracked: nothing changes
        with pytest.raises(PositionConflict, match="token_id=.t0. is already held by live position 'p0'"):
            engine.track(Position(key="p7", token_id="t0", shares=TEN))
