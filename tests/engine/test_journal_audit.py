"""After an unclean stop, the journal is audited against the exchange before any exit (issue 11 B.8, the backstop).

A log cut within its newest part is invisible to the write-ahead log checks (test_journal_wal.py): the journal reads
as it was some commits earlier. Here that is made exactly (crashkit/lost_writes.py): after the engine sold a position
and stopped uncleanly, the position's rows are put back as its track left them, with the log in place. What the
audit must then see is the sale on the exchange whose order the journal no longer knows.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from crashkit.lost_writes import cut_back_to, row_of, stop_uncleanly

from exitguard import (
    ExitEngine,
    ExitOutcome,
    JournalError,
    ManualClock,
    PaperExchange,
    Position,
    UnjournaledSales,
    WalletInUse,
)
from exitguard.journal.audit import CLOCK_SKEW
from exitguard.journal.wal import main as wal_main

pytestmark = pytest.mark.anyio

P = Decimal("0.55")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "exits.journal"


@pytest.fixture
def paper(clock: ManualClock) -> PaperExchange:
    exchange = PaperExchange(clock=clock)
    for token in ("t1", "t2"):
        exchange.set_balance(token, Decimal("10"))
        exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    return exchange


def engine_on(exchange: object, path: Path, clock: ManualClock) -> ExitEngine:
    return ExitEngine(exchange, journal=path, clock=clock, settlement_poll_interval=None)  # type: ignore[arg-type]


def audit_events(logs: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(r["event"], r) for r in logs.records if str(r.get("event", "")).startswith("journal_audit")]


async def sell_then_crash(path: Path, paper: PaperExchange, clock: ManualClock) -> tuple[Any, ...]:
    """p0 and p1 tracked, p1 sold (order paper-1), then an unclean stop. Returns p1's row as its track wrote it."""
    async with engine_on(paper, path, clock) as engine:
        engine.track(Position(key="p0", token_id="t2", shares=Decimal("10")))
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
        tracked = row_of(path, "p1")
        clock.advance(60)
        result = await engine.exit("p1", reason="take_profit", limit_price=P)
        assert result.outcome is ExitOutcome.CLOSED and result.order_id == "paper-1"
        stop_uncleanly(engine)
    return tracked


async def test_a_sale_the_journal_forgot_refuses_the_start(path: Path, paper: PaperExchange, clock: ManualClock,
                                                          logs: Any) -> None:
    tracked = await sell_then_crash(path, paper, clock)
    cut_back_to(path, "p1", tracked)  # the sale's writes are lost: p1 reads OPEN, never sold
    sells = len(paper.sells)

    with pytest.raises(UnjournaledSales, match=r"sale\(s\) of ours .* the journal does not know: paper-1\..*"
                                               r"--accept-lost-log") as refused:
        async with engine_on(paper, path, clock):
            pytest.fail("the engine started on a journal that forgot a sale")

    assert refused.value.orders == ("paper-1",)
    assert refused.value.path == str(path)
    assert len(paper.sells) == sells  # nothing was sent
    [(event, record)] = audit_events(logs)
    assert event == "journal_audit_refused" and record["orders"] == ["paper-1"]


async def test_a_refused_start_refuses_again_until_the_operator_accepts_the_journal(
        path: Path, paper: PaperExchange, clock: ManualClock) -> None:
    tracked = await sell_then_crash(path, paper, clock)
    cut_back_to(path, "p1", tracked)
    for _ in range(2):  # the refused start closed the journal; the audit it refused is still pending
        with pytest.raises(UnjournaledSales):
            async with engine_on(paper, path, clock):
                pass

    assert wal_main(["--accept-lost-log", str(path)]) == 0

    async with engine_on(paper, path, clock) as engine:
        assert engine.states() == {"p0": "OPEN", "p1": "OPEN"}  # the operator's to check, as the error said


