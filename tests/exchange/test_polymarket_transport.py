"""Issue 12 §0: the adapter's own HTTP transport (exitguard.exchange.polymarket.transport), worst answers first.

Most tests here run the adapter against a loopback server on the test's own event loop (no thread on either side),
so that a hung answer, a 100,000-deep body or a dropped connection is exactly what the test wrote. The fake CLOB
is used where the order must really execute.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from fakeclob import FakeClob
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import ApiCreds

from exitguard import ExitEngine, ExitOutcome, Position, TransientError, UnknownOutcome
from exitguard.exchange.polymarket import transport
from exitguard.exchange.polymarket.ratelimit import Family
from exitguard.exchange.port import SellDeadline
from exitguard.polymarket import PolymarketExchange
from exitguard.states import InvalidValue, PermitError, SellPermit

pytestmark = pytest.mark.anyio

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # hardhat #0, never funded
CREDS = ApiCreds(api_key="1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7a8b",
                 api_secret="c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3I=",
                 api_passphrase="9f3b" * 16)
DEEP = b"[" * 100_000 + b"]" * 100_000
"""A body that `resp.json()` recurses into 100,000 times: with py_ecc's raised recursion limit, a segfault."""
BOOK = {"tick_size": "0.01", "min_order_size": "5", "neg_risk": False, "bids": [], "asks": []}

Reply = tuple[int, bytes] | None
"""(status, body) to answer with; None: never answer."""


@dataclass
class Loopback:
    """A keep-alive HTTP/1.1 server on the test's event loop. `answer(method, path)` decides each reply."""

    answer: Callable[[str, str], Reply]
    host: str = ""
    requests: list[tuple[str, str]] = field(default_factory=list)
    closed_unanswered: int = 0
    """Connections the client closed while waiting for an answer (a cancelled request)."""
    closed: anyio.Event = field(default_factory=anyio.Event)
    """Set when the client closes a connection that waits for an answer."""
    got: anyio.Event = field(default_factory=anyio.Event)
    """Set when a request arrives."""
    listener: anyio.abc.SocketListener | None = None

    async def serve(self, stream: anyio.abc.SocketStream) -> None:
        buffered = b""
        async with stream:
            while True:
                try:
                    while b"\r\n\r\n" not in buffered:
                        buffered += await stream.receive()
                    head, _, buffered = buffered.partition(b"\r\n\r\n")
                    lines = head.decode("latin-1").split("\r\n")
                    length = next((int(line.split(":")[1]) for line in lines[1:]
                                   if line.lower().startswith("content-length:")), 0)
                    while len(buffered) < length:
                        buffered += await stream.receive()
                    buffered = buffered[length:]
                    method, target, _ = lines[0].split(" ")
                    path = target.partition("?")[0]
                    self.requests.append((method, path))
                    self.got.set()
                    reply = self.answer(method, path)
                    if reply is None:
                        await self.wait_for_close(stream)
                        return
                    status, body = reply
                    await stream.send(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                                      f"Content-Length: {len(body)}\r\nX-Seen: {len(self.requests)}\r\n\r\n"
                                      .encode() + body)
                except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                    return

    async def wait_for_close(self, stream: anyio.abc.SocketStream) -> None:
        """Never answer; count the connection once the client closes it."""
        try:
            while True:
                await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            self.closed_unanswered += 1
            self.closed.set()

    async def listen(self) -> None:
        assert self.listener is not None
        try:
            await self.listener.serve(self.serve)
        except* anyio.ClosedResourceError:
            pass  # the test closed the listener: connections are refused from now on

    def count(self, method: str, path: str) -> int:
        return self.requests.count((method, path))


def routes(**overrides: Reply) -> Callable[[str, str], Reply]:
    """Answers of a warm market (book, version, a 10-share balance, no order or trade known), with some paths
    answered otherwise (`balance_allowance__update=...` for /balance-allowance/update)."""
    usual: dict[str, Reply] = {"/book": (200, json.dumps(BOOK).encode()), "/version": (200, b'{"version":2}'),
                               "/balance-allowance": (200, b'{"balance":"10000000"}'),
                               "/balance-allowance/update": (200, b""),
                               "/data/trades": (200, b'{"data":[],"next_cursor":"LTE="}'),
                               "/data/order/": (200, b"null")}
    table = {**usual, **{"/" + name.replace("__", "/").replace("_", "-"): reply for name, reply in overrides.items()}}

    def answer(method: str, path: str) -> Reply:
        return table.get("/data/order/" if path.startswith("/data/order/") else path, (404, b'"404 page not found"'))

    return answer


