"""The write-ahead log is never lost in silence: a clean-shutdown mark in the main file, and a length floor.

How SQLite keeps a WAL-mode file: a commit appends frames to `<journal>-wal` (fsync'd later: journal/durable.py);
the main file changes only at a checkpoint, which copies committed frames into it. After a crash, the next
connection replays the log. Delete the log, or cut it short, and every transaction since the last
checkpoint is gone without an error: the restart would sell positions whose sells it no longer knows about.

What the journal does about it (the `journal_state` row, one per file):

1. `clean` is 0 while an engine runs. Opening writes `clean = 0` and checkpoints it *into the main file*
   (FULL: waits for readers) before the engine does anything else; a clean close writes `clean = 1`, then
   checkpoints with TRUNCATE. So the main file says "unclean" for as long as the log may hold anything it
   does not.
2. While unclean, the log is never removed or shortened: SQLite's own auto-checkpoint is off
   (`wal_autocheckpoint = 0`), the journal checkpoints itself every CHECKPOINT_EVERY commits in PASSIVE mode
   (in a thread of its own once an engine owns it: journal/durable.py)
   (which copies frames but leaves the file; the next commit rewrites it from the start, and the file
   never shrinks), and SQLite removes the log only when the last connection closes, after a complete
   checkpoint: at a clean close. A natural crash, SIGKILL or power loss, therefore always leaves the log
   file in place with at least its header.
3. `wal_floor`: the commit just before each of the journal's own checkpoints records the log's length,
   and the checkpoint carries that figure into the main file. The log never shrinks while unclean, so a
   shorter log was cut.

At an unclean start (the recovered `clean` is 0), a missing or headerless log, or one shorter than its
floor, refuses the start with a JournalError naming the cause. Nothing is written first.

What this cannot see: a log cut within its newest part, at a frame boundary, above the floor, reads as a
shorter, valid log. A program that opens the journal read-write after a crash (the `sqlite3` shell) makes
SQLite checkpoint everything and remove the log: nothing is lost then, but the start is refused all the
same, because the two cannot be told apart; `accept_lost_log` (below) is the operator's way out, after
checking the positions against the exchange. The backstop for what this cannot see is journal/audit.py: after an
unclean stop, the engine asks the exchange for our sales since the newest write that survived and refuses to start
while one of them is an order the journal does not know.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from exitguard.errors import JournalError
from exitguard.journal.lock import JournalLock

WAL_HEADER = 32
"""Bytes of a WAL file's header; a shorter file holds no frame."""

CHECKPOINT_EVERY = 256
"""Commits between the journal's own PASSIVE checkpoints (about 1,000 pages of log, SQLite's default)."""

BUSY_TIMEOUT_MS = 5000
"""How long a checkpoint that must complete (open, clean close) waits for readers to move on."""


def log_path(journal: Path) -> Path:
    """Where SQLite keeps the log: beside the file a symlink points to (SQLite resolves links for it)."""
    real = Path(os.path.realpath(journal))
    return real.with_name(real.name + "-wal")


def log_size(journal: Path) -> int | None:
    """The log's length in bytes; None when there is no log file."""
    try:
        return os.stat(log_path(journal)).st_size
    except FileNotFoundError:
        return None
    except OSError as err:
        raise JournalError(journal, f"cannot read its write-ahead log {log_path(journal)} ({err.strerror})") from None


def check_log(journal: Path, clean: int, floor: int, size: int | None) -> None:
    """Refuse an unclean start whose log was removed or cut (`size`: the log's length before SQLite opened it)."""
    if clean:
        return
    log = log_path(journal)
    fix = ("transactions written since the last checkpoint may be lost, and a restart could sell again what "
           "they recorded. Restore the log from where it went, or check every position against the exchange, "
           "then run `python -m exitguard.journal.wal --accept-lost-log JOURNAL` to start from the main file")
    if size is None:
        raise JournalError(journal, f"the last engine did not close it cleanly and its write-ahead log {log} is "
                                    f"missing (deleted, or the journal was copied without it): {fix}")
    if size < WAL_HEADER:
        raise JournalError(journal, f"the last engine did not close it cleanly and its write-ahead log {log} is "
                                    f"empty ({size} bytes): {fix}")
    if size < floor:
        raise JournalError(journal, f"the last engine did not close it cleanly and its write-ahead log {log} is "
                                    f"truncated ({size} bytes; it had reached {floor}): {fix}")


def accept_lost_log(journal: Path) -> None:
    """Mark an unclean journal clean, so that it opens from what its main file holds, and drop a pending audit
    against the exchange (journal/audit.py). For the operator, after checking every position against the exchange:
    whatever the lost log held is not coming back."""
    lock = JournalLock.acquire(journal, lambda: None)
    try:
        db = sqlite3.connect(journal, isolation_level=None)
        try:
            db.execute("UPDATE journal_state SET clean = 1, wal_floor = 0, audit_since = NULL")
        finally:
            db.close()
    finally:
        lock.release()


def main(argv: list[str] | None = None) -> int:
    import sys
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--accept-lost-log":
        print("usage: python -m exitguard.journal.wal --accept-lost-log JOURNAL", file=sys.stderr)
        return 2
    accept_lost_log(Path(args[1]))
    print(f"journal {args[1]}: marked clean; it opens from its main file")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
