"""Helpers for the user channel's tests: time the test steps, and waiting for loopback I/O."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import anyio.lowlevel


class SteppedTime:
    """A clock and a sleep for `UserChannel`: a sleep advances the clock at once, while the time runs (`run()`);
    while it is held (`hold()`), every sleep waits. The keepalive and the backoff run on it, never on real time."""

    def __init__(self, *, running: bool = True) -> None:
        self.now = 0.0
        self.slept: list[float] = []
        self._go = anyio.Event()
        if running:
            self._go.set()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        await self._go.wait()
        self.slept.append(seconds)
        self.now += seconds
        await anyio.lowlevel.checkpoint()

    def run(self) -> None:
        self._go.set()

    def hold(self) -> None:
        if self._go.is_set():
            self._go = anyio.Event()


async def until(condition: Callable[[], object], what: str, tries: int = 2000) -> None:
    """Wait for loopback I/O to make `condition` true (bounded; a test never asserts on the time it took)."""
    for _ in range(tries):
        if condition():
            return
        await anyio.sleep(0.005)
    raise AssertionError(f"never happened: {what}")
