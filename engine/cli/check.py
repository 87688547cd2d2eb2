"""`exitguard check --live`: a dry run against Polymarket that sends no order, for an operator going live.

It reads what an exit reads and nothing it writes: the settings, the host (GET /ok), the exchange's clock
(GET /time), the API credentials (an authenticated read; derived from the key when absent, as the engine
would), each token's balance and allowance (the tokens named, or the unfinished positions of a journal),
the market's tick and minimum size, the rate-limit tier of the signing address, and the user channel the
engine would follow (named, not connected). Exit code 0 when nothing failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from py_clob_client_v2.clob_types import AssetType, BalanceAllowanceParams, RequestArgs
from py_clob_client_v2.exceptions import PolyApiException, PolyException
from py_clob_client_v2.headers.headers import create_level_2_headers
from py_clob_client_v2.http_helpers import helpers as http

from exitguard.cli.venue import BAD_INPUT, existing_journal, live
from exitguard.errors import ExchangeError
from exitguard.exchange.polymarket.positions import ledger_of
from exitguard.exchange.polymarket.ratelimit import TIER_PATH, named_tier
from exitguard.exchange.polymarket.reads import market_from_book, read_error, transport_cause
from exitguard.exchange.polymarket.secrets import mask_text, own_calls
from exitguard.journal import Journal
from exitguard.states import FINAL_STATES, InvalidValue, micro_to_shares

MAX_CLOCK_SKEW = 5.0
"""Seconds the local clock may differ from the exchange's: orders and L2 headers carry our timestamps."""


@dataclass(frozen=True)
class Item:
    status: str
    """ok, FAIL, warn, unknown, n/a"""
    name: str
    detail: str


def add_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = commands.add_parser("check", help="a dry run against Polymarket that sends no order: settings, host, "
                                              "clock, credentials, balances and allowances, market rules")
    check.add_argument("--live", action="store_true", help="check the POLYMARKET_* settings (required)")
    check.add_argument("--token", action="append", default=[], help="a token to check (repeatable)")
    check.add_argument("--journal", type=Path, help="check every unfinished position of this journal (read-only)")


def run(args: argparse.Namespace, *, out: TextIO | None = None, err: TextIO | None = None,
        environ: Mapping[str, str] | None = None, now: Callable[[], float] = time.time) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        if not args.live:
            raise InvalidValue("--live", False, "is required: check reads the live exchange (it sends no order)")
        tokens = list(dict.fromkeys(t for t in args.token if t.strip()))
        if args.journal is not None:
            tokens += [t for t in _journal_tokens(existing_journal(args.journal)) if t not in tokens]
    except BAD_INPUT as error:
        print(f"exitguard check: {error}", file=err)
        return 2
    items = _checks(environ, tokens, now)
    width = max(len(item.name) for item in items)
    for item in items:
        print(f"[{item.status:^7}] {item.name:<{width}}  {item.detail}", file=out)
    failed = [item for item in items if item.status == "FAIL"]
    print(f"\n{len(failed)} failed" if failed else "\nready: nothing failed (no order was sent)", file=out)
    return 1 if failed else 0


def _journal_tokens(path: Path) -> list[str]:
    journal = Journal.open(path, readonly=True)
    try:
        return list(dict.fromkeys(p.token_id for p in journal.positions() if p.state not in FINAL_STATES))
    finally:
        journal.close()


def _checks(environ: Mapping[str, str] | None, tokens: list[str], now: Callable[[], float]) -> list[Item]:
    items: list[Item] = []
    try:
        exchange, settings, name = live(environ)
    except InvalidValue as error:
        return [Item("FAIL", "settings", str(error))]
    client = exchange.client
    host = client.host
    items.append(Item("ok", "settings", f"{name}, signature type {settings.signature_type}"
                                        + (f", funder {settings.funder}" if settings.funder else "")))

    def call(what: str, fn: Callable[..., Any], *a: object) -> Any:
        try:
            with own_calls():
                return fn(*a)
        except PolyApiException as error:
            if error.status_code is None:
                raise CheckFailed(f"cannot reach {host}: {transport_cause(error)}") from None
            raise CheckFailed(str(read_error(what, error.status_code, error.error_msg))) from None
        except PolyException as error:
            raise CheckFailed(f"{what}: {mask_text(str(error.msg))}") from None
        except Exception as error:  # noqa: BLE001 - the client indexes bodies it never checked
            raise CheckFailed(f"{what}: unreadable answer ({type(error).__name__})") from None

    try:
        started = time.monotonic()
        call("GET /ok", client.get_ok)
        items.append(Item("ok", "host", f"{host} answers ({(time.monotonic() - started) * 1000:.0f} ms)"))
    except CheckFailed as failure:
        return [*items, Item("FAIL", "host", str(failure))]
    items.append(_clock(call, client, now))
    try:
        derived = client.creds is None
        if derived:
            client.set_api_creds(call("API key derivation", client.derive_api_key))
        body = call("balance-allowance", client.get_balance_allowance,
                    BalanceAllowanceParams(asset_type=AssetType.COLLATERAL))
        cash = _raw(body.get("balance")) if isinstance(body, dict) else None
        collateral = "" if cash is None else f", collateral {micro_to_shares(cash)}"
        items.append(Item("ok", "API credentials",
                          ("derived from the key; " if derived else "") + "authenticated read ok" + collateral))
    except CheckFailed as failure:
        return [*items, Item("FAIL", "API credentials", str(failure))]
    for token in tokens:
        items += _token(call, client, token)
    if not tokens:
        items.append(Item("n/a", "balance and allowance", "no token named (--token, or --journal for its positions)"))
    items.append(_tier(call, client))
    channel = exchange.user_channel
    items.append(Item("n/a", "user channel", "off: fills and settlements are followed over REST only "
                                             "(POLYMARKET_USER_CHANNEL_URL turns it on)" if channel is None else
                      f"{channel.where}: the engine follows it; this check does not connect"))
    return items


