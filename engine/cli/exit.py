"""`exitguard exit`: one verified exit for an operator, on paper by default or live on Polymarket.

Everything the operator typed is validated, and the live settings read, before anything is sent; a live
exit asks for confirmation unless told `--yes`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import TextIO

import anyio

from exitguard.exchange.paper import PaperExchange
from exitguard.exchange.port import Exchange, SettlementStatus
from exitguard.exits import ExitEngine
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.states import InvalidValue, parse_price, shares_to_micro
from exitguard.telemetry.logs import configure_logging

OPERATOR_KEY = "operator-exit"

EXIT_CODES = {
    ExitOutcome.CLOSED: 0,
    ExitOutcome.ALREADY_EXITED: 0,
    ExitOutcome.DUST: 0,
    ExitOutcome.NOT_FILLED: 1,
    ExitOutcome.VERIFY_FAILED: 1,
    ExitOutcome.IN_PROGRESS: 1,
    ExitOutcome.UNKNOWN: 3,
}
"""0: nothing left to do; 1: nothing sold, try again; 2: bad input or settings, nothing sent;
3: the sell may have executed, reconcile before anything else; 4: refused at the confirmation prompt."""


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    exit_ = commands.add_parser("exit", help="one verified exit of a token (paper by default; --live trades)")
    exit_.add_argument("--token", required=True, help="the outcome token id")
    exit_.add_argument("--shares", required=True, help="shares you believe you hold (the exchange has the last word)")
    exit_.add_argument("--limit-price", required=True, help="lowest acceptable price, on the market's tick")
    exit_.add_argument("--reason", default="operator", help="recorded in the logs (default: operator)")
    exit_.add_argument("--live", action="store_true",
                       help="trade on Polymarket with the POLYMARKET_* environment settings")
    exit_.add_argument("--yes", action="store_true", help="do not ask for confirmation (live)")
    exit_.add_argument("--paper-balance", help="paper only: the balance the paper exchange holds "
                                               "(default: --shares)")
    exit_.add_argument("--json-logs", action="store_true", help="log JSON lines to stderr")
    exit_.add_argument("--log-level", default="INFO", help="log level for stderr (default INFO)")


def run(args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
        environ: Mapping[str, str] | None = None, ask: Callable[[str], str] | None = None) -> int:
    configure_logging(json=args.json_logs, level=args.log_level.upper())
    try:
        wanted = _decimal(args.shares, "--shares")
        shares_to_micro(wanted, "--shares")  # beyond the bound or finer than a micro-share: named as typed
        shares = Position(key=OPERATOR_KEY, token_id=args.token, shares=wanted).shares
        price = parse_price(_decimal(args.limit_price, "--limit-price"), "--limit-price")
        exchange, venue = (_live(environ) if args.live else _paper(args, shares, price))
    except InvalidValue as error:
        print(f"exitguard exit: {error}; nothing sent", file=err)
        return 2
    if args.live and not args.yes:
        prompt = (f"About to SELL up to {shares} shares of token {args.token} at {price} or better on {venue} "
                  "(exactly the balance the exchange confirms, fill-or-kill). Type 'yes' to send: ")
        try:
            answer = (ask or input)(prompt)
        except EOFError:
            answer = ""
        if answer.strip().lower() != "yes":
            print("exitguard exit: not confirmed; nothing sent", file=err)
            return 4
    result, settlement = anyio.run(_exit, exchange, args.token, shares, price, args.reason)
    _report(result, settlement, venue, out)
    return EXIT_CODES[result.outcome]


def _decimal(text: str, flag: str) -> Decimal:
    try:
        return Decimal(text)
    except ArithmeticError:
        raise InvalidValue(flag, text, "must be a decimal number") from None


def _paper(args: argparse.Namespace, shares: Decimal, price: Decimal) -> tuple[Exchange, str]:
    balance = shares if args.paper_balance is None else _decimal(args.paper_balance, "--paper-balance")
    shares_to_micro(balance, "--paper-balance")
    paper = PaperExchange()
    paper.set_balance(args.token, balance)
    paper.set_bids(args.token, [(price, max(balance, shares))])
    return paper, "the paper exchange"


def _live(environ: Mapping[str, str] | None) -> tuple[Exchange, str]:
    from exitguard.exchange.polymarket import PolymarketExchange, PolymarketSettings

    settings = PolymarketSettings.from_env(os.environ if environ is None else environ)
    exchange = PolymarketExchange.from_settings(settings)
    return exchange, f"{settings.host} (chain {settings.chain_id}) as {exchange.client.signer.address()}"


async def _exit(exchange: Exchange, token: str, shares: Decimal, price: Decimal,
                reason: str) -> tuple[ExitResult, SettlementStatus | None]:
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        engine.track(Position(key=OPERATOR_KEY, token_id=token, shares=shares))
        result = await engine.exit(OPERATOR_KEY, reason=reason, limit_price=price)
        if result.outcome is ExitOutcome.UNKNOWN:
            # Settle it now, while this process still knows the order it signed (lookup, never a resend).
            result = await engine.reconcile(OPERATOR_KEY)
        settlement = None
        if OPERATOR_KEY in engine.unsettled():
            settlement = (await engine.check_settlements()).get(OPERATOR_KEY, SettlementStatus.PENDING)
        return result, settlement


def _report(result: ExitResult, settlement: SettlementStatus | None, venue: str, out: TextIO) -> None:
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
    if result.outcome is ExitOutcome.UNKNOWN:
        print("  THE SELL MAY HAVE EXECUTED. Check the order before sending anything else for this token.",
              file=out)
