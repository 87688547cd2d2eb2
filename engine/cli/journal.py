"""`exitguard status` and `exitguard history`: what a journal holds, for an operator and a reviewer.

Both open the journal read-only and without the engine lock, so they work beside a running engine and
never change the file (a journal that would need migrating is refused, not migrated). Tables show shares
and wall-clock times (UTC); `--json` prints the trail as journaled (quantities in micro-shares, 1 share =
1,000,000; the engine's monotonic readings included), because the trail is an audit record.

Exit codes: 0 shown; 2 bad journal or unknown key (the message names which).
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from exitguard.errors import JournalError
from exitguard.journal import Journal, JournaledPosition, JournaledTransition
from exitguard.states import State, micro_to_shares


def add_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="positions in a journal: states, unresolved outcomes, orders in flight "
                       "(read-only; safe while an engine runs)")
    status.add_argument("--journal", required=True, type=Path, help="the journal file")
    status.add_argument("--json", action="store_true", help="one JSON object instead of tables")
    history = commands.add_parser("history", help="the transition trail of one position (the audit record)")
    history.add_argument("key", help="the position key")
    history.add_argument("--journal", required=True, type=Path, help="the journal file")
    history.add_argument("--json", action="store_true", help="one JSON object instead of a table")


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: the streams may have been swapped
    try:
        journal = Journal.open(args.journal, readonly=True)
    except JournalError as error:
        print(f"exitguard {args.command}: {error}", file=err)
        return 2
    try:
        if args.command == "status":
            return _status(journal, as_json=args.json, out=out)
        return _history(journal, args.key, as_json=args.json, out=out, err=err)
    except (JournalError, sqlite3.DatabaseError) as error:
        # Damage that only shows when rows are read (the read-only open does not scan every page).
        why = str(error) if isinstance(error, JournalError) else f"journal {journal.path}: unreadable ({error})"
        print(f"exitguard {args.command}: {why}", file=err)
        return 2
    finally:
        journal.close()


# -- status ----------------------------------------------------------------------------------------

def _status(journal: Journal, *, as_json: bool, out: TextIO) -> int:
    positions = journal.positions()
    by_state = Counter(str(p.state) for p in positions)
    unresolved = [p for p in positions if p.state is State.SELLING and p.unresolved]
    in_flight = [p for p in positions if p.state in (State.VERIFYING, State.SELLING) and not p.unresolved]
    if as_json:
        json.dump({"journal": str(journal.path), "positions": [_position_json(p) for p in positions],
                   "by_state": dict(sorted(by_state.items())), "unresolved": [p.key for p in unresolved],
                   "in_flight": [p.key for p in in_flight]}, out, indent=1)
        out.write("\n")
        return 0
    counts = ", ".join(f"{state} {count}" for state, count in sorted(by_state.items())) or "none"
    print(f"journal {journal.path}: {len(positions)} position(s): {counts}", file=out)
    if not positions:
        return 0
    rows = [(p.key, p.token_id, str(p.state), str(micro_to_shares(p.expected)), str(micro_to_shares(p.sold)),
             "-" if p.avg_price is None else str(p.avg_price), str(micro_to_shares(p.residual)), str(p.attempts),
             p.attempt_id or "-", p.filled_order_id or p.order_id or "-",
             "UNRESOLVED" if p.unresolved else "") for p in positions]
    print(file=out)
    _table(("key", "token", "state", "expected", "sold", "price", "residual", "attempts", "attempt id", "order id",
            "flag"), rows, out, right=(3, 4, 5, 6, 7))
    if unresolved:
        print("\nunresolved outcomes: the sell may have executed; nothing may be sent for these until the "
              "order is looked up. A running engine does it in the background; with none running, run "
              f"`exitguard reconcile --journal {journal.path} --live`:", file=out)
        for p in unresolved:
            print(f"  {_in_flight_line(p)}", file=out)
    if in_flight:
        print("\nin flight (an engine is exiting these now; if none runs, the next start settles them: "
              "VERIFYING reopens, SELLING is looked up by its order id):", file=out)
        for p in in_flight:
            print(f"  {_in_flight_line(p)}", file=out)
    return 0


def _in_flight_line(p: JournaledPosition) -> str:
    shares = "-" if p.permit is None else str(micro_to_shares(p.permit.shares))
    order = p.order_id or "none signed (nothing was sent)"
    return (f"{p.key}: {p.state}, token {p.token_id}, attempt {p.attempt_id or '-'}, selling {shares} shares "
            f"at >= {p.limit_price if p.limit_price is not None else '-'}, order {order}")


def _position_json(p: JournaledPosition) -> dict[str, Any]:
    return {
        "key": p.key, "token_id": p.token_id, "state": str(p.state),
        "expected": str(micro_to_shares(p.expected)), "sold": str(micro_to_shares(p.sold)),
        "residual": str(micro_to_shares(p.residual)), "attempts": p.attempts, "attempt_id": p.attempt_id,
        "reason": p.reason, "limit_price": None if p.limit_price is None else str(p.limit_price),
        "verified_balance": None if p.verified_balance is None else str(micro_to_shares(p.verified_balance)),
        "unresolved": p.unresolved, "order_id": p.order_id,
        "avg_price": None if p.avg_price is None else str(p.avg_price), "filled_order_id": p.filled_order_id,
        "permit_shares": None if p.permit is None else str(micro_to_shares(p.permit.shares)),
        "last_buy_at": None if p.last_buy_at is None else p.last_buy_at.isoformat(),
    }


# -- history ---------------------------------------------------------------------------------------

def _history(journal: Journal, key: str, *, as_json: bool, out: TextIO, err: TextIO) -> int:
    trail = journal.history(key)
    current = next((p for p in journal.positions() if p.key == key), None)
    if not trail:
        known = sorted(p.key for p in journal.positions())
        hint = f"; it has {', '.join(repr(k) for k in known[:10])}{', ...' if len(known) > 10 else ''}" \
            if known else "; it holds no positions"
        print(f"exitguard history: position key={key!r} is not in journal {journal.path}{hint}", file=err)
        return 2
    if as_json:
        json.dump({"journal": str(journal.path), "key": key,
                   "current": None if current is None else _position_json(current),
                   "transitions": [_transition_json(t) for t in trail]}, out, indent=1)
        out.write("\n")
        return 0
    now = f"now {current.state}" if current is not None else "forgotten (no longer in the positions table)"
    print(f"history of {key} in {journal.path}: {len(trail)} transition(s), {now}", file=out)
    print("(quantities in shares, times in UTC; --json has the record as journaled)\n", file=out)
    rows = [(str(t.seq), _wall(t.wall_time), t.source or "-", t.dest, t.trigger, _payload(_readable(t.payload)))
            for t in trail]
    _table(("seq", "time", "from", "to", "trigger", "payload"), rows, out, right=(0,), arrow=(2, 3))
    return 0


def _transition_json(t: JournaledTransition) -> dict[str, Any]:
    return {"seq": t.seq, "time": t.wall_time, "from": t.source, "to": t.dest, "trigger": t.trigger,
            "payload": t.payload}


MICRO_SHARE_KEYS = frozenset({"expected", "previous_expected", "shares", "actual", "sell", "residual",
                              "verified_balance", "balance", "sold"})
"""Payload fields the engine journals in micro-shares; the table shows them in shares."""
MONOTONIC_KEYS = frozenset({"verified_at", "sent_at"})
"""Readings of the writing process's monotonic clock: meaningless as a time of day, left to --json."""


