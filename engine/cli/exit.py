"""`exitguard exit`: one verified exit for an operator, on paper by default or live on Polymarket.

Everything the operator typed is validated, and the live settings read, before anything is sent; a live
exit asks for confirmation unless told `--yes`. A live exit is journaled (`--journal`, by default a journal
in the per-user state directory, unless `--no-journal`): an outcome this process cannot settle stays on disk,
and the next `exitguard exit` or `exitguard reconcile` on that journal looks it up instead of selling again.
A journal held by a running engine (a bot) is refused, naming its pid: one engine per journal.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import TextIO

import anyio

from exitguard.cli.log_output import add_log_options, command_logs, log_level
from exitguard.cli.sigint import unless_interrupted
from exitguard.cli.statedir import default_journal
from exitguard.cli.venue import BAD_INPUT, INTERRUPTED, Venue, live_venue
from exitguard.errors import PositionConflict
from exitguard.exchange.paper import PaperExchange
from exitguard.exchange.port import SettlementStatus
from exitguard.exits import ExitEngine
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.settings import parse_seconds
from exitguard.states import FINAL_STATES, InvalidValue, State, micro_to_shares, parse_price, shares_to_micro

OPERATOR_KEY = "operator-exit"
"""The key of an exit that keeps no journal (it lives only as long as this process)."""

EXIT_CODES = {
    ExitOutcome.CLOSED: 0,
    ExitOutcome.ALREADY_EXITED: 0,
    ExitOutcome.DUST: 0,
    ExitOutcome.NOT_FILLED: 1,
    ExitOutcome.VERIFY_FAILED: 1,
    ExitOutcome.IN_PROGRESS: 1,
    ExitOutcome.PAUSED: 1,  # a paused engine sends nothing: try again once it is resumed
    ExitOutcome.UNKNOWN: 3,
    ExitOutcome.MARKET_CLOSED: 5,  # no retry can sell: the shares are redeemed on chain
}
"""0: nothing left to do; 1: nothing sold, try again; 2: bad input or settings, nothing sent;
3: the sell may have executed, reconcile before anything else; 4: refused at the confirmation prompt;
5: the market no longer trades, nothing sold and no retry will sell: redeem the shares;
130: interrupted (Ctrl-C), the position's state printed."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exit_ = commands.add_parser("exit", help="one verified exit of a token (paper by default; --live trades)")
    exit_.add_argument("--token", help="the outcome token id (not needed for a position already in --journal)")
    exit_.add_argument("--shares", help="shares you believe you hold (the exchange has the last word; not "
                                        "needed for a position already in --journal)")
    exit_.add_argument("--limit-price", required=True, help="lowest acceptable price, on the market's tick")
    exit_.add_argument("--reason", default="operator", help="recorded in the logs (default: operator)")
    exit_.add_argument("--live", action="store_true",
                       help="trade on Polymarket with the POLYMARKET_* environment settings")
    exit_.add_argument("--yes", action="store_true", help="do not ask for confirmation (live)")
    exit_.add_argument("--journal", type=Path,
                       help="journal the exit there (live default: exits.journal in the per-user state "
                            "directory, e.g. ~/.local/state/exitguard); refused while an engine holds it")
    exit_.add_argument("--no-journal", action="store_true",
                       help="keep no journal (an unknown outcome is then lost when this process ends)")
    exit_.add_argument("--key", help="the position's key in the journal (default: exit-<token>)")
    exit_.add_argument("--paper-balance", help="paper only: the balance the paper exchange holds "
                                               "(default: --shares)")
    exit_.add_argument("--paper-latency", default="0", help="paper only: seconds added to every call")
    add_log_options(exit_)


@dataclass(frozen=True)
class Plan:
    """What the operator asked for, validated."""

    key: str
    token: str | None
    shares: Decimal | None
    price: Decimal
    reason: str
    journal: Path | None
    named_key: bool
    live: bool = False
    """The operator named the key (a finished position under it is reported, not exited anew)."""


@dataclass(frozen=True)
class Done:
    result: ExitResult | None
    """None: the journaled position was already finished; nothing was sent."""
    settlement: SettlementStatus | None
    state: str
    interrupted: str | None = None
    """The one line Ctrl-C prints: the position's true state."""
    key: str | None = None
    """The key exited, when it is not the one planned (a one-off exit beside a finished one)."""


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None,
        environ: Mapping[str, str] | None = None, ask: Callable[[str], str] | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr  # looked up now: the streams may have been swapped
    try:
        level = log_level(args)
    except InvalidValue as error:
        print(f"exitguard exit: {error}; nothing sent", file=err)
        return 2
    with command_logs(err=err, level=level, json=args.json_logs, log_file=args.log_file):
        return _run(args, out=out, err=err, environ=environ, ask=ask)


