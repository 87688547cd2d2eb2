"""The journal's cost: per transition with fsync on, per exit journal off vs on, and restart recovery time
for 100,000 journaled positions.

1. N exits on the paper exchange (zero latency, logging off), four ways: the bare exchange calls (the
   floor, as in bench/engine_overhead.py), ExitEngine without a journal (issue 5's limit: <= 300 us of
   engine overhead per exit), with the journal on a memory filesystem (/dev/shm: the same SQLite work,
   but an fsync there returns at once) and in FOLDER (the shipped setting: every transition fsync'd before
   the engine acts on it). CPU time (`process_time`) shows the engine's own work; wall time
   (`perf_counter`) includes the fsync waits, so the fsync cost is FOLDER minus memory in wall time.
2. A journal of P positions built in one SQL transaction (rows copied from templates that the Journal
   API wrote, so their format is the journal's own), then the time `ExitEngine(..., journal=path)` takes
   to enter: all OPEN, then with some VERIFYING (reopened, no I/O) and SELLING with a journaled order id
   (looked up on the paper exchange: half filled there, half never arrived).

    python bench/journal.py [--exits N] [--positions P] [--in-flight K] [--dir FOLDER]

The journal goes in FOLDER (default: the current directory): fsync costs what that disk charges, so the
filesystem is printed with the figures. Nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from engine_overhead import LIMIT_US, PRICE, market, naive_exits
from loguru import logger

from exitguard import ExitEngine, Position
from exitguard.clock import SystemClock
from exitguard.exchange.paper import PaperExchange, PaperSell, SellStatus
from exitguard.journal import Journal
from exitguard.states import MarketRules, PositionRecord, State, assess_balance, fire, take_permit

SHARES = 10_000_000  # 10 shares in micro-shares


# -- 1. cost per exit and per transition -------------------------------------------------------------

async def engine_exits(n: int, journal: Path | None) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, journal writes) for n exits; tracking happens before the clock starts."""
    exchange = market(n)
    async with ExitEngine(exchange, journal=journal, settlement_poll_interval=None) as engine:
        for index in range(n):
            engine.track(Position(f"p{index}", f"t{index}", Decimal("10")))
        writes = engine.journal.writes if engine.journal is not None else 0
        cpu, wall = time.process_time(), time.perf_counter()
        for index in range(n):
            await engine.exit(f"p{index}", reason="bench", limit_price=PRICE)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        writes = (engine.journal.writes - writes) if engine.journal is not None else 0
    return cpu, wall, writes


async def naive_wall(n: int) -> float:
    started = time.perf_counter()
    await naive_exits(n)
    return time.perf_counter() - started


