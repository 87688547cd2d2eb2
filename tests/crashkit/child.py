"""The engine process of the crash tests: `python -m crashkit.child SPEC.json`.

Opens `ExitEngine(exchange, journal=...)` (recovery runs on entry), tracks the positions the journal does
not know, exits every OPEN one, and writes a report beside the spec. With a kill point in the spec, it
SIGKILLs itself at that point instead, after writing a marker naming it (so a test can tell a kill that
happened from one that never fired). The kill points are wrappers around a Journal method, the exchange
port and the position book's `fire`, installed in this process only; engine code carries no test hooks.

Exit codes: 0 ran to the end; 2 the engine refused to start (JournalError, printed); -9 killed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from exitguard import ExitEngine, ExitOutcome, Position
from exitguard.book import PositionBook
from exitguard.clock import SystemClock
from exitguard.errors import JournalError
from exitguard.journal import Journal, durable
from exitguard.states import PositionRecord, SellPermit, State
from exitguard.telemetry.logs import configure_logging

from . import FilePaperExchange, Kill, _log, _marker, _report


class Killer:
    def __init__(self, kill: Kill | None, marker: Path) -> None:
        self.kill = kill
        self.marker = marker

    def hit(self, point: str, key: str) -> None:
        if self.kill is None or (self.kill.point, self.kill.key) != (point, key):
            return
        # Raw os.write: no Python buffer stands between the marker and the kill.
        fd = os.open(self.marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, f"{point} {key}".encode())
        os.close(fd)
        os.kill(os.getpid(), signal.SIGKILL)


def install_journal_kills(killer: Killer) -> None:
    """Wrap the Journal's writes and the book's wait for an intent's fsync, in this process: a kill just before or
    just after a step reaches the journal."""
    append, commit_intent = Journal.append, PositionBook.commit_intent

    # (record, rows, ...) positionally; the rest passed through untouched, whatever it is.
    def killing_append(self: Journal, record: PositionRecord, rows: Any, *args: Any, **kwargs: Any) -> int:
        triggers = {row[2] for row in rows}
        if record.state is State.CLOSED:
            killer.hit("before_closed_write", record.key)
        ticket = append(self, record, rows, *args, **kwargs)
        if "order_signed" in triggers:
            killer.hit("after_order_noted", record.key)
        if "sell_unknown" in triggers:
            killer.hit("after_unknown_write", record.key)
        if record.state is State.CLOSED:
            killer.hit("after_closed_write", record.key)
        return ticket

    async def killing_commit_intent(self: PositionBook, record: PositionRecord) -> None:
        await commit_intent(self, record)
        killer.hit("after_intent_commit", record.key)

    Journal.append = killing_append  # type: ignore[method-assign]
    PositionBook.commit_intent = killing_commit_intent  # type: ignore[method-assign]


def keep_what_each_fsync_made_durable(journal: str) -> None:
    """A power loss keeps what the last fsync of the journal's log made durable, and nothing after it: after each, copy
    the journal and its log aside (`power_loss` in the spec; the test puts the copies back before the restart)."""
    flush = durable.flush_file

    def flushing(fd: int) -> None:
        flush(fd)
        for name in (journal, journal + "-wal"):
            shutil.copyfile(name, name + ".durable")

    durable.flush_file = flushing


class KillingExchange:
    """The exchange port, delegated, with kills after the balance answer and after the post."""

    def __init__(self, inner: Any, killer: Killer, keys_by_token: dict[str, str]) -> None:
        self.inner = inner
        self.killer = killer
        self.keys_by_token = keys_by_token

    async def get_balance(self, token_id: str) -> object:
        balance = await self.inner.get_balance(token_id)
        self.killer.hit("after_balance", self.keys_by_token.get(token_id, ""))
        return balance

    async def refresh_balance(self, token_id: str) -> None:
        await self.inner.refresh_balance(token_id)

    async def market_rules(self, token_id: str) -> Any:
        return await self.inner.market_rules(token_id)

    async def warm_up(self, token_id: str) -> None:
        await self.inner.warm_up(token_id)

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal) -> str:
        return await self.inner.prepare_sell(permit, limit_price)

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object) -> Any:
        try:
            return await self.inner.sell(permit, limit_price, **options)
        finally:
            # Executed (or refused) on the exchange; whatever it answered, the engine never reads it.
            self.killer.hit("after_post", permit.position_key)

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> Any:
        return await self.inner.lookup_sell(permit, order_id)

    async def settlement(self, fill: Any) -> Any:
        return await self.inner.settlement(fill)


def install_fire_kill(killer: Killer) -> None:
    """Wrap the position book's `fire` (where every transition happens) of this process."""
    fire = PositionBook.fire

    def killing_fire(self: PositionBook, record: PositionRecord, trigger: str, **payload: object) -> None:
        if trigger == "sell_filled":
            killer.hit("after_fill", record.key)  # the fill is in hand; nothing has moved yet
        fire(self, record, trigger, **payload)
        if trigger == "balance_fetched" and record.state is State.SELLING:
            killer.hit("after_verified", record.key)  # the permit is issued; the journal waits for the intent

    PositionBook.fire = killing_fire  # type: ignore[method-assign]


