"""One engine per journal: an OS file lock on `<journal>.lock`, held for the engine's lifetime.

`flock` locks belong to the open file description, so a second engine in the same process conflicts
just as one in another process does, and the kernel drops the lock when the holder dies (SIGKILL
included): no stale lock files to clean up by hand.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from exitguard.errors import JournalError


class JournalLock:
    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, journal: Path) -> JournalLock:
        path = journal.with_name(journal.name + ".lock")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise JournalError(journal, f"cannot create the lock file {path} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise JournalError(journal, f"in use by another engine (pid {holder}); one engine per journal") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
