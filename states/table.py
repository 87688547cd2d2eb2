"""The position machine as one table: source, trigger, guards, destination, and why the edge exists.

It reads like the table in DESIGN.md. The machine, the diagrams and the every-pair test are all
generated from it; a (state, trigger) pair that is not here is refused.
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
    before: tuple[Callback, ...] = ()
    after: tuple[Callback, ...] = ()


O, V, S, C, R, D = State.OPEN, State.VERIFYING, State.SELLING, State.CLOSED, State.RECONCILED, State.DUST
verified = (effects.record_verified_balance,)

TABLE: tuple[Edge, ...] = (
    Edge(O, "request_exit", (), V, "an exit attempt starts", before=(effects.begin_attempt,)),
    Edge(V, "balance_fetched", (balance_is_zero_and_settled,), R, "already exited: clean up, no sell",
         before=verified),
    Edge(V, "balance_fetched", (balance_is_sellable,), S, "sell exactly the verified balance",
         before=verified, after=(effects.issue_sell_permit,)),
    Edge(V, "balance_fetched", (balance_is_dust,), D, "below the minimum order: residual recorded",
         before=(*verified, effects.record_residual)),
    Edge(V, "verify_failed", (), O, "no sell; the exit may be retried later"),
    Edge(S, "sell_filled", (sell_answer_pending,), C, "our FOK order filled", before=(effects.record_sold,)),
    Edge(S, "sell_killed", (sell_answer_pending, exchange_said_no_fill), O, "a retry must verify again"),
    # Timeout / lost response: stay, flagged. Resending blindly could sell twice.
    Edge(S, "sell_unknown", (sell_answer_pending,), S, "outcome unknown: never resend blindly",
         after=(effects.flag_unresolved,)),
    Edge(S, "resolved_filled", (outcome_is_unresolved,), C, "lookup found the fill",
         before=(effects.record_sold,)),
    Edge(S, "resolved_not_filled", (outcome_is_unresolved,), O, "lookup: no fill, shares still held"),
    Edge(S, "resolved_gone", (outcome_is_unresolved,), R, "no order found, balance gone: reconciled"),
)

TRIGGERS: tuple[str, ...] = tuple(dict.fromkeys(edge.trigger for edge in TABLE))

PAYLOAD: dict[str, frozenset[str]] = {
    "request_exit": frozenset({"reason", "limit_price", "attempt_id"}),
    "balance_fetched": frozenset({"verdict", "verified_at"}),
    "verify_failed": frozenset({"error"}),
    "sell_filled": frozenset({"shares"}),
    "sell_killed": frozenset({"reason", "definitely_not_filled"}),
    "sell_unknown": frozenset({"error"}),
    "resolved_filled": frozenset({"shares"}),
    "resolved_not_filled": frozenset(),
    "resolved_gone": frozenset(),
}
"""Keyword arguments each trigger must carry."""

ON_EXIT: dict[State, tuple[Callback, ...]] = {S: (effects.end_sell_attempt,)}
