"""Virtual time for the paper run: an asyncio event loop whose clock jumps to the next timer whenever every
task is waiting, and an engine `Clock` that reads that loop's time.

With it, the engine's own waits (`anyio.sleep`, `fail_after`, a resolver's backoff of 0.5 s doubling to 30 s)
and the hostile exchange's latency cost no real time, and the engine's clock agrees with them: a permit ages
while the exchange is slow, a lookup horizon passes while the test sleeps. The run stays deterministic as
long as nothing waits on real I/O or threads (the paper exchange does neither; the journal's fsync thread stops
the clock while an exit waits for it; the fake CLOB run keeps real time).
`trio.testing.MockClock(autojump_threshold=0)` does the same on trio; this keeps the suite on asyncio
without a new dependency.
"""

from __future__ import annotations

import asyncio
import selectors
from datetime import UTC, datetime, timedelta

import anyio

from exitguard.journal.durable import LogSync

START = datetime(2026, 1, 1, tzinfo=UTC)
MONOTONIC_OFFSET = 1_000.0


class Deadlock(RuntimeError):
    """Every task waits, no timer is due and nothing can wake them: the run would hang for real."""


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.loop: VirtualTimeLoop | None = None

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if self.loop is not None and LogSync.waits_on(self.loop):
            return super().select(None)  # a journal's fsync in its thread: time stands still until it wakes us
        if timeout is None:
            # No timer at all: only I/O could wake the loop, and the paper run does none. Wait a little for
            # real (a stray thread, the self-pipe) before calling it a hang.
            ready = super().select(1.0)
            if not ready:
                raise Deadlock("every task is waiting and no timer is scheduled")
            return ready
        assert self.loop is not None
        self.loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """Pass as `anyio.run(..., backend_options={"loop_factory": VirtualTimeLoop})`."""

    def __init__(self) -> None:
        selector = _JumpingSelector()
        super().__init__(selector)
        selector.loop = self
        LogSync.in_place.add(self)  # a seed must replay exactly: the journal's fsyncs run in place, in order
        self.now = 0.0

    def time(self) -> float:
        return self.now


class LoopClock:
    """The engine's clock on the running loop's time (virtual under VirtualTimeLoop). Read inside the loop."""

    def wall(self) -> datetime:
        return START + timedelta(seconds=anyio.current_time())

    def monotonic(self) -> float:
        return MONOTONIC_OFFSET + anyio.current_time()
