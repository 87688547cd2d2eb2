"""The write-ahead journal: every transition of every position, durable before the engine acts on it.

SQLite in WAL mode with `synchronous=FULL`: a transaction is on disk when `commit` returns, so a
SELLING row (with its permit and order id) exists before the order it describes is posted. Two tables:
`transitions`, append-only (the audit trail), and `positions`, the current state (what recovery reads).
Both change in one transaction per transition.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict, dataclass, is_dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

from exitguard.errors import JournalError
from exitguard.exchange.port import Fill
from exitguard.journal.lock import JournalLock
from exitguard.journal.schema import APPLICATION_ID, MIGRATIONS, SCHEMA_VERSION
from exitguard.states import PositionRecord, SellPermit, State


@dataclass(frozen=True, slots=True)
class JournaledTransition:
    seq: int
    key: str
    source: str | None
    dest: str
    trigger: str
    payload: dict[str, Any]
    wall_time: str


@dataclass(frozen=True, slots=True)
class JournaledPosition:
    key: str
    token_id: str
    expected: int
    last_buy_at: datetime | None
    state: State
    attempts: int
    attempt_id: str | None
    reason: str | None
    limit_price: Decimal | None
    verified_balance: int | None
    sold: int
    residual: int
    unresolved: bool
    permit: SellPermit | None
    order_id: str | None
    """The order signed for the attempt in flight; written before it is posted (None: never posted)."""
    unsettled: Fill | None = None
    """CLOSED by a fill that is matched but not yet settled on chain."""

    def record(self) -> PositionRecord:
        return PositionRecord.restored(
            key=self.key, token_id=self.token_id, expected=self.expected, last_buy_at=self.last_buy_at,
            state=self.state, attempts=self.attempts, attempt_id=self.attempt_id, reason=self.reason,
            limit_price=self.limit_price, verified_balance=self.verified_balance, sold=self.sold,
            residual=self.residual, unresolved=self.unresolved, inflight=self.permit,
        )


def _plain(value: object) -> object:
    """Payload values as JSON: Decimal as text (exact), dataclasses as objects, enums by value."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, datetime):
        return value.isoformat()
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _permit_json(permit: SellPermit | None) -> str | None:
    if permit is None:
        return None
    return json.dumps({"shares": permit.shares, "verified_balance": permit.verified_balance,
                       "attempt_id": permit.attempt_id})


def _fill_json(fill: Fill | None) -> str | None:
    if fill is None:
        return None
    return json.dumps({"shares": fill.shares, "avg_price": str(fill.avg_price), "order_id": fill.order_id,
                       "trade_ids": list(fill.trade_ids)})


def _fill_of(text: str | None) -> Fill | None:
    if text is None:
        return None
    data = json.loads(text)
    return Fill(shares=data["shares"], avg_price=Decimal(data["avg_price"]), order_id=data["order_id"],
                trade_ids=tuple(data["trade_ids"]))


def _permit_of(key: str, token_id: str, text: str | None) -> SellPermit | None:
    if text is None:
        return None
    data = json.loads(text)
    # The verification time was a monotonic reading of a process that is gone: the restored permit is
    # only ever used to look the order up, never to sell.
    return SellPermit(position_key=key, token_id=token_id, shares=data["shares"],
                      verified_balance=data["verified_balance"], verified_at=float("-inf"),
                      attempt_id=data["attempt_id"])