def build_exchange(spec: dict[str, Any]) -> Any:
    if spec["kind"] == "paper":
        return FilePaperExchange(spec["path"])
    from py_clob_client_v2 import ClobClient
    from py_clob_client_v2.clob_types import ApiCreds

    from exitguard.polymarket import PolymarketExchange

    # Key and credentials come by environment, never on the command line or in the spec file.
    creds = ApiCreds(os.environ["CRASHKIT_API_KEY"], os.environ["CRASHKIT_API_SECRET"],
                     os.environ["CRASHKIT_API_PASSPHRASE"])
    client = ClobClient(spec["host"], int(spec.get("chain_id", 137)), key=os.environ["CRASHKIT_PRIVATE_KEY"],
                        creds=creds)
    return PolymarketExchange(client, call_timeout=10.0)


class AheadClock(SystemClock):
    """The system clock, its wall reading `ahead` seconds later: a restart that comes later than it does."""

    def __init__(self, ahead: float) -> None:
        self.ahead = timedelta(seconds=ahead)

    def wall(self) -> datetime:
        return super().wall() + self.ahead


async def run(spec: dict[str, Any], spec_path: Path) -> dict[str, Any]:
    kill = Kill(**spec["kill"]) if spec["kill"] else None
    killer = Killer(kill, _marker(spec_path))
    install_journal_kills(killer)
    if spec.get("power_loss"):
        keep_what_each_fsync_made_durable(spec["journal"])
    install_fire_kill(killer)
    positions = spec["positions"]
    exchange = KillingExchange(build_exchange(spec["exchange"]), killer,
                               {p["token_id"]: p["key"] for p in positions})
    report: dict[str, Any] = {}
    # Background retries far off: the child asks for one round of lookups itself, so its report is the same
    # on a slow machine.
    engine = ExitEngine(exchange, journal=spec["journal"], settlement_poll_interval=None,  # type: ignore[arg-type]
                        resolve_backoff=(3600.0, 3600.0), clock=AheadClock(float(spec.get("clock_ahead", 0.0))))
    async with engine:
        summary = engine.recovery
        assert summary is not None
        # Recovery hands what may have been sent to the resolver and returns; one round of lookups settles it.
        resolved = await engine.resolve_unknowns()
        report["recovery"] = {"positions": summary.positions, "by_state": summary.by_state,
                              "reopened": summary.reopened, "resolving": summary.resolving,
                              "reconciled": {key: str(r.outcome) for key, r in resolved.items()
                                             if r.outcome is not ExitOutcome.UNKNOWN},
                              "unresolved": [key for key, r in resolved.items() if r.outcome is ExitOutcome.UNKNOWN]}
        report["after_recovery"] = engine.states()
        report["recovery_divergence"] = {str(kind): count for kind, count in engine.divergence.by_kind.items()}
        if spec["hold"]:
            print("ready", flush=True)
            sys.stdin.readline()
        results: list[dict[str, Any]] = []
        if spec["exits"]:
            known = engine.states()
            for p in positions:
                if p["key"] not in known:
                    engine.track(Position(key=p["key"], token_id=p["token_id"], shares=Decimal(p["shares"])))

            async def exit_one(p: dict[str, Any]) -> None:
                if engine.state(p["key"]) != "OPEN":
                    return
                result = await engine.exit(p["key"], reason="crash_test", limit_price=Decimal(p["limit_price"]))
                results.append({"key": result.key, "outcome": str(result.outcome), "state": result.state,
                                "shares_sold": str(result.shares_sold), "order_id": result.order_id,
                                "error": result.error})

            if spec["concurrent"]:
                async with anyio.create_task_group() as group:
                    for p in positions:
                        group.start_soon(exit_one, p)
            else:
                for p in positions:
                    await exit_one(p)
        report["results"] = results
        report["final"] = engine.states()
        report["unresolved"] = engine.unresolved()
    return report


def main() -> int:
    spec_path = Path(sys.argv[1])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    log = open(_log(spec_path), "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
    configure_logging(json=True, level="DEBUG", sink=log)
    try:
        report = anyio.run(run, spec, spec_path)
    except JournalError as err:
        print(f"crashkit: {err}", file=sys.stderr)
        return 2
    tmp = _report(spec_path).with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=1, sort_keys=True), encoding="utf-8")
    os.replace(tmp, _report(spec_path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
