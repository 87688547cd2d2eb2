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
    UNKNOWN = "unknown"
    """Timeout, lost or unreadable answer: the order may have executed."""


class AnswerEffect(StrEnum):
    REFRESH_BALANCE_FIRST = "refresh_balance_first"
    """The next verification of the token refreshes the exchange's balance cache before reading it."""
    FORGET_MARKET_RULES = "forget_market_rules"
    """The market's rules may have changed (a tick shrinks near 0 and 1): look them up again."""


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
    A.FILLED: AnswerRule("sell_filled", retryable=False),
    A.KILLED: AnswerRule("sell_killed", retryable=True),
    A.INSUFFICIENT_BALANCE: AnswerRule("sell_killed", retryable=False, effects=(E.REFRESH_BALANCE_FIRST,),
                                       divergence=DivergenceKind.INSUFFICIENT_BALANCE),
    A.REJECTED: AnswerRule("sell_killed", retryable=False, effects=(E.FORGET_MARKET_RULES,)),
    A.NOT_PROCESSED: AnswerRule("sell_killed", retryable=False),
    # Resending blindly could sell the same shares twice: only a lookup may move the position on.
    A.UNKNOWN: AnswerRule("sell_unknown", retryable=False),
}
"""Answer class -> (trigger, retryable, effects, divergence)."""


class LookupStatus(StrEnum):
    """What an order lookup found for a sell whose answer was lost."""

    FILLED = "filled"
    NOT_FILLED = "not_filled"
    """The exchange knows the order and it did not fill (killed)."""
    NOT_FOUND = "not_found"
    """The exchange has no record of the order: it never arrived."""


RESOLUTIONS: dict[tuple[LookupStatus, bool], str] = {
    # (what the lookup found, the refreshed balance is zero) -> trigger
    (LookupStatus.FILLED, False): "resolved_filled",
    (LookupStatus.FILLED, True): "resolved_filled",
    (LookupStatus.NOT_FILLED, True): "resolved_gone",
    (LookupStatus.NOT_FILLED, False): "resolved_not_filled",
    (LookupStatus.NOT_FOUND, True): "resolved_gone",
    (LookupStatus.NOT_FOUND, False): "resolved_not_filled",
}
"""How a lookup plus a balance read settles an unknown outcome. A filled lookup needs no balance read."""
