"""The cancel scopes of the exit path, built from the running backend's own class.

Each exit enters two: its call's (the shutdown's grace cancels it) and its attempt's, which holds the
verification's deadline, then the sell's (attempt.py). `anyio.CancelScope(...)` looks the running backend up
(sniffio, a context variable, a dict) each time it is built, then builds that backend's class, which is
constructible directly with the same arguments; reading the class once per engine start, inside the engine's
event loop, saves that lookup on every scope and changes nothing else: the scope is the very object anyio would
have built.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

import anyio

ASYNCIO_SCOPES = "anyio._backends._asyncio"
"""The module of anyio's asyncio backend, whose `current_time()` is the running loop's `time()`."""


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


class Scopes:
    """Builds cancel scopes for one engine. `bind()` when the engine starts; before that anyio's own dispatch."""

    __slots__ = ("_make", "_now")

    def __init__(self) -> None:
        self._make: Callable[..., anyio.CancelScope] = anyio.CancelScope
        self._now: Callable[[], float] = anyio.current_time

    def bind(self) -> None:
        """Read the running backend's scope class (called on the engine's event loop, as it starts)."""
        made = type(anyio.CancelScope())
        # anyio's backends subclass its CancelScope; anything else (a future anyio) keeps anyio's own dispatch, and
        # any backend but asyncio (or an anyio that moved it) keeps anyio's own clock.
        self._make = made if issubclass(made, anyio.CancelScope) else anyio.CancelScope
        self._now = _loop_time if self._make.__module__ == ASYNCIO_SCOPES else anyio.current_time

    def scope(self, deadline: float = math.inf) -> anyio.CancelScope:
        return self._make(deadline=deadline)

    def within(self, seconds: float) -> anyio.CancelScope:
        """A scope cancelled `seconds` from now: anyio.fail_after's scope, without its generator."""
        return self._make(deadline=self._now() + seconds)

    def move(self, scope: anyio.CancelScope, seconds: float) -> None:
        """Cancel the entered `scope` `seconds` from now instead (one scope for two deadlines in turn): the backend
        drops its timer and sets the new one, as leaving a scope and entering another with that deadline would."""
        scope.deadline = self._now() + seconds
