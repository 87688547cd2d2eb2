"""What `track()` and `update()` accept for a key the engine already holds.

A bot re-tracks its whole book at every start, and the journal restored it a moment before: the same position
again changes nothing. A different one is a disagreement between the bot's book and the engine's that no guess
settles (which share count is true?), so it is refused, naming each field that differs. A position that grew or
shrank while OPEN (a second buy, a partial fill learned late) is said so with `update()`, which is journaled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import NamedTuple

from exitguard.errors import PositionConflict
from exitguard.position import Position, refuse_future_buy
from exitguard.states import InvalidValue, PositionRecord, State, micro_to_shares

Difference = tuple[str, object, object]
"""(field, the tracked value, the new value)."""

Entry = PositionRecord | Position
"""What a book holds for a key: the position's record, or the tracked Position itself while nothing but tracking has
happened to it. An untouched position is OPEN with nothing to remember beyond what it was tracked with, so its record
(`opened`) is built on first use: a bot that loads 100,000 positions and exits a few pays for a few records."""


def opened(position: Position) -> PositionRecord:
    """The record of a position just tracked: OPEN, nothing attempted."""
    return PositionRecord(position.key, position.token_id, position.micro_shares, position.last_buy_at)


def record_of(entry: Entry) -> PositionRecord:
    """The entry's record; a new, OPEN one for a Position (the caller keeps it if it is to change)."""
    return opened(entry) if isinstance(entry, Position) else entry


def state_of(entry: Entry) -> State:
    return State.OPEN if isinstance(entry, Position) else entry.state


def as_position(entry: Entry) -> Position:
    """A position tracked before the journal opened, as it was tracked (nothing but tracking can happen to a
    position before the engine starts)."""
    if isinstance(entry, Position):
        return entry
    return Position(key=entry.key, token_id=entry.token_id, shares=micro_to_shares(entry.expected),
                    last_buy_at=entry.last_buy_at)


def differences(record: PositionRecord, position: Position) -> tuple[Difference, ...]:
    """The fields of `position` that differ from the tracked `record` (shares compared exactly)."""
    found: list[Difference] = []
    if position.token_id != record.token_id:
        found.append(("token_id", record.token_id, position.token_id))
    if position.micro_shares != record.expected:
        found.append(("shares", micro_to_shares(record.expected), position.shares))
    if position.last_buy_at != record.last_buy_at:
        found.append(("last_buy_at", _when(record.last_buy_at), _when(position.last_buy_at)))
    return tuple(found)


class NewPositions(NamedTuple):
    """What `new_positions` adds to a book: the new positions in order, and the same by key and by token."""

    positions: list[Position]
    by_key: dict[str, Position]
    by_token: dict[str, str]


def new_positions(positions: Iterable[Position], tracked: Mapping[str, Entry], holders: Mapping[str, str],
                  now: Callable[[], datetime], *, journaled: bool) -> NewPositions:
    """The positions of `positions` (`track_many`) that are new to a book (`tracked`: its entries by key; `holders`:
    the live key holding each token), in order. A position already tracked as it is adds nothing; any other problem
    raises before the book changes, naming the position and its index, so nothing is ever half-tracked."""
    fresh: list[Position] = []
    batch_keys: dict[str, Position] = {}
    batch_tokens: dict[str, str] = {}
    wall: datetime | None = None
    tracked_key, holder, add = tracked.get, holders.get, fresh.append
    for index, position in enumerate(positions):
        if not isinstance(position, Position):
            raise InvalidValue(f"positions[{index}]", position, "must be an exitguard Position")
        key, token = position.key, position.token_id
        known = batch_keys.get(key) or tracked_key(key)
        if known is not None:
            record = record_of(known)
            found = differences(record, position)
            if found:
                raise retrack_conflict(record, found, journaled=journaled)
            continue
        if position.last_buy_at is not None:  # the clock is read only when there is a buy to check
            wall = wall or now()
            try:
                refuse_future_buy(position, wall)
            except InvalidValue as err:
                raise InvalidValue(f"positions[{index}].last_buy_at", err.value, f"key={key!r}: {err.why}") from None
        taken = batch_tokens.get(token) or holder(token)
        if taken is not None:
            raise token_taken(key, token, taken)
        batch_keys[key] = position
        batch_tokens[token] = key
        add(position)
    return NewPositions(fresh, batch_keys, batch_tokens)


def is_new(position: Position, tracked: Mapping[str, Entry], holders: Mapping[str, str],
           now: Callable[[], datetime], *, journaled: bool) -> bool:
    """`new_positions` of one position (`track`), without a batch's bookkeeping: the same checks in the same order.
    False for a position already tracked as it is."""
    known = tracked.get(position.key)
    if known is not None:
        record = record_of(known)
        found = differences(record, position)
        if found:
            raise retrack_conflict(record, found, journaled=journaled)
        return False
    if position.last_buy_at is not None:
        refuse_future_buy(position, now())
    taken = holders.get(position.token_id)
    if taken is not None:
        raise token_taken(position.key, position.token_id, taken)
    return True


def tracked_fields(position: Position) -> dict[str, object]:
    """The `position_tracked` event's fields."""
    return {"key": position.key, "token": position.token_id, "shares": position.shares}


def token_taken(key: str, token: str, taken: str) -> PositionConflict:
    return PositionConflict(f"position key={key!r}: token_id={token!r} is already held by live position {taken!r}; "
                            "the exchange reports one balance per token, so exits would collide")


def retrack_conflict(record: PositionRecord, found: tuple[Difference, ...], *, journaled: bool) -> PositionConflict:
    """The refusal of a re-track that differs from the tracked position: every difference, then what to do."""
    where = "journaled" if journaled else "tracked"
    changes = "; ".join(f"{field} {where} {old!s} but {new!s} now" for field, old, new in found)
    fix = ("update() it if the position really changed (a second buy, a partial fill)" if str(record.state) == "OPEN"
           else f"it is {record.state}: forget() a finished one first, or track the new position under a new key")
    return PositionConflict(f"position key={record.key!r}: already {where} differently ({changes}); {fix}",
                            differences=found)


def updated(record: PositionRecord, shares: object, last_buy_at: datetime | None) -> Position:
    """The position `update()` makes of `record`: validated as a new Position is (positive, bounded, exact
    shares; a timezone-aware last buy), keeping the last buy when none is given."""
    return Position(key=record.key, token_id=record.token_id, shares=shares,  # type: ignore[arg-type]
                    last_buy_at=record.last_buy_at if last_buy_at is None else last_buy_at)


def _when(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()
