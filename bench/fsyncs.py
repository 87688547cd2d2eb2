"""Counting fsyncs, SQLite's own included, without strace: a shim on SQLite's default VFS, through ctypes.

SQLite does its fsyncs in C (commits at synchronous=FULL, checkpoints, the log's header when it restarts), where
wrapping `os.fsync` cannot see them. Every one of them is a call of its file's `xSync` method, and every file
SQLite opens goes through its VFS's `xOpen`. So `FsyncCounter.install()` replaces the default VFS's `xOpen` (in
the libsqlite3 that Python's sqlite3 module uses) with one that opens the file as before and then points the file
at a copy of its method table whose `xSync` counts the call, by thread, before running the original. The
journal's own fsync of the log (exitguard.journal.durable.flush_file) is wrapped and counted the same way.

A count is the number of fsync requests: one `xSync` is one fsync of the file (plus one of its folder when SQLite
has just created the file). Files opened before `install()` are not counted: install first.

Linux and macOS, 64-bit, with a libsqlite3 that Python's sqlite3 links dynamically (`available()` says when not).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sqlite3
import tempfile
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from exitguard.journal import durable

SYNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
OPEN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                        ctypes.c_void_p)
METHODS_SIZE = 8 + 18 * 8
"""sqlite3_io_methods, version 3: iVersion (padded to 8 bytes) and 18 function pointers."""
XSYNC_OFFSET = 8 + 4 * 8
"""xClose, xRead, xWrite, xTruncate, then xSync."""
XOPEN_OFFSET = 4 * 3 + 4 + 8 * 3
"""sqlite3_vfs: iVersion, szOsFile, mxPathname (ints, padded), pNext, zName, pAppData, then xOpen."""


class FsyncCounter:
    def __init__(self) -> None:
        self.by_thread: Counter[int] = Counter()
        self._lock = threading.Lock()
        self._keep: list[Any] = []
        self._originals: dict[int, Any] = {}  # our method table's address -> the original xSync
        self.installed = False

    def count(self) -> int:
        return sum(self.by_thread.values())

    def on_thread(self, ident: int) -> int:
        return self.by_thread[ident]

    def _hit(self) -> None:
        with self._lock:
            self.by_thread[threading.get_ident()] += 1

    def install(self) -> None:
        """Count SQLite's xSync calls and the journal's own fsyncs in this process from now on."""
        lib = ctypes.CDLL(ctypes.util.find_library("sqlite3"))
        lib.sqlite3_vfs_find.restype = ctypes.c_void_p
        lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
        vfs = lib.sqlite3_vfs_find(None)
        slot = ctypes.c_void_p.from_address(vfs + XOPEN_OFFSET)
        original_open = OPEN(slot.value)

        def xsync(file: int, flags: int) -> int:
            self._hit()
            methods = ctypes.c_void_p.from_address(file).value
            return int(self._originals[methods](file, flags))

        sync_callback = SYNC(xsync)

        def xopen(vfs_: int, name: int, file: int, flags: int, out: int) -> int:
            rc = int(original_open(vfs_, name, file, flags, out))
            pointer = ctypes.c_void_p.from_address(file)
            if rc == 0 and pointer.value:
                pointer.value = self._patched(pointer.value, sync_callback)
            return rc

        open_callback = OPEN(xopen)
        self._keep += [lib, sync_callback, open_callback, original_open]
        slot.value = ctypes.cast(open_callback, ctypes.c_void_p).value
        flush = durable.flush_file

        def counted_flush(fd: int) -> None:
            self._hit()
            flush(fd)

        durable.flush_file = counted_flush
        self.installed = True

    def _patched(self, methods: int, sync_callback: Any) -> int:
        for address, original in self._originals.items():
            if getattr(original, "_table", None) == methods:
                return address
        table = ctypes.create_string_buffer(METHODS_SIZE)
        ctypes.memmove(table, methods, METHODS_SIZE)
        original = SYNC(ctypes.c_void_p.from_address(methods + XSYNC_OFFSET).value)
        original._table = methods  # type: ignore[attr-defined]
        ctypes.c_void_p.from_address(ctypes.addressof(table) + XSYNC_OFFSET).value = \
            ctypes.cast(sync_callback, ctypes.c_void_p).value
        self._keep.append(table)
        self._originals[ctypes.addressof(table)] = original
        return ctypes.addressof(table)


def available(counter: FsyncCounter) -> str | None:
    """None when `counter` (installed) sees SQLite's fsyncs here; else why not."""
    before = counter.count()
    with tempfile.TemporaryDirectory() as folder:
        db = sqlite3.connect(Path(folder) / "probe.db", isolation_level=None)
        try:
            db.execute("PRAGMA synchronous = FULL")
            db.execute("CREATE TABLE t (x)")
            db.execute("INSERT INTO t VALUES (1)")
        finally:
            db.close()
    if counter.count() == before:
        return "SQLite's fsyncs are not visible here (is Python's sqlite3 linked to its own copy of SQLite?)"
    return None
