"""What the engine does with each class of answer to a sell: the trigger to fire, whether a fresh attempt
may follow, and what else the answer teaches.

Two layers, not rival tables: an exchange adapter maps its wire answers (status, body) to these classes,
with its sources (engine/exchange/polymarket/answers.py); this table maps the classes to the machine.
Only a class that the exchange guarantees sold nothing may fire `sell_killed`: everything the engine
cannot read is UNKNOWN, which never reopens the position.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from exitguard.states.outcomes import DivergenceKind


class SellAnswer(StrEnum):
    FILLED = "filled"
    """Matched: the FOK sold the permit's shares."""
    KILLED = "killed"
    """FOK could not fill completely at the limit: nothing sold."""
    INSUFFICIENT_BALANCE = "insufficient_balance"
    """Refused for lack of balance / allowance: nothing sold, and our verified figure was wrong."""
    REJECTED = "rejected"
    """Refused as malformed (tick, minimum size, step, credentials): nothing sold."""
    NOT_PROCESSED = "not_processed"
    """Rate limited, engine restarting or paused, or another definite "no": nothing sold."""
    EXPIRED = "expired"
    """The permit's verification grew older than `permit_max_age` while the order waited to leave (a worker
    thread, a rate-limit slot, signing): the adapter did not send it. Nothing sold; no answer of the exchange."""
    MARKET_CLOSED = "market_closed"
    """Refused because the market no longer trades (closed, resolved, its order book gone): nothing sold, and no
    later sell of the token can be either."""
    UNKNOWN = "unknown"
    """Timeout, lost or unreadable answer: the order may have executed."""


class AnswerEffect(StrEnum):
    REFRESH_BALANCE_FIRST = "refresh_balance_first"
    """The next verification of the token refreshes the exchange's balance cache before reading it."""
    FORGET_MARKET_RULES = "forget_market_rules"
    """The market's rules may have changed (a tick shrinks near 0 and 1): look them up again."""
    REMEMBER_MARKET_CLOSED = "remember_market_closed"
    """The token's market no longer trades: later exits of it end MARKET_CLOSED at once, nothing read or sent."""


@dataclass(frozen=True, slots=True)
class AnswerRule:
    trigger: str
    retryable: bool
    """A fresh verification and sell may follow within the same `exit()` (per the retry policy)."""
    effects: tuple[AnswerEffect, ...] = ()
    divergence: DivergenceKind | None = None


A = SellAnswer
E = AnswerEffect

SELL_ANSWERS: dict[SellAnswer, AnswerRule] = {
    # Our own fill: the exchange's balance cache can still show the shares just sold.
    A.FILLED: AnswerRule("sell_filled", retryable=False, effects=(E.REFRESH_BALANCE_FIRST,)),
    A.KILLED: AnswerRule("sell_killed", retryable=True),
    A.INSUFFICIENT_BALANCE: AnswerRule("sell_killed", retryable=False, effects=(E.REFRESH_BALANCE_FIRST,),
                                       divergence=DivergenceKind.INSUFFICIENT_BALANCE),
    A.REJECTED: AnswerRule("sell_killed", retryable=False, effects=(E.FORGET_MARKET_RULES,)),
    A.NOT_PROCESSED: AnswerRule("sell_killed", retryable=False),
    # Checked by the adapter at the last moment (engine/exchange/port.py SellDeadline): not sent, so no "no" of
    # the exchange either; its own edge says why nothing was sold.
    A.EXPIRED: AnswerRule("sell_expired", retryable=False),
    # A definite "no" that no retry can turn: the market is gone, the shares are redeemed, not sold. Remembered,
    # so that no later exit of the token sends an order the exchange must refuse again.
    A.MARKET_CLOSED: AnswerRule("market_closed", retryable=False, effects=(E.REMEMBER_MARKET_CLOSED,)),
    # Resending blindly could sell the same shares twice: only a lookup may move the position on.
    A.UNKNOWN: AnswerRule("sell_unknown", retryable=False),
}
"""Answer class -> (trigger, retryable, effects, divergence)."""