def _run(args: argparse.Namespace, *, out: TextIO, err: TextIO, environ: Mapping[str, str] | None,
         ask: Callable[[str], str] | None) -> int:
    try:
        plan = _plan(args, environ)
        venue = live_venue(environ) if args.live else _paper(args, plan)
    except BAD_INPUT as error:
        print(f"exitguard exit: {error}; nothing sent", file=err)
        return 2
    if args.live and not args.yes:
        what = f"{plan.shares} shares of token {plan.token}" if plan.token else f"position {plan.key} of {plan.journal}"
        prompt = (f"About to SELL up to {what} at {plan.price} or better on {venue.name} "
                  "(exactly the balance the exchange confirms, fill-or-kill). Type 'yes' to send: ")
        try:
            answer = (ask or input)(prompt)
        except EOFError:
            answer = ""
        except KeyboardInterrupt:
            print("\nexitguard exit: interrupted at the prompt; nothing sent", file=err)
            return INTERRUPTED
        if answer.strip().lower() != "yes":
            print("exitguard exit: not confirmed; nothing sent", file=err)
            return 4
    try:
        done = anyio.run(_exit, venue, plan)
    except BAD_INPUT as error:
        print(f"exitguard exit: {error}; nothing sent", file=err)
        return 2
    plan = replace(plan, key=done.key or plan.key)
    if done.interrupted is not None:
        print(f"exitguard exit: {done.interrupted}", file=err)
        return INTERRUPTED
    if done.result is None:
        print(f"exit of {plan.key} in {plan.journal}: already {done.state}; nothing sent", file=out)
        return 0
    _report(done.result, done.settlement, venue.name, plan, out)
    return EXIT_CODES[done.result.outcome]


def _plan(args: argparse.Namespace, environ: Mapping[str, str] | None) -> Plan:
    price = parse_price(_decimal(args.limit_price, "--limit-price"), "--limit-price")
    shares = None
    if args.shares is not None:
        wanted = _decimal(args.shares, "--shares")
        shares_to_micro(wanted, "--shares")  # beyond the bound or finer than a micro-share: named as typed
        shares = Position(key=OPERATOR_KEY, token_id=args.token or "-", shares=wanted).shares
    if args.token is not None and not args.token.strip():
        raise InvalidValue("--token", args.token, "must not be empty")
    if args.no_journal and args.journal is not None:
        raise InvalidValue("--no-journal", True, "contradicts --journal; give one of them")
    journal = args.journal
    if journal is None and args.live and not args.no_journal:
        journal = default_journal(environ)
    if journal is None:
        if args.key is not None:
            raise InvalidValue("--key", args.key, "names a position in a journal: give --journal too")
        if args.token is None or shares is None:
            raise InvalidValue("--token" if args.token is None else "--shares", None,
                               "is required without a journal")
        return Plan(OPERATOR_KEY, args.token, shares, price, args.reason, None, named_key=False, live=args.live)
    if args.key is None and args.token is None:
        raise InvalidValue("--key", None, "is required with a journal unless --token is given")
    key = args.key if args.key is not None else f"exit-{args.token}"
    return Plan(key, args.token, shares, price, args.reason, journal, named_key=args.key is not None, live=args.live)