class CheckFailed(Exception):
    """One check's failure, already worded for the operator."""


Call = Callable[..., Any]


def _clock(call: Call, client: Any, now: Callable[[], float]) -> Item:
    before = now()
    try:
        answer = call("GET /time", client.get_server_time)
        server = int(answer)
    except CheckFailed as failure:
        return Item("FAIL", "clock", str(failure))
    except (TypeError, ValueError):
        return Item("FAIL", "clock", "GET /time: unreadable answer")
    skew = (before + now()) / 2 - server
    # The exchange answers in whole seconds: up to a second of the difference is its rounding.
    status = "ok" if abs(skew) <= MAX_CLOCK_SKEW + 1 else "FAIL"
    return Item(status, "clock", f"local clock {skew:+.1f}s from the exchange's (limit {MAX_CLOCK_SKEW:.0f}s)")


def _token(call: Call, client: Any, token: str) -> list[Item]:
    short = token if len(token) <= 16 else f"{token[:6]}...{token[-4:]}"
    items: list[Item] = []
    try:
        body = call("balance-allowance", client.get_balance_allowance,
                    BalanceAllowanceParams(asset_type=ledger_of(token), token_id=token))
        balance = _raw(body.get("balance")) if isinstance(body, dict) else None
        if balance is None:
            raise CheckFailed(f"balance-allowance: answer without a readable balance: {mask_text(str(body)[:120])}")
        allowances = body.get("allowances") if isinstance(body, dict) else None
        granted = [v for v in allowances.values()] if isinstance(allowances, dict) else []
        if not granted or any(str(v).strip() in ("", "0") for v in granted):
            items.append(Item("FAIL", f"token {short}", f"balance {micro_to_shares(balance)} shares; allowance "
                                                        f"missing for the exchange's spenders: {allowances!r}"))
        else:
            items.append(Item("ok" if balance > 0 else "warn", f"token {short}",
                              f"balance {micro_to_shares(balance)} shares, allowance set for {len(granted)} spender(s)"
                              + ("" if balance > 0 else " (nothing to sell)")))
    except CheckFailed as failure:
        items.append(Item("FAIL", f"token {short}", str(failure)))
    try:
        rules = market_from_book(token, call("order book", client.get_order_book, token)).rules
        items.append(Item("ok", f"market {short}", f"tick {rules.tick_size}, minimum size "
                                                   f"{micro_to_shares(rules.min_order_size)} shares"))
    except CheckFailed as failure:
        items.append(Item("FAIL", f"market {short}", str(failure)))
    except (InvalidValue, ExchangeError) as error:
        items.append(Item("FAIL", f"market {short}", f"order book: {error}"))
    return items


def _tier(call: Call, client: Any) -> Item:
    """GET /v1/user/rate-limit-tier (L2): the signing address's order tier; "unknown" when not served."""
    def fetch() -> Any:
        headers = create_level_2_headers(client.signer, client.creds,
                                         RequestArgs(method="GET", request_path=TIER_PATH))
        return http.get(f"{client.host}{TIER_PATH}", headers=headers)

    try:
        body = call("rate-limit tier", fetch)
    except CheckFailed as failure:
        return Item("unknown", "rate-limit tier", f"{failure} (documented since 2026-07; orders use the default "
                                                  "limits)")
    return Item("ok", "rate-limit tier", mask_text(str(named_tier(body))[:80]))


def _raw(value: object) -> int | None:
    """A balance as the wire writes it: a string of raw 6-decimal units ("5000000" is 5 shares)."""
    return int(value) if isinstance(value, str) and value.isdigit() and len(value) < 40 else None
