"""When a balance reading may be trusted, and when the exchange's balance cache must be refreshed first.

The exchange's balance is a server-side cache that can lag fills, in both directions: it can still show
shares we just sold (a new position on the token would then sell them twice) and it can miss shares a
buy just delivered. A refresh costs a round trip, so it is asked for only where a lag is plausible.
"""

from __future__ import annotations

from enum import StrEnum


class RefreshReason(StrEnum):
    MARKED = "marked"
    """Since the last successful refresh of the token, our own sell filled on it (or was found filled),
    or the exchange refused a sell for lack of balance: the cache is known to be behind. Refresh before
    the first read."""
    BELOW_EXPECTED = "below_expected"
    """Fewer shares than the position holds: the cache may lag a buy. Refresh, read again."""
    ABOVE_EXPECTED = "above_expected"
    """More shares than the engine knows are held: the cache may still show shares sold since
    (ours or another process's). Refresh, read again: never sell on a figure only a stale cache shows."""


def balance_refresh(*, marked: bool, reading: int | None, expected: int) -> RefreshReason | None:
    """Whether to refresh the exchange's balance cache, and why; None: trust what was (or will be) read.

    Asked twice per verification: before the first read (`reading` None), then after it. A reading that
    followed a refresh is the exchange's best answer and is not asked about again.
    """
    if reading is None:
        return RefreshReason.MARKED if marked else None
    if reading < expected:
        return RefreshReason.BELOW_EXPECTED
    if reading > expected:
        return RefreshReason.ABOVE_EXPECTED
    return None
