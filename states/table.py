"""The position machine as one table: source, trigger, guards, destination, payload, and why the edge exists.

It reads like the table in DESIGN.md. The machine, the diagrams and the every-pair test are all generated
from it; a (state, trigger) pair that is not here is refused. Each row also says what the trigger must
carry and what the transition writes on the record, so nothing about an edge lives anywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from transitions import EventData

from exitguard.states import effects
from exitguard.states.guards import (
    balance_is_dust,
    balance_is_sellable,
    balance_is_zero_and_settled,
    balance_is_zero_but_unsettled,
    exchange_said_no_fill,
    outcome_is_unresolved,
    sell_answer_pending,
)
from exitguard.states.record import State

Callback = Callable[[EventData], bool | None]


@dataclass(frozen=True)
class Edge:
    source: State
    trigger: str
    guards: tuple[Callback, ...]
    dest: State
    note: str
    payload: frozenset[str] = frozenset()
    """Keyword arguments the trigger must carry."""
    before: tuple[Callback, ...] = ()
    after: tuple[Callback, ...] = ()


O, V, S, C, R, D = State.OPEN, State.VERIFYING, State.SELLING, State.CLOSED, State.RECONCILED, State.DUST


def _carries(*names: str) -> frozenset[str]:
    return frozenset(names)


REQUEST = _carries("reason", "limit_price", "attempt_id")
BALANCE = _carries("verdict", "verified_at")
verified = (effects.record_verified_balance,)
# Every edge out of SELLING spends the permit and clears the sell in flight; a self-edge does not.
leave_selling = (effects.end_sell_attempt,)

TABLE: tuple[Edge, ...] = (
    Edge(O, "request_exit", (), V, "an exit attempt starts", REQUEST, before=(effects.begin_attempt,)),
    Edge(V, "balance_fetched", (balance_is_zero_and_settled,), R, "already exited: clean up, no sell", BALANCE,
         before=verified),
    Edge(V, "balance_fetched", (balance_is_sellable,), S, "sell exactly the verified balance", BALANCE,
         before=verified, after=(effects.issue_sell_permit,)),
    Edge(V, "balance_fetched", (balance_is_dust,), D, "below the minimum order: residual recorded", BALANCE,
         before=(*verified, effects.record_residual)),
    # Not in DESIGN.md's drawing: a zero inside the settlement window of the last buy is the exchange's
    # cache lagging the buy, not an exit. Without this edge the engine decided it by a branch before firing.
    Edge(V, "balance_fetched", (balance_is_zero_but_unsettled,), O, "zero while the last buy settles: retry later",
         BALANCE, before=verified),
    Edge(V, "verify_failed", (), O, "no sell; the exit may be retried later", _carries("error")),
    # Not in DESIGN.md's drawing (its public API names MARKET_CLOSED): the rules read found the market closed
    # (no order book). The shares are still held, to be redeemed; no balance is read and nothing is sent.
    Edge(V, "market_closed", (), O, "market no longer trades: nothing sent, redeem", _carries("reason")),
    Edge(S, "sell_filled", (sell_answer_pending,), C, "our FOK order filled", _carries("shares"),
         before=(effects.record_sold, *leave_selling)),
    Edge(S, "sell_killed", (sell_answer_pending, exchange_said_no_fill), O, "a retry must verify again",
         _carries("reason", "definitely_not_filled"), before=leave_selling),
    # Not in DESIGN.md's drawing: the permit went stale before the order left, so nothing was sent. Its own
    # edge because it is no answer of the exchange's: the report says why nothing was sold.
    Edge(S, "sell_expired", (sell_answer_pending,), O, "permit stale before sending: nothing sent",
         _carries("reason"), before=leave_selling),
    # Not in DESIGN.md's drawing: the sell was refused because the market closed (its book vanished after the
    # verification). A definite "no" of its own: never NOT_FILLED, which a bot would retry for ever.
    Edge(S, "market_closed", (sell_answer_pending,), O, "refused, market closed: nothing sold, redeem",
         _carries("reason"), before=leave_selling),
    # Timeout / lost response: stay, flagged. Resending blindly could sell twice. Internal (no exit
    # callbacks): the permit in flight is what reconciliation looks up.
    Edge(S, "sell_unknown", (sell_answer_pending,), S, "outcome unknown: never resend blindly", _carries("error"),
         after=(effects.flag_unresolved,)),
    Edge(S, "resolved_filled", (outcome_is_unresolved,), C, "lookup found the fill", _carries("shares"),
         before=(effects.record_sold, *leave_selling)),
    Edge(S, "resolved_not_filled", (outcome_is_unresolved,), O, "lookup: no fill, shares still held",
         before=leave_selling),
    Edge(S, "resolved_gone", (outcome_is_unresolved,), R, "no order found, balance gone: reconciled",
         before=leave_selling),
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(edge.trigger for edge in TABLE))


def _payloads() -> dict[str, frozenset[str]]:
    payloads: dict[str, frozenset[str]] = {}
    for edge in TABLE:
        if payloads.setdefault(edge.trigger, edge.payload) != edge.payload:
            raise ValueError(f"edges of {edge.trigger} disagree on its payload")
    return payloads


PAYLOAD: dict[str, frozenset[str]] = _payloads()
"""Trigger -> the keyword arguments it must carry (read from the rows)."""
