"""Durability off the event loop: a commit writes the log without an fsync; one fsync of the log makes it durable.

SQLite runs the journal in WAL mode with `synchronous=NORMAL`: COMMIT appends the transaction's frames to the log
with write() and returns without an fsync. So a commit survives SIGKILL at once (the kernel holds it), and only a
power loss or an OS crash can lose the commits made since the log's last fsync. The log is a sequence and recovery
replays its valid prefix: an fsync of it makes durable every commit written before the fsync started, the commits of
other exits included (group commit). `LogSync.durable(ticket)` does that fsync in a worker thread, never on the event
loop, one at a time: exits that wait meanwhile share the next one.

What needs the fsync: an exit's intent (the request, the verified balance and the order id, one commit; book.py) is
durable before the order is posted. What does not: tracks, outcomes (fill, killed, unknown, ...), updates and
settlement notes are written without one, and the next intent's fsync makes them durable too.

What a power loss can lose, then, and why none of it can make a restart send twice: a lost track comes back with
the bot's re-track at start; a lost step of an attempt before its intent leaves the position OPEN, and nothing was
sent without the intent; a lost outcome leaves the position SELLING with its order id, which the restart looks up
(filled, killed, or never arrived once the lookup horizon has passed with no trade). That costs time, not shares:
such an outcome takes at least the lookup horizon to settle after a power loss, and recovery marks the token's
balance "refresh first" again (its order may have filled, and the exchange's cache may still show the shares).

SQLite's own fsyncs stay off the event loop too. A checkpoint fsyncs the log and the main file, and the first commit
after a complete checkpoint restarts the log and fsyncs its new header. So once the engine owns the journal
(`offload`), the journal's checkpoint runs in a thread of its own that holds the connection for its length (a
"window"): it writes the floor, checkpoints, and makes the restarting commit itself; the event loop's writes meanwhile
wait in memory, in order, and that thread writes them before it hands the connection back. Outside a window the log
cannot restart under the event loop: every window ends with a commit after its checkpoint, so the log always holds a
frame the main file does not (SQLite restarts a log only when the main file holds all of it).
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from exitguard.errors import JournalError
from exitguard.telemetry.logs import emit

try:
    import fcntl
    FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)
except ImportError:  # Windows
    FULLFSYNC = None


def flush_file(fd: int) -> None:
    """Make what was written to the file durable. macOS's fsync leaves it in the drive's cache; F_FULLFSYNC does not
    (as the journal's `PRAGMA fullfsync` asks of SQLite's own syncs)."""
    if FULLFSYNC is not None:
        fcntl.fcntl(fd, FULLFSYNC)
    else:
        os.fsync(fd)


@dataclass(slots=True)
class Deferred:
    """A write that came while a window held the connection: made by the window's thread, in order."""
    ticket: int
    write: Callable[[], None]
    key: str
    token: str
    trigger: str


