"""`exitguard status` and `exitguard history`: read-only views of a journal, also beside a running engine."""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from itertools import count
from pathlib import Path

import anyio
import pytest

from exitguard import ExitEngine, ManualClock, Position
from exitguard.cli.journal import add_parsers, run
from exitguard.cli.main import main
from exitguard.exchange.paper import PaperExchange
from exitguard.journal import Journal
from exitguard.states import SellPermit

PRICE = Decimal("0.55")


def cli(*argv: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    add_parsers(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    code = run(parser.parse_args(list(argv)), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def market(clock: ManualClock) -> PaperExchange:
    paper = PaperExchange(clock=clock)
    for token, held in {"t1": "10", "t2": "10", "t3": "10", "t4": "0", "t5": "2"}.items():
        paper.set_balance(token, Decimal(held))
        paper.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    return paper


def engine_on(paper: PaperExchange, journal: Path, clock: ManualClock) -> ExitEngine:
    ids = count(1)
    return ExitEngine(paper, journal=journal, clock=clock, attempt_ids=lambda: f"a{next(ids)}",
                      settlement_poll_interval=None)


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Path]:
    """p1 CLOSED, p2 SELLING with its answer lost (unresolved), p3 OPEN, p4 RECONCILED, p5 DUST."""
    path = tmp_path / "exits.journal"
    clock = ManualClock()
    paper = market(clock)

    async def build() -> None:
        async with engine_on(paper, path, clock) as engine:
            for n in range(1, 6):
                engine.track(Position(key=f"p{n}", token_id=f"t{n}", shares=Decimal("10")))
            clock.advance(1)
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)
            paper.lose_next_sell_response()
            await engine.exit("p2", reason="stop_loss", limit_price=PRICE)
            await engine.exit("p4", reason="take_profit", limit_price=PRICE)
            await engine.exit("p5", reason="take_profit", limit_price=PRICE)

    anyio.run(build)
    yield path


# -- status ----------------------------------------------------------------------------------------

def test_status_lists_every_position_its_state_and_the_unresolved_outcomes(journal: Path) -> None:
    code, out, err = cli("status", "--journal", str(journal))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"journal {journal}: 5 position(s): CLOSED 1, DUST 1, OPEN 1, RECONCILED 1, SELLING 1"
    rows = {line.split()[0]: line.split() for line in lines[3:8]}
    # The fill's price and order id are shown (issue 13).
    assert lines[2].split()[:7] == ["key", "token", "state", "expected", "sold", "price", "residual"]
    assert rows["p1"][:7] == ["p1", "t1", "CLOSED", "10", "10", "0.60", "0"]
    assert rows["p2"][:3] == ["p2", "t2", "SELLING"] and rows["p2"][-2:] == ["paper-2", "UNRESOLVED"]
    assert rows["p3"][2] == "OPEN" and rows["p4"][2] == "RECONCILED"
    assert rows["p5"][2] == "DUST" and rows["p5"][6] == "2"  # the dust residual, in shares
    unresolved = out[out.index("unresolved outcomes"):]
    assert "p2: SELLING, token t2, attempt a2, selling 10 shares at >= 0.55, order paper-2" in unresolved
    assert "in flight" not in out


def test_status_json(journal: Path) -> None:
    code, out, _ = cli("status", "--journal", str(journal), "--json")
    data = json.loads(out)
    assert code == 0 and data["journal"] == str(journal)
    assert data["by_state"] == {"CLOSED": 1, "DUST": 1, "OPEN": 1, "RECONCILED": 1, "SELLING": 1}
    assert data["unresolved"] == ["p2"] and data["in_flight"] == []
    p2 = next(p for p in data["positions"] if p["key"] == "p2")
    assert (p2["order_id"], p2["permit_shares"], p2["unresolved"], p2["attempt_id"]) == ("paper-2", "10", True, "a2")


def test_status_of_an_empty_journal(tmp_path: Path) -> None:
    path = tmp_path / "empty.journal"
    Journal.open(path).close()
    assert cli("status", "--journal", str(path)) == (0, f"journal {path}: 0 position(s): none\n", "")


class GatedPaper(PaperExchange):
    """A paper exchange whose sell waits to be let through: an exit held mid-flight."""

    def __init__(self, clock: ManualClock) -> None:
        super().__init__(clock=clock)
        self.posted = anyio.Event()
        self.release = anyio.Event()

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object):  # noqa: ANN201
        self.posted.set()
        await self.release.wait()
        return await super().sell(permit, limit_price, **options)


