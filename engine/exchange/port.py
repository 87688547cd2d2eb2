"""The exchange port: what the engine needs from an exchange, and the values it gets back.

Adapters (the paper exchange, the Polymarket adapter) implement `Exchange`. `sell` takes a
`SellPermit`, not a number: there is no way to ask for a sell that no verification produced.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable

from exitguard.states import LookupStatus, MarketRules, SellPermit

__all__ = ["Exchange", "Fill", "LookupStatus", "SellLookup", "Settlement", "SettlementStatus"]


@dataclass(frozen=True, slots=True)
class Fill:
    shares: int
    """Micro-shares sold."""
    avg_price: Decimal
    order_id: str
    trade_ids: tuple[str, ...] = ()
    """The exchange's trades for this fill. Non-empty means settlement on chain is still to follow:
    a matched trade can fail to settle, which hands the shares back."""


@dataclass(frozen=True, slots=True)
class SellLookup:
    status: LookupStatus
    fill: Fill | None = None


class SettlementStatus(StrEnum):
    PENDING = "pending"
    """Matched on the book, not yet mined (or being retried)."""
    SETTLED = "settled"
    """Every trade of the fill is mined or confirmed."""
    FAILED = "failed"
    """At least one trade failed on chain: its shares went back to the seller."""


@dataclass(frozen=True, slots=True)
class Settlement:
    status: SettlementStatus
    returned_shares: int = 0
    """Micro-shares handed back by failed trades (only when FAILED)."""


@runtime_checkable
class Exchange(Protocol):
    async def get_balance(self, token_id: str) -> object:
        """The token balance as the exchange reports it: raw 6-decimal units (a string on the wire).

        Returned unparsed on purpose: the engine parses it and refuses anything malformed.
        """
        ...

    async def refresh_balance(self, token_id: str) -> None:
        """Ask the exchange to refresh its balance cache for the token."""
        ...

    async def market_rules(self, token_id: str) -> MarketRules: ...

    async def warm_up(self, token_id: str) -> None:
        """Fetch ahead what the first sell of this token would otherwise look up on the critical path
        (market rules, order routing). Called in the background when a position is tracked."""
        ...

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal) -> str:
        """Get the order for `permit` ready (signed, where the exchange signs) and return the id the
        exchange will know it by, without sending anything. The engine journals this id before `sell`."""
        ...

    async def sell(self, permit: SellPermit, limit_price: Decimal) -> Fill:
        """One FOK sell of exactly `permit.shares` at `limit_price` or better.

        Raises NotFilled / TransientError when nothing sold, UnknownOutcome when it may have.
        """
        ...

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
        """What became of the sell made under `permit` (for unknown outcomes). `order_id` is the id
        `prepare_sell` returned, passed after a restart when this process never signed the order."""
        ...

    async def settlement(self, fill: Fill) -> Settlement:
        """Where the on-chain settlement of a fill with `trade_ids` stands."""
        ...
