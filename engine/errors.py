"""Errors the engine raises and the typed answers an exchange adapter gives.

Every exchange failure is one of three kinds, because each demands a different next step:
definitely not filled (the position may be retried after a fresh verification), unknown outcome
(it may have filled: never resend, reconcile), and transient (nothing happened; try later).
"""

from __future__ import annotations

from typing import ClassVar

from exitguard.states.answers import SellAnswer
from exitguard.states.errors import InvalidValue, PermitError, QuantityOutOfBounds, TransitionRefused, shown

__all__ = [
    "EngineClosed",
    "ExchangeError",
    "ExitRefused",
    "InsufficientBalance",
    "InvalidValue",
    "JournalError",
    "MarketClosed",
    "NotFilled",
    "OrderKilled",
    "OrderRejected",
    "PermitError",
    "PermitExpired",
    "PositionConflict",
    "QuantityOutOfBounds",
    "ScenarioError",
    "TransientError",
    "TransitionRefused",
    "UnknownOutcome",
    "UnknownPosition",
    "WalletInUse",
    "answer_of",
]


class UnknownPosition(KeyError):
    def __init__(self, key: object) -> None:
        self.key = key
        super().__init__(key)

    def __str__(self) -> str:
        return f"position key={self.key!r}: not tracked by this engine"


class PositionConflict(ValueError):
    """A second live position for a key or token. The exchange holds one balance per token, so two
    live positions on one token would each "verify" the other's shares and sell them. A key tracked again
    with other figures than it has (journaled or in memory) names each one in `differences`."""

    def __init__(self, message: str, *, differences: tuple[tuple[str, object, object], ...] = ()) -> None:
        super().__init__(message)
        self.differences = differences
        """(field, the tracked value, the new value) for each field a re-track would change."""


class ExitRefused(RuntimeError):
    """`exit()` on a position that is already finished (CLOSED, RECONCILED or DUST)."""

    def __init__(self, key: str, state: str) -> None:
        self.key = key
        self.state = state
        super().__init__(f"position key={key!r}: no exit from state {state}; the position is finished")


class ScenarioError(ValueError):
    """A scenario line (`exitguard run`, `exitguard.cli.scenario`) that cannot be run; the message names the
    line and the field."""

    def __init__(self, source: str, line: int, field: str, why: str) -> None:
        self.source, self.line, self.field = source, line, field
        super().__init__(f"{source}:{line}: field {field!r}: {why}")

    @classmethod
    def from_invalid(cls, source: str, line: int, err: InvalidValue) -> ScenarioError:
        return cls(source, line, err.field, f"{shown(err.value)}: {err.why}")


class EngineClosed(RuntimeError):
    """The engine is used outside its `async with` block."""


class JournalError(RuntimeError):
    """The journal cannot be used: corrupted, foreign, newer, unwritable, or held by another engine.
    Raised when the engine starts, before anything is overwritten or sent."""

    def __init__(self, path: object, why: str) -> None:
        self.path = str(path)
        super().__init__(f"journal {self.path}: {why}")


class UnjournaledSales(JournalError):
    """After an unclean stop, the exchange shows sales of ours whose orders the journal does not know: it lost
    writes (or something else sold from the wallet). Raised when the engine starts, before anything is sent."""

    def __init__(self, path: object, orders: tuple[str, ...], why: str) -> None:
        self.orders = orders
        super().__init__(path, why)


class WalletInUse(RuntimeError):
    """Another live engine on this host trades the same wallet (exchange.wallet): two would sell the same
    shares. Raised when the engine starts, before anything is sent."""

    def __init__(self, wallet: str, pid: str) -> None:
        self.wallet = wallet
        self.pid = pid
        super().__init__(f"wallet {wallet}: in use by another engine on this host (pid {pid}); one engine per "
                         "wallet, or two would sell the same shares")


class ExchangeError(Exception):
    """Base of every typed answer from an exchange adapter. Each class is one answer class of
    `states.answers.SellAnswer`; what the engine does with it is decided there (SELL_ANSWERS)."""

    answer: ClassVar[SellAnswer] = SellAnswer.UNKNOWN
    definitely_not_filled: ClassVar[bool] = False
    """True only when the exchange guarantees that no shares changed hands."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class NotFilled(ExchangeError):
    """The exchange said no: nothing was sold."""

    answer = SellAnswer.NOT_PROCESSED
    definitely_not_filled = True


class OrderKilled(NotFilled):
    """FOK could not be filled completely at the limit, so it was killed."""

    answer = SellAnswer.KILLED


class InsufficientBalance(NotFilled):
    """The exchange refused a sell above the balance: our verified figure and the exchange disagree."""

    answer = SellAnswer.INSUFFICIENT_BALANCE


class OrderRejected(NotFilled):
    """Refused as malformed: price off tick, size below minimum or off step, duplicate, etc."""

    answer = SellAnswer.REJECTED


class PermitExpired(NotFilled):
    """The adapter did not send the order: by the time it was about to leave (after waiting for a
    connection, a rate-limit slot, signing), the permit's verification was older than `permit_max_age`."""

    answer = SellAnswer.EXPIRED


class MarketClosed(ExchangeError):
    """The market no longer trades: closed or resolved, its order book gone. Raised for the market's rules
    (Polymarket: GET /book answers 404 "No orderbook exists ...") and for a sell the exchange refused because
    of it. Nothing was sold, and no sell of the token can be: its shares are redeemed on chain, not sold."""

    answer = SellAnswer.MARKET_CLOSED
    definitely_not_filled = True


class TransientError(ExchangeError):
    """Rate limited, engine restarting or paused: the request was not processed."""

    answer = SellAnswer.NOT_PROCESSED
    definitely_not_filled = True


class UnknownOutcome(ExchangeError):
    """The order may or may not have executed (timeout, dropped connection, lost response)."""


def answer_of(error: BaseException) -> SellAnswer:
    """The answer class of whatever a sell raised. Anything that is not a typed answer of the exchange (a
    timeout, a cut connection, a bug in an adapter) may have come after the order left: UNKNOWN."""
    return error.answer if isinstance(error, ExchangeError) else SellAnswer.UNKNOWN
