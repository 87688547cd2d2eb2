"""Errors raised by the pure core. Each names the field and the value that was refused."""

from __future__ import annotations


class InvalidValue(ValueError):
    """An input that cannot be used as given. Nothing was changed when this is raised."""

    def __init__(self, field: str, value: object, why: str) -> None:
        self.field = field
        self.value = value
        self.why = why
        super().__init__(f"{field}={value!r}: {why}")


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
