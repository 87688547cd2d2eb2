"""The write-ahead journal: every transition of every position, in the log before the engine acts on it.

SQLite in WAL mode with `synchronous=NORMAL`: a commit is in the log file when `commit` returns (a killed process
loses nothing) and durable once an fsync of the log has followed it; journal/durable.py makes that fsync off the
event loop, and the engine waits for it before an order is posted, so the intent (the SELLING row with its permit
and order id) is on disk before the order it describes exists. Two tables: `transitions`, append-only (the audit
trail), and `positions`, the current state (what recovery reads). Both change in one commit per write. A lost or cut
log is detected at the next start (wal.py).

Every SQLite error, at open, read or write, leaves as a JournalError naming the file: a damaged journal
is never a raw `sqlite3` traceback. A write that fails raises and changes nothing; the engine's position
book decides what that means for the position (book.py) and may mark the journal `failed`."""

from __future__ import annotations

import os
import sqlite3
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from exitguard.errors import JournalError
from exitguard.exchange.port import Fill
from exitguard.journal.connection import (
    Closer,
    close_keeping_log,
    holder_pid,
    peek_state,
    rollback,
    try_connect,
    uri,
)
from exitguard.journal.durable import LogSync
from exitguard.journal.lock import FileUse, JournalLock
from exitguard.journal.rows import (
    POSITION_COLUMNS,
    JournaledPosition,
    JournaledTransition,
    Row,
    insert_rows,
    order_row,
    position_of,
    transition_of,
)
from exitguard.journal.schema import check_schema
from exitguard.journal.wal import BUSY_TIMEOUT_MS, CHECKPOINT_EVERY, WAL_HEADER, check_log, log_path, log_size
from exitguard.states import PositionRecord, State

__all__ = ["Journal", "JournaledPosition", "JournaledTransition"]

EPOCH = "1970-01-01T00:00:00+00:00"
"""An audit's start when nothing tells when the last engine wrote: the exchange's whole history."""


