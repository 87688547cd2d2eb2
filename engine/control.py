"""The kill switch: `ExitEngine.pause(reason)` stops new sells until `resume()`.

What a pause stops is what an operator reaching for a kill switch wants stopped: new orders. A new `exit()`
is refused with `ExitOutcome.PAUSED` before anything is read or sent (states.EXIT_PAUSED), and an exit in
flight sends no retry after its current attempt. What it lets go on is what keeps the engine truthful: the
attempt in flight (its order may be out already: abandoning it would only make its outcome unknown), the
lookups of unknown outcomes, settlement following, `reconcile()`, `track()` and `update()`. Not journaled:
a restarted engine runs; a pause meant to outlive the process belongs to the application's own config.
"""

from __future__ import annotations

from datetime import datetime

from exitguard.clock import Clock
from exitguard.position import ExitResult
from exitguard.reports import Reporter
from exitguard.states import EXIT_PAUSED, InvalidValue, PositionRecord
from exitguard.telemetry.logs import emit
from exitguard.telemetry.metrics import EngineMetrics


class KillSwitch:
    """One engine's pause. Its state is `metrics.paused` (Prometheus: `exitguard_paused`)."""

    def __init__(self, clock: Clock, metrics: EngineMetrics) -> None:
        self.clock = clock
        self.metrics = metrics
        self.reason: str | None = None
        """Why new exits are refused; None while they run."""
        self._since: datetime | None = None
        self._started = 0.0

    def pause(self, reason: str) -> None:
        """Refuse new exits from now on. Pausing a paused engine replaces the reason (and logs it again)."""
        if not isinstance(reason, str) or not reason.strip():
            raise InvalidValue("reason", reason, "must be a non-empty string: an operator will ask why exits stopped")
        if self.reason is None:
            self._since, self._started = self.clock.wall(), self.clock.monotonic()
        self.reason = reason
        self.metrics.paused = True
        emit("engine_paused", reason=reason, since=self._since.isoformat() if self._since else None)

    def refused(self, record: PositionRecord, reason: str, report: Reporter) -> ExitResult:
        """The result of an exit asked for while paused: reported from states.EXIT_PAUSED, nothing changed."""
        # No attempt context: a position refused here may never have had an attempt.
        report.tell(EXIT_PAUSED, record, {"key": record.key, "token": record.token_id}, (None, None),
                    pause_reason=self.reason, reason=reason)
        assert EXIT_PAUSED.outcome is not None
        return report.finish(record, EXIT_PAUSED.outcome, attempts=0, error=f"engine paused: {self.reason}")

    def resume(self) -> None:
        """New exits run again. Resuming an engine that is not paused does nothing."""
        if self.reason is None:
            return
        reason, self.reason, self._since = self.reason, None, None
        self.metrics.paused = False
        emit("engine_resumed", reason=reason, paused_s=round(self.clock.monotonic() - self._started, 3))