@pytest.fixture
async def serving() -> AsyncIterator[Callable[[Callable[[str, str], Reply]], Loopback]]:
    async with anyio.create_task_group() as tg:
        async def start(answer: Callable[[str, str], Reply]) -> Loopback:
            server = Loopback(answer)
            server.listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
            port = server.listener.extra(anyio.abc.SocketAttribute.local_port)
            server.host = f"http://127.0.0.1:{port}"
            tg.start_soon(server.listen)
            return server

        yield start  # type: ignore[misc]
        tg.cancel_scope.cancel()


def adapter(host: str, **options: Any) -> PolymarketExchange:
    return PolymarketExchange(ClobClient(host, 137, key=KEY, creds=CREDS), **options)


def permit(attempt: str = "a1") -> SellPermit:
    return SellPermit(position_key="p1", token_id=TOKEN, shares=10_000_000, verified_balance=10_000_000,
                      verified_at=0.0, attempt_id=attempt)


FOREVER = SellDeadline(math.inf, lambda: 0.0)


# -- bodies that cannot be read --------------------------------------------------------------------

async def test_a_balance_nested_100000_deep_is_a_failed_read_not_a_crash(serving) -> None:  # noqa: ANN001
    server = await serving(routes(balance_allowance=(200, DEEP)))
    async with adapter(server.host) as exchange:
        with pytest.raises(TransientError, match="balance: unreadable answer \\(nested deeper than 64 levels\\)"):
            await exchange.get_balance(TOKEN)


async def test_an_order_answer_nested_100000_deep_is_unknown_not_a_crash(serving) -> None:  # noqa: ANN001
    server = await serving(routes(order=(200, DEEP)))
    async with adapter(server.host) as exchange:
        with pytest.raises(UnknownOutcome, match="may have executed: unreadable answer"):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
    assert server.count("POST", "/order") == 1


async def test_an_executed_order_answered_100000_deep_is_unknown_and_found_by_lookup() -> None:
    with FakeClob() as clob:
        clob.add_market(TOKEN)
        clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
        clob.set_balance(TOKEN, Decimal("10"))
        async with PolymarketExchange(clob.client()) as exchange:
            async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
                engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
                clob.mangle_next_response(200, DEEP, path="/order")
                result = await engine.exit("p1", reason="tp", limit_price=Decimal("0.55"))
                assert result.outcome is ExitOutcome.UNKNOWN
                settled = await engine.exit("p1", reason="tp", limit_price=Decimal("0.55"))
        assert settled.outcome is ExitOutcome.CLOSED and clob.count("POST", "/order") == 1


async def test_a_body_larger_than_the_bound_is_unreadable(serving) -> None:  # noqa: ANN001
    huge = b'{"balance":"' + b"1" * transport.MAX_BODY + b'"}'
    server = await serving(routes(balance_allowance=(200, huge), order=(200, huge)))
    async with adapter(server.host) as exchange:
        with pytest.raises(TransientError, match=f"larger than {transport.MAX_BODY} bytes"):
            await exchange.get_balance(TOKEN)
        with pytest.raises(UnknownOutcome, match="larger than"):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)


async def test_a_body_that_is_not_utf8_is_unreadable(serving) -> None:  # noqa: ANN001
    server = await serving(routes(balance_allowance=(200, b'{"balance":"\xff\xfe"}')))
    async with adapter(server.host) as exchange:
        with pytest.raises(TransientError, match="not UTF-8"):
            await exchange.get_balance(TOKEN)


def test_the_depth_guard_is_linear_and_ignores_brackets_inside_strings() -> None:
    assert transport.within_depth("[" * 64 + "]" * 64) and not transport.within_depth("[" * 65 + "]" * 65)
    assert transport.within_depth('{"a": "' + "[" * 10_000 + '\\"' + "{" * 10_000 + '"}')
    assert not transport.within_depth('[{"a": "]]]]", "b": ' + "[" * 70 + "]" * 70 + "}]")
    assert transport.parse_body(DEEP) == (None, "nested deeper than 64 levels")
    assert transport.parse_body(b"service not ready") == ("service not ready", None)
    assert transport.parse_body(b'{"a":[1,{"b":null}]}') == ({"a": [1, {"b": None}]}, None)


# -- deadlines are cancel scopes -------------------------------------------------------------------

async def test_a_deadline_ends_a_hung_read_and_closes_its_connection(serving) -> None:  # noqa: ANN001
    server = await serving(routes(balance_allowance=None))
    async with adapter(server.host) as exchange:
        await exchange.warm_up(TOKEN)  # the connection is open: the read leaves at once
        exchange.call_timeout = 0.2
        with pytest.raises(TransientError, match="balance: no answer within 0.2s"):
            await exchange.get_balance(TOKEN)
        with anyio.fail_after(30):  # a guard against a hang, not a measurement
            await server.closed.wait()  # closed by the cancel, while the exchange (and its pool) is still open
    assert server.closed_unanswered == 1 and server.count("GET", "/balance-allowance") == 1


