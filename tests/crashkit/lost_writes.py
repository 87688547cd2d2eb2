"""A journal that lost its newest writes, made exactly and in process (issue 11 B.8's audit against the exchange).

A write-ahead log cut within its newest part reads as a shorter, valid log: the journal opens as it was some commits
earlier, and no check of the log can tell. `cut_back_to` makes that state directly: a position's row is put back as
an earlier commit wrote it and every later transition of it is deleted, with the log left in place.

`stop_uncleanly` makes the engine's journal close as a crash leaves it (its log kept, its main file "unclean"):
the journal is marked failed before the engine leaves its block.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from exitguard import ExitEngine
from exitguard.journal.connection import close_keeping_log


def stop_uncleanly(engine: ExitEngine) -> None:
    """Leaving the engine's block now closes its journal as a crash leaves it."""
    assert engine.journal is not None
    engine.journal.mark_failed("simulated crash: the process died")


def row_of(path: Path, key: str) -> tuple[Any, ...]:
    """The position's row as the journal holds it now (read-only, beside a running engine)."""
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return tuple(db.execute("SELECT * FROM positions WHERE key = ?", (key,)).fetchone())
    finally:
        db.close()


def cut_back_to(path: Path, key: str, row: tuple[Any, ...]) -> None:
    """The journal as a log cut right after the position's track leaves it (`row`: its row then, from `row_of`):
    every later transition of the position is gone. The log stays, so no check of its length can tell."""
    db = sqlite3.connect(path, isolation_level=None)
    track = db.execute("SELECT min(seq) FROM transitions WHERE key = ?", (key,)).fetchone()[0]
    db.execute("DELETE FROM transitions WHERE key = ? AND seq > ?", (key, track))
    db.execute(f"INSERT OR REPLACE INTO positions VALUES ({', '.join('?' * len(row))})", row)
    close_keeping_log(path, db)
