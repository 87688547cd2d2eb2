"""Time for the engine, injectable so that tests freeze or step it.

Two readings with different jobs: `wall()` for comparing with exchange timestamps (the settlement
window after a buy), `monotonic()` for durations (verify latency, permit age), which must not jump.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def wall(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """Reads `time` at call time, so freezegun's patches apply."""

    def wall(self) -> datetime:
        return datetime.fromtimestamp(time.time(), tz=UTC)

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime | None = None) -> None:
        self._wall = start or datetime(2026, 1, 1, tzinfo=UTC)
        self._mono = 1_000.0

    def wall(self) -> datetime:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"seconds={seconds!r}: a clock does not go back")
        self._wall += timedelta(seconds=seconds)
        self._mono += seconds