async def test_a_callers_cancel_ends_a_hung_read_at_once(serving) -> None:  # noqa: ANN001
    server = await serving(routes(balance_allowance=None))
    async with adapter(server.host, call_timeout=3600.0) as exchange:
        async with anyio.create_task_group() as tg:
            tg.start_soon(exchange.get_balance, TOKEN)
            await server.got.wait()
            tg.cancel_scope.cancel()  # with a worker thread, the read would go on in the thread
        with anyio.fail_after(30):  # a guard against a hang, not a measurement
            await server.closed.wait()
    assert server.closed_unanswered == 1


async def test_a_post_cancelled_after_sending_is_unknown_and_never_sent_again(serving) -> None:  # noqa: ANN001
    server = await serving(routes(order=None))
    async with adapter(server.host) as exchange:
        await exchange.warm_up(TOKEN)
        exchange.call_timeout = 0.2  # for the post alone: it never gets an answer
        with pytest.raises(UnknownOutcome, match="no answer within 0.2s; it may have executed"):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
        with pytest.raises(PermitError, match="already used; nothing sent"):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
        lookup = await exchange.lookup_sell(permit())
    assert server.count("POST", "/order") == 1
    assert lookup.status.name != "PENDING"  # the request is out of our hands: the horizon runs from now


async def test_a_post_whose_connection_is_refused_before_any_byte_is_not_sent(serving) -> None:  # noqa: ANN001
    server = await serving(routes())
    async with adapter(server.host) as exchange:
        await exchange.warm_up(TOKEN)
        await exchange.prepare_sell(permit(), Decimal("0.55"))
        assert server.listener is not None
        await server.listener.aclose()
        await exchange.transport.aclose()  # the next request must connect anew, and is refused
        with pytest.raises(TransientError, match="127.0.0.1:\\d+: connection refused; nothing sent"):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
        with pytest.raises(TransientError, match="balance: cannot reach http://127.0.0.1:\\d+: connection refused"):
            await exchange.get_balance(TOKEN)


@pytest.mark.parametrize(("raised", "expected", "words"), [
    (httpx.ConnectTimeout("connect"), TransientError, "timed out; nothing sent"),
    (httpx.ConnectError("refused"), TransientError, "nothing sent"),
    (httpx.ReadTimeout("read"), UnknownOutcome, "may have executed"),
    (httpx.WriteError("write"), UnknownOutcome, "may have executed"),
    (httpx.RemoteProtocolError("closed"), UnknownOutcome, "may have executed"),
])
async def test_only_a_connect_failure_proves_a_post_was_not_sent(
        serving, monkeypatch: pytest.MonkeyPatch, raised: Exception, expected: type, words: str) -> None:  # noqa: ANN001
    server = await serving(routes())
    async with adapter(server.host) as exchange:
        await exchange.prepare_sell(permit(), Decimal("0.55"))

        async def fail(*args: object, **kwargs: object) -> None:
            raise raised

        monkeypatch.setattr(httpx.AsyncClient, "send", fail)
        with pytest.raises(expected, match=words):
            await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)


async def test_a_connection_cut_after_the_post_left_is_unknown() -> None:
    with FakeClob() as clob:
        clob.add_market(TOKEN)
        clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
        clob.set_balance(TOKEN, Decimal("10"))
        async with PolymarketExchange(clob.client()) as exchange:
            clob.lose_next_response("/order")
            with pytest.raises(UnknownOutcome, match="connection lost without an answer"):
                await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
        assert clob.count("POST", "/order") == 1 and clob.chain_balance(TOKEN) == 0


# -- what every answer teaches the rate limiter ----------------------------------------------------

