"""Which calls may start, and a shutdown that waits for those in flight, for a bounded time.

An `exit()`, `reconcile()` or `check_settlements()` runs inside `Gate.call()`. Once the engine starts to
close, new calls are refused with `EngineClosed`; those in flight get `grace` seconds to finish (each is
bounded by its own timeouts anyway). One that outlives the grace is cancelled: its own cancellation path
leaves the position truthful (states.INTERRUPTED: a sell that may have left becomes an unknown outcome,
with its order id already journaled), and the journal closes only after that.
"""

from __future__ import annotations

from types import TracebackType

import anyio

from exitguard.errors import EngineClosed
from exitguard.scopes import Scopes
from exitguard.telemetry.logs import emit

NOT_RUNNING = "use the engine inside `async with ExitEngine(...) as engine:`"


class Gate:
    """The engine's calls in flight. Not thread-safe: used from the engine's event loop."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.scopes = Scopes()
        """The engine's cancel scopes (its calls', its attempts' deadlines): bound to the backend by `open`."""
        self._stage = "new"
        """new -> running -> closing -> closed (-> running again, if the engine is entered again)."""
        self._calls: set[anyio.CancelScope] = set()
        self._idle: anyio.Event | None = None

    def open(self) -> None:
        """Let calls in; called on the engine's event loop as it starts."""
        self.scopes.bind()
        self._stage = "running"

    def check(self) -> None:
        """Raise EngineClosed unless the engine runs and is not closing."""
        if self._stage == "closing":
            raise EngineClosed("the engine is shutting down: no new exit, reconcile or track")
        if self._stage != "running":
            raise EngineClosed(NOT_RUNNING)

    def check_track(self, journaled: bool) -> None:
        """A position may be tracked before the engine starts (a journal restores it then) and while it
        runs; not while it shuts down, nor after it stopped when a journal was configured: the journal is
        closed, and a position tracked now would be in memory only."""
        if self._stage == "closing" or (self._stage == "closed" and journaled):
            raise EngineClosed(f"the engine is {self._stage}: its journal is closed to new positions")

    def call(self) -> Call:
        """Run one call of the engine's (`with gate.call():`). The block is cancelled if it outlives the shutdown's
        grace period: then `scope.cancel_called` is true after the block and the call reports what the cancellation
        left. A plain context manager, not an async generator: entering it awaits nothing (a few us per exit)."""
        self.check()
        return Call(self)

    def _left(self, scope: anyio.CancelScope) -> None:
        self._calls.discard(scope)
        if not self._calls and self._idle is not None:
            self._idle.set()

    async def close(self) -> None:
        """Refuse new calls, give those in flight `grace` seconds, then cancel the rest and wait for them to
        leave the position truthful. Shielded: the caller's own cancellation does not cut this short."""
        self._stage = "closing"
        with anyio.CancelScope(shield=True):
            if self._calls:
                self._idle = anyio.Event()
                with anyio.move_on_after(self.grace):
                    await self._idle.wait()
                if self._calls:
                    emit("shutdown_grace_expired", grace_s=self.grace, calls_cancelled=len(self._calls))
                    for scope in list(self._calls):
                        scope.cancel()
                    await self._idle.wait()

    def closed(self) -> None:
        """Everything the engine started has stopped (the journal too)."""
        self._stage = "closed"


class Call:
    """One call in flight (`Gate.call`): its cancel scope, known to the gate from entry to exit."""

    __slots__ = ("gate", "scope")

    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.scope = gate.scopes.scope()

    def __enter__(self) -> anyio.CancelScope:
        self.gate._calls.add(self.scope)
        return self.scope.__enter__()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        try:
            return self.scope.__exit__(exc_type, exc, tb)
        finally:
            self.gate._left(self.scope)
