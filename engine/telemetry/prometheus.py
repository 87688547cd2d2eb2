"""The engine's numbers for Prometheus: text exposition format, optionally on a local HTTP port.

Nothing here runs on the exit path. A collector reads the engine when it is scraped (`engine.metrics`,
`engine.divergence`, `engine.counts_by_state()`, `engine.unresolved()`, `engine.unsettled()`) into a
registry of its own, so two engines in one process, or two tests, never share a series.

The engine is not thread-safe and need not be: the HTTP server answers in a worker thread, but the
reading itself is handed to the event loop the engine runs on (one short synchronous step, consistent
across every series, never interleaved with an exit's bookkeeping). Only formatting happens off-loop.

    async with metrics_server(engine, port=9464) as server:   # GET http://127.0.0.1:9464/metrics
        ...

    render(engine)   # bytes, for a bot that serves HTTP itself (call it on the engine's event loop)
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from types import TracebackType
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from exitguard.position import ExitOutcome
from exitguard.states import State
from exitguard.telemetry.divergence import DivergenceKind
from exitguard.telemetry.metrics import LatencyHistogram

if TYPE_CHECKING:
    from exitguard.exits import ExitEngine

DEFAULT_PORT = 9464

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Content-Type of `render()`'s output (Prometheus text format 0.0.4)."""


@dataclass(frozen=True, slots=True)
class _Reading:
    verify_latency: LatencyHistogram
    sell_latency: LatencyHistogram
    exits: dict[str, int]
    divergences: dict[str, int]
    divergence_alerts: int
    positions: dict[str, int]
    unresolved: int
    oldest_unresolved_age: float
    unsettled: int
    balance_refreshes: int
    verify_failures: int
    paused: bool
    user_channel_connected: bool | None = None
    user_channel_event_age: float | None = None


def _read(engine: ExitEngine) -> _Reading:
    """One pass over the engine. Synchronous and allocation-light; call it on the engine's thread."""
    metrics, divergence = engine.metrics, engine.divergence
    return _Reading(
        verify_latency=metrics.verify_latency_recorder.histogram(),
        sell_latency=metrics.sell_latency_recorder.histogram(),
        exits=_with_zeros(ExitOutcome, metrics.outcomes),
        divergences=_with_zeros(DivergenceKind, divergence.by_kind),
        divergence_alerts=len(divergence.alerts),
        positions=_with_zeros(State, Counter(engine.counts_by_state())),
        unresolved=len(engine.unresolved()),
        oldest_unresolved_age=metrics.oldest_unresolved_age,
        unsettled=len(engine.unsettled()),
        balance_refreshes=metrics.balance_refreshes,
        verify_failures=metrics.verify_failures,
        paused=metrics.paused,
        user_channel_connected=metrics.user_channel_connected,
        user_channel_event_age=metrics.user_channel_event_age(),
    )


def _with_zeros(names: Iterable[str], counts: Counter[str]) -> dict[str, int]:
    """Every known label value from the first scrape on (a series that appears late hides its first
    increase from `rate()`), then any value the engine counted that the enum does not list."""
    values = {str(name): 0 for name in names}
    for name, count in counts.items():
        values[str(name)] = count
    return values


class EngineCollector:
    """A `prometheus_client` collector for one engine. `read` decides where the engine is read
    (default: right here, which must be the engine's own thread)."""

    def __init__(self, engine: ExitEngine, read: Callable[[], _Reading] | None = None) -> None:
        self.engine = engine
        self._read = read or (lambda: _read(engine))

    def collect(self) -> Iterator[Metric]:
        reading = self._read()
        yield _histogram("exitguard_verify_latency_seconds",
                         "Balance verification before a sell: first request to verified balance.",
                         reading.verify_latency)
        yield _histogram("exitguard_sell_latency_seconds",
                         "Sell order round trip, for sells that filled.", reading.sell_latency)
        yield _labelled(CounterMetricFamily("exitguard_exits_total",
                                            "Exit results by outcome (every exit() and reconcile() call).",
                                            labels=["outcome"]), reading.exits)
        yield _labelled(CounterMetricFamily("exitguard_divergences_total",
                                            "Times memory and the exchange disagreed, by kind.",
                                            labels=["kind"]), reading.divergences)
        yield CounterMetricFamily("exitguard_divergence_alerts_total",
                                  "Divergence bursts that crossed the detector's threshold.",
                                  value=reading.divergence_alerts)
        yield _labelled(GaugeMetricFamily("exitguard_positions", "Tracked positions by state.",
                                          labels=["state"]), reading.positions)
        yield GaugeMetricFamily("exitguard_unresolved_outcomes",
                                "Positions whose sell outcome is unknown (the engine looks each up until it settles).",
                                value=reading.unresolved)
        yield GaugeMetricFamily("exitguard_oldest_unresolved_outcome_age_seconds",
                                "Seconds since the oldest unresolved sell outcome became unknown (0: none).",
                                value=reading.oldest_unresolved_age, unit="seconds")
        yield GaugeMetricFamily("exitguard_unsettled_sales",
                                "Filled sales matched on the book but not yet settled on chain.",
                                value=reading.unsettled)
        yield CounterMetricFamily("exitguard_balance_refreshes_total",
                                  "Balance cache refreshes asked of the exchange.",
                                  value=reading.balance_refreshes)
        yield CounterMetricFamily("exitguard_verify_failures_total",
                                  "Exit attempts stopped because the balance could not be verified.",
                                  value=reading.verify_failures)
        yield GaugeMetricFamily("exitguard_paused",
                                "1 while the kill switch is on (engine.pause): new exits are refused.",
                                value=int(reading.paused))
        if reading.user_channel_connected is not None:  # only for an exchange with a push channel
            yield GaugeMetricFamily("exitguard_user_channel_connected",
                                    "1 while the exchange's user channel is connected; 0 while down (polling alone).",
                                    value=int(reading.user_channel_connected))
            yield GaugeMetricFamily("exitguard_user_channel_event_age_seconds",
                                    "Seconds since the user channel's last event (-1: none yet).",
                                    value=-1.0 if reading.user_channel_event_age is None
                                    else reading.user_channel_event_age, unit="seconds")


