"""One engine per journal: an OS lock on the journal's database file itself, held for the engine's lifetime.

The lock is taken on the file (its inode), not on a name: a symlink, a hard link or a relative path that
reaches the same file meets the same lock, and there is no separate lock file whose deletion would let a
second engine in. `flock` locks belong to the open file description, so a second engine in the same process
conflicts just as one in another process does, and the kernel drops the lock when the holder dies (SIGKILL
included).

Two hazards of locking a file SQLite also has open, and how they are met:
- SQLite's own locks are POSIX record locks (`fcntl`), independent of `flock` on local filesystems. (On NFS,
  Linux emulates `flock` with record locks; SQLite's write-ahead log does not work over a network filesystem
  anyway: keep journals on local disks.)
- Closing *any* descriptor of a file drops every POSIX lock the process holds on it, SQLite's included. So
  this module opens one descriptor per file per process, shares it between every journal of the process
  on that file (engine or read-only), and closes it only when the last of them has closed its connection.

On Windows (no `fcntl`) the lock is `msvcrt.locking` on one byte of SQLite's lock-byte page, past the bytes
SQLite locks itself: SQLite never reads or writes that page (page size >= 1024), and Windows locks are
mandatory. Without either module `import exitguard` still works; taking a lock raises JournalError.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from exitguard.errors import JournalError

fcntl: ModuleType | None
msvcrt: ModuleType | None
try:
    import fcntl
except ImportError:  # Windows
    fcntl = None
try:
    import msvcrt
except ImportError:  # POSIX
    msvcrt = None

SQLITE_LOCK_PAGE = 0x40000000
"""SQLite's lock-byte page; it locks bytes +0 .. +511 of it."""
WINDOWS_LOCK_BYTE = SQLITE_LOCK_PAGE + 512
"""The byte locked on Windows: inside the lock-byte page, past every byte SQLite locks."""


def try_lock(fd: int, *, byte: int, what: object) -> bool:
    """An exclusive, non-blocking lock on the file behind `fd`: True when taken, False when another holds it.
    `byte` is where Windows locks (its locks are mandatory byte ranges); POSIX locks the whole file."""
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
    if msvcrt is not None:
        os.lseek(fd, byte, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    raise JournalError(what, "cannot lock: this platform has neither fcntl nor msvcrt file locks, and an engine "
                             "never runs without its lock (two engines on one file would sell twice)")


def unlock(fd: int, *, byte: int) -> None:
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_UN)
    elif msvcrt is not None:
        os.lseek(fd, byte, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@dataclass
class _OpenFile:
    fd: int | None
    """The process's one descriptor of the file for locking (None: only read-only journals use it)."""
    users: int = 0
    """Journals of this process on the file, engine or read-only, not yet closed."""
    held: bool = False


_FILES: dict[tuple[int, int], _OpenFile] = {}
_GUARD = threading.RLock()
"""Reentrant: a journal dropped unclosed may be finalized by a garbage collection that runs inside this lock."""


def _identity(path: Path) -> tuple[int, int]:
    st = os.stat(path)  # follows symlinks: the file itself
    return st.st_dev, st.st_ino


class FileUse:
    """A journal of this process on a file: the shared descriptor stays open until the last use ends."""

    def __init__(self, key: tuple[int, int], *, holds: bool = False) -> None:
        self._key: tuple[int, int] | None = key
        self._holds = holds

    @classmethod
    def reading(cls, path: Path) -> FileUse:
        """A read-only journal: takes no lock, but keeps a lock's descriptor from closing under its connection."""
        try:
            key = _identity(path)
        except OSError as err:
            raise JournalError(path, f"cannot read ({err.strerror})") from None
        with _GUARD:
            _FILES.setdefault(key, _OpenFile(None)).users += 1
        return cls(key)

    def release(self) -> None:
        """Call after the journal's SQLite connection is closed."""
        key, self._key = self._key, None
        if key is None:
            return
        with _GUARD:
            entry = _FILES[key]
            if self._holds and entry.fd is not None:
                unlock(entry.fd, byte=WINDOWS_LOCK_BYTE)
                entry.held = False
            entry.users -= 1
            if entry.users == 0:
                del _FILES[key]
                if entry.fd is not None:
                    os.close(entry.fd)


class JournalLock(FileUse):
    """The engine's exclusive lock on a journal file."""

    @classmethod
    def acquire(cls, journal: Path, holder: Callable[[], int | None]) -> JournalLock:
        """Lock the file `journal` reaches (created empty when missing). `holder()` names the pid of another
        engine holding it (None: unknown), for the refusal message."""
        with _GUARD:
            fd, key, entry = cls._descriptor(journal)
            if entry.held:
                raise JournalError(journal, f"in use by another engine of this process (pid {os.getpid()}); "
                                            "one engine per journal")
            if not try_lock(fd, byte=WINDOWS_LOCK_BYTE, what=journal):
                if entry.users == 0:  # nothing of ours uses the file: the descriptor may go
                    del _FILES[key]
                    os.close(fd)
                pid = holder()
                raise JournalError(journal, f"in use by another engine (pid {pid if pid is not None else 'unknown'}); "
                                            "one engine per journal")
            entry.held = True
            entry.users += 1
        return cls(key, holds=True)

    @staticmethod
    def _descriptor(journal: Path) -> tuple[int, tuple[int, int], _OpenFile]:
        try:
            key: tuple[int, int] | None = _identity(journal)
        except FileNotFoundError:
            key = None
        except OSError as err:
            raise JournalError(journal, f"cannot open ({err.strerror})") from None
        entry = _FILES.get(key) if key is not None else None
        if entry is not None and entry.fd is not None:
            return entry.fd, key, entry  # type: ignore[return-value]
        try:
            fd = os.open(journal, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        except OSError as err:
            raise JournalError(journal, f"cannot write: opening it for writing failed ({err.strerror})") from None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)  # the file actually opened (it may have been created or replaced meanwhile)
        entry = _FILES.setdefault(key, _OpenFile(None))
        if entry.fd is None:
            entry.fd = fd
        # else: another journal of ours opened the same file in between; closing `fd` would drop SQLite's
        # locks on it, so the spare descriptor is left open (a race of microseconds, one descriptor).
        return entry.fd, key, entry
