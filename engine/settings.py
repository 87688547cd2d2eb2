"""Validators for the engine's own settings (counts and durations): a clear error naming the setting, before
anything starts. Quantities and prices are not settings: they are exact, and states/quantities.py parses them."""

from __future__ import annotations

import math

from exitguard.states import InvalidValue


def parse_count(value: object, field: str, minimum: int = 1, maximum: int | None = None) -> int:
    """A whole-number setting (attempts, ticks, concurrency). bool is refused: True is not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValue(field, value, f"must be an integer >= {minimum}")
    if maximum is not None and value > maximum:
        raise InvalidValue(field, value, f"must be an integer <= {maximum}")
    return value


def parse_seconds(value: object, field: str, *, allow_zero: bool = False) -> float:
    """A duration setting in seconds. Durations are not quantities, so int and float are both fine; bool,
    NaN and negatives are refused (and zero unless `allow_zero`)."""
    # An infinite (or 10^400-second) wait is a hang, not a setting.
    seconds = float(value) if isinstance(value, (int, float)) and abs(value) < 1e15 else math.nan
    if isinstance(value, bool) or not math.isfinite(seconds) or not (seconds >= 0 if allow_zero else seconds > 0):
        raise InvalidValue(field, value, "must be a number of seconds >= 0" if allow_zero
                           else "must be a positive number of seconds")
    return seconds


def parse_backoff(value: object, field: str) -> tuple[float, float]:
    """(first delay, longest delay) in seconds: each positive, the longest not below the first."""
    if not isinstance(value, tuple) or len(value) != 2:
        raise InvalidValue(field, value, "must be a tuple (first delay, longest delay) in seconds")
    first, longest = parse_seconds(value[0], f"{field}[0]"), parse_seconds(value[1], f"{field}[1]")
    if longest < first:
        raise InvalidValue(field, value, "the longest delay must not be below the first")
    return first, longest