class LogSync:
    """Tickets for the journal's writes and the fsyncs that make them durable. A ticket `t` is *written* once every
    write up to `t` is in the log file, and *durable* once an fsync that started after that returned."""

    waiting: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, int] = weakref.WeakKeyDictionary()
    """Event loops awaiting a journal's fsync, and how many waits each (a test's virtual clock stands still for
    them: `waits_on`)."""

    in_place: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
    """Event loops on which `durable` fsyncs in place, blocking the loop: a replay harness's virtual-time loop, whose
    runs must repeat exactly (the flusher thread's wake-up lands among the loop's other callbacks wherever real time
    puts it, and which exits share one fsync depends on it). Never for an engine that trades."""

    @staticmethod
    def waits_on(loop: asyncio.AbstractEventLoop) -> bool:
        return LogSync.waiting.get(loop, 0) > 0

    def __init__(self, journal: Path, log: Path, mark_failed: Callable[[str], None]) -> None:
        self.journal = journal
        self.log = log
        self._mark_failed = mark_failed
        self._fd: int | None = None
        self._cond = threading.Condition()
        self._issued = 0
        self._written = 0
        self._synced = 0
        self._deferred: list[Deferred] = []
        self._window: threading.Thread | None = None
        self._failures: dict[int, JournalError] = {}
        self._sync_error: JournalError | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._waiters: list[tuple[int, Callable[[], None]]] = []
        self._flusher: threading.Thread | None = None
        self._stopping = False
        self.fsyncs = 0
        """fsyncs of the log made here (SQLite's own, at checkpoints, are not counted here: bench/journal.py)."""

    # -- writing (event loop) ----------------------------------------------------------------------

    def submit(self, write: Callable[[], None], *, key: str = "", token: str = "", trigger: str = "") -> int:
        """Run `write` (one commit) now, or, while a window holds the connection, after it in order. Returns its
        ticket. A write run now raises its JournalError here; a deferred one that fails fails the journal, or, for an
        intent, is raised by `durable` (the caller's await)."""
        with self._cond:
            if self._window is not None:
                self._issued += 1
                self._deferred.append(Deferred(self._issued, write, key, token, trigger))
                return self._issued
        write()
        self._issued += 1
        self._written = self._issued  # nothing is deferred outside a window: every earlier ticket is written
        return self._issued

    @property
    def windowed(self) -> bool:
        return self._window is not None

    def open_window(self, work: Callable[[], None]) -> None:
        """Hand the connection to a thread that runs `work` (the checkpoint), then the writes deferred meanwhile."""
        with self._cond:
            if self._window is not None:
                return
            self._window = threading.Thread(target=self._run_window, args=(work,), name="exitguard-journal-checkpoint",
                                            daemon=True)
            self._window.start()

    def _run_window(self, work: Callable[[], None]) -> None:
        try:
            work()
        finally:
            self._drain()

    def _drain(self) -> None:
        while True:
            with self._cond:
                if not self._deferred:
                    self._window = None
                    self._cond.notify_all()
                    return
                batch, self._deferred = self._deferred, []
            for item in batch:
                try:
                    item.write()
                except Exception as caught:  # noqa: BLE001 - the window must end whatever a write raised
                    err = caught if isinstance(caught, JournalError) else JournalError(
                        self.journal, f"write failed ({type(caught).__name__}: {caught}); nothing was written")
                    self._failures[item.ticket] = err
                    if item.trigger != "order_signed":  # an intent's failure is its waiter's (book.py)
                        self._mark_failed(str(err))
                        emit("journal_write_failed", key=item.key, token=item.token, trigger=item.trigger,
                             error=str(err), journal_failed=True)
                with self._cond:
                    self._written = item.ticket
                    self._cond.notify_all()

    # -- durability --------------------------------------------------------------------------------

    async def durable(self, ticket: int) -> None:
        """Return once `ticket` is durable: one fsync in the journal's flusher thread, shared by every exit waiting
        for one. On asyncio the thread wakes the loop itself (half the cost of a worker-thread call); elsewhere a
        worker thread waits."""
        if self._synced < ticket:
            waiter = _asyncio_waiter()
            if waiter is not None and waiter[0] in LogSync.in_place:
                self.sync(ticket)
            elif waiter is None:
                if self._limiter is None:
                    self._limiter = anyio.CapacityLimiter(1)
                await anyio.to_thread.run_sync(self.sync, ticket, limiter=self._limiter)
            else:
                loop, future, wake = waiter
                with self._cond:
                    self._waiters.append((ticket, wake))
                    if self._flusher is None or not self._flusher.is_alive():
                        self._flusher = threading.Thread(target=self._flush, name="exitguard-journal-fsync",
                                                         daemon=True)
                        self._flusher.start()
                    self._cond.notify_all()
                LogSync.waiting[loop] = LogSync.waiting.get(loop, 0) + 1
                try:
                    await future
                finally:
                    LogSync.waiting[loop] -= 1
        if self._synced < ticket and self._sync_error is not None:
            raise self._sync_error
        self._raise_failed(ticket)

    def _flush(self) -> None:
        """The flusher thread: one fsync for every exit waiting when it starts, then wake them."""
        while True:
            with self._cond:
                while not self._waiters and not self._stopping:
                    self._cond.wait()
                if not self._waiters:
                    return
                target = max(ticket for ticket, _ in self._waiters)
            try:
                self.sync(target)
            except Exception:  # noqa: BLE001, S110 - each waiter raises what failed (`durable`); the thread goes on
                pass
            with self._cond:
                done = [w for w in self._waiters if w[0] <= self._synced or self._sync_error is not None]
                self._waiters = [w for w in self._waiters if w not in done]
            for _, wake in done:
                try:
                    wake()
                except RuntimeError:
                    pass  # its event loop is closed: nobody waits there any more

    def sync(self, ticket: int | None = None) -> None:
        """Blocking: wait until `ticket` (default: every write so far) is written, then fsync the log if needed."""
        with self._cond:
            target = self._issued if ticket is None else ticket
            while self._written < target:
                self._cond.wait()
            upto = self._written
        if self._synced >= target:
            return
        if self._sync_error is not None:
            raise self._sync_error
        try:
            if self._fd is None:
                self._fd = os.open(self.log, os.O_RDWR)
            flush_file(self._fd)
        except OSError as err:
            # After a failed fsync the kernel may have dropped the pages it could not write: nothing in the log can be
            # trusted to reach the disk any more.
            self._sync_error = JournalError(self.journal, f"fsync of its write-ahead log failed ({err.strerror or err})"
                                                          "; nothing was sent")
            self._mark_failed(str(self._sync_error))
            raise self._sync_error from None
        with self._cond:
            self.fsyncs += 1
            self._synced = max(self._synced, upto)

    def _raise_failed(self, ticket: int) -> None:
        failed = self._failures.pop(ticket, None)
        if failed is not None:
            raise failed

    # -- the end -----------------------------------------------------------------------------------

    def quiesce(self) -> None:
        """Wait for a window running now to end, its deferred writes made."""
        window = self._window
        if window is not None:
            window.join()

    def stop(self) -> None:
        """End the flusher and a window, then let go of the log."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._flusher is not None:
            self._flusher.join()
        self.quiesce()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _asyncio_waiter() -> tuple[asyncio.AbstractEventLoop, asyncio.Future[None], Callable[[], None]] | None:
    """The running asyncio loop, a future of it, and a callable that resolves the future from any thread; None off
    asyncio."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    future: asyncio.Future[None] = loop.create_future()

    def resolve() -> None:
        if not future.done():  # a waiter cancelled meanwhile (a timeout, a shutdown) is left as it is
            future.set_result(None)

    def wake() -> None:
        loop.call_soon_threadsafe(resolve)

    return loop, future, wake