def per_exit(folder: Path, n: int) -> None:
    floor_cpu = anyio.run(naive_exits, n) / n * 1e6
    floor_wall = anyio.run(naive_wall, n) / n * 1e6
    rows: dict[str, tuple[float, float, float]] = {}
    memory = Path(tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    for name, journal in (("no journal", None),
                          ("journal, fsync free", memory / "memory.journal"),
                          ("journal, fsync on", folder / "full.journal")):
        cpu, wall, writes = anyio.run(engine_exits, n, journal)
        rows[name] = (cpu / n * 1e6, wall / n * 1e6, writes / n)
    shutil.rmtree(memory)
    print(f"1. cost per exit: {n:,} exits on the paper exchange, zero latency, logging off")
    print(f"   journal folder {folder} ({filesystem(folder)}); fsync free: {memory} ({filesystem(memory)})\n")
    print(f"   {'':<38} {'CPU us/exit':>12} {'wall us/exit':>13} {'writes/exit':>12}")
    print(f"   {'bare exchange calls (the floor)':<38} {floor_cpu:>12.1f} {floor_wall:>13.1f} {'-':>12}")
    for name, (cpu, wall, writes) in rows.items():
        print(f"   {'ExitEngine, ' + name:<38} {cpu:>12.1f} {wall:>13.1f} {writes:>12.1f}")
    overhead = rows["no journal"][0] - floor_cpu
    print(f"\n   engine overhead without the journal: {overhead:.1f} us CPU per exit "
          f"(limit {LIMIT_US:.0f} us: {'OK' if overhead <= LIMIT_US else 'OVER'})")
    off, full, none = rows["journal, fsync free"], rows["journal, fsync on"], rows["no journal"]
    transitions = full[2]
    journal_cpu = full[0] - none[0]
    journal_wall = full[1] - none[1]
    fsync = full[1] - off[1]
    print(f"   with the journal (fsync on):  +{journal_wall:.1f} us wall per exit, "
          f"{journal_wall / transitions:.1f} us per transition ({transitions:.0f} journaled per exit); "
          f"CPU +{journal_cpu:.1f} us per exit, {journal_cpu / transitions:.1f} us per transition")
    print(f"   of which fsync:               {fsync:.1f} us wall per exit, {fsync / transitions:.1f} us per transition "
          f"(fsync on minus fsync free)")
    print(f"   without fsync (SQLite work):  +{off[1] - none[1]:.1f} us wall per exit, "
          f"{(off[1] - none[1]) / transitions:.1f} us per transition")


# -- 2. recovery of P positions ----------------------------------------------------------------------

TEMPLATES = {"OPEN": "tmpl-open", "VERIFYING": "tmpl-verifying", "SELLING": "tmpl-selling"}


def write_templates(path: Path) -> None:
    """One position in each state, written through the Journal API exactly as the engine writes it."""
    journal = Journal.open(path)
    wall = datetime.now(UTC)
    try:
        for state, key in TEMPLATES.items():
            record = PositionRecord(key, f"{key}-token", SHARES)
            journal.track(record, wall)
            if state == "OPEN":
                continue
            begin = {"reason": "bench", "limit_price": PRICE, "attempt_id": f"{key}-attempt"}
            fire(record, "request_exit", **begin)
            journal.transition(record, State.OPEN, "request_exit", begin, wall)
            if state == "VERIFYING":
                continue
            verdict = assess_balance(SHARES, SHARES, MarketRules(), last_buy_at=None, now=wall,
                                     settlement_window=timedelta(0))
            fetched = {"verdict": verdict, "verified_at": 0.0}
            fire(record, "balance_fetched", **fetched)
            journal.transition(record, State.VERIFYING, "balance_fetched", fetched, wall)
            take_permit(record)
            journal.note_order(record, f"{key}-order", wall)
    finally:
        journal.close()


def substitute(value: Any, marks: dict[str, str]) -> Any:
    """The template's key, token, attempt and order ids replaced, also inside JSON columns."""
    if isinstance(value, str):
        if value in marks:
            return marks[value]
        if value.startswith("{"):
            return json.dumps(substitute(json.loads(value), marks), sort_keys=True)
        return value
    if isinstance(value, dict):
        return {k: substitute(v, marks) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, marks) for v in value]
    return value


