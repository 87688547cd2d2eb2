"""The journal's cost: fsyncs per exit and per track (counted), wall time per exit, and restart recovery time for
100,000 journaled positions.

1. fsyncs, counted: bench/fsyncs.py puts a shim on SQLite's default VFS (through ctypes) that counts every `xSync`
   SQLite makes (commits, checkpoints, the log's header when it restarts) and wraps the journal's own fsync of its
   log, each by thread. N positions tracked one by one, then exited one after the other, then N more exited all at
   once (a task group: their intents share fsyncs). Every count includes the journal's checkpoints in its own
   thread (waited for before counting), and the fsyncs made on the event loop's thread are counted apart (the
   target is none).
2. Time per exit on the paper exchange (zero latency, logging off): the bare exchange calls (the floor, as in
   bench/engine_overhead.py), ExitEngine without a journal, with the journal on a memory filesystem (/dev/shm: the
   same SQLite work, an fsync there returns at once) and in FOLDER (an fsync costs what that disk charges). CPU time
   (`process_time`) is the engine's own work; wall time (`perf_counter`) includes the wait for the intent's fsync.
3. A journal of P positions built in one SQL transaction (rows copied from templates that the Journal API wrote, so
   their format is the journal's own), then the time `ExitEngine(..., journal=path)` takes to enter: all OPEN, then
   with some VERIFYING (reopened, no I/O) and SELLING with a journaled order id (looked up on the paper exchange: half
   filled there, half never arrived).

    python bench/journal.py [--exits N] [--positions P] [--in-flight K] [--dir FOLDER] [--fsyncs-json]

`--fsyncs-json` runs part 1 only and prints its counts as JSON (tests/engine/test_journal_fsyncs.py reads it). The
journal goes in FOLDER (default: the current directory); the filesystem is printed with the figures. Nothing here
asserts on time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from engine_overhead import LIMIT_US, PRICE, market, naive_exits
from fsyncs import FsyncCounter, available
from loguru import logger

from exitguard import ExitEngine, Position
from exitguard.clock import SystemClock
from exitguard.exchange.paper import PaperExchange, PaperSell, SellStatus
from exitguard.journal import Journal
from exitguard.states import MarketRules, PositionRecord, State, assess_balance, fire, take_permit

SHARES = 10_000_000  # 10 shares in micro-shares
COUNTER = FsyncCounter()


# -- 1. fsyncs per track and per exit, counted ---------------------------------------------------------

async def counted_run(path: Path, n: int) -> dict[str, Any]:
    """Track n positions, exit them one after the other, then n more at once; the fsyncs of each phase."""
    loop = threading.get_ident()
    exchange = market(2 * n)
    counts: dict[str, Any] = {"exits": n}
    async with ExitEngine(exchange, journal=path, settlement_poll_interval=None) as engine:
        journal = engine.journal
        assert journal is not None

        def phase(name: str, since: tuple[int, int, int]) -> tuple[int, int, int]:
            journal.quiesce()  # a checkpoint running in its own thread counts toward the phase that started it
            now = (COUNTER.count(), COUNTER.on_thread(loop), journal.fsyncs)
            counts[name] = {"fsyncs": now[0] - since[0], "on_loop": now[1] - since[1], "intent": now[2] - since[2]}
            return now

        mark = phase("open", (0, 0, 0))
        for index in range(n):
            engine.track(Position(f"p{index}", f"t{index}", Decimal("10")))
        mark = phase("tracks", mark)
        started = time.perf_counter()
        for index in range(n):
            await engine.exit(f"p{index}", reason="bench", limit_price=PRICE)
        counts["sequential_wall_us"] = (time.perf_counter() - started) / n * 1e6
        mark = phase("sequential", mark)
        engine.track_many([Position(f"q{index}", f"t{n + index}", Decimal("10")) for index in range(n)])
        mark = phase("track_many", mark)
        started = time.perf_counter()
        async with anyio.create_task_group() as group:
            for index in range(n):
                group.start_soon(lambda k=index: engine.exit(f"q{k}", reason="bench", limit_price=PRICE))
        counts["concurrent_wall_us"] = (time.perf_counter() - started) / n * 1e6
        phase("concurrent", mark)
        counts["states"] = engine.counts_by_state() if hasattr(engine, "counts_by_state") else None
    return counts


def fsync_counts(folder: Path, n: int) -> dict[str, Any]:
    why = available(COUNTER)
    if why is not None:
        return {"unavailable": why}
    return anyio.run(counted_run, folder / "counted.journal", n)


def print_fsyncs(folder: Path, n: int) -> None:
    counts = fsync_counts(folder, n)
    print(f"1. fsyncs, counted (SQLite's xSync calls through a VFS shim + the journal's own fsync of its log)\n"
          f"   journal folder {folder} ({filesystem(folder)}); {n:,} positions per phase\n")
    if "unavailable" in counts:
        print(f"   not counted: {counts['unavailable']}")
        return
    print(f"   {'phase':<44} {'fsyncs':>7} {'per item':>9} {'intents':>8} {'on the loop':>12}   target")
    rows = (("tracks, one track() each", "tracks", "<= 1 per track"),
            ("exits one after the other", "sequential", "<= 1 per exit"),
            ("track_many of them at once", "track_many", "<= 1 per track"),
            ("exits all at once (task group)", "concurrent", "<= 1 per exit"))
    for label, name, target in rows:
        c = counts[name]
        per = c["fsyncs"] / n
        verdict = "OK" if per <= 1 and c["on_loop"] == 0 else "OVER"
        if name == "sequential":
            verdict += f" ({c['intent'] / n:.3f} for the intents + {(c['fsyncs'] - c['intent']) / n:.3f} checkpoints)"
        print(f"   {label:<44} {c['fsyncs']:>7,} {per:>9.3f} {c['intent']:>8,} {c['on_loop']:>12,}   "
              f"{target}: {verdict}")
    print(f"\n   wall time per exit with the journal: {counts['sequential_wall_us']:.0f} us one after the other, "
          f"{counts['concurrent_wall_us']:.0f} us all at once")
    print("   (intents: the journal's fsyncs of its log, one per intent unless exits share one; the rest are SQLite's,"
          "\n   at its checkpoints, run in the journal's own thread. The engine's open and close fsync too, outside"
          "\n   these phases.)")


# -- 2. cost per exit ----------------------------------------------------------------------------------

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
    print(f"\n2. cost per exit: {n:,} exits one after the other on the paper exchange, zero latency, logging off")
    print(f"   journal folder {folder} ({filesystem(folder)}); fsync free: {memory} ({filesystem(memory)})\n")
    print(f"   {'':<38} {'CPU us/exit':>12} {'wall us/exit':>13} {'commits/exit':>13}")
    print(f"   {'bare exchange calls (the floor)':<38} {floor_cpu:>12.1f} {floor_wall:>13.1f} {'-':>13}")
    for name, (cpu, wall, writes) in rows.items():
        print(f"   {'ExitEngine, ' + name:<38} {cpu:>12.1f} {wall:>13.1f} {writes:>13.1f}")
    overhead = rows["no journal"][0] - floor_cpu
    print(f"\n   engine overhead without the journal: {overhead:.1f} us CPU per exit "
          f"(limit {LIMIT_US:.0f} us: {'OK' if overhead <= LIMIT_US else 'OVER'})")
    off, full, none = rows["journal, fsync free"], rows["journal, fsync on"], rows["no journal"]
    print(f"   with the journal (fsync on):  +{full[1] - none[1]:.1f} us wall per exit, "
          f"CPU +{full[0] - none[0]:.1f} us "
          f"({full[2]:.1f} commits per exit: the intent, fsync'd; the outcome; a fill's settlement to follow)")
    print(f"   of which the fsync wait:      {full[1] - off[1]:.1f} us wall per exit (fsync on minus fsync free; the "
          "event loop runs other exits meanwhile)")


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
    print(f"\n3. recovery: ExitEngine(exchange, journal=path) entry with {positions:,} journaled positions "
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
    parser.add_argument("--fsyncs-json", action="store_true", help="part 1 only, its counts as JSON")
    args = parser.parse_args()
    logger.remove()
    COUNTER.install()  # before any journal opens: files opened earlier are not counted
    folder = Path(tempfile.mkdtemp(prefix="exitguard-bench-", dir=args.dir))
    try:
        if args.fsyncs_json:
            json.dump(fsync_counts(folder, args.exits), sys.stdout)
            return
        print_fsyncs(folder, args.exits)
        per_exit(folder, args.exits)
        recovery(folder, args.positions, args.in_flight)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"\n(python bench/journal.py --exits {args.exits} --positions {args.positions} "
          f"--in-flight {args.in_flight})")


if __name__ == "__main__":
    main()
