"""What an exit cut short becomes: the trigger that makes the record tell the truth again.

Two situations, one table each: an exit cancelled while this engine runs (INTERRUPTED), and a position
the journal shows in flight when an engine starts after a crash (RESTARTED). The key is the state and
whether an order may have left: a sell that may have been sent is never taken as "not filled".
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exitguard.states.outcomes import DivergenceKind
from exitguard.states.record import State


@dataclass(frozen=True, slots=True)
class Settle:
    trigger: str
    payload: dict[str, object] = field(default_factory=dict)
    divergence: DivergenceKind | None = None
    look_up: bool = False
    """The order may have executed: the position waits for an order lookup (never a resend)."""


V, S = State.VERIFYING, State.SELLING

INTERRUPTED: dict[tuple[State, bool], Settle] = {
    # (state, a sell may be in flight)
    (V, False): Settle("verify_failed", {"error": "exit interrupted before the balance was verified"}),
    (S, False): Settle("sell_killed", {"reason": "exit interrupted before the sell was sent",
                                       "definitely_not_filled": True}),
    (S, True): Settle("sell_unknown", {"error": "exit interrupted while the sell was in flight"},
                      DivergenceKind.UNKNOWN_OUTCOME, look_up=True),
}
"""A cancelled exit (event `exit_interrupted`). An unresolved SELLING is already truthful: no row."""

RESTARTED: dict[tuple[State, bool], Settle] = {
    # (state, an order id was journaled before the post)
    (V, False): Settle("verify_failed", {"error": "engine restarted while verifying; nothing was sent"}),
    (V, True): Settle("verify_failed", {"error": "engine restarted while verifying; nothing was sent"}),
    (S, False): Settle("sell_killed", {"reason": "engine restarted before the order was signed",
                                       "definitely_not_filled": True}),
    (S, True): Settle("sell_unknown", {"error": "engine restarted with this order possibly sent"}, look_up=True),
}
"""A journal's position in flight at start (event `recovery_reopened` unless it needs a lookup). An
unresolved SELLING needs no trigger: it is looked up as it is."""


def on_interrupt(state: State, unresolved: bool, in_flight: bool) -> Settle | None:
    return None if unresolved else INTERRUPTED.get((state, in_flight))


def on_restart(state: State, unresolved: bool, order_journaled: bool) -> Settle | None:
    return None if unresolved else RESTARTED.get((state, order_journaled))
