"""The journal's SQLite connections: how one is opened, how one ends, and the read-only peeks before an open.

How a connection ends matters: SQLite's close of the last connection checkpoints and removes the write-ahead
log, which is right after a clean close (the file is marked clean first) and wrong otherwise (wal.py: the
next start would find an unclean file without its log). `close_keeping_log` is the other way to end.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import urlencode

from exitguard.journal.durable import LogSync
from exitguard.journal.lock import FileUse


def uri(path: Path, **params: str) -> str:
    # as_uri percent-encodes what a URI would misread ("?", "#", "%" in a folder name).
    return f"{path.absolute().as_uri()}?{urlencode(params)}"


class Closer:
    """How a journal ends, kept apart from the Journal so that its finalizer does not keep it alive."""

    def __init__(self, path: Path, db: sqlite3.Connection, use: FileUse, log: LogSync, *, readonly: bool) -> None:
        self.path, self.db, self.use, self.log, self.readonly = path, db, use, log, readonly
        self.failed: str | None = None

    def close(self) -> None:
        try:
            self.log.stop()  # a checkpoint's window ends (its deferred writes made) before the connection does
            if self.readonly:
                self.db.close()
            elif self.failed is not None or not self._mark_clean():
                close_keeping_log(self.path, self.db)
            else:
                self.db.close()
        finally:
            self.use.release()

    def _mark_clean(self) -> bool:
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("UPDATE journal_state SET clean = 1, holder_pid = NULL")
            self.db.execute("COMMIT")
            # A reader still on an older snapshot stops TRUNCATE (busy): the log then keeps the clean mark,
            # which is as good; removing it is left to the last connection's close.
            self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            rollback(self.db)
            return False
        return True


def try_connect(address: str) -> sqlite3.Connection:
    db = sqlite3.connect(address, uri=True, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA schema_version").fetchone()  # reads the header: fails on a non-database
    except BaseException:
        db.close()
        raise
    return db


def rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite rolled back already (it does after some I/O errors): nothing is pending


def close_keeping_log(path: Path, db: sqlite3.Connection) -> None:
    """Close without letting SQLite checkpoint and remove the log: a read-only connection that has read stays
    open across the close, so this one is not the last, and a read-only last connection never removes it."""
    keeper = None
    try:
        keeper = sqlite3.connect(uri(path, mode="ro"), uri=True)
        keeper.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error:
        pass
    finally:
        db.close()
        if keeper is not None:
            keeper.close()


def peek_state(path: Path) -> tuple[int, int] | None:
    """The journal's (clean, wal_floor) as a read-only connection sees it; None when there is none to see (a
    new, foreign or damaged file, or an older schema: the open's own checks report those)."""
    try:
        if path.stat().st_size == 0:
            return None
        db = sqlite3.connect(uri(path, mode="ro"), uri=True)
    except (OSError, sqlite3.Error):
        return None
    try:
        row = db.execute("SELECT clean, wal_floor FROM journal_state").fetchone()
    except sqlite3.Error:
        return None
    finally:
        db.close()
    if row is None or not all(type(value) is int for value in row):
        return None
    return row[0], row[1]


def holder_pid(path: Path) -> int | None:
    """The pid the engine holding the journal wrote when it opened it (read-only; None when unknown)."""
    try:
        db = sqlite3.connect(uri(path, mode="ro"), uri=True)
        try:
            row = db.execute("SELECT holder_pid FROM journal_state").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return None
    return row[0] if row is not None and isinstance(row[0], int) else None