def state_of(index: int, in_flight: int, positions: int) -> str:
    """Spread K VERIFYING and K SELLING evenly through the positions."""
    if in_flight and index % (positions // in_flight) == 0:
        return "SELLING"
    if in_flight and index % (positions // in_flight) == (positions // in_flight) // 2:
        return "VERIFYING"
    return "OPEN"


def build_journal(path: Path, positions: int, in_flight: int) -> float:
    started = time.perf_counter()
    write_templates(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        p_cols = [row[1] for row in db.execute("PRAGMA table_info(positions)")]
        t_cols = [row[1] for row in db.execute("PRAGMA table_info(transitions)") if row[1] != "seq"]
        template_rows = {key: db.execute(f"SELECT {', '.join(p_cols)} FROM positions WHERE key = ?", (key,)).fetchone()
                         for key in TEMPLATES.values()}
        template_trails = {key: db.execute(f"SELECT {', '.join(t_cols)} FROM transitions WHERE key = ? ORDER BY seq",
                                           (key,)).fetchall() for key in TEMPLATES.values()}
        insert_t = f"INSERT INTO transitions ({', '.join(t_cols)}) VALUES ({', '.join('?' * len(t_cols))})"
        insert_p = f"INSERT INTO positions ({', '.join(p_cols)}) VALUES ({', '.join('?' * len(p_cols))})"
        db.execute("BEGIN IMMEDIATE")
        for key in TEMPLATES.values():
            db.execute("DELETE FROM positions WHERE key = ?", (key,))
            db.execute("DELETE FROM transitions WHERE key = ?", (key,))
        for index in range(positions):
            template = TEMPLATES[state_of(index, in_flight, positions)]
            marks = {template: f"p{index}", f"{template}-token": f"t{index}",
                     f"{template}-attempt": f"a{index}", f"{template}-order": f"o{index}"}
            seq = 0
            for row in template_trails[template]:
                seq = db.execute(insert_t, [substitute(v, marks) for v in row]).lastrowid
            row = [substitute(v, marks) for v in template_rows[template]]
            if "seq" in p_cols:
                row[p_cols.index("seq")] = seq
            db.execute(insert_p, row)
        db.execute("COMMIT")
    finally:
        db.close()
    return time.perf_counter() - started


def recovery_exchange(positions: int, in_flight: int) -> PaperExchange:
    """Every token holds 10 shares, but half the SELLING positions' orders filled (their shares are gone)."""
    paper = PaperExchange()
    selling = 0
    for index in range(positions):
        paper.set_balance(f"t{index}", Decimal("10"))
        paper.set_bids(f"t{index}", [(Decimal("0.60"), Decimal("10"))])
        if state_of(index, in_flight, positions) == "SELLING":
            selling += 1
            if selling % 2:
                paper.set_balance(f"t{index}", Decimal("0"))
                paper.sells.append(PaperSell(f"t{index}", Decimal("10"), PRICE, f"a{index}", SellStatus.FILLED,
                                             f"o{index}", avg_price=Decimal("0.60")))
    return paper


class RestartedLater(SystemClock):
    """The restart comes a minute after the crash: past the lookup horizon, so an order the exchange never saw
    is known not to have arrived (before it, a lookup that finds nothing leaves the outcome unknown)."""

    def wall(self) -> datetime:
        return super().wall() + timedelta(seconds=60)


async def timed_entry(path: Path, exchange: PaperExchange) -> tuple[float, Any, float, dict[str, Any]]:
    """Entry (recovery hands what may have been sent to the background resolver and returns), then one
    round of lookups of every unknown outcome, timed apart."""
    engine = ExitEngine(exchange, journal=path, settlement_poll_interval=None, clock=RestartedLater())
    started = time.perf_counter()
    await engine.__aenter__()
    elapsed = time.perf_counter() - started
    summary = engine.recovery
    started = time.perf_counter()
    resolved = await engine.resolve_unknowns()
    resolving = time.perf_counter() - started
    await engine.__aexit__(None, None, None)
    return elapsed, summary, resolving, resolved


def recovery(folder: Path, positions: int, in_flight: int) -> None:
    print(f"\n2. recovery: ExitEngine(exchange, journal=path) entry with {positions:,} journaled positions "
          "(paper exchange, zero latency)\n")
    for flight in (0, in_flight):
        path = folder / f"recovery-{flight}.journal"
        build = build_journal(path, positions, flight)
        size = path.stat().st_size / 1e6
        exchange = recovery_exchange(positions, flight)
        elapsed, summary, resolving, resolved = anyio.run(timed_entry, path, exchange)
        what = (f"all {positions:,} OPEN" if not flight else
                f"{positions - 2 * flight:,} OPEN + {flight:,} VERIFYING + {flight:,} SELLING with an order id")
        print(f"   {what}")
        print(f"     journal {size:.1f} MB, built in {build:.2f} s (one SQL transaction)")
        print(f"     entry {elapsed:.2f} s = {elapsed / positions * 1e6:.1f} us per position", end="")
        if flight:
            outcomes: dict[str, int] = {}
            for result in resolved.values():
                outcomes[str(result.outcome)] = outcomes.get(str(result.outcome), 0) + 1
            lookups = sum(1 for call in exchange.calls if call.operation == "lookup_sell")
            print(f"; reopened {len(summary.reopened):,}, handed to the resolver {len(summary.resolving):,}")
            print(f"     then one round of lookups in {resolving:.2f} s: looked up {lookups:,} "
                  f"({', '.join(f'{k} {v:,}' for k, v in sorted(outcomes.items()))})")
        else:
            print()
        path.unlink()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"   peak resident memory of this process: {rss:.0f} MB (including the paper exchange's "
          f"{positions:,} markets)")


# -- helpers -----------------------------------------------------------------------------------------

def filesystem(folder: Path) -> str:
    """The filesystem type under `folder` (Linux /proc/mounts; "unknown" elsewhere)."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "filesystem unknown"
    real = str(folder.resolve())
    best = max((m for m in mounts if real == m[1] or real.startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]), default=None)
    return "filesystem unknown" if best is None else f"{best[2]} on {best[0]}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exits", type=int, default=1_000, help="exits per configuration (default 1,000)")
    parser.add_argument("--positions", type=int, default=100_000, help="journaled positions (default 100,000)")
    parser.add_argument("--in-flight", type=int, default=1_000,
                        help="VERIFYING and SELLING positions each in the second recovery run (default 1,000)")
    parser.add_argument("--dir", type=Path, default=Path.cwd(), help="where the journals go (default: .)")
    args = parser.parse_args()
    logger.remove()
    folder = Path(tempfile.mkdtemp(prefix="exitguard-bench-", dir=args.dir))
    try:
        per_exit(folder, args.exits)
        recovery(folder, args.positions, args.in_flight)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n(python bench/journal.py --exits {args.exits} --positions {args.positions} "
          f"--in-flight {args.in_flight})")


if __name__ == "__main__":
    main()
