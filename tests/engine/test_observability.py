"""Logs, divergence alerts and metrics: what an operator sees."""

from __future__ import annotations

import io
import json
from decimal import Decimal

import anyio
import pytest

from exitguard import (
    DivergenceDetector,
    DivergenceEvent,
    DivergenceKind,
    ExitEngine,
    ManualClock,
    Position,
    RetryPolicy,
)
from exitguard.exchange.paper import PaperExchange
from exitguard.telemetry.logs import EVENTS, configure_logging, emit
from exitguard.telemetry.metrics import LatencyRecorder

P = Decimal("0.55")


def event(kind: DivergenceKind = DivergenceKind.BALANCE_MISMATCH, token: str = "tok",
          at: float = 0.0) -> DivergenceEvent:
    return DivergenceEvent(kind, "p1", token, Decimal("10"), Decimal("9"), at)


# -- logs ---------------------------------------------------------------------------------------------

@pytest.mark.anyio
async def test_exit_events_carry_key_token_attempt_and_verify_latency(clock: ManualClock, logs) -> None:
    exchange = PaperExchange(clock=clock)
    for token, balance, bid in (("a", "10", "0.60"), ("b", "9", "0.60"), ("c", "0", "0.60"), ("d", "10", "0.10"),
                                ("e", "3", "0.60"), ("f", "10", "0.60"), ("g", "10", "0.54")):
        exchange.set_balance(token, Decimal(balance))
        exchange.set_bids(token, [(Decimal(bid), Decimal("100"))])
    async with ExitEngine(exchange, clock=clock, retry=RetryPolicy(max_attempts=2, step_ticks=1,
                                                                   max_slippage=Decimal("0.01"))) as engine:
        for token in "abcdefg":
            engine.track(Position(token, token, Decimal("10")))
        for token in "abcdeg":
            await engine.exit(token, reason="r", limit_price=P)
        exchange.lose_next_sell_response()
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.exit("f", reason="r", limit_price=P))
            group.start_soon(lambda: engine.exit("f", reason="r", limit_price=P))
        exchange.fail_next("lookup_sell")
        await engine.reconcile("f")
        await engine.reconcile("f")
        exchange.corrupt_next_balance("d", "NaN")
        await engine.exit("d", reason="r", limit_price=P)

    emitted = {record["event"] for record in logs.records}
    assert {"exit_filled", "exit_balance_mismatch", "exit_already_complete", "exit_not_filled",
            "exit_dust_residual", "exit_retrying", "exit_in_progress_refused", "exit_outcome_unknown",
            "exit_reconcile_failed", "exit_outcome_resolved", "balance_verify_failed"} <= emitted
    for record in logs.records:
        if record["event"].startswith(("exit_", "balance_")):
            assert {"key", "token", "attempt", "verify_latency_ms"} <= record.keys(), record["event"]


def test_every_emitted_event_is_a_known_name() -> None:
    with pytest.raises(KeyError):
        emit("exit_went_sideways", key="p1")


@pytest.mark.anyio
async def test_json_lines_switch_writes_one_parseable_object_per_event(exchange: PaperExchange,
                                                                       clock: ManualClock) -> None:
    # The sink takes exitguard's records only (add_log_sink's default), so the event comes from a real
    # exit: 9 shares held where 10 were expected.
    exchange.set_balance("tok", Decimal("9"))
    sink = io.StringIO()
    handler = configure_logging(json=True, level="WARNING", sink=sink)
    try:
        async with ExitEngine(exchange, clock=clock) as engine:
            engine.track(Position("p1", "tok", Decimal("10")))
            await engine.exit("p1", reason="r", limit_price=P)
    finally:
        from loguru import logger

        logger.remove(handler)
        logger.disable("exitguard")
    [line] = sink.getvalue().splitlines()
    record = json.loads(line)["record"]
    assert record["extra"]["event"] == "exit_balance_mismatch"
    assert record["extra"]["key"] == "p1"
    assert record["level"]["name"] == EVENTS["exit_balance_mismatch"]


