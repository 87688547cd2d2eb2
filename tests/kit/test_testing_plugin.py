"""The pytest plugin shipped for bot authors (engine/testing.py), loaded here through its entry point."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import exitguard.pytest_plugin
from exitguard import ExitEngine, ExitOutcome, InvalidValue, OrderRejected, Position
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.pytest_plugin import FrozenClock, PaperFaults, attempt_ids

pytest_plugins = ["pytester"]

P = Decimal("0.55")


def liquid(exchange: PaperExchange, token: str = "tok", shares: str = "10") -> PaperExchange:
    exchange.set_balance(token, Decimal(shares))
    exchange.set_bids(token, [(Decimal("0.60"), Decimal("100"))])
    return exchange


# -- loading -----------------------------------------------------------------------------------------

def test_the_plugin_is_registered_under_the_name_exitguard(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.get_plugin("exitguard") is exitguard.pytest_plugin


def test_the_plugin_adds_no_autouse_fixture(request: pytest.FixtureRequest) -> None:
    plugin_fixtures = {"exitguard_clock", "paper_exchange", "paper_faults", "exit_engine", "exit_engine_options",
                       "exitguard_events"}
    assert plugin_fixtures.isdisjoint(request.fixturenames)


def test_the_plugin_can_be_switched_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_uses_it(paper_exchange):\n    pass\n")

    result = pytester.runpytest_inprocess("-p", "no:exitguard")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'paper_exchange' not found*"])


# -- fixtures ----------------------------------------------------------------------------------------

def test_paper_exchange_is_fresh_and_on_the_frozen_clock(paper_exchange: PaperExchange,
                                                         exitguard_clock: FrozenClock) -> None:
    assert paper_exchange.clock is exitguard_clock
    assert (paper_exchange.calls, paper_exchange.sells, paper_exchange.latency) == ([], [], 0.0)
    assert paper_exchange.balance("tok") == 0 and paper_exchange.bids("tok") == []


@pytest.mark.anyio
async def test_exit_engine_runs_on_the_paper_exchange_and_the_frozen_clock(
        paper_exchange: PaperExchange, exit_engine: ExitEngine, exitguard_clock: FrozenClock) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))

    result = await exit_engine.exit("p1", reason="take_profit", limit_price=P)

    assert exit_engine.exchange is paper_exchange and exit_engine.clock is exitguard_clock
    assert (result.outcome, result.verify_latency) == (ExitOutcome.CLOSED, 0.0)
    assert [sell.attempt_id for sell in paper_exchange.sells] == ["attempt-1"]


@pytest.mark.anyio
@pytest.mark.exitguard_engine(permit_max_age=0.5, sell_timeout=3.0)
async def test_the_marker_sets_engine_options(exit_engine: ExitEngine) -> None:
    assert (exit_engine.permit_max_age, exit_engine.sell_timeout) == (0.5, 3.0)


@pytest.mark.exitguard_engine(permit_max_age=0.5)
class TestMarkerOnAClass:
    @pytest.mark.exitguard_engine(permit_max_age=0.25)
    def test_the_marker_closest_to_the_test_wins(self, exit_engine_options: dict[str, Any]) -> None:
        assert exit_engine_options["permit_max_age"] == 0.25

    def test_the_class_marker_applies(self, exit_engine_options: dict[str, Any]) -> None:
        assert exit_engine_options["permit_max_age"] == 0.5


@pytest.mark.exitguard_engine(journal=True)
def test_journal_true_asks_for_a_file_in_tmp_path(exit_engine_options: dict[str, Any], tmp_path: Path) -> None:
    assert exit_engine_options["journal"] == tmp_path / exitguard.pytest_plugin.JOURNAL_FILE
    assert not exit_engine_options["journal"].exists()  # the engine creates it, not the fixture


@pytest.mark.anyio
@pytest.mark.exitguard_engine(journal=True)
async def test_an_engine_with_a_journal_in_tmp_path(paper_exchange: PaperExchange, exit_engine: ExitEngine,
                                                    tmp_path: Path) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))

    result = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert result.outcome is ExitOutcome.CLOSED
    assert exit_engine.journal_path == tmp_path / exitguard.pytest_plugin.JOURNAL_FILE
    assert exit_engine.journal_path.exists()


def test_the_marker_refuses_positional_arguments(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "@pytest.mark.exitguard_engine(1.0)\n"
        "def test_it(exit_engine_options):\n"
        "    pass\n"
    )

    result = pytester.runpytest_inprocess()

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*exitguard_engine*keyword arguments only*"])


def test_exit_engine_is_closed_after_the_test_and_also_serves_tests_without_the_anyio_mark(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "import pytest\n"
        "seen = []\n"
        "def test_sync_test_gets_a_running_engine(exit_engine):\n"
        "    seen.append(exit_engine)\n"
        "    assert exit_engine.states() == {}\n"
        "def test_it_was_closed_after_the_test():\n"
        "    import anyio\n"
        "    from exitguard import EngineClosed\n"
        "    with pytest.raises(EngineClosed):\n"
        "        anyio.run(seen[0].reconcile, 'p1')\n"
    )

    result = pytester.runpytest_inprocess()

    result.assert_outcomes(passed=2)


def test_exitguard_events_captures_the_events_of_the_test_and_turns_them_off_after_it(
        pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        "from decimal import Decimal\n"
        "from exitguard import Position\n"
        "from exitguard.telemetry.logs import records_enabled\n"
        "def test_silent_without_the_fixture():\n"
        "    assert not records_enabled()\n"
        "def test_events(exitguard_events, paper_exchange, exit_engine_options):\n"
        "    import anyio\n"
        "    from exitguard import ExitEngine\n"
        "    paper_exchange.set_balance('tok', Decimal('9'))\n"
        "    paper_exchange.set_bids('tok', [(Decimal('0.60'), Decimal('100'))])\n"
        "    async def exit_once():\n"
        "        async with ExitEngine(paper_exchange, **exit_engine_options) as engine:\n"
        "            engine.track(Position(key='p1', token_id='tok', shares=Decimal('10')))\n"
        "            await engine.exit('p1', reason='r', limit_price=Decimal('0.55'))\n"
        "    anyio.run(exit_once)\n"
        "    assert exitguard_events.names() == ['position_tracked', 'exit_balance_mismatch', 'exit_filled']\n"
        "    [mismatch] = exitguard_events.named('exit_balance_mismatch')\n"
        "    assert mismatch['level'] == 'WARNING'\n"
        "    assert (mismatch['key'], mismatch['expected'], mismatch['actual']) == \\\n"
        "        ('p1', Decimal('10'), Decimal('9'))\n"
        "    assert exitguard_events.named('exit_filled')[0]['order_id'] == 'paper-1'\n"
        "def test_off_again_after_it():\n"
        "    assert not records_enabled()\n"
    )

    result = pytester.runpytest_inprocess()

    result.assert_outcomes(passed=3)


# -- the frozen clock --------------------------------------------------------------------------------

def test_the_frozen_clock_moves_only_when_told() -> None:
    clock = FrozenClock(datetime(2026, 3, 1, tzinfo=UTC))
    first = (clock.wall(), clock.monotonic())
    assert (clock.wall(), clock.monotonic()) == first

    clock.advance(30)

    assert clock.wall() - first[0] == timedelta(seconds=30) and clock.monotonic() - first[1] == 30


def test_ticking_moves_the_clock_on_after_every_reading_and_stops_after_the_block() -> None:
    clock = FrozenClock()
    start = clock.monotonic()

    with clock.ticking(1.5):
        readings = [clock.monotonic(), clock.monotonic(), clock.monotonic()]
    after = [clock.monotonic(), clock.monotonic()]

    assert [reading - start for reading in readings] == [0.0, 1.5, 3.0]
    assert after == [start + 4.5, start + 4.5]


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan"), True, "1"])
def test_ticking_refuses_anything_but_positive_seconds(seconds: Any) -> None:
    with pytest.raises(InvalidValue, match="seconds"), FrozenClock().ticking(seconds):
        pass


# -- faults ------------------------------------------------------------------------------------------

@pytest.mark.anyio
@pytest.mark.parametrize(("error", "outcome"), [
    ("killed", ExitOutcome.NOT_FILLED),
    ("insufficient_balance", ExitOutcome.NOT_FILLED),
    ("rejected", ExitOutcome.NOT_FILLED),
    ("transient", ExitOutcome.NOT_FILLED),
    ("rate_limited", ExitOutcome.NOT_FILLED),
    ("unknown", ExitOutcome.UNKNOWN),
    (OrderRejected("tick size changed", status=400), ExitOutcome.NOT_FILLED),
])
async def test_fail_next_sell_by_name_or_error(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                                               exit_engine: ExitEngine, error: Any, outcome: ExitOutcome) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))
    paper_faults.fail_next("sell", error)

    result = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert result.outcome is outcome
    assert paper_exchange.sells == [] and paper_exchange.balance("tok") == 10


@pytest.mark.anyio
@pytest.mark.parametrize("operation", ["get_balance", "market_rules"])
async def test_fail_next_verification_call_is_verify_failed(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                                                            exit_engine: ExitEngine, operation: str) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))
    paper_faults.fail_next(operation, count=2)

    first = await exit_engine.exit("p1", reason="r", limit_price=P)
    second = await exit_engine.exit("p1", reason="r", limit_price=P)
    third = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert [r.outcome for r in (first, second, third)] == [ExitOutcome.VERIFY_FAILED] * 2 + [ExitOutcome.CLOSED]


@pytest.mark.parametrize("error", ["exploded", ValueError("x")])
def test_fail_next_refuses_an_error_it_does_not_know(paper_faults: PaperFaults, error: Any) -> None:
    with pytest.raises(InvalidValue, match="^error=.*must be an ExchangeError or one of killed, "):
        paper_faults.fail_next("sell", error)
    assert paper_faults.exchange.calls == []


def test_fail_next_refuses_an_unknown_operation(paper_faults: PaperFaults) -> None:
    with pytest.raises(InvalidValue, match="^operation='cancel'"):
        paper_faults.fail_next("cancel")


@pytest.mark.anyio
async def test_kill_next_sell(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                              exit_engine: ExitEngine) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))
    paper_faults.kill_next_sell()

    killed = await exit_engine.exit("p1", reason="r", limit_price=P)
    sold = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert (killed.outcome, sold.outcome) == (ExitOutcome.NOT_FILLED, ExitOutcome.CLOSED)


@pytest.mark.anyio
async def test_lose_next_sell_response(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                                       exit_engine: ExitEngine) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))
    paper_faults.lose_next_sell_response()

    unknown = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert (unknown.outcome, exit_engine.unresolved()) == (ExitOutcome.UNKNOWN, ["p1"])
    assert [sell.status for sell in paper_exchange.sells] == [SellStatus.FILLED]
    assert (await exit_engine.reconcile("p1")).outcome is ExitOutcome.CLOSED


@pytest.mark.anyio
async def test_lag_balance_follows_the_frozen_clock(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                                                    exitguard_clock: FrozenClock) -> None:
    liquid(paper_exchange)
    paper_faults.lag_balance("tok", delay=2.0)
    paper_exchange.set_balance("tok", Decimal("4"))

    before = await paper_exchange.get_balance("tok")
    exitguard_clock.advance(2)
    after = await paper_exchange.get_balance("tok")

    assert (before, after) == ("10000000", "4000000")


@pytest.mark.anyio
async def test_corrupt_next_balance(paper_exchange: PaperExchange, paper_faults: PaperFaults,
                                    exit_engine: ExitEngine) -> None:
    liquid(paper_exchange)
    exit_engine.track(Position("p1", "tok", Decimal("10")))
    paper_faults.corrupt_next_balance("tok")

    result = await exit_engine.exit("p1", reason="r", limit_price=P)

    assert result.outcome is ExitOutcome.VERIFY_FAILED and "NaN" in (result.error or "")
    assert paper_exchange.sells == []


def test_latency_sets_the_paper_exchange_latency(paper_exchange: PaperExchange, paper_faults: PaperFaults) -> None:
    paper_faults.latency(0.01)

    assert paper_exchange.latency == 0.01
    with pytest.raises(InvalidValue, match="seconds"):
        paper_faults.latency(-1)


def test_attempt_ids_count_from_one() -> None:
    ids = attempt_ids("x")
    assert [ids(), ids(), ids()] == ["x-1", "x-2", "x-3"]
