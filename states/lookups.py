"""What an order lookup proves about a sell whose answer was lost, and how the unknown outcome settles.

A lookup that finds nothing is not a "no": an order can arrive after its request was answered (or after the
answer was lost), and a filled order drops out of the exchange's order endpoint (py-clob-client #217). So
there are three witnesses, asked in order:
1. the order itself, as the exchange shows it: matched (filled), or terminal with nothing matched;
2. a trade query that *succeeded*, once the order can no longer arrive (the lookup horizon has passed since
   the request left our hands): no trade of ours means no fill, because a FOK fills all or nothing;
3. the balance read after a cache refresh: where the unfilled shares are (still held, or gone elsewhere). It
   decides nothing about the fill; a balance that moved without a trade of ours is a divergence.
Until the first or the second witness concludes, the outcome stays UNKNOWN: nothing fires.
"""

from __future__ import annotations

from enum import StrEnum


class LookupStatus(StrEnum):
    """What an order lookup found, as the exchange adapter reports it (no decision yet)."""

    FILLED = "filled"
    """The order is matched, or a trade of ours names it."""
    NOT_FILLED = "not_filled"
    """The exchange shows the order itself in a terminal state with nothing matched (a killed FOK)."""
    NOT_FOUND = "not_found"
    """The order endpoint knows nothing of it (404, `null`, an empty body) *and* a trade query that succeeded
    shows no trade of it. Not a "no" on its own: the order may still arrive. A failed query raises instead."""
    PENDING = "pending"
    """Live or delayed on the exchange, still in the adapter's hands (its worker has not returned), or a status
    nobody documents: it may still fill."""


class Conclusion(StrEnum):
    """What the lookup proves, once the horizon is taken into account."""

    FILLED = "filled"
    TERMINAL_UNFILLED = "terminal_unfilled"
    """The exchange reports the order terminal and unfilled."""
    NO_TRADE_PAST_HORIZON = "no_trade_past_horizon"
    """The order can no longer arrive and a trade query that succeeded shows no trade of it."""
    UNKNOWN = "unknown"
    """Nothing proven yet: the position stays SELLING, flagged, and is looked up again later."""


L, C = LookupStatus, Conclusion

CONCLUSIONS: dict[tuple[LookupStatus, bool], Conclusion] = {
    # (what the lookup found, the order can no longer arrive) -> what it proves
    (L.FILLED, False): C.FILLED,
    (L.FILLED, True): C.FILLED,
    (L.NOT_FILLED, False): C.TERMINAL_UNFILLED,
    (L.NOT_FILLED, True): C.TERMINAL_UNFILLED,
    # It may still arrive, or its trade may not be visible yet: an empty answer proves nothing before the horizon.
    (L.NOT_FOUND, False): C.UNKNOWN,
    (L.NOT_FOUND, True): C.NO_TRADE_PAST_HORIZON,
    # Still on the exchange (or on its way): only the exchange moving it on can settle it.
    (L.PENDING, False): C.UNKNOWN,
    (L.PENDING, True): C.UNKNOWN,
}
"""(lookup status, past the horizon) -> conclusion. A 404 of the order endpoint reaches here as NOT_FOUND
(after the trade query), so it settles once the horizon has passed: it never leaves a position stuck."""

UNFILLED = frozenset({C.TERMINAL_UNFILLED, C.NO_TRADE_PAST_HORIZON})
"""Conclusions that the sell sold nothing: the balance is read (after a refresh) to say where the shares are."""

RESOLUTIONS: dict[tuple[Conclusion, bool], str | None] = {
    # (conclusion, the refreshed balance is zero) -> trigger; None: nothing fires, the outcome stays UNKNOWN
    (C.FILLED, False): "resolved_filled",
    (C.FILLED, True): "resolved_filled",
    (C.TERMINAL_UNFILLED, True): "resolved_gone",
    (C.TERMINAL_UNFILLED, False): "resolved_not_filled",
    (C.NO_TRADE_PAST_HORIZON, True): "resolved_gone",
    (C.NO_TRADE_PAST_HORIZON, False): "resolved_not_filled",
    (C.UNKNOWN, False): None,
    (C.UNKNOWN, True): None,
}
"""How a conclusion plus the refreshed balance settles an unknown outcome. A filled one needs no balance
read; an unknown one fires nothing (reconcile returns UNKNOWN)."""


def conclude(found: LookupStatus, past_horizon: bool) -> Conclusion:
    return CONCLUSIONS[(found, past_horizon)]


def balance_moved_without_fill(verified_balance: int, balance: int) -> bool:
    """Our sell sold nothing, yet the balance differs from the one the sell was verified against: something
    else moved the shares (another process, a settlement), or the exchange's figures disagree."""
    return balance != verified_balance
