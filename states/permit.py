"""The sell permit: the only thing the exchange port's sell accepts.

Only the VERIFYING -> SELLING transition creates one, from the balance the exchange has just reported.
It is single-use and goes stale: a permit is proof of a recent verification, not a standing licence.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from exitguard.states.errors import PermitError
from exitguard.states.quantities import micro_to_shares

DEFAULT_PERMIT_MAX_AGE = 2.0
"""Seconds. An older verification may no longer describe the balance (another process, a settlement)."""


@dataclass(frozen=True, slots=True)
class SellPermit:
    position_key: str
    token_id: str
    shares: int
    """Micro-shares to sell; 0 < shares <= verified_balance."""
    verified_balance: int
    verified_at: float
    """Monotonic seconds at which the balance answer arrived (read by the engine, passed in)."""
    attempt_id: str

    def __post_init__(self) -> None:
        if not 0 < self.shares <= self.verified_balance:
            raise PermitError(
                f"permit for {self.position_key!r} would sell {self.shares} micro-shares "
                f"against a verified balance of {self.verified_balance}"
            )

    @property
    def share_amount(self) -> Decimal:
        return micro_to_shares(self.shares)


def permit_is_fresh(permit: SellPermit, now: float, max_age: float = DEFAULT_PERMIT_MAX_AGE) -> bool:
    """A permit older than `max_age` must not be used: the balance it proves may have moved since."""
    age = now - permit.verified_at
    return 0 <= age <= max_age

