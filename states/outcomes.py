"""What each transition means to the bot and the operator: one row per (trigger, destination).

The engine fires a trigger, then reads the row for the edge it took: the log event to emit, the kind of
divergence to record (memory and exchange disagreed), and the outcome `exit()` returns. No engine code
picks an event or an outcome by looking at the new state; a new edge without a row here fails a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from exitguard.states.errors import QuantityOutOfBounds
from exitguard.states.record import State


class ExitOutcome(StrEnum):
    CLOSED = "CLOSED"
    """Sold: the FOK filled (or a lookup found that it had)."""
    ALREADY_EXITED = "ALREADY_EXITED"
    """The exchange shows no shares: cleaned up without a sell."""
    DUST = "DUST"
    """A balance below the minimum order remains; nothing could be sold."""
    NOT_FILLED = "NOT_FILLED"
    """The exchange definitely sold nothing; the position is OPEN again."""
    VERIFY_FAILED = "VERIFY_FAILED"
    """The balance could not be verified; nothing was sent; the position is OPEN."""
    IN_PROGRESS = "IN_PROGRESS"
    """Another exit of this position is in flight; this call did nothing."""
    UNKNOWN = "UNKNOWN"
    """The sell may or may not have executed; the position stays SELLING until reconciled."""
    PAUSED = "PAUSED"
    """The engine is paused (`ExitEngine.pause`): nothing was read or sent; the position is as it was."""
    MARKET_CLOSED = "MARKET_CLOSED"
    """The market no longer trades (closed, resolved, its order book gone): nothing was sold and nothing will
    be; the position is OPEN and its shares are redeemed on chain once the market resolves, not sold."""


class DivergenceKind(StrEnum):
    """Each way memory and the exchange can disagree. Counted by the divergence detector."""

    BALANCE_MISMATCH = "balance_mismatch"
    ALREADY_EXITED = "already_exited"
    DUST = "dust"
    UNKNOWN_OUTCOME = "unknown_outcome"
    UNKNOWN_OUTCOME_RESOLVED = "unknown_outcome_resolved"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    FILL_MISMATCH = "fill_mismatch"
    SETTLEMENT_FAILED = "settlement_failed"
    ABSURD_QUANTITY = "absurd_quantity"
    """The exchange answered a quantity that cannot be true (beyond states.MAX_SHARES, an overflowing
    exponent): nothing is sold on it, and the exchange and we disagree about what the wallet holds."""
    BALANCE_MOVED_WITHOUT_FILL = "balance_moved_without_fill"
    """A lost sell proven unfilled (no trade of ours), yet the refreshed balance differs from the one the sell
    was verified against: something other than our sell moved the shares, or the exchange's figures disagree."""


@dataclass(frozen=True, slots=True)
class Report:
    event: str | None
    """The log event (engine/telemetry/logs.py EVENTS) that says what happened; None: nothing to say yet."""
    divergence: DivergenceKind | None
    outcome: ExitOutcome | None
    """What `exit()` / `reconcile()` returns when it ends on this edge; None: the exit goes on."""
    facts: tuple[str, ...] = ()
    """What the event carries beside the exit's context (docs/log-events.md): the engine hands over what it
    knows and the event takes these."""
    hint: str | None = None
    """What the operator does next, when the outcome alone does not say it: the event carries it as `hint`
    and the result's `error` ends with it."""


O, V, S, C, R, D = State.OPEN, State.VERIFYING, State.SELLING, State.CLOSED, State.RECONCILED, State.DUST
K = DivergenceKind
X = ExitOutcome

VERIFY_FAILED = ("error", "error_type")
SELL_ANSWER = ("shares", "limit_price", "error", "error_type")
RESOLVED = ("lookup", "state", "sent", "filled")
REDEEM_HINT = ("the market no longer trades: redeem the shares on chain once it resolves (they cannot be sold; "
               "no exit of this token will send an order)")
CLOSED_MARKET = ("error", "error_type")

REPORTS: dict[tuple[str, State], Report] = {
    ("request_exit", V): Report(None, None, None),
    ("balance_fetched", R): Report("exit_already_complete", K.ALREADY_EXITED, X.ALREADY_EXITED, ("expected",)),
    # A mismatch on the way to SELLING is reported from the verdict (BALANCE_MISMATCH below), not the edge.
    ("balance_fetched", S): Report(None, None, None),
    ("balance_fetched", D): Report("exit_dust_residual", K.DUST, X.DUST, ("expected", "actual", "min_order_size")),
    # Zero inside the settlement window of the last buy: the cache may lag the buy. Not an exit, not a sell.
    ("balance_fetched", O): Report("balance_verify_failed", None, X.VERIFY_FAILED, VERIFY_FAILED),
    ("verify_failed", O): Report("balance_verify_failed", None, X.VERIFY_FAILED, VERIFY_FAILED),
    ("sell_filled", C): Report("exit_filled", None, X.CLOSED,
                               ("shares", "avg_price", "limit_price", "order_id", "settlement_pending")),
    # The answer class adds its own divergence (insufficient balance); the edge itself is a plain "no".
    ("sell_killed", O): Report("exit_not_filled", None, X.NOT_FILLED, SELL_ANSWER),
    ("sell_expired", O): Report("exit_permit_expired", None, X.NOT_FILLED, ("permit_age_s", "max_age_s")),
    ("sell_unknown", S): Report("exit_outcome_unknown", K.UNKNOWN_OUTCOME, X.UNKNOWN, SELL_ANSWER),
    ("resolved_filled", C): Report("exit_outcome_resolved", K.UNKNOWN_OUTCOME_RESOLVED, X.CLOSED, RESOLVED),
    ("resolved_not_filled", O): Report("exit_outcome_resolved", K.UNKNOWN_OUTCOME_RESOLVED, X.NOT_FILLED, RESOLVED),
    ("resolved_gone", R): Report("exit_outcome_resolved", K.UNKNOWN_OUTCOME_RESOLVED, X.ALREADY_EXITED, RESOLVED),
    # The shares are still held and no sell can ever take them: OPEN, with the hint to redeem, never NOT_FILLED
    # (a bot would retry it for ever). Learned from the rules read (no book) or from the sell's refusal.
    ("market_closed", O): Report("exit_market_closed", None, X.MARKET_CLOSED, CLOSED_MARKET, hint=REDEEM_HINT),
}
"""(trigger, destination) -> what the engine reports after firing it on an exit's path."""

BALANCE_MISMATCH = Report("exit_balance_mismatch", K.BALANCE_MISMATCH, None,
                          ("expected", "actual", "difference", "selling"))
"""A sellable balance other than the expected shares: warn, and sell the verified balance."""
EXIT_PAUSED = Report("exit_paused_refused", None, X.PAUSED, ("pause_reason", "reason"))
"""An exit asked for while the engine is paused: refused before any read or transition (no edge is taken)."""
FILL_MISMATCH = Report(None, K.FILL_MISMATCH, None)
"""A fill of other than the permit's shares (a FOK fills whole: the exchange and we disagree)."""

VERIFY_DIVERGENCES: dict[type[Exception], DivergenceKind] = {
    # "1e30" or 10^24 raw units: no wallet holds that; selling it would be an absurd order.
    QuantityOutOfBounds: K.ABSURD_QUANTITY,
}
"""A verification that failed on one of these errors is also a divergence (exchange and memory disagree)."""


def verify_divergence(error: Exception) -> DivergenceKind | None:
    """The divergence a failed verification records, if its error is one (VERIFY_DIVERGENCES)."""
    return next((kind for cls, kind in VERIFY_DIVERGENCES.items() if isinstance(error, cls)), None)
