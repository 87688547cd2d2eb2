"""Validators for the engine's own settings (counts and durations): a clear error naming the setting, before
anything starts. Quantities and prices are not settings: they are exact, and states/quantities.py parses them."""

from __future__ import annotations

from exitguard.states import InvalidValue


def parse_count(value: object, field: str, minimum: int = 1) -> int:
    """A whole-number setting (attempts, ticks, concurrency). bool is refused: True is not a count."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidValue(field, value, f"must be an integer >= {minimum}")
    return value


def parse_seconds(value: object, field: str, *, allow_zero: bool = False) -> float:
    """A duration setting in seconds. Durations are not quantities, so int and float are both fine; bool,
    NaN and negatives are refused (and zero unless `allow_zero`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value >= 0 if allow_zero else value > 0):
        raise InvalidValue(field, value, "must be a number of seconds >= 0" if allow_zero
                           else "must be a positive number of seconds")
    return float(value)
