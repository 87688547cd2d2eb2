"""Structured logging: one event name per situation, with the fields an operator needs.

Every log line the engine writes goes through `emit`, which only accepts the names in `EVENTS`, so the
list below is the complete vocabulary. Fields travel in loguru's `extra` (JSON lines: `record.extra`).

A library's logs belong to the application: the package disables itself at import
(`logger.disable("exitguard")`, loguru's convention for libraries), and nothing here removes, replaces or
reconfigures a handler it did not add. The application opts in with `logger.enable("exitguard")`, or
with `add_log_sink`, which adds exitguard's own format and turns exitguard's records on.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TextIO, TypeVar

from loguru import logger

# Silent until the application asks (loguru's convention for libraries). Here rather than in the package's
# __init__: every record goes through `emit`, so this runs before the first one can exist.
logger.disable("exitguard")

EVENTS: dict[str, str] = {
    "position_tracked": "DEBUG",
    "exit_already_complete": "INFO",
    "exit_balance_mismatch": "WARNING",
    "exit_dust_residual": "WARNING",
    "exit_filled": "INFO",
    "exit_not_filled": "WARNING",
    "exit_retrying": "INFO",
    "exit_permit_expired": "WARNING",
    "exit_market_closed": "WARNING",
    "exit_in_progress_refused": "WARNING",
    "exit_paused_refused": "WARNING",
    "engine_paused": "WARNING",
    "engine_resumed": "WARNING",
    "position_updated": "INFO",
    "exit_interrupted": "WARNING",
    "balance_verify_failed": "WARNING",
    "exit_outcome_unknown": "ERROR",
    "exit_outcome_resolved": "WARNING",
    "exit_reconcile_failed": "ERROR",
    "exit_outcome_pending": "INFO",
    "market_warm_up_failed": "WARNING",
    "exit_settled": "INFO",
    "exit_settlement_failed": "ERROR",
    "settlement_check_failed": "WARNING",
    "user_channel_connected": "INFO",
    "user_channel_disconnected": "WARNING",
    "user_channel_connect_failed": "WARNING",
    "user_channel_auth_rejected": "ERROR",
    "user_channel_event_malformed": "WARNING",
    "user_channel_backfill": "INFO",
    "user_channel_failed": "ERROR",
    "rate_tier_set": "INFO",
    "rate_tier_read_failed": "WARNING",
    "rate_limited": "WARNING",
    "rate_limit_warning": "WARNING",
    "rate_limit_header_malformed": "WARNING",
    "recovery_reopened": "WARNING",
    "recovery_summary": "INFO",
    "journal_audit_passed": "INFO",
    "journal_audit_skipped": "WARNING",
    "journal_audit_refused": "ERROR",
    "journal_write_failed": "ERROR",
    "unknown_outcome_retry_scheduled": "WARNING",
    "shutdown_grace_expired": "ERROR",
    "divergence_alert": "ERROR",
    "divergence_alert_hook_failed": "ERROR",
}
"""Event name -> level."""


class EventMessage(str):
    """An event's name that renders its fields only if a handler takes the record.

    loguru formats a message as `message.format(*args, **kwargs)`, and only after it has checked the
    level and whether the calling module is enabled; `opt(capture=True)` (the default) puts the same
    keyword arguments in `record["extra"]`. So `emit` hands its fields over as they are: when the
    package is disabled or no handler takes the level, no text, no bound logger and no record is built.
    """

    __slots__ = ()

    def format(self, *args: object, **fields: object) -> str:
        text = " ".join(f"{name}={value}" for name, value in fields.items()
                        if name != "event" and value is not None)
        return f"{self} {text}" if text else str(self)


_MESSAGES = {event: EventMessage(event) for event in EVENTS}

# depth=1: the record names the engine function that emitted (and loguru checks *its* module against
# logger.enable/disable), not this helper. Made once: `opt` builds a new logger object on every call.
_CALLER = logger.opt(depth=1)


def emit(event: str, **fields: object) -> None:
    """Log `event` at its level with `fields` in `record["extra"]`. Costs one call into loguru, which
    drops the record before building anything when exitguard is disabled or the level is off."""
    _CALLER.log(EVENTS[event], _MESSAGES[event], event=event, **fields)


_Item = TypeVar("_Item")
_LAZY_CALLER = logger.opt(depth=1, lazy=True)


def emit_each(event: str, items: Iterable[_Item], fields_of: Callable[[_Item], dict[str, object]]) -> None:
    """`emit(event, **fields_of(item))` for each item (a bulk load's 100,000 positions), the fields built only if
    the records are wanted.

    The first record goes out lazily: loguru evaluates its fields only once it has passed the level and the
    calling module's enable/disable check, so its `event` field doubles as the answer to "does anyone want these
    records?". Nothing can change that answer before this call returns (no other code runs meanwhile), so when
    the first was dropped the rest are, without one call into loguru each."""
    level, message = EVENTS[event], _MESSAGES[event]
    wanted: list[bool] = []

    def seen() -> str:
        wanted.append(True)
        return event

    iterator = iter(items)
    for first in iterator:
        _LAZY_CALLER.log(level, message, event=seen,
                         **{name: _constant(value) for name, value in fields_of(first).items()})
        break
    if wanted:
        for item in iterator:
            _CALLER.log(level, message, event=event, **fields_of(item))


def _constant(value: object) -> Callable[[], object]:
    return lambda: value


def records_enabled() -> bool:
    """Whether loguru lets exitguard's records through (`logger.enable/disable("exitguard")`).

    loguru has no public query for that, so this asks it: one record at level 0, from this module, to a
    sink of its own that is there only for the call. No handler added with a named level (TRACE is 5)
    takes level 0, so the application's sinks never see the probe. For tests and fixtures, not hot paths.
    """
    seen: list[object] = []
    probe = logger.add(seen.append, level=0, format="{message}", filter=__name__)
    try:
        logger.log(0, "exitguard records_enabled probe")
    finally:
        logger.remove(probe)
    return bool(seen)


HUMAN_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | {message}"


def add_log_sink(sink: TextIO | str | Path | None = None, *, json: bool = False, level: str = "INFO",
                 only_exitguard: bool = True) -> int:
    """Add one loguru handler with exitguard's format (or JSON lines with `json=True`) and turn
    exitguard's records on; returns the handler id, for `logger.remove(handler_id)`.

    It only adds: the application's own handlers stay as they are (and, with exitguard enabled, receive
    its records too, as any enabled library's). `sink` is a stream (default stderr) or a file path.
    `only_exitguard` (default True): this handler takes exitguard's records only, so an application
    logging to the same stream through its own handler does not get its lines twice.
    """
    logger.enable("exitguard")
    where = "exitguard" if only_exitguard else None
    if isinstance(sink, (str, Path)):
        if json:
            return logger.add(sink, level=level, serialize=True, filter=where)
        return logger.add(sink, level=level, format=HUMAN_FORMAT, colorize=False, filter=where)
    target = sys.stderr if sink is None else sink
    if json:
        return logger.add(target, level=level, serialize=True, filter=where)
    return logger.add(target, level=level, format=HUMAN_FORMAT, colorize=False, filter=where)


configure_logging = add_log_sink
"""The earlier name of `add_log_sink`, kept: the same function. Unlike before, it adds a handler and
removes none."""
