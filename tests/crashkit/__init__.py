"""Crash kit: an exchange that outlives the process, and an engine process that can be SIGKILLed at a
precise step of an exit.

    exchange = FilePaperExchange(tmp_path / "exchange.json")     # the market, kept in a JSON file
    exchange.set_balance("t1", Decimal("10")); exchange.save()
    run = run_engine(Spec(journal=..., exchange=PaperSpec(path), positions=[...], kill=Kill("after_post", "p1")))
    run.killed_at                 # "after_post p1": the point the child died at (None if it ran to the end)
    run.report                    # what a child that ran to the end saw: recovery summary, states, results

The child (`python -m crashkit.child SPEC`) is in `child.py`. Kill points are placed by wrappers in the
child process only (`Journal.append`, the book's `fire` and `commit_intent`, the exchange port); engine code has no
hooks. `Spec(power_loss=True)` also keeps a copy of the journal as each fsync of its log left it, and
`power_loss(spec)` restores it: the disk after a power cut, which loses what was written since the last fsync.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from exitguard.errors import ExchangeError, OrderKilled, TransientError, UnknownOutcome
from exitguard.exchange.paper import PaperCall, PaperExchange, PaperSell, SellStatus
from exitguard.states import MarketRules, SellPermit, micro_to_shares

TESTS = Path(__file__).resolve().parent.parent

KILL_POINTS = (
    "after_balance",         # the exchange answered the balance read; nothing journaled about it yet
    "after_verified",        # VERIFYING -> SELLING in memory (a permit); the attempt's steps wait for its intent
    "after_order_noted",     # the intent (request, balance, order id) is written, not yet fsync'd; nothing posted
    "after_intent_commit",   # the intent is durable (fsync'd); the order has not been posted
    "after_post",            # the exchange executed the order; its answer never reached the engine
    "after_unknown_write",   # the answer was lost and SELLING (unresolved) is written; no reconcile yet
    "after_fill",            # the engine holds the fill; the in-memory state has not moved yet
    "before_closed_write",   # the in-memory state is CLOSED; the journal still says SELLING
    "after_closed_write",    # CLOSED is written (without an fsync: a power loss may take it, see `power_loss`)
)

_ERRORS: dict[str, type[ExchangeError]] = {cls.__name__: cls for cls in (TransientError, UnknownOutcome, OrderKilled)}


class FilePaperExchange(PaperExchange):
    """A PaperExchange whose market lives in a JSON file: loaded when built, saved after every call.

    Only one process uses the file at a time (the engine child, or the test between children), and the
    in-memory copy is the truth while it runs: it is never reloaded mid-run, which would undo the effect
    of a concurrent call that has not saved yet. Saving after each call means a SIGKILL at any of the
    kill points leaves on disk exactly what the exchange has done, as a real exchange would keep it.

    `posts` records every sell call received, before it is executed or refused: the witness for
    "no second post for the same attempt".
    """

    def __init__(self, path: str | Path, **options: Any) -> None:
        super().__init__(**options)
        self.path = Path(path)
        self.posts: list[dict[str, str]] = []
        if self.path.exists():
            self.load()

    # -- persistence -------------------------------------------------------------------------------

    def load(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        self._chain = {token: int(micro) for token, micro in data["chain"].items()}
        self._cached = {token: int(micro) for token, micro in data["cached"].items()}
        self._bids = {token: [(Decimal(price), int(size)) for price, size in levels]
                      for token, levels in data["bids"].items()}
        self._rules = {token: MarketRules(Decimal(rules["tick_size"]), int(rules["min_order_size"]),
                                          int(rules["size_step"])) for token, rules in data["rules"].items()}
        self.sells = [PaperSell(s["token_id"], Decimal(s["shares"]), Decimal(s["limit_price"]), s["attempt_id"],
                                SellStatus(s["status"]), s["order_id"],
                                None if s["avg_price"] is None else Decimal(s["avg_price"]), s["error"])
                      for s in data["sells"]]
        self.calls = [PaperCall(op, token) for op, token in data["calls"]]
        self.posts = list(data["posts"])
        self._used_attempts = set(data["used_attempts"])
        self._orders = int(data["orders"])
        self._prepared = dict(data["prepared"])
        self._lost_responses = int(data["lost_responses"])
        self._failures.clear()
        for operation, errors in data["failures"].items():
            self._failures[operation].extend(_ERRORS[name](message, status=status) for name, message, status in errors)

    def save(self) -> None:
        data = {
            "chain": self._chain,
            "cached": self._cached,
            "bids": {token: [[str(price), size] for price, size in levels] for token, levels in self._bids.items()},
            "rules": {token: {"tick_size": str(r.tick_size), "min_order_size": r.min_order_size,
                              "size_step": r.size_step} for token, r in self._rules.items()},
            "sells": [{"token_id": s.token_id, "shares": str(s.shares), "limit_price": str(s.limit_price),
                       "attempt_id": s.attempt_id, "status": s.status.value, "order_id": s.order_id,
                       "avg_price": None if s.avg_price is None else str(s.avg_price), "error": s.error}
                      for s in self.sells],
            "calls": [[call.operation, call.token_id] for call in self.calls],
            "posts": self.posts,
            "used_attempts": sorted(self._used_attempts),
            "orders": self._orders,
            "prepared": self._prepared,
            "lost_responses": self._lost_responses,
            "failures": {op: [[type(e).__name__, str(e), e.status] for e in errors]
                         for op, errors in self._failures.items() if errors},
        }
        for errors in self._failures.values():
            for error in errors:
                if type(error).__name__ not in _ERRORS:
                    raise TypeError(f"FilePaperExchange cannot persist a {type(error).__name__}")
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)  # a reader never sees half a file

    # -- the exchange port, saved after every call ---------------------------------------------------

    async def get_balance(self, token_id: str) -> object:
        try:
            return await super().get_balance(token_id)
        finally:
            self.save()

    async def refresh_balance(self, token_id: str) -> None:
        try:
            await super().refresh_balance(token_id)
        finally:
            self.save()

    async def market_rules(self, token_id: str) -> MarketRules:
        try:
            return await super().market_rules(token_id)
        finally:
            self.save()

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal) -> str:
        try:
            return await super().prepare_sell(permit, limit_price)
        finally:
            self.save()  # the order id counter: a restarted process must not hand out the same id

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # noqa: ANN201 - Fill
        self.posts.append({"attempt_id": permit.attempt_id, "token_id": permit.token_id,
                           "shares": str(micro_to_shares(permit.shares))})
        try:
            return await super().sell(permit, limit_price, **options)
        finally:
            self.save()

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None):  # noqa: ANN201 - SellLookup
        try:
            return await super().lookup_sell(permit, order_id)
        finally:
            self.save()

    # -- what the tests check ----------------------------------------------------------------------

    def sold(self, token_id: str) -> Decimal:
        return sum((s.shares for s in self.sells if s.token_id == token_id and s.status is SellStatus.FILLED),
                   Decimal(0))

    def posts_per_attempt(self) -> Counter[str]:
        return Counter(post["attempt_id"] for post in self.posts)


# -- the child process ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Kill:
    point: str
    key: str
    """The position whose exit (or recovery) hits the point; other positions pass through it."""

    def __post_init__(self) -> None:
        if self.point not in KILL_POINTS:
            raise ValueError(f"kill point {self.point!r}: must be one of {', '.join(KILL_POINTS)}")


@dataclass(frozen=True)
class PositionSpec:
    key: str
    token_id: str
    shares: str
    limit_price: str = "0.55"


@dataclass
class Spec:
    journal: str
    exchange: dict[str, Any]
    """{"kind": "paper", "path": ...} or {"kind": "clob", "host": ...} (key and creds go by environment)."""
    positions: list[PositionSpec]
    kill: Kill | None = None
    exits: bool = True
    """Track the positions the journal does not know, then exit every OPEN one."""
    concurrent: bool = False
    """Run the exits at once in a task group (default: one after the other)."""
    hold: bool = False
    """After recovery, print "ready" and wait for a line on stdin (lock tests)."""
    power_loss: bool = False
    """After each fsync of the journal's log, the child copies the journal and its log aside (`<file>.durable`):
    `power_loss(spec)` puts them back, as a power cut leaves the disk, before the restart."""
    clock_ahead: float = 0.0
    """Seconds the child's wall clock runs ahead of the real one: a restart that comes that much later (the
    lookup horizon of an order journaled before the crash counts on the wall clock)."""


@dataclass
class Run:
    returncode: int
    killed_at: str | None
    report: dict[str, Any] | None
    logs: list[dict[str, Any]]
    stderr: str

    def events(self, name: str) -> list[dict[str, Any]]:
        return [record["extra"] for record in (line["record"] for line in self.logs)
                if record["extra"].get("event") == name]


def power_loss(spec: Spec) -> None:
    """The disk as a power cut after the child's last fsync leaves it: what that fsync made durable, no more (the
    writes after it, in the page cache, are gone; so is the log's index, which SQLite rebuilds from the log)."""
    for name in (spec.journal, spec.journal + "-wal"):
        os.replace(name + ".durable", name)
    Path(spec.journal + "-shm").unlink(missing_ok=True)


