"""The exchange port: what the engine needs from an exchange, and the values it gets back.

Adapters (the paper exchange, the Polymarket adapter) implement `Exchange`. `sell` takes a
`SellPermit`, not a number: there is no way to ask for a sell that no verification produced.

Changed on purpose in issue 11: `sell` takes a keyword-only `deadline` (a `SellDeadline`). A permit proves
a recent verification only if the order leaves soon after it; the waits that stand between the engine's
call and the bytes on the wire (a free connection, a rate-limit slot, signing) live inside the adapter, so
only the adapter can check freshness at the last moment. An adapter written against the old
`sell(permit, limit_price)` fails on the engine's first sell (a TypeError: UNKNOWN, never sent twice).

Added on purpose in issue 11, optional: an attribute (or property) `wallet: str` naming the wallet the
exchange trades (for Polymarket: the funder address, else the signer's). The engine holds a host-wide lock
on that name for its lifetime (exitguard.wallet_lock), so two live engines on one wallet, each with its own
journal, are refused (`WalletInUse`). Optional so that adapters written before it keep working: without it
no wallet lock is taken. It is not a member of the `Exchange` Protocol for the same reason.

Added on purpose in issue 11, optional in the same way: `async def our_sells_since(self, since: datetime) ->
list[str]`, the ids of our own sell orders (as `prepare_sell` named them) with a trade at or after `since` (an aware
datetime; the caller has already widened it for clock skew). After an unclean stop the engine checks each against
the ids its journal holds before any exit starts (exitguard.journal.audit): an id it does not know means the
journal lost a sale. Any failure must raise (an ExchangeError): a failed query is never an empty list. Without it,
that audit is skipped with a WARNING (`journal_audit_skipped`).

Added on purpose in issue 12, optional in the same way: `async def reserve_sell(self, attempt_id: str) -> None`.
The engine calls it when an attempt starts, before it reads the balance: the adapter takes the order's rate-limit
slot then (waiting for it if it must), so that the sell that follows a fresh verification leaves at once instead
of waiting for a slot while its permit ages. `sell(permit)` with `permit.attempt_id` uses the slot reserved for
that attempt; a reservation that no sell uses is dropped by the adapter after a while (the slot is spent, as a
conservative pacer would). Without it, the adapter paces inside `sell` as before.

Added on purpose in issue 12, optional in the same way: `async def follow_fills(self, notify: Callable[[ExchangeNotice],
None]) -> None`. It runs until cancelled (in the engine's task group), follows the exchange's push channel and hands
the engine port-level `ExchangeNotice`s: an order traded, a trade of an order failed on chain (its shares returned) or
settled, and "(re)connected" (the channel replays nothing: the engine backfills from the REST reads) or
"disconnected". `notify` is called on the engine's event loop and never blocks. A malformed event or a refused
subscription is the adapter's to log; it never raises out of `follow_fills` for one (it reconnects with backoff). The
engine acts on a notice only through the paths a REST answer takes (exitguard.fills): a settlement is recorded as
`Settlements` records a polled one, and an unknown outcome is looked up at once by the reconciler, never decided by
the notice alone; nothing in it leads to a sell. Without it, settlement is polled as before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable

from exitguard.errors import PermitExpired
from exitguard.states import LookupStatus, MarketRules, SellPermit

__all__ = ["Exchange", "ExchangeNotice", "Fill", "LookupStatus", "NoticeKind", "SellDeadline", "SellLookup",
           "Settlement", "SettlementStatus"]


@dataclass(frozen=True, slots=True)
class SellDeadline:
    """The last moment an order may leave: the permit's verification time plus `permit_max_age`.

    Read on the engine's own monotonic clock (`now`), not the adapter's: the two need not be the same
    clock, and a deadline compared with another clock's reading means nothing."""

    not_after: float
    """Monotonic seconds on `now`'s clock."""
    now: Callable[[], float]
    """The engine's monotonic clock."""

    def remaining(self) -> float:
        """Seconds left before the order may no longer leave (negative once past)."""
        return self.not_after - self.now()

    def check(self, what: str) -> None:
        """Call right before the order leaves, after every wait: past the deadline, raise `PermitExpired`
        (nothing is sent, so the answer is a definite "not filled")."""
        late = -self.remaining()
        if late > 0:
            raise PermitExpired(f"{what}: the permit's verification expired {late:.3f}s before the order could "
                                "leave; nothing sent")


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
    """What the exchange showed of one order (see `LookupStatus`); the engine decides what it proves."""

    status: LookupStatus
    fill: Fill | None = None
    left_late: float = 0.0
    """Seconds the request stayed in the adapter's hands after its `sell` call had returned or was given up (a
    request still being written or answered when the deadline cut the call short): the engine's lookup horizon
    starts that much later than its own record. A duration, so that the adapter's clock and the engine's need not
    agree."""


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


class NoticeKind(StrEnum):
    TRADED = "traded"
    """Order `order_id` (token `token_id`) has a trade: it filled, wholly or in part."""
    ORDER_ENDED = "order_ended"
    """Order `order_id` (token `token_id`) was cancelled or killed: what it sold, if anything, a lookup says."""
    TRADE_FAILED = "trade_failed"
    """Trade `trade_id` of order `order_id` failed on chain: `returned_shares` went back to the seller."""
    TRADE_SETTLED = "trade_settled"
    """Trade `trade_id` of order `order_id` is mined or confirmed on chain."""
    CONNECTED = "connected"
    """The channel is (re)connected and subscribed. Nothing that happened while it was down is replayed: backfill
    from the REST reads now."""
    DISCONNECTED = "disconnected"
    """The channel is down (the adapter reconnects with backoff); until CONNECTED, polling is the only source."""


@dataclass(frozen=True, slots=True)
class ExchangeNotice:
    """What the exchange's push channel said, at port level (see `follow_fills` in this module's docstring)."""

    kind: NoticeKind
    order_id: str | None = None
    trade_id: str | None = None
    token_id: str | None = None
    returned_shares: int = 0
    """Micro-shares the failed trade handed back (TRADE_FAILED; 0 when the event did not say)."""


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

    async def sell(self, permit: SellPermit, limit_price: Decimal, *, deadline: SellDeadline) -> Fill:
        """One FOK sell of exactly `permit.shares` at `limit_price` or better.

        `deadline.check(...)` is called after the last wait, right before the order leaves (for an HTTP
        adapter: once it has a connection, just before the request is written); past it, nothing is sent and
        `PermitExpired` is raised. Raises NotFilled / TransientError when nothing sold, UnknownOutcome
        when it may have.
        """
        ...

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
        """What became of the sell made under `permit` (for unknown outcomes). `order_id` is the id
        `prepare_sell` returned, passed after a restart when this process never signed the order."""
        ...

    async def settlement(self, fill: Fill) -> Settlement:
        """Where the on-chain settlement of a fill with `trade_ids` stands."""
        ...