# -- divergence detection ------------------------------------------------------------------------------

def test_divergences_are_counted_per_token_per_kind_and_overall() -> None:
    detector = DivergenceDetector(threshold=100)
    detector.record(event(token="a"))
    detector.record(event(DivergenceKind.DUST, token="b"))
    detector.record(event(DivergenceKind.DUST, token="b"))
    assert (detector.total, detector.by_token, detector.by_kind) == (
        3, {"a": 1, "b": 2}, {DivergenceKind.BALANCE_MISMATCH: 1, DivergenceKind.DUST: 2})


def test_alert_fires_once_when_the_threshold_is_crossed_within_the_window(logs) -> None:
    alerts = []
    detector = DivergenceDetector(threshold=3, window=10.0, on_alert=alerts.append)
    for at in (0.0, 1.0):
        detector.record(event(token=f"t{at}", at=at))
    assert alerts == []
    detector.record(event(token="t2", at=2.0))
    detector.record(event(token="t3", at=3.0))
    assert [(alert.scope, alert.count) for alert in alerts] == [("all", 3)]
    assert logs.named("divergence_alert")[0]["scope"] == "all"


def test_events_outside_the_window_do_not_add_up_to_an_alert() -> None:
    detector = DivergenceDetector(threshold=3, window=10.0)
    for at in (0.0, 11.0, 22.0, 33.0):
        detector.record(event(token=f"t{at}", at=at))
    assert detector.alerts == []


def test_alert_rearms_after_the_window_drains() -> None:
    detector = DivergenceDetector(threshold=2, window=5.0)
    for at in (0.0, 1.0, 20.0, 21.0):
        detector.record(event(token=f"t{at}", at=at))
    assert [alert.last_event.at for alert in detector.alerts if alert.scope == "all"] == [1.0, 21.0]


def test_one_token_crossing_alone_gets_a_token_scoped_alert() -> None:
    detector = DivergenceDetector(threshold=2, window=60.0)
    detector.record(event(token="hot", at=0.0))
    detector.record(event(token="hot", at=1.0))
    assert {(alert.scope, alert.token_id) for alert in detector.alerts} == {("all", None), ("token", "hot")}


def test_a_failing_alert_hook_is_logged_and_does_not_raise(logs) -> None:
    def broken(alert: object) -> None:
        raise RuntimeError("pager down")

    detector = DivergenceDetector(threshold=1, on_alert=broken)
    detector.record(event())
    assert "pager down" in logs.named("divergence_alert_hook_failed")[0]["error"]


@pytest.mark.parametrize("threshold, window", [(0, 1.0), (1, 0.0)])
def test_detector_settings_are_validated(threshold: int, window: float) -> None:
    with pytest.raises(ValueError, match="threshold|window"):
        DivergenceDetector(threshold=threshold, window=window)


# -- metrics ----------------------------------------------------------------------------------------

def test_latency_percentiles_are_nearest_rank() -> None:
    recorder = LatencyRecorder()
    for ms in range(1, 101):
        recorder.record(ms / 1000)
    summary = recorder.summary()
    assert (summary.count, summary.p50, summary.p95, summary.p99, summary.max) == (100, 0.05, 0.095, 0.099, 0.1)


def test_latency_window_bounds_memory_but_count_and_max_are_all_time() -> None:
    recorder = LatencyRecorder(window=10)
    for ms in (500, *range(1, 21)):
        recorder.record(ms / 1000)
    summary = recorder.summary()
    assert (summary.count, summary.max, summary.p99) == (21, 0.5, 0.02)


@pytest.mark.anyio
async def test_transitions_library_chatter_for_the_position_machine_is_not_logged(
        exchange: PaperExchange, clock: ManualClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("DEBUG")
    async with ExitEngine(exchange, clock=clock) as engine:
        engine.track(Position("p1", "tok", Decimal("10")))
        await engine.exit("p1", reason="r", limit_price=P)
    assert [record.getMessage() for record in caplog.records if record.name.startswith("transitions")] == []
