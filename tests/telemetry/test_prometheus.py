"""Metrics for operators: the engine's numbers scraped over HTTP in Prometheus text format."""

from __future__ import annotations

import dataclasses
import threading
from decimal import Decimal

import anyio
import httpx
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from exitguard import ExitEngine, ManualClock, Position
from exitguard.exchange.paper import PaperExchange
from exitguard.exchange.port import Fill
from exitguard.states import MarketRules, SellPermit
from exitguard.telemetry.metrics import LatencyRecorder
from exitguard.telemetry.prometheus import CONTENT_TYPE, MetricsServer, metrics_server, render, serve_metrics

P = Decimal("0.55")

RULES_S, BALANCE_S, REFRESH_S, SELL_S = 0.002, 0.02, 0.02, 0.18
"""What each exchange call takes on the manual clock, so every latency below is known exactly."""

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class TimedPaper(PaperExchange):
    """The paper exchange, each call advancing the manual clock; sells of `settling` tokens come back
    matched but not yet settled on chain (trade ids), as the real exchange's do."""

    def __init__(self, clock: ManualClock, settling: frozenset[str] = frozenset()) -> None:
        super().__init__(clock=clock)
        self.manual = clock
        self.settling = settling

    async def market_rules(self, token_id: str) -> MarketRules:
        self.manual.advance(RULES_S)
        return await super().market_rules(token_id)

    async def get_balance(self, token_id: str) -> object:
        self.manual.advance(BALANCE_S)
        return await super().get_balance(token_id)

    async def refresh_balance(self, token_id: str) -> None:
        self.manual.advance(REFRESH_S)
        await super().refresh_balance(token_id)

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object) -> Fill:
        self.manual.advance(SELL_S)
        fill = await super().sell(permit, limit_price, **options)
        return dataclasses.replace(fill, trade_ids=("trade-1",)) if permit.token_id in self.settling else fill


async def a_few_exits(engine: ExitEngine, exchange: TimedPaper) -> None:
    """Eight positions, one per outcome worth watching (comments: verify latency, sell latency)."""
    for token, balance, bid in (("a", "10", "0.60"), ("b", "9", "0.60"), ("c", "0", "0.60"), ("d", "3", "0.60"),
                                ("e", "10", "0.10"), ("f", "10", "0.60"), ("g", "10", "0.60"), ("h", "10", "0.60")):
        exchange.set_balance(token, Decimal(balance))
        exchange.set_bids(token, [(Decimal(bid), Decimal("100"))])
        # Issue 14: a reading below the shares held is refreshed only inside the settlement window of the last
        # buy (b's); elsewhere (d) it is the truth; a zero (c) is always asked twice (states.refresh: ZERO).
        bought = exchange.manual.wall() if token == "b" else None
        engine.track(Position(token, token, Decimal("10"), last_buy_at=bought))
    await engine.exit("a", reason="r", limit_price=P)   # CLOSED                  0.022  0.18
    await engine.exit("b", reason="r", limit_price=P)   # CLOSED, mismatch, 1 refresh   0.062  0.18
    await engine.exit("c", reason="r", limit_price=P)   # ALREADY_EXITED, 1 refresh     0.062
    await engine.exit("d", reason="r", limit_price=P)   # DUST (3 < 5)                  0.022
    await engine.exit("e", reason="r", limit_price=P)   # NOT_FILLED: FOK killed        0.022
    exchange.lose_next_sell_response()
    await engine.exit("f", reason="r", limit_price=P)   # UNKNOWN: SELLING, unresolved  0.022
    exchange.fail_next("get_balance")
    await engine.exit("g", reason="r", limit_price=P)   # VERIFY_FAILED (no latency recorded)
    await engine.exit("h", reason="r", limit_price=P)   # CLOSED, settlement pending    0.022  0.18


