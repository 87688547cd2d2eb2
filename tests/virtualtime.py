"""Virtual time for tests on the paper exchange: an asyncio loop whose clock jumps instead of waiting.

When nothing is ready to run, the loop moves its clock straight to the next timer (an `anyio.sleep`, a
timeout) rather than sleeping, so a burst of hundreds of exits at 400 ms latency, or a backoff to 30 s,
runs in milliseconds and in a reproducible order. Concurrency is real: tasks interleave as they would on
a network. Real I/O still wakes the loop (a loopback server, a worker thread finishing), but time never
waits for it: do not use this loop with the fake CLOB or the Polymarket adapter's threads.

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def anyio_backend():
        return VIRTUAL_TIME

    clock = LoopClock()   # the engine's and the paper exchange's clock: the loop's virtual time
"""

from __future__ import annotations

import asyncio
import selectors
from datetime import UTC, datetime, timedelta
from typing import Any

from exitguard.journal.durable import LogSync


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc, valid-type]
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None

    def select(self, timeout: float | None = None) -> list[Any]:
        ready: list[Any] = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None or (self.loop is not None and LogSync.waits_on(self.loop)):
            # Nothing scheduled, or a journal's fsync in flight (a worker thread): only real I/O can wake us.
            return super().select(None)
        self.now += timeout  # the next timer is due: jump to it
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)
        self._jumping.loop = self

    def time(self) -> float:
        return self._jumping.now


VIRTUAL_TIME = ("asyncio", {"loop_factory": VirtualTimeLoop})
"""An `anyio_backend` value: asyncio on virtual time."""


class LoopClock:
    """An exitguard Clock reading the running loop's (virtual) time: monotonic = loop time, wall = a fixed
    start plus loop time. Read it only on the loop."""

    def __init__(self, start: datetime | None = None) -> None:
        self.start = start or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> datetime:
        return self.start + timedelta(seconds=self.monotonic())