def _readable(payload: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = {}
    for name, value in payload.items():
        if name in MONOTONIC_KEYS and isinstance(value, (int, float)):
            continue
        if isinstance(value, dict):
            value = _readable(value)
        elif name in MICRO_SHARE_KEYS and type(value) is int:
            value = str(micro_to_shares(value))
        shown[name] = value
    return shown


def _wall(text: str) -> str:
    """An ISO time as journaled -> `2026-11-24T04:39:39.844Z`, UTC to the millisecond, one word for the
    table (kept as written if it does not parse)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}" + \
        ("Z" if moment.tzinfo is not None else "")


def _payload(payload: dict[str, Any]) -> str:
    """key=value, sorted; plain strings bare, everything else (numbers, nested objects) as compact JSON."""
    def value(v: object) -> str:
        if isinstance(v, str) and v and not any(c.isspace() or c in '"=' for c in v):
            return v
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return " ".join(f"{k}={value(v)}" for k, v in sorted(payload.items()))


# -- layout ----------------------------------------------------------------------------------------

def _table(header: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO, *, right: Sequence[int] = (),
           arrow: tuple[int, int] | None = None) -> None:
    """Columns sized to their widest cell; the last column is not padded. `arrow` joins two columns
    with "->" (from -> to)."""
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        parts: list[str] = []
        for i, cell in enumerate(cells):
            text = cell if i == len(cells) - 1 else (cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
            if arrow is not None and i == arrow[1]:
                parts[-1] += " ->"
            parts.append(text)
        return "  ".join(parts).rstrip()

    print(line(header), file=out)
    for row in rows:
        print(line(row), file=out)
