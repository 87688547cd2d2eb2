"""The journal's schema, its version, and the migrations that bring an older file up to date.

A journal is marked as ours by SQLite's `application_id` header field, so a foreign database is told
apart from an old journal before anything is written; `user_version` holds the schema version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from exitguard.errors import JournalError
from exitguard.journal.connection import rollback

APPLICATION_ID = 0x45584744
"""b"EXGD": written into the SQLite header of every journal."""

SCHEMA_VERSION = 3

MIGRATIONS: dict[int, list[str]] = {
    # version -> statements that build it from the version before (0: an empty file).
    1: [
        """CREATE TABLE positions (
            key TEXT PRIMARY KEY,
            token_id TEXT NOT NULL,
            expected INTEGER NOT NULL,
            last_buy_at TEXT,
            state TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            attempt_id TEXT,
            reason TEXT,
            limit_price TEXT,
            verified_balance INTEGER,
            sold INTEGER NOT NULL,
            residual INTEGER NOT NULL,
            unresolved INTEGER NOT NULL,
            permit TEXT,
            order_id TEXT,
            seq INTEGER NOT NULL
        )""",
        """CREATE TABLE transitions (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            key TEXT NOT NULL,
            source TEXT,
            dest TEXT NOT NULL,
            trigger TEXT NOT NULL,
            payload TEXT NOT NULL,
            wall_time TEXT NOT NULL
        )""",
        "CREATE INDEX transitions_by_key ON transitions (key, seq)",
        "CREATE INDEX positions_by_state ON positions (state)",
    ],
    2: [
        # A CLOSED position whose fill is matched but not yet settled on chain: a restart keeps
        # following it (a failed settlement hands the shares back).
        "ALTER TABLE positions ADD COLUMN unsettled TEXT",
    ],
    3: [
        # One row: whether the last engine closed cleanly, the write-ahead log's length floor, who holds
        # the file (journal/wal.py). A journal from before starts clean: it was opened by code that never
        # marked it, and SQLite replays whatever log it left.
        """CREATE TABLE journal_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            clean INTEGER NOT NULL,
            wal_floor INTEGER NOT NULL,
            holder_pid INTEGER,
            opened_at TEXT
        )""",
        "INSERT INTO journal_state (id, clean, wal_floor) VALUES (1, 1, 0)",
        # The fill a CLOSED position ended on (price and order), for the bot's P&L and `exitguard status`. Added to
        # v3 in place: v3 was never released (the last release wrote v2), so no journal in the wild has v3 without
        # these columns.
        "ALTER TABLE positions ADD COLUMN avg_price TEXT",
        "ALTER TABLE positions ADD COLUMN filled_order_id TEXT",
        # After an unclean stop: when the newest write that survived was made, until an audit against the exchange
        # has found every sale of ours since then in the journal (journal/audit.py); NULL when none is pending. In
        # v3 in place, as above.
        "ALTER TABLE journal_state ADD COLUMN audit_since TEXT",
        # How many times the journal restarted its write-ahead log (journal/durable.py): the commit that restarts it
        # must change a page, and counting is that change. In v3 in place, as above.
        "ALTER TABLE journal_state ADD COLUMN log_restarts INTEGER NOT NULL DEFAULT 0",
    ],
}


def check_schema(path: Path, db: sqlite3.Connection, *, writable: bool) -> None:
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
        migrate(path, db, 0)
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
        migrate(path, db, version)

def migrate(path: Path, db: sqlite3.Connection, start: int) -> None:
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