def _decimal(text: str, flag: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:
        raise InvalidValue(flag, text, "must be a decimal number") from None


def _paper(args: argparse.Namespace, plan: Plan) -> Venue:
    latency = parse_seconds(float(_decimal(args.paper_latency, "--paper-latency")), "--paper-latency",
                            allow_zero=True)
    paper = PaperExchange(latency=latency)
    if plan.token is not None:
        held = plan.shares if args.paper_balance is None else _decimal(args.paper_balance, "--paper-balance")
        if held is None:
            raise InvalidValue("--paper-balance", None, "or --shares is needed for the paper exchange's balance")
        shares_to_micro(held, "--paper-balance")
        paper.set_balance(plan.token, held)
        paper.set_bids(plan.token, [(plan.price, max(held, plan.shares or held))])
    return Venue(paper, "the paper exchange", live=False)


async def _exit(venue: Venue, plan: Plan) -> Done:
    async with venue.closing() as exchange, ExitEngine(exchange, journal=plan.journal,
                                                      settlement_poll_interval=None) as engine:
        key = _track(engine, plan)
        if key is None:
            return Done(None, None, engine.state(plan.key))
        plan = replace(plan, key=key)
        done, interrupted = await unless_interrupted(lambda: _exit_and_settle(engine, plan))
        if interrupted or done is None:
            return Done(None, None, engine.state(plan.key), interrupted=_where(engine, plan), key=key)
        return replace(done, key=key)


def _track(engine: ExitEngine, plan: Plan) -> str | None:
    """The key of the position to exit, restored from the journal or tracked now; None: the position the
    operator named is finished, nothing to do."""
    journaled = {p.key: p for p in engine.journal.positions()} if engine.journal is not None else {}
    key = plan.key
    if not plan.named_key and plan.token is not None:
        # A one-off exit of this token that is still live in the journal (an unknown outcome, a sell that
        # did not fill) is that position, whatever attempt made it; otherwise a fresh key beside the old.
        live = [p.key for p in journaled.values() if p.token_id == plan.token and p.state not in FINAL_STATES]
        n = 1
        while not live and key in journaled:
            n += 1
            key = f"{plan.key}.{n}"
        key = live[0] if live else key
    found = journaled.get(key)
    if found is not None:
        if plan.token is not None and plan.token != found.token_id:
            raise PositionConflict(f"position key={key!r} in {plan.journal} is token {found.token_id}, "
                                   f"not --token {plan.token}")
        if found.state in FINAL_STATES:
            return None
        if plan.shares is not None and found.state is State.OPEN and micro_to_shares(found.expected) != plan.shares:
            raise PositionConflict(f"position key={key!r} in {plan.journal} expects "
                                   f"{micro_to_shares(found.expected)} shares, not --shares {plan.shares}; "
                                   "leave --shares out to exit it as journaled")
        return key  # restored: OPEN is exited, an unknown outcome is looked up first (never resent)
    if plan.token is None or plan.shares is None:
        raise InvalidValue("--token" if plan.token is None else "--shares", None,
                           f"is required: position key={key!r} is not in {plan.journal}")
    engine.track(Position(key=key, token_id=plan.token, shares=plan.shares))
    return key


async def _exit_and_settle(engine: ExitEngine, plan: Plan) -> Done:
    result = await engine.exit(plan.key, reason=plan.reason, limit_price=plan.price)
    if result.outcome is ExitOutcome.UNKNOWN:
        # Settle it now, while this process still knows the order it signed (lookup, never a resend).
        result = await engine.reconcile(plan.key)
    settlement = None
    if plan.key in engine.unsettled():
        settlement = (await engine.check_settlements()).get(plan.key, SettlementStatus.PENDING)
    return Done(result, settlement, result.state)


def _where(engine: ExitEngine, plan: Plan) -> str:
    """The position's true state after Ctrl-C cancelled its exit (the engine made it truthful)."""
    state = engine.state(plan.key)
    order = None
    if engine.journal is not None:
        order = next((p.order_id for p in engine.journal.positions() if p.key == plan.key), None)
    if plan.key in engine.unresolved():
        where = f"order {order}" if order else "its order id was not kept (no journal)"
        then = _reconcile_hint(plan) or "check the token's trades on the exchange before selling again"
        return (f"interrupted: position {plan.key} is {state}, outcome UNKNOWN: the sell may have executed "
                f"({where}); nothing will be resent: {then}")
    if state == str(State.OPEN):
        return f"interrupted: position {plan.key} is OPEN; no sell was sent"
    return f"interrupted: position {plan.key} is {state}"


def _report(result: ExitResult, settlement: SettlementStatus | None, venue: str, plan: Plan, out: TextIO) -> None:
    print(f"exit on {venue}: {result.outcome} (state {result.state})", file=out)
    print(f"  expected {result.expected_shares}, verified {result.verified_balance}, sold {result.shares_sold}"
          + (f" at limit {result.limit_price}" if result.limit_price is not None else ""), file=out)
    if result.order_id:
        print(f"  order {result.order_id}", file=out)
    if settlement is not None:
        print(f"  settlement on chain: {settlement}"
              + (" (the trade is matched; it still has to be mined)" if settlement is SettlementStatus.PENDING
                 else ""), file=out)
    if result.residual_shares:
        print(f"  residual {result.residual_shares}", file=out)
    if result.error:
        print(f"  {result.error}", file=out)
    if plan.journal is not None:
        print(f"  journal {plan.journal}, key {plan.key}", file=out)
    if result.outcome is ExitOutcome.UNKNOWN:
        hint = _reconcile_hint(plan)
        then = f"{hint} to look it up" if hint else "check the order before sending anything else for this token"
        print(f"  THE SELL MAY HAVE EXECUTED. Nothing will be resent: {then}.", file=out)


def _reconcile_hint(plan: Plan) -> str | None:
    if plan.journal is None:
        return None
    if not plan.live:
        return "a paper exchange's orders end with its process: nothing to look up"
    return f"run `exitguard reconcile --journal {plan.journal} {plan.key} --live`"
