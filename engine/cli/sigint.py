"""Ctrl-C in a command that talks to an exchange: cancel the work, say where the position stands, exit 130.

The default (KeyboardInterrupt raised wherever the main thread happens to be) unwinds through the engine as
an exception it did not choose, prints a chained traceback and says nothing about what was in flight. Here
SIGINT cancels one cancel scope around the work instead: the engine makes the position truthful as it does
for any cancelled exit (VERIFYING reopens; a sell that may have left is UNKNOWN, its order id journaled),
and the command reports that state in one line.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


async def unless_interrupted(work: Callable[[], Awaitable[T]]) -> tuple[T | None, bool]:
    """Run `work`; SIGINT cancels it. Returns (its result, False), or (None, True) when interrupted.

    Outside the main thread, or on Windows (no loop signal handlers there), SIGINT keeps its default."""
    if sys.platform == "win32" or threading.current_thread() is not threading.main_thread():
        return await work(), False
    result: list[T] = []
    failed: list[BaseException] = []
    with anyio.open_signal_receiver(signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            work_scope = anyio.CancelScope()

            async def watch() -> None:
                async for _ in signals:
                    work_scope.cancel()
                    return

            async def run() -> None:
                try:
                    with work_scope:
                        result.append(await work())
                except Exception as error:  # noqa: BLE001 - raised below as itself, not in an exception group
                    failed.append(error)
                group.cancel_scope.cancel()  # done (or cancelled): stop watching

            group.start_soon(watch)
            group.start_soon(run)
    if failed:
        raise failed[0]
    return (result[0], False) if result else (None, True)
