"""The position book: every position the engine tracks, in memory and, when a journal is open, on disk.

It holds the records (one per key), which live position owns each token (the exchange reports one
balance per token, so two live positions on one token would sell each other's shares), the order signed
for each sell in flight, the sales still settling on chain and the keys being reconciled. Every change
of a position goes through here, so the journal never disagrees with memory.

`fire` is the one place a transition happens: the machine moves, the journal records it, and the order
id of a sell that is no longer in flight is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from exitguard.clock import Clock
from exitguard.errors import PositionConflict, UnknownPosition
from exitguard.exchange.port import Fill
from exitguard.journal import Journal
from exitguard.position import Position
from exitguard.states import FINAL_STATES, PositionRecord, State, TransitionRefused, fire, micro_to_shares


class PositionBook:
    """The engine's positions. Not thread-safe: the engine uses it from its own event loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.journal: Journal | None = None
        """Where every change is written before the engine acts on it; None: memory only."""
        self._records: dict[str, PositionRecord] = {}
        self._live_by_token: dict[str, str] = {}
        self._order_ids: dict[str, str] = {}
        """Key -> the order signed for its sell in flight (journal on): what a lookup after a crash asks for."""
        self._unsettled: dict[str, Fill] = {}
        """Closed positions whose fill is matched on the book but not yet settled on chain."""
        self._reconciling: set[str] = set()

    # -- lookups -----------------------------------------------------------------------------------

    def get(self, key: str) -> PositionRecord:
        try:
            return self._records[key]
        except (KeyError, TypeError):
            raise UnknownPosition(key) from None

    def state(self, key: str) -> str:
        return str(self.get(key).state)

    def states(self) -> dict[str, str]:
        return {key: str(record.state) for key, record in self._records.items()}

    def counts_by_state(self) -> dict[str, int]:
        """Positions per state (cheaper than `states()` at 100,000 positions)."""
        return {str(state): count for state, count in Counter(r.state for r in self._records.values()).items()}

    def unresolved(self) -> list[str]:
        """Keys whose sell outcome is unknown."""
        return [key for key, record in self._records.items() if record.unresolved]

    def unsettled(self) -> list[str]:
        """CLOSED keys whose fill is matched but not yet settled on chain."""
        return list(self._unsettled)

    def settling(self) -> list[tuple[PositionRecord, Fill]]:
        """Each sale still settling, with its fill (a copy: the caller may end settlements while it walks)."""
        return [(self._records[key], fill) for key, fill in self._unsettled.items()]

    def open_tokens(self) -> list[str]:
        """The tokens of OPEN positions, each once, in tracking order."""
        return list(dict.fromkeys(r.token_id for r in self._records.values() if r.state is State.OPEN))

    def order_id(self, key: str) -> str | None:
        """The order signed for the key's sell in flight, if one was (journal on)."""
        return self._order_ids.get(key)

    def is_reconciling(self, key: str) -> bool:
        return key in self._reconciling

    # -- changes -----------------------------------------------------------------------------------

    def track(self, position: Position) -> PositionRecord:
        """A new OPEN position. One live (unfinished) position per key and per token."""
        if position.key in self._records:
            raise PositionConflict(f"position key={position.key!r}: already tracked (state "
                                   f"{self._records[position.key].state}); forget() a finished one first")
        holder = self._live_by_token.get(position.token_id)
        if holder is not None:
            raise PositionConflict(
                f"position key={position.key!r}: token_id={position.token_id!r} is already held by live "
                f"position {holder!r}; the exchange reports one balance per token, so exits would collide"
            )
        record = PositionRecord(position.key, position.token_id, position.micro_shares, position.last_buy_at)
        self._records[position.key] = record
        self._live_by_token[position.token_id] = position.key
        if self.journal is not None:
            self.journal.track(record, self.clock.wall())
        return record

    def forget(self, key: str) -> None:
        """Drop a finished position."""
        record = self.get(key)
        if record.state not in FINAL_STATES:
            raise TransitionRefused(key, record.state, "forget",
                                    "only CLOSED, RECONCILED or DUST positions can be forgotten")
        if key in self._unsettled:
            raise TransitionRefused(key, record.state, "forget",
                                    "its sale is not settled on chain yet; a failed settlement returns the shares")
        del self._records[key]
        self._order_ids.pop(key, None)
        if self.journal is not None:
            self.journal.forget(key)

    def fire(self, record: PositionRecord, trigger: str, **payload: object) -> None:
        """Move the position through the machine and journal the move (before the caller acts on it)."""
        source = record.state
        fire(record, trigger, **payload)
        if self.journal is not None:
            self.journal.transition(record, source, trigger, payload, self.clock.wall(),
                                    order_id=self._order_ids.get(record.key))
        if record.state is not State.SELLING:
            self._order_ids.pop(record.key, None)

    def release_token(self, record: PositionRecord) -> None:
        """A finished position gives its token up: a new position on that token may be tracked."""
        if record.state in FINAL_STATES and self._live_by_token.get(record.token_id) == record.key:
            del self._live_by_token[record.token_id]

    def note_order(self, record: PositionRecord, order_id: str) -> None:
        """The order about to be posted for the sell in flight; durable (journal on) before it is posted."""
        self._order_ids[record.key] = order_id
        if self.journal is not None:
            self.journal.note_order(record, order_id, self.clock.wall())

    def follow_settlement(self, record: PositionRecord, fill: Fill) -> None:
        """A fill with trade ids is matched on the book, not yet settled on chain: keep it until it is."""
        if fill.trade_ids:
            self._unsettled[record.key] = fill
            if self.journal is not None:
                self.journal.note_settlement(record, fill, "settlement_pending", self.clock.wall())

    def end_settlement(self, record: PositionRecord, status: str) -> None:
        """The exchange said how the sale's settlement ended (`status`: settled or failed)."""
        del self._unsettled[record.key]
        if self.journal is not None:
            self.journal.note_settlement(record, None, status, self.clock.wall())

    @contextmanager
    def reconciling(self, key: str) -> Iterator[None]:
        """Mark the key as being reconciled for the length of the block: exits of it are refused meanwhile."""
        self._reconciling.add(key)
        try:
            yield
        finally:
            self._reconciling.discard(key)

    # -- the journal -------------------------------------------------------------------------------

    def restore(self, journal: Journal) -> tuple[list[PositionRecord], list[Position]]:
        """Load the journal's positions and write every later change to it. A position tracked before
        the journal was open must match its journaled self; nothing changes unless every row loads and
        matches.

        Returns the journaled records, and the positions tracked before that the journal does not know:
        the caller tracks them again, so that they are journaled too."""
        records: dict[str, PositionRecord] = {}
        live: dict[str, str] = {}
        order_ids: dict[str, str] = {}
        unsettled: dict[str, Fill] = {}
        pending = dict(self._records)
        for row in journal.positions():
            record = row.record()
            early = pending.pop(record.key, None)
            if early is not None and (early.token_id, early.expected) != (record.token_id, record.expected):
                raise PositionConflict(f"position key={record.key!r}: tracked as {early.token_id!r} x "
                                       f"{micro_to_shares(early.expected)} but journaled as {record.token_id!r} x "
                                       f"{micro_to_shares(record.expected)}")
            records[record.key] = record
            if row.order_id is not None:
                order_ids[record.key] = row.order_id
            if row.unsettled is not None:
                unsettled[record.key] = row.unsettled
            if record.state not in FINAL_STATES:
                live[record.token_id] = record.key
        self._records, self._live_by_token = records, live
        self._order_ids.update(order_ids)
        self._unsettled.update(unsettled)
        self.journal = journal
        return list(records.values()), [
            Position(key=r.key, token_id=r.token_id, shares=micro_to_shares(r.expected), last_buy_at=r.last_buy_at)
            for r in pending.values()]

    def close_journal(self, journal: Journal) -> None:
        """Memory only from here on; the journal's file and lock are released."""
        self.journal = None
        journal.close()
