"""Structured logging: one event name per situation, with the fields an operator needs.

Every log line the engine writes goes through `emit`, which only accepts the names in `EVENTS`, so the
list below is the complete vocabulary. Fields travel in loguru's `extra` (JSON lines: `record.extra`).
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

from loguru import logger

from exitguard.states import MACHINE

EVENTS: dict[str, str] = {
    "position_tracked": "DEBUG",
    "exit_already_complete": "INFO",
    "exit_balance_mismatch": "WARNING",
    "exit_dust_residual": "WARNING",
    "exit_filled": "INFO",
    "exit_not_filled": "WARNING",
    "exit_retrying": "INFO",
    "exit_permit_expired": "WARNING",
    "exit_in_progress_refused": "WARNING",
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
    "recovery_reopened": "WARNING",
    "recovery_summary": "INFO",
    "journal_write_failed": "ERROR",
    "unknown_outcome_retry_scheduled": "WARNING",
    "shutdown_grace_expired": "ERROR",
    "divergence_alert": "ERROR",
    "divergence_alert_hook_failed": "ERROR",
}
"""Event name -> level."""


LEVEL_NO = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "SUCCESS": 25, "WARNING": 30, "ERROR": 40, "CRITICAL": 50}


def enabled(event: str) -> bool:
    """Whether any handler takes this event's level. loguru keeps the lowest level any handler accepts
    in its core (pinned to loguru 0.7); a DEBUG event with an INFO sink then costs nothing to skip."""
    return LEVEL_NO[EVENTS[event]] >= getattr(getattr(logger, "_core", None), "min_level", 0)


def emit(event: str, **fields: object) -> None:
    level = EVENTS[event]
    # Building a record nobody takes costs more than the work it reports at 100,000 tracked positions.
    if not enabled(event):
        return
    text = " ".join(f"{name}={value}" for name, value in fields.items() if value is not None)
    # depth=1: the record names the engine function that emitted, not this helper.
    logger.opt(depth=1).bind(event=event, **fields).log(level, f"{event} {text}" if text else event)


HUMAN_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> | <level>{level: <7}</level> | {message}"


def configure_logging(*, json: bool = False, level: str = "INFO", sink: TextIO | None = None) -> int:
    """Replace loguru's handlers with one: human-readable lines, or JSON lines when `json=True`.

    For embedding bots that already configure loguru this is optional; the engine only emits.
    Returns the handler id.
    """
    logger.remove()
    target = sink if sink is not None else sys.stderr
    if json:
        return logger.add(target, level=level, serialize=True)
    return logger.add(target, level=level, format=HUMAN_FORMAT, colorize=False)


class _DropPositionMachineChatter(logging.Filter):
    """`transitions` logs every state enter/exit of every machine at INFO through stdlib logging. For
    the position machine those lines repeat, unstructured, what the engine's own events say, and a bot
    with `logging.basicConfig(level=INFO)` would get two per transition. Only this machine's records
    are dropped; other machines in the host process keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and args[0] == MACHINE.name)


logging.getLogger("transitions.core").addFilter(_DropPositionMachineChatter())