def child_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "crashkit.child", str(spec_path)]


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return env


def write_spec(spec: Spec, folder: Path, name: str) -> Path:
    path = folder / f"{name}.spec.json"
    path.write_text(json.dumps(asdict(spec), indent=1), encoding="utf-8")
    return path


def run_engine(spec: Spec, folder: Path, name: str, *, env: dict[str, str] | None = None,
               timeout: float = 60.0) -> Run:
    """Run one engine child to its end (or its SIGKILL) and collect what it left behind."""
    spec_path = write_spec(spec, folder, name)
    for leftover in (_marker(spec_path), _report(spec_path), _log(spec_path)):
        leftover.unlink(missing_ok=True)
    done = subprocess.run(child_command(spec_path), env=child_env(env), capture_output=True, text=True,
                          timeout=timeout, check=False)
    marker, report, log = _marker(spec_path), _report(spec_path), _log(spec_path)
    killed_at = marker.read_text(encoding="utf-8").strip() if marker.exists() else None
    if killed_at is not None and done.returncode != -signal.SIGKILL:
        raise AssertionError(f"{name}: marked killed at {killed_at} but exited {done.returncode}\n{done.stderr}")
    if killed_at is None and done.returncode != 0:
        raise AssertionError(f"{name}: child failed ({done.returncode})\n{done.stderr}")
    logs = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines() if line.strip()] \
        if log.exists() else []
    return Run(done.returncode, killed_at, json.loads(report.read_text(encoding="utf-8")) if report.exists() else None,
               logs, done.stderr)


def _marker(spec_path: Path) -> Path:
    return spec_path.with_suffix(".killed")


def _report(spec_path: Path) -> Path:
    return spec_path.with_suffix(".report")


def _log(spec_path: Path) -> Path:
    return spec_path.with_suffix(".log")


__all__ = ["KILL_POINTS", "FilePaperExchange", "Kill", "PositionSpec", "Run", "Spec", "child_command", "child_env",
           "power_loss", "run_engine", "write_spec"]