@pytest.mark.anyio
async def test_status_beside_a_running_engine_shows_the_order_in_flight(tmp_path: Path) -> None:
    path, clock = tmp_path / "exits.journal", ManualClock()
    paper = GatedPaper(clock)
    paper.set_balance("t1", Decimal("10"))
    paper.set_bids("t1", [(Decimal("0.60"), Decimal("100"))])
    async with engine_on(paper, path, clock) as engine, anyio.create_task_group() as group:
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))

        async def exit_p1() -> None:
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)

        group.start_soon(exit_p1)
        await paper.posted.wait()

        code, out, err = cli("status", "--journal", str(path))  # the engine holds the lock: read-only works

        paper.release.set()
    assert (code, err) == (0, "")
    assert "p1: SELLING, token t1, attempt a1, selling 10 shares at >= 0.55, order paper-1" in out
    assert out.index("in flight") < out.index("p1: SELLING") and "unresolved outcomes" not in out
    assert engine.state("p1") == "CLOSED"


# -- history ---------------------------------------------------------------------------------------

def test_history_is_the_transition_trail(journal: Path) -> None:
    code, out, err = cli("history", "p1", "--journal", str(journal))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0] == f"history of p1 in {journal}: 5 transition(s), now CLOSED"
    # Shares and UTC wall-clock times (issue 13): the micro-shares and monotonic readings stay in --json.
    assert lines[1] == "(quantities in shares, times in UTC; --json has the record as journaled)"
    assert lines[3].split() == ["seq", "time", "from", "->", "to", "trigger", "payload"]
    trail = [line.split(maxsplit=6) for line in lines[4:]]
    assert [(row[0], row[2], row[4], row[5]) for row in trail] == [
        ("1", "-", "OPEN", "track"),
        ("6", "OPEN", "VERIFYING", "request_exit"),
        ("7", "VERIFYING", "SELLING", "balance_fetched"),
        ("8", "SELLING", "SELLING", "order_signed"),
        ("9", "SELLING", "CLOSED", "sell_filled"),
    ]
    assert trail[0][1] == "2026-01-01T00:00:00.000Z" and trail[1][1] == "2026-01-01T00:00:01.000Z"
    assert "verified_at" not in trail[2][6] and '"sell":"10"' in trail[2][6]
    assert trail[1][6] == "attempt_id=a1 limit_price=0.55 reason=take_profit"
    assert trail[3][6] == "attempt_id=a1 order_id=paper-1"
    assert "shares=10" in trail[4][6].split() and "10000000" not in trail[4][6]


def test_history_of_the_unresolved_sell_ends_selling(journal: Path) -> None:
    code, out, _ = cli("history", "p2", "--journal", str(journal))
    assert code == 0 and "now SELLING" in out.splitlines()[0]
    last = out.splitlines()[-1].split(maxsplit=6)
    assert last[2:6] == ["SELLING", "->", "SELLING", "sell_unknown"]
    # The moment the sell left our hands is journaled with it: a restarted engine counts its lookup horizon
    # from there (issue 11 A.2).
    assert last[6] == ('error="paper: response lost after the order reached the exchange" '
                       'sent_at=2026-01-01T00:00:01+00:00')