class Journal:
    """One open journal. `Journal.open(path)` takes the engine lock; `readonly=True` does not (status)."""

    def __init__(self, path: Path, connection: sqlite3.Connection, lock: JournalLock | None) -> None:
        self.path = path
        self._db = connection
        self._lock = lock
        self.writes = 0

    # -- opening -----------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path, *, readonly: bool = False) -> Journal:
        path = Path(path)
        if readonly:
            if not path.exists():
                raise JournalError(path, "no such file")
            db = cls._connect(path, f"file:{path}?mode=ro")
            cls._check(path, db, writable=False)
            return cls(path, db, None)
        if path.exists() and not path.is_file():
            raise JournalError(path, "is not a file")
        if not path.parent.is_dir():
            raise JournalError(path, f"folder {path.parent} does not exist")
        lock = JournalLock.acquire(path)
        try:
            db = cls._connect(path, f"file:{path}?mode=rwc")
            try:
                cls._check(path, db, writable=True)
                journal = cls(path, db, lock)
                journal.prepare()
            except BaseException:
                db.close()
                raise
        except BaseException:
            lock.release()
            raise
        return journal

    @staticmethod
    def _connect(path: Path, uri: str) -> sqlite3.Connection:
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA schema_version").fetchone()  # reads the header: fails on a non-database
        except sqlite3.DatabaseError as err:
            raise JournalError(path, f"not a readable SQLite journal ({err})") from None
        return db

    @staticmethod
    def _check(path: Path, db: sqlite3.Connection, *, writable: bool) -> None:
        try:
            app_id = db.execute("PRAGMA application_id").fetchone()[0]
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if writable:
                # Corruption inside pages shows up here, before anything is written.
                problem = db.execute("PRAGMA quick_check").fetchone()[0]
                if problem != "ok":
                    raise JournalError(path, f"corrupted ({problem})")
        except sqlite3.DatabaseError as err:
            raise JournalError(path, f"corrupted or not a journal ({err})") from None
        if app_id == 0 and version == 0 and not tables:
            if not writable:
                raise JournalError(path, "empty: not a journal yet")
            Journal._migrate(path, db, 0)
            return
        if app_id != APPLICATION_ID:
            raise JournalError(path, f"not an exitguard journal (application_id {app_id:#x}, tables "
                                     f"{', '.join(sorted(tables)) or 'none'}); nothing was changed")
        if version > SCHEMA_VERSION:
            raise JournalError(path, f"schema version {version} is newer than this exitguard understands "
                                     f"({SCHEMA_VERSION}); upgrade exitguard; nothing was changed")
        if version < SCHEMA_VERSION:
            if not writable:
                raise JournalError(path, f"schema version {version} needs migrating; open it with an engine")
            Journal._migrate(path, db, version)

    @staticmethod
    def _migrate(path: Path, db: sqlite3.Connection, start: int) -> None:
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("BEGIN IMMEDIATE")
            for version in range(start + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[version]:
                    db.execute(statement)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise JournalError(path, f"cannot write ({err})") from None

    def _configure(self) -> None:
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")

    def close(self) -> None:
        self._db.close()
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # -- writing -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Set WAL + synchronous=FULL, and prove the file writable now rather than at the first sell."""
        try:
            self._configure()
            # A transaction that writes nothing succeeds on a read-only file; rewriting the schema
            # version is a real write that changes nothing.
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(f"PRAGMA user_version = {int(version)}")
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as err:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise JournalError(self.path, f"cannot write ({err}); nothing was changed") from None

    def track(self, record: PositionRecord, wall_time: datetime) -> None:
        self._write(record, None, "track", {"expected": record.expected,
                                             "last_buy_at": record.last_buy_at}, wall_time, order_id=None)

    def transition(self, record: PositionRecord, source: State, trigger: str, payload: dict[str, object],
                   wall_time: datetime, *, order_id: str | None = None) -> None:
        """`order_id`: the order signed for the attempt in flight, while SELLING (the caller keeps it)."""
        self._write(record, source, trigger, payload, wall_time,
                    order_id=order_id if record.state is State.SELLING else None)

    def note_order(self, record: PositionRecord, order_id: str, wall_time: datetime) -> None:
        """The order about to be posted for the attempt in flight: durable before the post."""
        self._write(record, record.state, "order_signed", {"order_id": order_id,
                                                           "attempt_id": record.attempt_id},
                    wall_time, order_id=order_id)

    def note_settlement(self, record: PositionRecord, fill: Fill | None, event: str, wall_time: datetime) -> None:
        """A fill to follow on chain (`fill`), or the end of following it (`fill=None`, event settled/failed)."""
        self._write(record, record.state, event, {"order_id": None if fill is None else fill.order_id,
                                                  "trade_ids": [] if fill is None else list(fill.trade_ids)},
                    wall_time, order_id=None, unsettled=fill)

    def forget(self, key: str) -> None:
        with self._transaction():
            self._db.execute("DELETE FROM positions WHERE key = ?", (key,))

    def _write(self, record: PositionRecord, source: State | None, trigger: str, payload: dict[str, object],
               wall_time: datetime, *, order_id: str | None, unsettled: Fill | None = None) -> None:
        permit = record.inflight or record.permit
        with self._transaction():
            cursor = self._db.execute(
                "INSERT INTO transitions (key, source, dest, trigger, payload, wall_time) VALUES (?, ?, ?, ?, ?, ?)",
                (record.key, None if source is None else str(source), str(record.state), trigger,
                 json.dumps(_plain(payload), sort_keys=True), wall_time.isoformat()))
            self._db.execute(
                "INSERT OR REPLACE INTO positions (key, token_id, expected, last_buy_at, state, attempts, attempt_id, "
                "reason, limit_price, verified_balance, sold, residual, unresolved, permit, order_id, seq, unsettled) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (record.key, record.token_id, record.expected,
                 None if record.last_buy_at is None else record.last_buy_at.isoformat(), str(record.state),
                 record.attempts, record.attempt_id, record.reason,
                 None if record.limit_price is None else str(record.limit_price), record.verified_balance,
                 record.sold, record.residual, int(record.unresolved), _permit_json(permit), order_id,
                 cursor.lastrowid, _fill_json(unsettled)))
        self.writes += 1

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # -- reading -----------------------------------------------------------------------------------

    def positions(self) -> list[JournaledPosition]:
        rows = self._db.execute(
            "SELECT key, token_id, expected, last_buy_at, state, attempts, attempt_id, reason, limit_price, "
            "verified_balance, sold, residual, unresolved, permit, order_id, unsettled FROM positions "
            "ORDER BY seq").fetchall()
        return [self._position(row) for row in rows]

    def history(self, key: str) -> list[JournaledTransition]:
        rows = self._db.execute(
            "SELECT seq, key, source, dest, trigger, payload, wall_time FROM transitions WHERE key = ? ORDER BY seq",
            (key,)).fetchall()
        return [JournaledTransition(seq, k, source, dest, trigger, json.loads(payload), wall)
                for seq, k, source, dest, trigger, payload, wall in rows]

    def _position(self, row: tuple[Any, ...]) -> JournaledPosition:
        (key, token, expected, last_buy, state, attempts, attempt_id, reason, limit_price, verified, sold,
         residual, unresolved, permit, order_id, unsettled) = row
        try:
            return JournaledPosition(
                key=key, token_id=token, expected=int(expected),
                last_buy_at=None if last_buy is None else datetime.fromisoformat(last_buy), state=State(state),
                attempts=int(attempts), attempt_id=attempt_id, reason=reason,
                limit_price=None if limit_price is None else Decimal(limit_price),
                verified_balance=verified, sold=int(sold), residual=int(residual), unresolved=bool(unresolved),
                permit=_permit_of(key, token, permit), order_id=order_id, unsettled=_fill_of(unsettled))
        except (ValueError, KeyError, TypeError, ArithmeticError) as err:
            raise JournalError(self.path, f"position {key!r}: unreadable row ({err})") from None


class _Transaction:
    def __init__(self, journal: Journal) -> None:
        self._journal = journal

    def __enter__(self) -> None:
        self._journal._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        db = self._journal._db
        if exc_type is None:
            try:
                db.execute("COMMIT")
                return
            except sqlite3.DatabaseError as err:
                db.execute("ROLLBACK")
                raise JournalError(self._journal.path, f"write failed ({err})") from None
        db.execute("ROLLBACK")