def _histogram(name: str, documentation: str, histogram: LatencyHistogram) -> HistogramMetricFamily:
    # `le` spelled as Prometheus' Go code does (prometheus_client's own histograms use this helper, untyped).
    buckets = [(floatToGoString(bound), float(count))  # type: ignore[no-untyped-call]
               for bound, count in zip(histogram.bounds, histogram.cumulative, strict=True)]
    buckets.append(("+Inf", float(histogram.count)))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.sum, unit="seconds")


def _labelled(family: CounterMetricFamily | GaugeMetricFamily, values: dict[str, int]) -> Metric:
    for label, value in values.items():
        family.add_metric([label], value)
    return family


def registry_for(engine: ExitEngine) -> CollectorRegistry:
    """A registry holding only this engine's collector (never the process-wide default registry), to
    collect on the engine's event loop or to combine with a bot's own exposition."""
    return _registry(EngineCollector(engine))


def _registry(collector: EngineCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(engine: ExitEngine) -> bytes:
    """The engine's metrics in Prometheus text format (`CONTENT_TYPE`). Call it on the engine's event
    loop, e.g. from a bot's own async HTTP handler."""
    return generate_latest(registry_for(engine))


# -- the HTTP endpoint -------------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not logged."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    """A scrape stuck on a slow client never keeps the process alive."""


class MetricsServer:
    """A running metrics endpoint (any GET path answers; Prometheus asks for /metrics). Close it with
    `close()`, or use it as a context manager."""

    def __init__(self, httpd: WSGIServer, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._httpd = httpd
        address = httpd.server_address
        self.host: str = str(address[0])
        self.port: int = int(address[1])
        """The bound port: the one asked for, or the one the system picked for port 0."""
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"exitguard-metrics:{self.port}", daemon=True)
        self._thread.start()
        self._closed = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop answering and free the port (waits up to ~50 ms for the accept loop). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def serve_metrics(engine: ExitEngine, *, port: int = DEFAULT_PORT, host: str = "127.0.0.1") -> MetricsServer:
    """Serve the engine's metrics on `host:port` (port 0: any free port, read it from `.port`).

    Call it from the async code that runs the engine: each scrape reads the engine on that event loop.
    The default host is loopback only; the figures describe a trading book, so expose them deliberately.
    A scrape waits for the event loop: scrape from another process, a worker thread or an async client,
    never with a blocking call on the loop's own thread.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: must be an integer from 0 to 65535 (0: any free port)")
    try:
        token = anyio.lowlevel.current_token()
    except anyio.NoEventLoopError:
        raise RuntimeError("serve_metrics() must be called from async code on the engine's event loop, so "
                           "that scrapes read the engine there (or use `async with metrics_server(...)`)") from None
    loop_thread = threading.get_ident()

    def read() -> _Reading:
        if threading.get_ident() == loop_thread:
            return _read(engine)
        try:
            return anyio.from_thread.run_sync(_read, engine, token=token)
        except anyio.RunFinishedError:
            return _read(engine)  # the loop has ended: nothing can change the engine under us any more

    registry = _registry(EngineCollector(engine, read))
    family, address = _family_and_address(host, port)

    class Server(_ThreadingServer):
        address_family = family

    httpd = make_server(address, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    return MetricsServer(httpd, registry)


def _family_and_address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """IPv4 or IPv6, whichever the host names (as `http.server` and prometheus_client choose)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


@asynccontextmanager
async def metrics_server(engine: ExitEngine, *, port: int = DEFAULT_PORT,
                         host: str = "127.0.0.1") -> AsyncIterator[MetricsServer]:
    """`serve_metrics` for the length of an `async with` block; closing never blocks the event loop."""
    server = serve_metrics(engine, port=port, host=host)
    try:
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.close)
