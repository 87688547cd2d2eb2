"""The write-ahead journal: every transition of every position, durable before the engine acts on it.

SQLite in WAL mode with `synchronous=FULL`: a transaction is on disk when `commit` returns, so a
SELLING row (with its permit and order id) exists before the order it describes is posted. Two tables:
`transitions`, append-only (the audit trail), and `positions`, the current state (what recovery reads).
Both change in one transaction per transition. A lost or cut log is detected at the next start (wal.py).

Every SQLite error, at open, read or write, leaves as a JournalError naming the file: a damaged journal
is never a raw `sqlite3` traceback. A write that fails raises and changes nothing; the engine's position
book decides what that means for the position (book.py) and may mark the journal `failed`.
"""

from __future__ import annotations

import json
import os
import sqlite3
import weakref
from collections.abc import Iterator
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
from exitguard.journal.lock import FileUse, JournalLock
from exitguard.journal.rows import (
    POSITION_COLUMNS,
    JournaledPosition,
    JournaledTransition,
    fill_json,
    permit_json,
    plain,
    position_of,
    transition_of,
)
from exitguard.journal.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from exitguard.journal.wal import BUSY_TIMEOUT_MS, CHECKPOINT_EVERY, WAL_HEADER, check_log, log_size
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
        self._closer = Closer(path, connection, use, readonly=readonly)
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
                cls._check(path, db, writable=True)
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
                cls._check(path, db, writable=False)
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

    @staticmethod
    def _check(path: Path, db: sqlite3.Connection, *, writable: bool) -> None:
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if writable:
                # Corruption inside pages shows up here, before anything is written.
                problem = db.execute("PRAGMA quick_check").fetchone()[0]
                if problem != "ok":
                    raise JournalError(path, f"corrupted ({problem})")
        except sqlite3.Error as err:
            raise JournalError(path, f"corrupted or not a journal ({err})") from None
        if app_id == 0 and version == 0 and not tables:
            if not writable:
                raise JournalError(path, "empty: not a journal yet")
            Journal._migrate(path, db, 0)
            return
        if app_id != APPLICATION_ID:
            raise JournalError(path, f"not an exitguard journal (application_id {app_id:#x}, tables "
                                     f"{', '.join(sorted(tables)) or 'none'}); nothing was changed")
        if version > SCHEMA_VERSION:
            raise JournalError(path, f"schema version {version} is newer than this exitguard understands "
                                     f"({SCHEMA_VERSION}); upgrade exitguard; nothing was changed")
        if version < SCHEMA_VERSION:
            if not writable:
                raise JournalError(path, f"schema version {version} needs migrating; open it with an engine")
            Journal._migrate(path, db, version)

    @staticmethod
    def _migrate(path: Path, db: sqlite3.Connection, start: int) -> None:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            for version in range(start + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.Error as err:
            rollback(db)
            raise JournalError(path, f"cannot write ({err}); nothing was changed") from None

    def _mark_open(self) -> None:
        """Make the main file say "unclean" (wal.py) and prove the file writable now, not at the first sell."""
        try:
            self._db.execute("PRAGMA journal_mode = WAL")
            self._db.execute("PRAGMA synchronous = FULL")
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

    def close(self) -> None:
        """A healthy engine journal is marked clean and its log emptied; any other closes as it stands."""
        self._finalizer()

    def mark_failed(self, why: str) -> None:
        """No write is taken any more: the engine refuses new exits until restarted on a healthy journal."""
        if self._closer.failed is None:
            self._closer.failed = why

    def audit_passed(self) -> None:
        """The exchange showed no sale of ours that the journal does not know (journal/audit.py): none is pending."""
        with self._transaction():
            self._db.execute("UPDATE journal_state SET audit_since = NULL")
        self.audit_since = None

    # -- writing -----------------------------------------------------------------------------------

    def track(self, record: PositionRecord, wall_time: datetime) -> None:
        self._write(record, None, "track", {"expected": record.expected,
                                             "last_buy_at": record.last_buy_at}, wall_time, order_id=None)

    def transition(self, record: PositionRecord, source: State, trigger: str, payload: dict[str, object],
                   wall_time: datetime, *, order_id: str | None = None) -> None:
        """`order_id`: the order signed for the attempt in flight, while SELLING (the caller keeps it)."""
        self._write(record, source, trigger, payload, wall_time,
                    order_id=order_id if record.state is State.SELLING else None)

    def note_order(self, record: PositionRecord, order_id: str, wall_time: datetime) -> None:
        """The order about to be posted for the attempt in flight: durable before the post."""
        self._write(record, record.state, "order_signed", {"order_id": order_id,
                                                           "attempt_id": record.attempt_id},
                    wall_time, order_id=order_id)

    def note_update(self, record: PositionRecord, previous_expected: int, wall_time: datetime) -> None:
        """An OPEN position's shares or last buy changed (`ExitEngine.update`): a row of the trail, not a transition."""
        self._write(record, record.state, "position_updated",
                    {"expected": record.expected, "previous_expected": previous_expected,
                     "last_buy_at": record.last_buy_at}, wall_time, order_id=None)

    def note_settlement(self, record: PositionRecord, fill: Fill | None, event: str, wall_time: datetime) -> None:
        """A fill to follow on chain (`fill`), or the end of following it (`fill=None`, event settled/failed)."""
        self._write(record, record.state, event, {"order_id": None if fill is None else fill.order_id,
                                                  "trade_ids": [] if fill is None else list(fill.trade_ids)},
                    wall_time, order_id=None, unsettled=fill)

    def forget(self, key: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM positions WHERE key = ?", (key,))

    def _write(self, record: PositionRecord, source: State | None, trigger: str, payload: dict[str, object],
               wall_time: datetime, *, order_id: str | None, unsettled: Fill | None = None) -> None:
        permit = record.inflight or record.permit
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO transitions (key, source, dest, trigger, payload, wall_time) VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, None if source is None else str(source), str(record.state), trigger,
                 json.dumps(plain(payload), sort_keys=True), wall_time.isoformat()))
            self._db.execute(
                "INSERT OR REPLACE INTO positions (key, token_id, expected, last_buy_at, state, attempts, attempt_id, "
                "reason, limit_price, verified_balance, sold, residual, unresolved, permit, order_id, seq, unsettled, "
                "avg_price, filled_order_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key, record.token_id, record.expected,
                 None if record.last_buy_at is None else record.last_buy_at.isoformat(), str(record.state),
                 record.attempts, record.attempt_id, record.reason,
                 None if record.limit_price is None else str(record.limit_price), record.verified_balance,
                 record.sold, record.residual, int(record.unresolved), permit_json(permit), order_id,
                 cursor.lastrowid, fill_json(unsettled),
                 None if record.avg_price is None else str(record.avg_price), record.filled_order_id))
        self.writes += 1

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One durable transaction. Any failure rolls it back and raises JournalError: nothing was written."""
        if self.readonly:
            raise JournalError(self.path, "opened read-only")
        if self.failed is not None:
            raise JournalError(self.path, f"failed earlier ({self.failed}); restart the engine on a healthy journal")
        checkpoint = self._since_checkpoint + 1 >= CHECKPOINT_EVERY
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
        if checkpoint:
            self._since_checkpoint = 0
            try:
                # PASSIVE: never waits for a reader, never shortens the log; a partial copy is completed later.
                self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            except sqlite3.Error:
                pass  # the commit is durable in the log; copying it into the main file can wait

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
