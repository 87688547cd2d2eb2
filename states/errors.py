"""Errors raised by the pure core. Each names the field and the value that was refused."""

from __future__ import annotations


class InvalidValue(ValueError):
    """An input that cannot be used as given. Nothing was changed when this is raised."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"{field}={shown(value)}: {why}")


class QuantityOutOfBounds(InvalidValue):
    """A quantity beyond the absolute bound (states.quantities.MAX_SHARES), or an exponent no real amount has.

    From the caller it is bad input like any other; from the exchange it is an answer that cannot be true,
    so the engine records a divergence and sells nothing on it."""


SHOWN_CHARACTERS = 200


def shown(value: object) -> str:
    """The value's repr, cut short: an absurd input (a megabyte of digits) must not become an absurd message."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int past Python's digit limit; a structure nested too deep
        return f"<{type(value).__name__} too long to show>"
    return text if len(text) <= SHOWN_CHARACTERS else f"{text[:SHOWN_CHARACTERS]}... ({len(text)} characters)"


class TransitionRefused(RuntimeError):
    """A trigger that the position machine does not allow from the current state (or whose guard failed).

    The position is left exactly as it was.
    """

    def __init__(self, key: str, state: str, trigger: str, why: str) -> None:
        self.key = key
        self.state = state
        self.trigger = trigger
        super().__init__(f"position {key!r}: {trigger} refused in state {state}: {why}")


class PermitError(RuntimeError):
    """A sell permit that must not be used: already used, stale, or never issued."""
