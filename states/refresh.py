"""When a balance reading may be trusted, and when the exchange's balance cache must be refreshed first.

The exchange's balance is a server-side cache that can lag fills, in both directions: it can still show
shares we just sold (a new position on the token would then sell them twice) and it can miss shares a
buy just delivered. A refresh costs a round trip, and refreshes have a tighter rate limit than reads (50
per 10 s on Polymarket), so it is asked for only where a lag is plausible (issue 14): after our own fill on
the token or a sell refused for lack of balance (the token is marked), inside the settlement window of the
last buy, on a reading above what the engine knows is held, and on a zero, the one reading that ends a position
without a sale. Anywhere else a reading below the tracked shares is the truth: a buy pays its fee in shares, so
holding a little less than was bought is the normal case, and that balance is what is sold, in two calls.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum


class RefreshReason(StrEnum):
    MARKED = "marked"
    """Since the last successful refresh of the token, our own sell filled on it (or was found filled),
    or the exchange refused a sell for lack of balance: the cache is known to be behind. Refresh before
    the first read."""
    BELOW_EXPECTED = "below_expected"
    """Fewer shares than the position holds, inside the settlement window of its last buy: the cache may
    lag the buy. Refresh, read again."""
    ZERO = "zero"
    """No shares at all, outside the settlement window: "already exited" would end the position (RECONCILED) and the
    engine would never sell those shares, so a reading that may be a stale cache gets a second witness first. Rare
    (a bot exits what it holds), so it costs nothing where issue 14 counts calls."""
    ABOVE_EXPECTED = "above_expected"
    """More shares than the engine knows are held: the cache may still show shares sold since
    (ours or another process's). Refresh, read again: never sell on a figure only a stale cache shows."""


class Reading(StrEnum):
    """A first reading against the shares the position holds."""

    ZERO = "zero"
    BELOW = "below"
    SAME = "same"
    ABOVE = "above"


AFTER_THE_FIRST_READ: dict[tuple[Reading, bool], RefreshReason | None] = {
    # (the reading, inside the settlement window of the last buy) -> refresh and read again, and why
    (Reading.ZERO, True): RefreshReason.BELOW_EXPECTED,  # the buy may not be in the cache yet
    (Reading.ZERO, False): RefreshReason.ZERO,  # the end of the position without a sale: asked twice
    (Reading.BELOW, True): RefreshReason.BELOW_EXPECTED,  # the buy may not be in the cache yet
    (Reading.BELOW, False): None,  # the fee paid in shares, or shares sold elsewhere: the truth, sold as read
    (Reading.SAME, True): None,
    (Reading.SAME, False): None,
    (Reading.ABOVE, True): RefreshReason.ABOVE_EXPECTED,  # never sell on a figure only a stale cache shows
    (Reading.ABOVE, False): RefreshReason.ABOVE_EXPECTED,
}
"""The decision after a first reading of an unmarked token (a marked one was refreshed before it read)."""


def in_settlement_window(last_buy_at: datetime | None, now: datetime, window: timedelta) -> bool:
    """Whether `now` lies inside the settlement window of the last buy (none known: no)."""
    return last_buy_at is not None and now - last_buy_at < window


def balance_refresh(*, marked: bool, reading: int | None, expected: int, settling: bool) -> RefreshReason | None:
    """Whether to refresh the exchange's balance cache, and why; None: trust what was (or will be) read.

    Asked twice per verification: before the first read (`reading` None), then after it. A reading that
    followed a refresh is the exchange's best answer and is not asked about again. `settling`: inside the
    settlement window of the position's last buy (`in_settlement_window`).
    """
    if reading is None:
        return RefreshReason.MARKED if marked else None
    if reading < expected:
        compared = Reading.ZERO if reading == 0 else Reading.BELOW
    else:
        compared = Reading.ABOVE if reading > expected else Reading.SAME
    return AFTER_THE_FIRST_READ[compared, settling]
