"""`exitguard reconcile`: settle the unknown outcomes of a journal from the shell.

An engine is started on the journal against the live exchange (`--live`: the exchange that received the
orders; a paper exchange's orders end with its process), so the journal's lock keeps it from running beside
the bot that owns the file. Each unknown outcome is looked up once by its journaled order id (the order, then
the token's trades, then the balance): never resent. Exit codes: 0 every named position settled (or had
nothing to settle); 2 bad input (a missing journal, an unknown key, a journal held by a running engine);
3 some outcome is still unknown (run it again later: the exchange may not show the order yet);
130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

import anyio

from exitguard.cli.log_output import add_log_options, command_logs, log_level
from exitguard.cli.sigint import unless_interrupted
from exitguard.cli.venue import BAD_INPUT, INTERRUPTED, Venue, existing_journal, live_venue
from exitguard.exchange.port import Exchange
from exitguard.exits import ExitEngine
from exitguard.position import ExitOutcome, ExitResult
from exitguard.states import InvalidValue


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    reconcile = commands.add_parser(
        "reconcile", help="settle a journal's unknown outcomes: look each order up (never resend); "
                          "refused while an engine holds the journal")
    reconcile.add_argument("keys", nargs="*", metavar="KEY", help="positions to settle (default: every unknown one)")
    reconcile.add_argument("--journal", required=True, type=Path, help="the journal file")
    reconcile.add_argument("--live", action="store_true",
                           help="look the orders up on Polymarket with the POLYMARKET_* settings (required)")
    add_log_options(reconcile)


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None,
        environ: Mapping[str, str] | None = None, exchange: Exchange | None = None) -> int:
    """`exchange` replaces the live one (tests: a paper exchange that kept the orders)."""
    out, err = out or sys.stdout, err or sys.stderr
    try:
        level = log_level(args)
    except InvalidValue as error:
        print(f"exitguard reconcile: {error}", file=err)
        return 2
    with command_logs(err=err, level=level, json=args.json_logs, log_file=args.log_file):
        return _run(args, out=out, err=err, environ=environ, exchange=exchange)


def _run(args: argparse.Namespace, *, out: TextIO, err: TextIO, environ: Mapping[str, str] | None,
         exchange: Exchange | None) -> int:
    try:
        journal = existing_journal(args.journal)
        if exchange is not None:
            venue = Venue(exchange, "the given exchange", live=False)
        elif not args.live:
            raise InvalidValue("--live", False, "is required: the orders are looked up on the exchange that "
                                                "received them (a paper exchange's orders end with its process)")
        else:
            venue = live_venue(environ)
        found, interrupted = anyio.run(_reconcile, venue, journal, list(args.keys))
    except BAD_INPUT as error:
        print(f"exitguard reconcile: {error}", file=err)
        return 2
    if interrupted or found is None:
        print("exitguard reconcile: interrupted; what was settled is journaled, the rest is still unknown "
              "(nothing was sent)", file=err)
        return INTERRUPTED
    if not found:
        print(f"journal {journal}: no unknown outcomes; nothing to reconcile", file=out)
        return 0
    for key, (before, result) in found.items():
        print(_line(key, before, result), file=out)
    still = [key for key, (_, result) in found.items() if result is not None and result.outcome is ExitOutcome.UNKNOWN]
    if still:
        print(f"\n{len(still)} still unknown: the exchange does not show how the order ended yet; run this again "
              "later (nothing is ever resent for them)", file=out)
        return 3
    return 0


async def _reconcile(venue: Venue, journal: Path,
                     keys: list[str]) -> tuple[dict[str, tuple[str, ExitResult | None]] | None, bool]:
    async with venue.closing() as exchange, ExitEngine(exchange, journal=journal,
                                                      settlement_poll_interval=None) as engine:
        states = engine.states()
        for key in keys:
            if key not in states:
                held = ", ".join(repr(k) for k in sorted(states)[:10]) + (", ..." if len(states) > 10 else "")
                raise InvalidValue("KEY", key, f"is not in journal {journal} (it holds {held or 'no positions'})")
        wanted = keys or engine.unresolved()

        async def settle() -> dict[str, tuple[str, ExitResult | None]]:
            found: dict[str, tuple[str, ExitResult | None]] = {}
            unresolved = set(engine.unresolved())
            for key in wanted:
                before = engine.state(key)
                found[key] = (before, await engine.reconcile(key) if key in unresolved else None)
            return found

        return await unless_interrupted(settle)


def _line(key: str, before: str, result: ExitResult | None) -> str:
    if result is None:
        return f"{key}: {before}, no unknown outcome; nothing to do"
    parts = [f"{key}: {result.outcome} (state {result.state})"]
    if result.shares_sold:
        parts.append(f"sold {result.shares_sold}" + (f" at {result.avg_price}" if result.avg_price is not None else ""))
    if result.order_id:
        parts.append(f"order {result.order_id}")
    if result.error:
        parts.append(result.error)
    return ", ".join(parts)