def samples(text: str) -> Samples:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def series(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


def histogram(name: str, got: Samples) -> dict[str, float]:
    """le -> cumulative count, plus "count" and "sum"."""
    buckets = {dict(labels)["le"]: value for (sample, labels), value in got.items() if sample == f"{name}_bucket"}
    return {**buckets, "count": got[series(f"{name}_count")], "sum": got[series(f"{name}_sum")]}


def expect_a_few_exits(got: Samples) -> None:
    verify = histogram("exitguard_verify_latency_seconds", got)
    assert verify["count"] == 7 and verify["sum"] == pytest.approx(5 * 0.022 + 2 * 0.062)
    assert {le: verify[le] for le in ("0.01", "0.025", "0.05", "0.075", "0.1", "15.0", "+Inf")} == {
        "0.01": 0, "0.025": 5, "0.05": 5, "0.075": 7, "0.1": 7, "15.0": 7, "+Inf": 7}
    sell = histogram("exitguard_sell_latency_seconds", got)
    assert sell["count"] == 3 and sell["sum"] == pytest.approx(3 * 0.18)
    assert {le: sell[le] for le in ("0.15", "0.2", "+Inf")} == {"0.15": 0, "0.2": 3, "+Inf": 3}

    exits = {dict(labels)["outcome"]: value for (name, labels), value in got.items() if name == "exitguard_exits_total"}
    assert exits == {"CLOSED": 3, "ALREADY_EXITED": 1, "DUST": 1, "NOT_FILLED": 1, "UNKNOWN": 1, "VERIFY_FAILED": 1,
                     "IN_PROGRESS": 0, "PAUSED": 0, "MARKET_CLOSED": 0}
    divergences = {dict(labels)["kind"]: value for (name, labels), value in got.items()
                   if name == "exitguard_divergences_total"}
    assert {kind: n for kind, n in divergences.items() if n} == {
        "balance_mismatch": 1, "already_exited": 1, "dust": 1, "unknown_outcome": 1}
    assert divergences["settlement_failed"] == 0  # every kind is there from the start
    positions = {dict(labels)["state"]: value for (name, labels), value in got.items() if name == "exitguard_positions"}
    assert positions == {"OPEN": 2, "VERIFYING": 0, "SELLING": 1, "CLOSED": 3, "RECONCILED": 1, "DUST": 1}
    assert got[series("exitguard_unresolved_outcomes")] == 1
    assert got[series("exitguard_unsettled_sales")] == 1
    assert got[series("exitguard_balance_refreshes_total")] == 2
    assert got[series("exitguard_verify_failures_total")] == 1
    assert got[series("exitguard_paused")] == 0
    assert got[series("exitguard_divergence_alerts_total")] == 0


@pytest.mark.anyio
async def test_endpoint_serves_every_series_with_the_right_values_after_a_few_exits(clock: ManualClock) -> None:
    exchange = TimedPaper(clock, settling=frozenset({"h"}))
    async with ExitEngine(exchange, clock=clock, settlement_poll_interval=None) as engine:
        async with metrics_server(engine, port=0) as server, httpx.AsyncClient(trust_env=False) as client:
            assert server.port != 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
            before = samples((await client.get(server.url)).text)
            assert before[series("exitguard_exits_total", outcome="CLOSED")] == 0
            assert histogram("exitguard_verify_latency_seconds", before)["count"] == 0

            await a_few_exits(engine, exchange)
            response = await client.get(server.url)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain")
            expect_a_few_exits(samples(response.text))
            # The same figures the engine's own API reports, and render() for bots with their own HTTP stack.
            assert engine.metrics.snapshot()["outcomes"] == {"CLOSED": 3, "ALREADY_EXITED": 1, "DUST": 1,
                                                             "NOT_FILLED": 1, "UNKNOWN": 1, "VERIFY_FAILED": 1}
            assert samples(render(engine).decode()) == samples(response.text)
            assert CONTENT_TYPE.startswith("text/plain; version=0.0.4")

            # Prometheus asks for OpenMetrics first; that rendering must parse too.
            openmetrics = await client.get(server.url, headers={"Accept": "application/openmetrics-text"})
            assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
            families = {family.name: family for family in openmetrics_families(openmetrics.text)}
            assert families["exitguard_verify_latency_seconds"].unit == "seconds"
            assert families["exitguard_exits"].type == "counter"


@pytest.mark.anyio
async def test_scrapes_read_the_engine_on_its_event_loop_not_in_the_server_thread(clock: ManualClock) -> None:
    loop_thread = threading.get_ident()
    async with ExitEngine(PaperExchange(clock=clock), clock=clock) as engine:
        readers: list[int] = []
        counts = engine.counts_by_state

        def spying_counts() -> dict[str, int]:
            readers.append(threading.get_ident())
            return counts()

        engine.counts_by_state = spying_counts  # type: ignore[method-assign]
        async with metrics_server(engine, port=0) as server, httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(server.url)).status_code == 200
            render(engine)
    assert readers == [loop_thread, loop_thread]


