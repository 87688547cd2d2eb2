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
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import NoReturn

from exitguard.clock import Clock
from exitguard.errors import EngineClosed, JournalError, UnknownPosition
from exitguard.exchange.port import Fill
from exitguard.journal import Journal
from exitguard.journal.rows import Row, order_row, order_times
from exitguard.position import Position, refuse_future_buy
from exitguard.states import FINAL_STATES, PositionRecord, State, TransitionRefused, fire, micro_to_shares
from exitguard.telemetry.logs import emit
from exitguard.tracking import (
    Entry,
    as_position,
    differences,
    is_new,
    new_positions,
    opened,
    retrack_conflict,
    state_of,
    updated,
)


class PositionBook:
    """The engine's positions. Not thread-safe: the engine uses it from its own event loop."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.journal: Journal | None = None
        """Where every change is written before the engine acts on it; None: memory only."""
        self.journal_closed = False
        """The book had a journal and it was closed: no change may happen in memory alone any more."""
        self._records: dict[str, Entry] = {}
        """Key -> its record, or the Position as tracked while nothing else happened to it (tracking.Entry): `get`
        builds the record the first time the position is used."""
        self._live_by_token: dict[str, str] = {}
        self._order_ids: dict[str, str] = {}
        """Key -> the order signed for its sell in flight (journal on): what a lookup after a crash asks for."""
        self._unsettled: dict[str, Fill] = {}
        """Closed positions whose fill is matched on the book but not yet settled on chain."""
        self._reconciling: set[str] = set()
        self._held: dict[str, list[Row]] = {}
        """Key -> the steps of its attempt not yet journaled: they go in the commit of its intent or its outcome."""
        self._intents: dict[str, int] = {}
        """Key -> the journal ticket of its intent, written and not yet awaited durable (`commit_intent`)."""
        self._noted_at: dict[str, datetime] = {}
        """Key -> wall time the order of its sell in flight was journaled, just before it was posted."""
        self._sent_at: dict[str, datetime] = {}
        """Key -> wall time its sell in flight left our hands (the exchange call returned or was given up):
        an unknown outcome's lookup horizon counts from it. Journaled as `sent_at` in the trigger's payload."""

    # -- lookups -----------------------------------------------------------------------------------

    def get(self, key: str) -> PositionRecord:
        try:
            entry = self._records[key]
        except (KeyError, TypeError):
            raise UnknownPosition(key) from None
        if isinstance(entry, Position):
            entry = self._records[key] = opened(entry)
        return entry

    def state(self, key: str) -> str:
        return str(self.get(key).state)

    def states(self) -> dict[str, str]:
        return {key: str(state_of(entry)) for key, entry in self._records.items()}

    def counts_by_state(self) -> dict[str, int]:
        """Positions per state (cheaper than `states()` at 100,000 positions)."""
        return {str(state): count for state, count in Counter(map(state_of, self._records.values())).items()}

    def unresolved(self) -> list[str]:
        """Keys whose sell outcome is unknown."""
        return [key for key, entry in self._records.items() if isinstance(entry, PositionRecord) and entry.unresolved]

    def unsettled(self) -> list[str]:
        """CLOSED keys whose fill is matched but not yet settled on chain."""
        return list(self._unsettled)

    def settling(self) -> list[tuple[PositionRecord, Fill]]:
        """Each sale still settling, with its fill (a copy: the caller may end settlements while it walks)."""
        return [(self.get(key), fill) for key, fill in self._unsettled.items()]

    def open_tokens(self) -> list[str]:
        """The tokens of OPEN positions, each once, in tracking order."""
        return list(dict.fromkeys(e.token_id for e in self._records.values() if state_of(e) is State.OPEN))

    def order_id(self, key: str) -> str | None:
        """The order signed for the key's sell in flight, if one was (journal on)."""
        return self._order_ids.get(key)

    def order_noted_at(self, key: str) -> datetime | None:
        """When the order of the key's sell in flight was journaled (journal on), just before its post."""
        return self._noted_at.get(key)

    def sent_at(self, key: str) -> datetime | None:
        """When the key's sell in flight left our hands, if known (see `note_sent`)."""
        return self._sent_at.get(key)

    def note_sent(self, record: PositionRecord, at: datetime) -> None:
        """The sell in flight left our hands at `at` (a trigger's `sent_at` payload does the same, journaled)."""
        self._sent_at[record.key] = at

    def is_reconciling(self, key: str) -> bool:
        return key in self._reconciling

    # -- changes -----------------------------------------------------------------------------------

    def track(self, position: Position) -> bool:
        """A new OPEN position. One live (unfinished) position per key and per token. The same position again
        (a bot re-tracking its book at start) changes nothing and returns False; a different one is refused."""
        self._refuse_without_journal()
        if not is_new(position, self._records, self._live_by_token, self.clock.wall,
                      journaled=self.journal is not None):
            return False
        if self.journal is not None:
            record = opened(position)
            self._journal_tracks(self.journal, [record])
            self._records[position.key] = record
        else:
            self._records[position.key] = position
        self._live_by_token[position.token_id] = position.key
        return True

    def track_many(self, positions: Sequence[Position]) -> list[Position]:
        """`track` for each, all or none, in one journal write; returns the positions that are new."""
        self._refuse_without_journal()
        new = new_positions(positions, self._records, self._live_by_token, self.clock.wall,
                            journaled=self.journal is not None)
        if not new.positions:
            return []
        if self.journal is not None:
            # Journaled: the records the journal writes are the ones the book keeps.
            records = [opened(position) for position in new.positions]
            self._journal_tracks(self.journal, records)
            self._records.update({record.key: record for record in records})
        else:
            self._records.update(new.by_key)
        self._live_by_token.update(new.by_token)
        return new.positions

    def _journal_tracks(self, journal: Journal, records: list[PositionRecord]) -> None:
        """Journal new records before the book holds them: a track the journal refused is not tracked."""
        self._refuse_on_failed_journal()
        try:
            journal.track_many(records, self.clock.wall())
        except JournalError as err:
            # Not tracked: the caller learns it now. A journal that cannot take a track cannot be trusted with the
            # exits that would follow.
            self._journal_failed(records[0], "track", err)
            raise

    def update(self, key: str, shares: object, last_buy_at: datetime | None) -> None:
        """An OPEN position now holds `shares` (a second buy, a partial fill learned late) and, when given, its
        last buy. Not a transition: the state stays OPEN and nothing is decided (the next exit verifies against
        the new figure); journaled as a `position_updated` row of the trail, so a restart restores it."""
        self._refuse_without_journal()
        record = self.get(key)
        if record.state is not State.OPEN:
            raise TransitionRefused(key, record.state, "update", "only an OPEN position can grow or shrink; an exit "
                                    "in flight or a finished position keeps the shares it was verified with")
        position = updated(record, shares, last_buy_at)
        refuse_future_buy(position, self.clock.wall())
        before = record.expected, record.last_buy_at
        record.expected, record.last_buy_at = position.micro_shares, position.last_buy_at
        if self.journal is not None:
            try:
                self._refuse_on_failed_journal()
                self.journal.note_update(record, before[0], self.clock.wall())
            except JournalError as err:
                record.expected, record.last_buy_at = before  # memory stays what the journal holds
                if self.journal.failed is None:
                    self._journal_failed(record, "position_updated", err)
                raise
        emit("position_updated", key=key, token=record.token_id, shares=position.shares,
             previous_shares=micro_to_shares(before[0]),
             last_buy_at=None if position.last_buy_at is None else position.last_buy_at.isoformat())

    def forget(self, key: str) -> None:
        """Drop a finished position."""
        self._refuse_without_journal()
        record = self.get(key)
        if record.state not in FINAL_STATES:
            raise TransitionRefused(key, record.state, "forget",
                                    "only CLOSED, RECONCILED or DUST positions can be forgotten")
        if key in self._unsettled:
            raise TransitionRefused(key, record.state, "forget",
                                    "its sale is not settled on chain yet; a failed settlement returns the shares")
        if self.journal is not None:
            try:
                self.journal.forget(key)  # first: a failed forget leaves memory as the journal has it
            except JournalError as err:
                self._journal_failed(record, "forget", err)
                raise
        del self._records[key]
        self._order_ids.pop(key, None)

    def fire(self, record: PositionRecord, trigger: str, **payload: object) -> None:
        """Move the position through the machine and journal the move (before the caller acts on it)."""
        self._refuse_without_journal()
        if trigger == "request_exit":
            self._refuse_on_failed_journal()
        source = record.state
        fire(record, trigger, **payload)
        sent_at = payload.get("sent_at")
        if isinstance(sent_at, datetime) and record.state is State.SELLING:
            self._sent_at[record.key] = sent_at
        if self.journal is not None:
            row: Row = (source, record.state, trigger, payload, self.clock.wall())
            if record.state in (State.VERIFYING, State.SELLING) and record.key not in self._order_ids \
                    and (trigger == "request_exit" or record.key in self._held):
                # An attempt's first steps wait for its intent: one commit holds them with the order id (note_order),
                # or with the outcome when it ends before a sell. A crash before that finds the position OPEN.
                self._held.setdefault(record.key, []).append(row)
            else:
                try:
                    self._append(record, row, order_id=self._order_ids.get(record.key))
                except JournalError as err:
                    self._transition_not_journaled(record, source, trigger, err)
        if record.state is not State.SELLING:
            self._order_ids.pop(record.key, None)
            self._noted_at.pop(record.key, None)
            self._sent_at.pop(record.key, None)

    def release_token(self, record: PositionRecord) -> None:
        """A finished position gives its token up: a new position on that token may be tracked."""
        if record.state in FINAL_STATES and self._live_by_token.get(record.token_id) == record.key:
            del self._live_by_token[record.token_id]

    def note_order(self, record: PositionRecord, order_id: str) -> None:
        """The order about to be posted for the sell in flight; durable (journal on) before it is posted."""
        self._refuse_without_journal()
        self._order_ids[record.key] = order_id
        noted = self._noted_at[record.key] = self.clock.wall()
        self._sent_at.pop(record.key, None)
        if self.journal is not None:
            try:
                self._intents[record.key] = self._append(record, order_row(record, order_id, noted), order_id=order_id)
            except JournalError as err:
                self._intent_failed(record, err)

    async def commit_intent(self, record: PositionRecord) -> None:
        """The intent noted for the sell in flight (its request, verified balance and order id: one commit) is durable
        when this returns: one fsync, off the event loop, shared with the exits waiting for one. Every other write
        goes without an fsync; why a power loss that takes one sends nothing twice: journal/durable.py. Raises
        JournalError, the position back to OPEN and nothing sent, when the intent could not be made durable."""
        ticket = self._intents.pop(record.key, None)
        if self.journal is not None and ticket is not None:
            try:
                await self.journal.durable(ticket)
            except JournalError as err:
                self._intent_failed(record, err)

    def _intent_failed(self, record: PositionRecord, err: JournalError) -> NoReturn:
        # The intent is not durable, so the order must not exist: nothing is sent, back to OPEN.
        self._order_ids.pop(record.key, None)
        self._noted_at.pop(record.key, None)
        self._back_to_open(record, "sell_expired", err)
        raise err

    def _append(self, record: PositionRecord, row: Row, *, order_id: str | None) -> int:
        """The position's held steps (see `fire`) and `row`, in one commit; returns its ticket."""
        assert self.journal is not None
        return self.journal.append(record, [*self._held.pop(record.key, ()), row], order_id=order_id)

    def follow_settlement(self, record: PositionRecord, fill: Fill) -> None:
        """A fill with trade ids is matched on the book, not yet settled on chain: keep it until it is."""
        if fill.trade_ids:
            self._unsettled[record.key] = fill
            if self.journal is not None:
                try:
                    self.journal.note_settlement(record, fill, "settlement_pending", self.clock.wall())
                except JournalError as err:
                    self._journal_failed(record, "settlement_pending", err)

    def end_settlement(self, record: PositionRecord, status: str) -> None:
        """The exchange said how the sale's settlement ended (`status`: settled or failed)."""
        del self._unsettled[record.key]
        if self.journal is not None:
            try:
                self.journal.note_settlement(record, None, status, self.clock.wall())
            except JournalError as err:
                self._journal_failed(record, status, err)

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
        pending = {key: as_position(entry) for key, entry in self._records.items()}
        for row in journal.positions():
            record = row.record()
            early = pending.pop(record.key, None)
            found = () if early is None else differences(record, early)
            if found:
                raise retrack_conflict(record, found, journaled=True)
            records[record.key] = record
            if row.order_id is not None:
                order_ids[record.key] = row.order_id
            if row.unsettled is not None:
                unsettled[record.key] = row.unsettled
            if record.state not in FINAL_STATES:
                live[record.token_id] = record.key
        self._records, self._live_by_token = dict[str, Entry](records), live
        self._order_ids.update(order_ids)
        for key, order_id in order_ids.items():
            noted, sent = order_times(journal.history(key), order_id)
            if noted is not None:
                self._noted_at[key] = noted
            if sent is not None:
                self._sent_at[key] = sent
        self._unsettled.update(unsettled)
        journal.offload()  # from here its checkpoints' fsyncs run off the event loop too
        self.journal, self.journal_closed = journal, False
        return list(records.values()), list(pending.values())

    def close_journal(self, journal: Journal) -> None:
        """The journal's file and lock are released; from here on every change is refused (EngineClosed)."""
        self.journal, self.journal_closed = None, True
        journal.close()

    # -- a journal write that fails (disk full, I/O error) --------------------------------------------

    def _transition_not_journaled(self, record: PositionRecord, source: State, trigger: str,
                                  err: JournalError) -> None:
        """A transition moved in memory but not on disk. Before any order of the attempt exists (the start of an
        exit, or its permit), it is undone: back to OPEN, nothing sent, and the caller gets the error. After
        one may exist, memory keeps the truth (the journal still shows the sell in flight, which a restart
        looks up) and the journal is marked failed: no new exit until a restart on a healthy journal."""
        nothing_sent = source is State.OPEN or (source is State.VERIFYING and record.state is State.SELLING)
        if nothing_sent and record.state is State.VERIFYING:
            self._back_to_open(record, "verify_failed", err)
            raise err
        if nothing_sent and record.state is State.SELLING:
            self._back_to_open(record, "sell_expired", err)
            raise err
        self._journal_failed(record, trigger, err)

    def _back_to_open(self, record: PositionRecord, trigger: str, err: JournalError) -> None:
        why = f"not journaled, so nothing was sent: {err}"
        source = record.state
        fire(record, trigger, **({"error": why} if trigger == "verify_failed" else {"reason": why}))
        emit("journal_write_failed", key=record.key, token=record.token_id, trigger=trigger, error=str(err),
             journal_failed=False)
        if self.journal is not None:
            try:  # for the trail; the journal already shows no order for this attempt, which reopens it
                self.journal.transition(record, source, trigger, {"error": why}, self.clock.wall())
            except JournalError:
                pass

    def _journal_failed(self, record: PositionRecord, trigger: str, err: JournalError) -> None:
        if self.journal is not None:
            self.journal.mark_failed(str(err))
        emit("journal_write_failed", key=record.key, token=record.token_id, trigger=trigger, error=str(err),
             journal_failed=True)

    def _refuse_on_failed_journal(self) -> None:
        if self.journal is not None and self.journal.failed is not None:
            raise JournalError(self.journal.path, f"a write failed earlier ({self.journal.failed}): no new exit or "
                                                  "track until the engine restarts on a healthy journal")

    def _refuse_without_journal(self) -> None:
        # Skipping the write would let memory and disk disagree without a word: a restart would redo it.
        if self.journal_closed:
            raise EngineClosed("the engine's journal is closed: no position may change any more")