def test_history_json(journal: Path) -> None:
    code, out, _ = cli("history", "p1", "--journal", str(journal), "--json")
    data = json.loads(out)
    assert code == 0 and data["key"] == "p1" and data["current"]["state"] == "CLOSED"
    assert [t["trigger"] for t in data["transitions"]] == [
        "track", "request_exit", "balance_fetched", "order_signed", "sell_filled"]
    assert data["transitions"][3]["payload"] == {"attempt_id": "a1", "order_id": "paper-1"}
    assert data["transitions"][2]["payload"]["verdict"]["sell"] == 10_000_000


def test_history_of_a_forgotten_position_is_still_the_audit_record(tmp_path: Path) -> None:
    path, clock = tmp_path / "exits.journal", ManualClock()
    paper = market(clock)

    async def exit_and_forget() -> None:
        async with engine_on(paper, path, clock) as engine:
            engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
            await engine.exit("p1", reason="take_profit", limit_price=PRICE)
            engine.forget("p1")

    anyio.run(exit_and_forget)
    code, out, _ = cli("history", "p1", "--journal", str(path))
    assert code == 0
    assert out.splitlines()[0] == (f"history of p1 in {path}: 5 transition(s), "
                                   "forgotten (no longer in the positions table)")


def test_history_of_an_unknown_key_names_it_and_the_keys_there_are(journal: Path) -> None:
    code, out, err = cli("history", "nope", "--journal", str(journal))
    assert (code, out) == (2, "")
    assert err == (f"exitguard history: position key='nope' is not in journal {journal}; "
                   "it has 'p1', 'p2', 'p3', 'p4', 'p5'\n")  # sorted


# -- bad journals: a clear error, exit 2, and the file untouched ------------------------------------

def newer_schema(path: Path) -> None:
    Journal.open(path).close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    db.close()


def foreign(path: Path) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE orders (id TEXT)")
    db.close()


def garbage(path: Path) -> None:
    path.write_bytes(b"this is not a database\n" * 100)


@pytest.mark.parametrize(("make", "why"), [
    (None, "no such file"),
    (garbage, "not a readable SQLite journal"),
    (foreign, "not an exitguard journal (application_id 0x0, tables orders); nothing was changed"),
    (newer_schema, "schema version 99 is newer than this exitguard understands"),
])
@pytest.mark.parametrize("command", [("status",), ("history", "p1")])
def test_bad_journal_is_a_clear_error_and_nothing_is_written(tmp_path: Path, make, why: str,  # noqa: ANN001
                                                            command: tuple[str, ...]) -> None:
    path = tmp_path / "exits.journal"
    if make is not None:
        make(path)
    before = contents(tmp_path)
    code, out, err = cli(*command, "--journal", str(path))
    assert (code, out) == (2, "")
    assert err.startswith(f"exitguard {command[0]}: journal {path}: ") and why in err
    assert contents(tmp_path) == before


def contents(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but what any SQLite reader of a WAL-mode file leaves beside it: the shared-memory
    index (-shm) and an empty write-ahead log (-wal). Neither holds journal content."""
    return {p.name: p.read_bytes() for p in folder.iterdir()
            if not p.name.endswith("-shm") and not (p.name.endswith("-wal") and p.stat().st_size == 0)}


def test_a_journal_damaged_inside_is_reported_not_a_traceback(journal: Path) -> None:
    data = bytearray(journal.read_bytes())
    page = 4096
    data[page:] = b"\xff" * (len(data) - page)  # keep page 1 (header, schema), wreck every table page
    journal.write_bytes(bytes(data))
    code, out, err = cli("status", "--journal", str(journal))
    assert (code, out) == (2, "")
    assert err.startswith(f"exitguard status: journal {journal}: ") and "malformed" in err


# -- through the `exitguard` command ---------------------------------------------------------------

def test_exitguard_command_routes_status_and_history(journal: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--journal", str(journal)]) == 0
    assert capsys.readouterr().out.startswith(f"journal {journal}: 5 position(s)")
    assert main(["history", "p3", "--journal", str(journal)]) == 0
    assert "now OPEN" in capsys.readouterr().out
    assert main(["history", "p9", "--journal", str(journal)]) == 2
    assert "position key='p9' is not in journal" in capsys.readouterr().err