async def test_the_headers_of_every_answer_reach_the_rate_limiter(serving) -> None:  # noqa: ANN001
    matched = {"success": True, "errorMsg": "", "status": "matched", "makingAmount": "10", "takingAmount": "5.5",
               "tradeIDs": [], "transactionsHashes": ["0x1"]}
    seen: list[tuple[Family, int | None, str | None]] = []
    order_ids: list[str] = []

    def answer(method: str, path: str) -> Reply:
        if path == "/order":
            return 200, json.dumps({**matched, "orderID": order_ids[0]}).encode()
        return (500, b'{"error":"boom"}') if path == "/balance-allowance/update" else routes()(method, path)

    server = await serving(answer)
    async with adapter(server.host) as exchange:
        exchange.limits.observe = lambda family, status, headers: seen.append(  # type: ignore[method-assign]
            (family, status, headers.get("x-seen")))
        await exchange.get_balance(TOKEN)
        with pytest.raises(TransientError, match="HTTP 500: boom"):
            await exchange.refresh_balance(TOKEN)
        order_ids.append(await exchange.prepare_sell(permit(), Decimal("0.55")))
        await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
    assert [status for _, status, _ in seen] == [200, 500, 200, 200, 200]
    assert [family for family, _, _ in seen] == [Family.BALANCE, Family.BALANCE_UPDATE, Family.BOOK, Family.GENERAL,
                                                 Family.ORDER]
    assert [int(n or 0) for _, _, n in seen] == list(range(1, len(server.requests) + 1))


# -- no threads, nothing on stderr, no secret in the HTTP stack's logs -----------------------------

async def test_no_thread_is_started_for_a_call(serving) -> None:  # noqa: ANN001
    server = await serving(routes())
    before = threading.active_count()
    counts: list[int] = []
    async with adapter(server.host, max_connections=8) as exchange:
        async def read() -> None:
            await exchange.get_balance(TOKEN)
            counts.append(threading.active_count())

        async with anyio.create_task_group() as tg:
            for _ in range(50):
                tg.start_soon(read)
    assert len(counts) == 50 and set(counts) == {before} and threading.active_count() == before
    assert server.count("GET", "/balance-allowance") == 50


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def records() -> Iterator[Records]:
    """Every stdlib record at DEBUG from the HTTP stack and the client (an application that turned them on)."""
    handler = Records()
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore", "hpack", "py_clob_client_v2")]
    levels = [each.level for each in loggers]
    for each in loggers:
        each.addHandler(handler)
        each.setLevel(logging.DEBUG)
    yield handler
    for each, level in zip(loggers, levels, strict=True):
        each.removeHandler(handler)
        each.setLevel(level)


async def test_a_failed_read_logs_nothing_through_stdlib_logging_of_the_client(serving, records) -> None:  # noqa: ANN001
    server = await serving(routes(balance_allowance=(500, b'{"error":"internal"}')))
    async with adapter(server.host) as exchange:
        with pytest.raises(TransientError, match="HTTP 500"):
            await exchange.get_balance(TOKEN)
    assert [r for r in records.records if r.name.startswith("py_clob_client_v2")] == []
    assert [r for r in records.records if r.levelno >= logging.WARNING] == []  # an app without logging: silent


async def test_debug_logs_of_httpx_and_httpcore_never_show_the_api_credentials(records) -> None:  # noqa: ANN001
    with FakeClob() as clob:
        clob.add_market(TOKEN)
        clob.set_bids(TOKEN, [(Decimal("0.60"), Decimal("100"))])
        clob.set_balance(TOKEN, Decimal("10"))
        derives = ClobClient(clob.host, clob.chain_id, key=clob.private_key)  # the credentials come over the wire
        async with PolymarketExchange(derives) as exchange:
            await exchange.get_balance(TOKEN)
            clob.fail_next(1, 500, path="/order", body={"error": "boom"})
            with pytest.raises(UnknownOutcome):
                await exchange.sell(permit(), Decimal("0.55"), deadline=FOREVER)
            await exchange.lookup_sell(permit())
        secrets = (clob.creds.api_key, clob.creds.api_secret, clob.creds.api_passphrase, clob.private_key[2:])
    lines = [f"{r.name}: {r.getMessage()}" for r in records.records]
    assert any(line.startswith("httpcore.http11: send_request_headers") for line in lines)
    assert any(line.startswith("httpx: HTTP Request: POST") for line in lines)
    for line in lines:
        for secret in secrets:
            assert secret not in line


# -- lifetime --------------------------------------------------------------------------------------

def test_one_exchange_serves_two_event_loops_one_after_the_other() -> None:
    with FakeClob() as clob:
        clob.add_market(TOKEN)
        clob.set_balance(TOKEN, Decimal("7"))
        exchange = PolymarketExchange(clob.client())

        async def read() -> object:
            return await exchange.get_balance(TOKEN)

        assert anyio.run(read) == anyio.run(read) == "7000000"
        anyio.run(exchange.aclose)


def test_max_connections_is_validated_and_max_threads_is_gone() -> None:
    with pytest.raises(InvalidValue, match="max_connections"):
        adapter("http://127.0.0.1:9", max_connections=0)
    with pytest.raises(TypeError):
        adapter("http://127.0.0.1:9", max_threads=32)
