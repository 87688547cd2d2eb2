"""Crash tests: an engine process SIGKILLed at each step of an exit, restarted on the same journal against
the same exchange (paper state kept in a file; the fake CLOB running in this process).

After each restart: total sold <= held, no attempt posted twice, every position in the state its
exchange history calls for, and the recovery summary (report and `recovery_summary` log event) says
how each was settled. No sleeps: every wait is on a child process ending or on its "ready" line.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from crashkit import (
    KILL_POINTS,
    FilePaperExchange,
    Kill,
    PositionSpec,
    Run,
    Spec,
    child_command,
    child_env,
    power_loss,
    run_engine,
    write_spec,
)
from fakeclob import FakeClob

from exitguard.errors import JournalError
from exitguard.journal import Journal

HELD = Decimal("10")

# What recovery makes of p1 after a kill at each point of its exit: (state after recovery, how it got
# there). "reopened": nothing was sent, back to OPEN without asking the exchange; an outcome: the order
# may have been sent, settled by lookup + balance; None: the journal already held the final state (before the
# intent, an attempt's steps are not journaled at all: it holds OPEN).
AFTER_KILL: dict[str, tuple[str, str | None]] = {
    "after_balance": ("OPEN", None),
    "after_verified": ("OPEN", None),
    "after_order_noted": ("OPEN", "NOT_FILLED"),
    "after_intent_commit": ("OPEN", "NOT_FILLED"),
    "after_post": ("CLOSED", "CLOSED"),
    "after_unknown_write": ("CLOSED", "CLOSED"),
    "after_fill": ("CLOSED", "CLOSED"),
    "before_closed_write": ("CLOSED", "CLOSED"),
    "after_closed_write": ("CLOSED", None),
}
assert set(AFTER_KILL) == set(KILL_POINTS)


# -- helpers ---------------------------------------------------------------------------------------

def paper_market(tmp_path: Path, tokens: dict[str, Decimal], *, bids: Decimal = Decimal("100")) -> FilePaperExchange:
    exchange = FilePaperExchange(tmp_path / "exchange.json")
    for token, held in tokens.items():
        exchange.set_balance(token, held)
        exchange.set_bids(token, [(Decimal("0.60"), bids)])
    exchange.save()
    return exchange


def paper_spec(tmp_path: Path, positions: list[PositionSpec], **options: object) -> Spec:
    return Spec(journal=str(tmp_path / "exits.journal"),
                exchange={"kind": "paper", "path": str(tmp_path / "exchange.json")},
                positions=positions, **options)  # type: ignore[arg-type]


def killed(spec: Spec, tmp_path: Path, point: str, key: str, name: str = "first", **env: str) -> Run:
    spec.kill = Kill(point, key)
    run = run_engine(spec, tmp_path, name, env=env or None)
    assert run.killed_at == f"{point} {key}", f"the kill point never fired:\n{run.stderr}"
    assert run.report is None
    spec.kill = None
    return run


def restarted(spec: Spec, tmp_path: Path, name: str = "restart", *, later: float = 60.0, **env: str) -> Run:
    """The engine started again on the journal, `later` seconds (on its wall clock) after the crash: by default
    past the lookup horizon, so an order journaled but never sent is known not to have arrived (issue 11 A.2)."""
    spec.clock_ahead = later
    run = run_engine(spec, tmp_path, name, env=env or None)
    assert run.killed_at is None and run.report is not None
    # The summary is both in engine.recovery (the report) and in the log, and they agree.
    [logged] = run.events("recovery_summary")
    summary = run.report["recovery"]
    assert (logged["positions"], logged["by_state"], logged["resolving"]) == (
        summary["positions"], summary["by_state"], summary["resolving"])
    assert logged["reopened"] == len(summary["reopened"])
    return run


def journal_states(spec: Spec) -> dict[str, str]:
    journal = Journal.open(spec.journal, readonly=True)
    try:
        return {row.key: str(row.state) for row in journal.positions()}
    finally:
        journal.close()


def journaled_orders(spec: Spec, key: str) -> list[str]:
    journal = Journal.open(spec.journal, readonly=True)
    try:
        return [t.payload["order_id"] for t in journal.history(key) if t.trigger == "order_signed"]
    finally:
        journal.close()


def check_paper_invariants(tmp_path: Path, held: dict[str, Decimal], *, untouched: bool = True) -> FilePaperExchange:
    """`untouched=False`: the test moved balances itself between runs, so only what the engine sold counts."""
    exchange = FilePaperExchange(tmp_path / "exchange.json")
    posts = exchange.posts_per_attempt()
    assert all(count == 1 for count in posts.values()), f"an attempt was posted twice: {posts}"
    for token, shares in held.items():
        assert exchange.sold(token) <= shares, f"{token}: sold {exchange.sold(token)} of {shares} held"
        assert exchange.balance(token) >= 0
        if untouched:
            assert exchange.balance(token) == shares - exchange.sold(token)
    return exchange


# -- the matrix on the paper exchange --------------------------------------------------------------

@pytest.mark.parametrize("point", KILL_POINTS)
def test_paper_kill_at_each_step_then_restart(tmp_path: Path, point: str) -> None:
    exchange = paper_market(tmp_path, {"t1": HELD})
    if point == "after_unknown_write":
        exchange.lose_next_sell_response()  # the sell executes, the engine hears "unknown", then dies
        exchange.save()
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")])
    killed(spec, tmp_path, point, "p1")
    check_paper_invariants(tmp_path, {"t1": HELD})
    looked_up_before = Counter(call.operation for call in FilePaperExchange(tmp_path / "exchange.json").calls)

    run = restarted(spec, tmp_path)

    state, how = AFTER_KILL[point]
    summary = run.report["recovery"]
    assert run.report["after_recovery"] == {"p1": state}
    assert summary["positions"] == 1 and summary["unresolved"] == []
    assert summary["reopened"] == (["p1"] if how == "reopened" else [])
    assert summary["reconciled"] == ({"p1": how} if how not in (None, "reopened") else {})
    # Memory (an order possibly sent) and the exchange were compared: one divergence event per lookup.
    # Memory said "sent", the exchange had not said (unknown_outcome at the restart), then the lookup settled it.
    assert run.report["recovery_divergence"] == (
        {"unknown_outcome": 1, "unknown_outcome_resolved": 1} if summary["reconciled"] else {})
    exchange = check_paper_invariants(tmp_path, {"t1": HELD})
    lookups = Counter(call.operation for call in exchange.calls)["lookup_sell"] - looked_up_before["lookup_sell"]
    # Only a position whose order id was journaled is looked up; one that never got that far is
    # reopened without asking (its order cannot exist).
    assert lookups == (1 if how not in (None, "reopened") else 0)
    # The restarted engine finishes what recovery reopened, with a new attempt: exactly one sale in all.
    assert run.report["final"] == {"p1": "CLOSED"} == journal_states(spec)
    assert exchange.sold("t1") == HELD and exchange.balance("t1") == 0
    assert len([s for s in exchange.sells if s.status.value == "filled"]) == 1
    assert len(exchange.posts) == 1  # whichever process sent it


@pytest.mark.parametrize("point", ["after_intent_commit", "after_post", "after_fill", "after_closed_write"])
def test_paper_power_loss_after_the_intent_keeps_it_and_a_lost_outcome_is_looked_up(tmp_path: Path, point: str) -> None:
    # A power cut keeps what the last fsync made durable: the intent. The outcome (written without an fsync) is lost,
    # so the restart finds SELLING with the order id and looks it up: filled once posted, else never arrived.
    paper_market(tmp_path, {"t1": HELD})
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")], power_loss=True)
    killed(spec, tmp_path, point, "p1")
    power_loss(spec)
    assert journal_states(spec) == {"p1": "SELLING"}  # the intent, and nothing after it
    spec.power_loss = False

    run = restarted(spec, tmp_path)

    posted = point != "after_intent_commit"
    assert run.report["recovery"]["reconciled"] == {"p1": "CLOSED" if posted else "NOT_FILLED"}
    assert run.report["after_recovery"] == {"p1": "CLOSED" if posted else "OPEN"}
    assert run.report["final"] == {"p1": "CLOSED"} == journal_states(spec)
    exchange = check_paper_invariants(tmp_path, {"t1": HELD})
    assert exchange.sold("t1") == HELD and len(exchange.posts) == 1  # whichever process sent it, once


@pytest.mark.parametrize("point", ["after_order_noted", "after_intent_commit", "after_post", "before_closed_write"])
def test_paper_concurrent_exits_killed_mid_flight(tmp_path: Path, point: str) -> None:
    # p3's exchange holds less than the bot believes: the restart must sell the 7.5 held, never 10.
    held = {"t1": HELD, "t2": HELD, "t3": Decimal("7.5"), "t4": HELD}
    paper_market(tmp_path, held)
    spec = paper_spec(tmp_path, [PositionSpec(f"p{n}", f"t{n}", "10") for n in range(1, 5)], concurrent=True)
    killed(spec, tmp_path, point, "p2")
    check_paper_invariants(tmp_path, held)

    run = restarted(spec, tmp_path)

    summary = run.report["recovery"]
    assert summary["positions"] == 4 and summary["unresolved"] == []
    assert not set(run.report["after_recovery"].values()) & {"VERIFYING", "SELLING"}
    assert run.report["after_recovery"]["p2"] == AFTER_KILL[point][0]
    exchange = check_paper_invariants(tmp_path, held)
    assert run.report["final"] == dict.fromkeys(["p1", "p2", "p3", "p4"], "CLOSED") == journal_states(spec)
    assert {token: exchange.sold(token) for token in held} == held


def test_paper_shares_gone_while_the_engine_was_down_are_reconciled_not_sold(tmp_path: Path) -> None:
    paper_market(tmp_path, {"t1": HELD})
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")])
    killed(spec, tmp_path, "after_order_noted", "p1")
    exchange = FilePaperExchange(tmp_path / "exchange.json")
    exchange.set_balance("t1", Decimal("0"))  # an operator sold by hand while the engine was down
    exchange.save()

    run = restarted(spec, tmp_path)

    assert run.report["recovery"]["reconciled"] == {"p1": "ALREADY_EXITED"}
    assert run.report["final"] == {"p1": "RECONCILED"} == journal_states(spec)
    exchange = check_paper_invariants(tmp_path, {"t1": HELD}, untouched=False)
    assert exchange.posts == [] and exchange.sold("t1") == 0
    # No trade of ours, yet the balance moved: a divergence of its own (issue 11 A.2).
    assert run.report["recovery_divergence"] == {"unknown_outcome": 1, "unknown_outcome_resolved": 1,
                                                 "balance_moved_without_fill": 1}


def test_paper_killed_fok_found_killed_on_restart_stays_open(tmp_path: Path) -> None:
    paper_market(tmp_path, {"t1": HELD}, bids=Decimal("3"))  # too thin: every FOK of 10 is killed
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")])
    killed(spec, tmp_path, "after_post", "p1")

    run = restarted(spec, tmp_path)

    assert run.report["recovery"]["reconciled"] == {"p1": "NOT_FILLED"}
    assert run.report["after_recovery"] == {"p1": "OPEN"}
    assert [r["outcome"] for r in run.report["results"]] == ["NOT_FILLED"]
    assert run.report["final"] == {"p1": "OPEN"} == journal_states(spec)
    exchange = check_paper_invariants(tmp_path, {"t1": HELD})
    assert len(exchange.posts) == 2 and exchange.sold("t1") == 0  # one per attempt: the first, and the restart's


def test_paper_failed_lookup_keeps_the_position_selling_until_a_later_restart_settles_it(tmp_path: Path) -> None:
    paper_market(tmp_path, {"t1": HELD})
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")])
    killed(spec, tmp_path, "after_post", "p1")
    exchange = FilePaperExchange(tmp_path / "exchange.json")
    exchange.fail_next("lookup_sell")  # a 503 on the lookup
    exchange.save()

    blocked = restarted(spec, tmp_path, "restart-lookup-fails")

    assert blocked.report["recovery"]["unresolved"] == ["p1"]
    assert blocked.report["recovery_divergence"] == {"unknown_outcome": 1}
    assert blocked.report["final"] == {"p1": "SELLING"} == journal_states(spec)
    assert blocked.report["unresolved"] == ["p1"] and blocked.report["results"] == []
    assert len(check_paper_invariants(tmp_path, {"t1": HELD}).posts) == 1

    settled = restarted(spec, tmp_path, "restart-lookup-works")

    assert settled.report["recovery"]["reconciled"] == {"p1": "CLOSED"}
    assert settled.report["final"] == {"p1": "CLOSED"} == journal_states(spec)
    exchange = check_paper_invariants(tmp_path, {"t1": HELD})
    assert len(exchange.posts) == 1 and exchange.sold("t1") == HELD


def test_paper_killed_again_during_recovery(tmp_path: Path) -> None:
    paper_market(tmp_path, {"t1": HELD})
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")])
    killed(spec, tmp_path, "after_post", "p1")
    # The restart finds the fill by lookup and dies before writing CLOSED.
    killed(spec, tmp_path, "before_closed_write", "p1", name="second")
    assert journal_states(spec) == {"p1": "SELLING"}

    run = restarted(spec, tmp_path)

    assert run.report["recovery"]["reconciled"] == {"p1": "CLOSED"}
    assert run.report["final"] == {"p1": "CLOSED"} == journal_states(spec)
    exchange = check_paper_invariants(tmp_path, {"t1": HELD})
    assert len(exchange.posts) == 1 and exchange.sold("t1") == HELD


# -- the fake CLOB: the restart looks up, by /data/order, the id journaled before the post ----------

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"


@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN, HELD)
        yield fake


def clob_env(clob: FakeClob) -> dict[str, str]:
    return {"CRASHKIT_PRIVATE_KEY": clob.private_key, "CRASHKIT_API_KEY": clob.creds.api_key,
            "CRASHKIT_API_SECRET": clob.creds.api_secret, "CRASHKIT_API_PASSPHRASE": clob.creds.api_passphrase}


CLOB_POINTS = KILL_POINTS[KILL_POINTS.index("after_order_noted"):]  # from the moment an order id exists


@pytest.mark.parametrize("point", CLOB_POINTS)
def test_clob_kill_at_each_post_and_fill_step_then_restart(tmp_path: Path, clob: FakeClob, point: str) -> None:
    if point == "after_unknown_write":
        clob.lose_next_response("/order")  # executed, then the connection closes unanswered
    spec = Spec(journal=str(tmp_path / "exits.journal"), exchange={"kind": "clob", "host": clob.host},
                positions=[PositionSpec("p1", TOKEN, "10")])
    env = clob_env(clob)
    first = killed(spec, tmp_path, point, "p1", **env)
    [order_id] = journaled_orders(spec, "p1")

    run = restarted(spec, tmp_path, **env)

    state, how = AFTER_KILL[point]
    assert run.report["after_recovery"] == {"p1": state}
    assert run.report["recovery"]["reconciled"] == ({"p1": how} if how is not None else {})
    lookups = [r.path for r in clob.requests if r.path.startswith("/data/order/")]
    assert lookups == ([f"/data/order/{order_id}"] if how is not None else [])
    assert run.report["final"] == {"p1": "CLOSED"} == journal_states(spec)
    # One order reached the exchange over both processes (the first's, or, when the first died before
    # posting, the restart's new attempt), never one twice; exactly the held shares sold.
    salts = Counter(body["order"]["salt"] for body in clob.posted_orders)  # type: ignore[index]
    assert list(salts.values()) == [1]
    matched = [o for o in clob.orders.values() if o["status"].upper() == "MATCHED"]
    assert len(matched) == 1 and clob.chain_balance(TOKEN) == 0
    # The signing key never reaches a log line or stderr.
    for text in (first.stderr, run.stderr, *(str(line) for line in first.logs + run.logs)):
        assert clob.private_key.removeprefix("0x") not in text


# -- one engine per journal ------------------------------------------------------------------------

def test_a_second_engine_on_the_journal_fails_at_once_and_the_lock_dies_with_its_holder(tmp_path: Path) -> None:
    paper_market(tmp_path, {"t1": HELD})
    spec = paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")], hold=True, exits=False)
    holder = subprocess.Popen(child_command(write_spec(spec, tmp_path, "holder")), env=child_env(),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"

        with pytest.raises(JournalError, match="in use by another engine") as refused:
            Journal.open(spec.journal)
        assert refused.value.path == spec.journal and str(holder.pid) in str(refused.value)
        second = subprocess.run(child_command(write_spec(paper_spec(tmp_path, spec.positions), tmp_path, "second")),
                                env=child_env(), capture_output=True, text=True, timeout=30, check=False)
        assert second.returncode == 2
        assert f"journal {spec.journal}: in use by another engine (pid {holder.pid})" in second.stderr
        readonly = Journal.open(spec.journal, readonly=True)  # status works beside a running engine
        readonly.close()

        os.kill(holder.pid, signal.SIGKILL)
        assert holder.wait(timeout=30) == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
        for stream in (holder.stdin, holder.stdout, holder.stderr):
            if stream is not None:
                stream.close()

    # The kernel dropped the dead holder's lock: an engine starts on the journal at once.
    run = restarted(paper_spec(tmp_path, [PositionSpec("p1", "t1", "10")]), tmp_path, "after-holder")
    assert run.report["final"] == {"p1": "CLOSED"}
