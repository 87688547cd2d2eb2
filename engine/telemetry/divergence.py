"""Divergence detection: every time memory and exchange disagree, counted and watched for bursts.

One mismatch is a fee taken in shares; ten in a minute is a bug, a second process trading the same
wallet, or an exchange incident. The detector turns the stream into an alert when a threshold of
events falls inside a time window, overall or for one token.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from exitguard.clock import Clock, SystemClock
from exitguard.states import DivergenceKind, exact

__all__ = ["DivergenceAlert", "DivergenceDetector", "DivergenceEvent", "DivergenceKind"]
from exitguard.telemetry.logs import emit


@dataclass(frozen=True, slots=True)
class DivergenceEvent:
    kind: DivergenceKind
    position_key: str
    token_id: str
    expected: Decimal | None
    """Shares memory held (or sent, for outcomes)."""
    actual: Decimal | None
    """Shares the exchange showed; None while unknown."""
    at: float
    """Monotonic seconds."""

    @property
    def difference(self) -> Decimal | None:
        if self.expected is None or self.actual is None:
            return None
        with exact():
            return self.actual - self.expected


@dataclass(frozen=True, slots=True)
class DivergenceAlert:
    scope: str
    """"all" or "token"."""
    token_id: str | None
    count: int
    threshold: int
    window: float
    last_event: DivergenceEvent


AlertHook = Callable[[DivergenceAlert], object]


class DivergenceDetector:
    """Counts divergences per token, per kind and overall; alerts when `threshold` events fall within
    `window` seconds. An alert fires on the crossing and re-arms once the count is below the threshold."""

    def __init__(
        self,
        threshold: int = 5,
        window: float = 60.0,
        on_alert: AlertHook | None = None,
        clock: Clock | None = None,
    ) -> None:
        if not isinstance(threshold, int) or threshold < 1:
            raise ValueError(f"threshold={threshold!r}: must be an integer >= 1")
        if window <= 0:
            raise ValueError(f"window={window!r}: must be positive seconds")
        self.threshold = threshold
        self.window = window
        self.on_alert = on_alert
        self.clock: Clock = clock or SystemClock()
        self.total = 0
        self.by_token: Counter[str] = Counter()
        self.by_kind: Counter[str] = Counter()
        self.alerts: list[DivergenceAlert] = []
        self._recent: deque[float] = deque()
        self._recent_by_token: dict[str, deque[float]] = {}
        self._armed: dict[str | None, bool] = {}

    def now(self) -> float:
        return self.clock.monotonic()

    def record(self, event: DivergenceEvent) -> None:
        self.total += 1
        self.by_token[event.token_id] += 1
        self.by_kind[event.kind] += 1
        self._observe(self._recent, None, event)
        self._observe(self._recent_by_token.setdefault(event.token_id, deque()), event.token_id, event)

    def _observe(self, recent: deque[float], token_id: str | None, event: DivergenceEvent) -> None:
        recent.append(event.at)
        horizon = event.at - self.window
        while recent and recent[0] <= horizon:
            recent.popleft()
        count = len(recent)
        if count < self.threshold:
            self._armed[token_id] = True
            return
        if not self._armed.get(token_id, True):
            return
        self._armed[token_id] = False
        alert = DivergenceAlert(
            scope="all" if token_id is None else "token",
            token_id=token_id,
            count=count,
            threshold=self.threshold,
            window=self.window,
            last_event=event,
        )
        self.alerts.append(alert)
        emit(
            "divergence_alert",
            scope=alert.scope,
            key=event.position_key,
            token=event.token_id,
            count=count,
            threshold=self.threshold,
            window_s=self.window,
            last_kind=str(event.kind),
            last_expected=event.expected,
            last_actual=event.actual,
        )
        if self.on_alert is not None:
            try:
                self.on_alert(alert)
            except Exception as err:  # an alert hook must never break an exit in progress
                emit("divergence_alert_hook_failed", error=repr(err), scope=alert.scope, token=token_id)