class Journal:
    """One open journal. `Journal.open(path)` takes the engine lock; `readonly=True` does not (status)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, use: FileUse, *, readonly: bool) -> None:
        self.path = path
        self._db = connection
        self.readonly = readonly
        self.writes = 0
        self.audit_since: str | None = None
        """After an unclean stop, until an audit against the exchange passes (journal/audit.py): when the newest
        write that survived the stop was made (ISO text, as written); None when no audit is pending."""
        self._since_checkpoint = 0
        self._offloaded = False
        self.durability = LogSync(path, log_path(path), self.mark_failed)
        """Tickets of the writes and the fsyncs that make them durable (journal/durable.py)."""
        self._closer = Closer(path, connection, use, self.durability, readonly=readonly)
        # A journal dropped unclosed (a script that never closes it, an interpreter exit) closes as `close`
        # does: left to SQLite, the connection's end would checkpoint and remove the log of an unclean file.
        self._finalizer = weakref.finalize(self, self._closer.close)

    @property
    def failed(self) -> str | None:
        """Why the journal stopped taking writes (a track or outcome write failed); None while healthy."""
        return self._closer.failed

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False) -> Journal:
        path = Path(path)
        try:
            if readonly:
                return cls._open_readonly(path)
            if path.exists() and not path.is_file():
                raise JournalError(path, "is not a file")
            if not path.parent.is_dir():
                raise JournalError(path, f"folder {path.parent} does not exist")
        except OSError as err:
            raise JournalError(path, f"cannot be reached ({err.strerror})") from None
        lock = JournalLock.acquire(path, lambda: holder_pid(path))
        try:
            # The log is measured before any connection opens it: SQLite creates a missing one.
            size = log_size(path)
            state = peek_state(path)
            if state is not None:
                check_log(path, *state, size)
            db = cls._connect(path, uri(path, mode="rwc"))
            try:
                check_schema(path, db, writable=True)
                journal = cls(path, db, lock, readonly=False)
                journal._mark_open()
            except BaseException:
                close_keeping_log(path, db)
                raise
        except BaseException:
            lock.release()
            raise
        return journal

    @classmethod
    def _open_readonly(cls, path: Path) -> Journal:
        if not path.exists():
            raise JournalError(path, "no such file")
        use = FileUse.reading(path)
        try:
            try:
                db = try_connect(uri(path, mode="ro"))
            except sqlite3.OperationalError as err:
                if err.sqlite_errorname != "SQLITE_CANTOPEN":
                    raise JournalError(path, f"not a readable SQLite journal ({err})") from None
                size = log_size(path)
                if size is not None and size >= WAL_HEADER:
                    raise JournalError(path, "cannot be read here: its write-ahead log needs an index (-shm) "
                                             "beside it and the folder is read-only; copy the journal with its "
                                             "-wal and -shm files to a writable folder") from None
                # No log to miss: a read-only folder or medium is read as immutable.
                db = cls._connect(path, uri(path, mode="ro", immutable="1"))
            except sqlite3.Error as err:
                raise JournalError(path, f"not a readable SQLite journal ({err})") from None
            try:
                check_schema(path, db, writable=False)
            except BaseException:
                db.close()
                raise
        except BaseException:
            use.release()
            raise
        return cls(path, db, use, readonly=True)

    @staticmethod
    def _connect(path: Path, address: str) -> sqlite3.Connection:
        try:
            return try_connect(address)
        except sqlite3.OperationalError as err:
            if err.sqlite_errorname == "SQLITE_CANTOPEN" and "mode=rwc" in address:
                raise JournalError(path, f"cannot write: SQLite cannot open it or create its -wal and -shm files "
                                         f"beside it ({err}); is the file or its folder read-only?") from None
            raise JournalError(path, f"not a readable SQLite journal ({err})") from None
        except sqlite3.Error as err:
            raise JournalError(path, f"not a readable SQLite journal ({err})") from None

    def _mark_open(self) -> None:
        """Make the main file say "unclean" (wal.py) and prove the file writable now, not at the first sell."""
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            # No fsync at a commit: one fsync of the log makes every commit before it durable (journal/durable.py).
            self._db.execute("PRAGMA synchronous = NORMAL")
            # macOS's fsync leaves the data in the drive's cache; F_FULLFSYNC flushes it. A no-op elsewhere.
            self._db.execute("PRAGMA fullfsync = ON")
            self._db.execute("PRAGMA checkpoint_fullfsync = ON")
            self._db.execute("PRAGMA wal_autocheckpoint = 0")  # the journal checkpoints itself (wal.py)
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self._db.execute("BEGIN IMMEDIATE")
            # An unclean stop may have lost writes no check of the log can see; the audit looks for them on the
            # exchange from the newest write that survived. Kept until an audit passes, so that a start refused
            # after this (by the audit or anything else) never moves it past what the lost writes may hold.
            self._db.execute(f"UPDATE journal_state SET audit_since = COALESCE(audit_since, (SELECT wall_time FROM "
                             f"transitions ORDER BY seq DESC LIMIT 1), opened_at, '{EPOCH}') WHERE clean = 0")
            self.audit_since = self._db.execute("SELECT audit_since FROM journal_state").fetchone()[0]
            self._db.execute("UPDATE journal_state SET clean = 0, wal_floor = ?, holder_pid = ?, opened_at = ?",
                             (log_size(self.path) or 0, os.getpid(), datetime.now().astimezone().isoformat()))
            self._db.execute("COMMIT")
            busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        except sqlite3.Error as err:
            rollback(self._db)
            raise JournalError(self.path, f"cannot write ({err}); nothing was changed") from None
        if busy or frames != copied:
            raise JournalError(self.path, f"a reader kept the journal busy for {BUSY_TIMEOUT_MS / 1000:g}s: the "
                                          "open mark could not reach the main file; try again")
        try:
            # The log restarts at the first commit after a complete checkpoint, and fsyncs its new header then: here,
            # at the open, rather than at the engine's first write on its event loop (journal/durable.py).
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("UPDATE journal_state SET log_restarts = log_restarts + 1")
            self._db.execute("COMMIT")
        except sqlite3.Error as err:
            rollback(self._db)
            raise JournalError(self.path, f"cannot write ({err}); nothing was changed") from None

    def close(self) -> None:
        """A healthy engine journal is marked clean and its log emptied; any other closes as it stands."""
        self._finalizer()

    def mark_failed(self, why: str) -> None:
        """No write is taken any more: the engine refuses new exits until restarted on a healthy journal."""
        if self._closer.failed is None:
            self._closer.failed = why

    def audit_passed(self) -> None:
        """The exchange showed no sale of ours that the journal does not know (journal/audit.py): none is pending."""
        self._submit(lambda: self._db.execute("UPDATE journal_state SET audit_since = NULL"))
        self.audit_since = None

    # -- writing -----------------------------------------------------------------------------------
    # Every write is one commit without an fsync (journal/durable.py): in the log file when it returns, durable once
    # `flush` or `durable` returns for its ticket. Each returns that ticket.

    def track(self, record: PositionRecord, wall_time: datetime) -> int:
        return self.track_many((record,), wall_time)

    def track_many(self, records: Sequence[PositionRecord], wall_time: datetime) -> int:
        """Tracks in one commit (`ExitEngine.track_many`): all of them are written, or none is."""
        def write() -> None:
            for record in records:
                insert_rows(self._db, record, [(None, record.state, "track", {
                    "expected": record.expected, "last_buy_at": record.last_buy_at}, wall_time)],
                    order_id=None, unsettled=None)
        return self._submit(write, key=records[0].key if records else "", trigger="track")

    def transition(self, record: PositionRecord, source: State, trigger: str, payload: dict[str, object],
                   wall_time: datetime, *, order_id: str | None = None) -> int:
        """`order_id`: the order signed for the attempt in flight, while SELLING (the caller keeps it)."""
        return self.append(record, [(source, record.state, trigger, payload, wall_time)], order_id=order_id)

    def note_order(self, record: PositionRecord, order_id: str, wall_time: datetime) -> int:
        """The order about to be posted for the attempt in flight: durable (`durable`/`flush`) before the post."""
        return self.append(record, [order_row(record, order_id, wall_time)], order_id=order_id)

    def append(self, record: PositionRecord, rows: Sequence[Row], *, order_id: str | None = None,
               unsettled: Fill | None = None) -> int:
        """Transitions of one position in one commit, then its current row. `order_id` is kept while SELLING."""
        order_id = order_id if record.state is State.SELLING else None
        return self._submit(lambda: insert_rows(self._db, record, rows, order_id=order_id, unsettled=unsettled),
                            key=record.key, token=record.token_id, trigger=rows[-1][2])

    def note_update(self, record: PositionRecord, previous_expected: int, wall_time: datetime) -> int:
        """An OPEN position's shares or last buy changed (`ExitEngine.update`): a row of the trail, not a transition."""
        return self.append(record, [(record.state, record.state, "position_updated", {
            "expected": record.expected, "previous_expected": previous_expected,
            "last_buy_at": record.last_buy_at}, wall_time)])

    def note_settlement(self, record: PositionRecord, fill: Fill | None, event: str, wall_time: datetime) -> int:
        """A fill to follow on chain (`fill`), or the end of following it (`fill=None`, event settled/failed)."""
        return self.append(record, [(record.state, record.state, event, {
            "order_id": None if fill is None else fill.order_id,
            "trade_ids": [] if fill is None else list(fill.trade_ids)}, wall_time)], unsettled=fill)

    def forget(self, key: str) -> int:
        return self._submit(lambda: self._db.execute("DELETE FROM positions WHERE key = ?", (key,)), key=key,
                            trigger="forget")

    async def durable(self, ticket: int) -> None:
        """Return once the write `ticket` and every one before it are on disk: one fsync of the log, in a worker
        thread, shared by everyone waiting. Raises JournalError when it could not be made (or, written in a
        checkpoint's window, the write itself failed)."""
        await self.durability.durable(ticket)

    def flush(self) -> None:
        """Blocking: every write so far is on disk when this returns (for scripts and tests; the engine awaits
        `durable`)."""
        self.durability.sync()

    def quiesce(self) -> None:
        """Blocking: a checkpoint running in its own thread now has ended when this returns (measurements, tests)."""
        self.durability.quiesce()

    @property
    def fsyncs(self) -> int:
        """fsyncs of the log the journal made itself (SQLite's own, at checkpoints, are not counted here)."""
        return self.durability.fsyncs

    def offload(self) -> None:
        """The engine owns the journal from here: its checkpoints run in a thread of their own (journal/durable.py),
        so that no fsync of SQLite's runs on the event loop."""
        self._offloaded = True

    def _submit(self, statements: Callable[[], object], *, key: str = "", token: str = "", trigger: str = "") -> int:
        def write() -> None:
            with self._transaction():
                statements()
            self.writes += 1
        ticket = self.durability.submit(write, key=key, token=token, trigger=trigger)
        if self._offloaded and self._since_checkpoint >= CHECKPOINT_EVERY:
            self.durability.open_window(self._checkpoint)
        return ticket

    def _checkpoint(self) -> None:
        """In a window (journal/durable.py): the floor, the checkpoint, and the commit that restarts the log."""
        self._since_checkpoint = 0
        try:
            with self._transaction(floor=True):
                pass
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            with self._transaction():
                self._db.execute("UPDATE journal_state SET log_restarts = log_restarts + 1")
        except (sqlite3.Error, JournalError):
            pass  # every commit is in the log; copying them into the main file can wait for the next window

    @contextmanager
    def _transaction(self, *, floor: bool = False) -> Iterator[None]:
        """One commit. Any failure rolls it back and raises JournalError: nothing was written."""
        if self.readonly:
            raise JournalError(self.path, "opened read-only")
        if self.failed is not None:
            raise JournalError(self.path, f"failed earlier ({self.failed}); restart the engine on a healthy journal")
        checkpoint = floor or (not self._offloaded and self._since_checkpoint + 1 >= CHECKPOINT_EVERY)
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield
            if checkpoint:
                # The floor travels into the main file with the checkpoint that follows (wal.py).
                self._db.execute("UPDATE journal_state SET wal_floor = ?", (log_size(self.path) or 0,))
            self._db.execute("COMMIT")
        except (sqlite3.Error, OSError) as err:
            rollback(self._db)
            raise JournalError(self.path, f"write failed ({err}); nothing was written") from None
        except BaseException:
            rollback(self._db)
            raise
        self._since_checkpoint += 1
        if checkpoint and not floor:
            self._since_checkpoint = 0
            try:
                # PASSIVE: never waits for a reader, never shortens the log; a partial copy is completed later.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass  # the commit is in the log; copying it into the main file can wait

    # -- reading -----------------------------------------------------------------------------------

    def order_ids(self) -> set[str]:
        """Every order id the journal holds: each order noted before its post (the transition log), the orders in
        flight, filled and still settling. For the audit against the exchange (journal/audit.py)."""
        rows = self._read(
            "SELECT json_extract(payload, '$.order_id') FROM transitions UNION SELECT order_id FROM positions "
            "UNION SELECT filled_order_id FROM positions UNION SELECT json_extract(unsettled, '$.order_id') "
            "FROM positions", ())
        return {row[0] for row in rows if isinstance(row[0], str)}

    def positions(self) -> list[JournaledPosition]:
        rows = self._read(f"SELECT {POSITION_COLUMNS} FROM positions ORDER BY seq", ())
        return [self._decoded(position_of, row, f"position {row[0]!r}") for row in rows]

    def history(self, key: str) -> list[JournaledTransition]:
        rows = self._read("SELECT seq, key, source, dest, trigger, payload, wall_time FROM transitions "
                          "WHERE key = ? ORDER BY seq", (key,))
        return [self._decoded(transition_of, row, f"transition {row[0]!r} of {key!r}") for row in rows]

    def _read(self, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as err:
            raise JournalError(self.path, f"unreadable ({err})") from None

    def _decoded(self, decode: Any, row: tuple[Any, ...], what: str) -> Any:
        try:
            return decode(row)
        except Exception as err:  # noqa: BLE001 - any damage in a row is the journal's, reported as such
            raise JournalError(self.path, f"{what}: unreadable row ({type(err).__name__}: {err})") from None