async def test_a_start_refused_before_its_audit_still_audits_the_next_time(
        path: Path, paper: PaperExchange, clock: ManualClock) -> None:
    tracked = await sell_then_crash(path, paper, clock)
    cut_back_to(path, "p1", tracked)
    async with ExitEngine(paper, clock=clock, settlement_poll_interval=None):  # another engine holds the wallet
        with pytest.raises(WalletInUse):
            async with engine_on(paper, path, clock):
                pass  # refused after the journal opened (and then closed cleanly), before the audit

    with pytest.raises(UnjournaledSales):
        async with engine_on(paper, path, clock):
            pass


async def test_an_unclean_start_with_every_sale_journaled_starts(path: Path, paper: PaperExchange,
                                                                clock: ManualClock, logs: Any) -> None:
    await sell_then_crash(path, paper, clock)

    async with engine_on(paper, path, clock) as engine:
        assert engine.states() == {"p0": "OPEN", "p1": "CLOSED"}
        result = await engine.exit("p0", reason="take_profit", limit_price=P)
        assert result.outcome is ExitOutcome.CLOSED

    [(event, record)] = audit_events(logs)
    assert event == "journal_audit_passed" and record["sales"] == 1 and record["level"] == "INFO"


async def test_the_audit_reads_from_the_newest_surviving_write_less_the_clock_skew(
        path: Path, paper: PaperExchange, clock: ManualClock, logs: Any) -> None:
    async with engine_on(paper, path, clock) as engine:
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
        last_write = clock.wall()
        stop_uncleanly(engine)
    clock.advance(3600)  # the restart comes an hour later: the window still starts at the last write

    async with engine_on(paper, path, clock):
        pass

    [(event, record)] = audit_events(logs)
    assert event == "journal_audit_passed" and record["since"] == (last_write - CLOCK_SKEW).isoformat()


async def test_a_failed_trade_query_at_an_unclean_start_refuses(path: Path, paper: PaperExchange,
                                                               clock: ManualClock) -> None:
    await sell_then_crash(path, paper, clock)
    paper.fail_next_trade_query()

    with pytest.raises(JournalError, match="audit of our sales since .* failed .*a failed query is not an empty one"
                       ) as refused:
        async with engine_on(paper, path, clock):
            pytest.fail("the engine started without its audit")
    assert not isinstance(refused.value, UnjournaledSales)

    async with engine_on(paper, path, clock) as engine:  # the exchange answers again: the pending audit passes
        assert engine.states() == {"p0": "OPEN", "p1": "CLOSED"}


async def test_a_clean_start_skips_the_audit(path: Path, paper: PaperExchange, clock: ManualClock,
                                             logs: Any) -> None:
    async with engine_on(paper, path, clock) as engine:
        engine.track(Position(key="p1", token_id="t1", shares=Decimal("10")))
        await engine.exit("p1", reason="take_profit", limit_price=P)
    paper.fail_next_trade_query()  # would refuse the start if the audit asked

    async with engine_on(paper, path, clock) as engine:
        assert engine.states() == {"p1": "CLOSED"}

    assert audit_events(logs) == []
    assert [call.operation for call in paper.calls].count("our_sells_since") == 0


class WithoutAudit:
    """An exchange written before the audit: the paper exchange's port, without `our_sells_since`."""

    def __init__(self, paper: PaperExchange) -> None:
        self.paper = paper

    def __getattr__(self, name: str) -> Any:
        if name == "our_sells_since":
            raise AttributeError(name)
        return getattr(self.paper, name)


async def test_an_exchange_without_the_capability_logs_that_the_audit_was_skipped(
        path: Path, paper: PaperExchange, clock: ManualClock, logs: Any) -> None:
    tracked = await sell_then_crash(path, paper, clock)
    cut_back_to(path, "p1", tracked)

    async with engine_on(WithoutAudit(paper), path, clock) as engine:
        assert engine.states() == {"p0": "OPEN", "p1": "OPEN"}

    [(event, record)] = audit_events(logs)
    assert event == "journal_audit_skipped" and record["exchange"] == "WithoutAudit"
    assert record["level"] == "WARNING"