@pytest.mark.anyio
async def test_two_engines_serve_their_own_numbers_on_their_own_ports(clock: ManualClock) -> None:
    busy_exchange, idle_exchange = TimedPaper(clock), TimedPaper(ManualClock())
    async with ExitEngine(busy_exchange, clock=clock) as busy, ExitEngine(idle_exchange) as idle:
        await a_few_exits(busy, busy_exchange)
        with serve_metrics(busy, port=0) as one, serve_metrics(idle, port=0) as two:
            assert one.port != two.port
            async with httpx.AsyncClient(trust_env=False) as client:
                busy_samples = samples((await client.get(one.url)).text)
                idle_samples = samples((await client.get(two.url)).text)
    assert busy_samples[series("exitguard_exits_total", outcome="CLOSED")] == 3
    assert idle_samples[series("exitguard_exits_total", outcome="CLOSED")] == 0
    assert sum(v for (name, _), v in idle_samples.items() if name == "exitguard_positions") == 0


@pytest.mark.anyio
async def test_close_frees_the_port_and_is_idempotent(clock: ManualClock) -> None:
    async with ExitEngine(PaperExchange(clock=clock), clock=clock) as engine:
        server = serve_metrics(engine, port=0)
        server.close()
        server.close()
        async with httpx.AsyncClient(trust_env=False) as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(server.url)


@pytest.mark.anyio
async def test_the_server_thread_has_stopped_when_the_block_ends(clock: ManualClock) -> None:
    async with ExitEngine(PaperExchange(clock=clock), clock=clock) as engine:
        async with metrics_server(engine, port=0) as server, httpx.AsyncClient(trust_env=False) as client:
            assert (await client.get(server.url)).status_code == 200
            name = f"exitguard-metrics:{server.port}"
            assert name in [thread.name for thread in threading.enumerate()]
        assert name not in [thread.name for thread in threading.enumerate()]


def test_a_scrape_after_the_event_loop_ended_reads_the_engine_directly() -> None:
    clock = ManualClock()

    async def main() -> tuple[ExitEngine, MetricsServer]:
        exchange = TimedPaper(clock)
        async with ExitEngine(exchange, clock=clock) as engine:
            await a_few_exits(engine, exchange)
        return engine, serve_metrics(engine, port=0)

    engine, server = anyio.run(main)
    with server, httpx.Client(trust_env=False) as client:
        got = samples(client.get(server.url).text)
    assert got[series("exitguard_exits_total", outcome="CLOSED")] == engine.metrics.outcomes["CLOSED"] == 3


def test_serve_metrics_needs_the_engines_event_loop_and_a_valid_port() -> None:
    engine = ExitEngine(PaperExchange())
    with pytest.raises(RuntimeError, match="event loop"):
        serve_metrics(engine, port=0)
    for port in (-1, 65536, True, "9464"):
        with pytest.raises(ValueError, match="port"):
            serve_metrics(engine, port=port)  # type: ignore[arg-type]


def test_latency_histogram_buckets_are_cumulative_upper_bounds() -> None:
    recorder = LatencyRecorder(buckets=(0.1, 0.2))
    for seconds in (0.05, 0.1, 0.15, 0.2, 0.25, 3.0):
        recorder.record(seconds)
    histogram = recorder.histogram()
    assert histogram.bounds == (0.1, 0.2)
    assert histogram.cumulative == (2, 4)  # a sample equal to a bound is in that bucket (le)
    assert histogram.count == 6 and histogram.sum == pytest.approx(3.75)
    assert recorder.summary().count == 6 and recorder.summary().max == 3.0
    assert LatencyRecorder().histogram().cumulative[-1] == 0
    for bad in ((), (0.2, 0.1), (0.1, 0.1), (0.0, 1.0), (1.0, float("inf")), (float("nan"),)):
        with pytest.raises(ValueError, match="buckets"):
            LatencyRecorder(buckets=bad)
