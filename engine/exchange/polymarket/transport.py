"""The adapter's own HTTP: one `httpx.AsyncClient` per adapter, on the event loop, no worker threads.

What the client's synchronous helpers (py_clob_client_v2.http_helpers) could not give an exit:
- a deadline that ends the call: each request runs under its caller's cancel scope, and a cancelled request
  closes its connection instead of finishing in a thread nobody waits for;
- the answer's status and headers, whatever the status (the rate limiter reads `Poly-RateLimit-*` from them);
- a body parsed with a guard: `resp.json()` recurses once per level of nesting, and with py_ecc's raised
  recursion limit a body ~100,000 levels deep overflows the C stack (a segfault, not an exception). A body
  nested deeper than MAX_DEPTH (checked by a linear scan before json.loads), larger than MAX_BODY, or not UTF-8
  is unreadable;
- silence: the helpers log every non-200 at ERROR through stdlib logging, which reaches stderr in an
  application that configured nothing. This module logs nothing itself.

Whether a request may have left is proven from httpcore's trace events, not guessed: the request's bytes start
to leave at `send_request_headers`, and only a connect failure (ConnectError / ConnectTimeout) that came before
that event is a definite "not sent".
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import httpx

from exitguard.errors import TransientError
from exitguard.exchange.polymarket.reads import read_error, transport_cause
from exitguard.exchange.polymarket.secrets import own_calls

MAX_DEPTH = 64
"""Deepest nesting of a readable answer. The CLOB's deepest documented answer (a trade with its maker orders in
a page) nests 4 levels."""
MAX_BODY = 8 * 1024 * 1024
"""Largest readable answer in bytes, decoded (a gzip bomb is cut here too). A full trade page or a deep order book
is well under 1 MiB."""
CLIENT_HEADERS = {"User-Agent": "py_clob_client_v2", "Accept": "*/*", "Connection": "keep-alive",
                  "Content-Type": "application/json"}
"""The headers py-clob-client-v2 1.2.1 puts on every request (http_helpers.helpers._overload_headers); a GET
also asks for gzip."""
_SENDING = "send_request_headers.started"
"""httpcore's trace event (http11.* and http2.*) emitted right before the request's first byte is written."""
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer, whatever its status."""

    status: int
    headers: Mapping[str, str]
    body: object
    """Parsed JSON; the text when the body is UTF-8 but not JSON (as the client hands it over: "service not ready",
    an HTML page); None when unreadable."""
    unreadable: str | None = None
    """Why the body could not be read (too deep, too large, not UTF-8, cut off); None when it was."""

    @property
    def readable_body(self) -> object:
        """The body, or a text saying why it is unreadable (never a JSON object, so never a parsed answer)."""
        return self.body if self.unreadable is None else f"unreadable answer ({self.unreadable})"


@dataclass(frozen=True, slots=True)
class NoAnswer:
    """No HTTP answer came: the connection failed, or the deadline passed."""

    cause: str
    """For an operator: the operating system's words ("connection refused"), "timed out", or the transport
    error's name. Never the exception's text (it may quote a URL with a query)."""
    maybe_sent: bool
    """False only when the request provably never started to leave (a connect failure before any byte)."""
    timed_out: bool = False


def within_depth(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether no array or object in `text` nests deeper than `limit`. Linear: strings are cut out by a regular
    expression that cannot backtrack (its alternatives start on different characters), and the brackets left are
    counted once. Unbalanced text may be misjudged either way; json.loads refuses it after."""
    if text.count("[") + text.count("{") <= limit:
        return True
    depth = 0
    for char in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > limit:
                return False
        else:
            depth -= 1
    return True


def parse_body(content: bytes) -> tuple[object, str | None]:
    """(body, None) or (None, why it is unreadable). See `Answer.body`."""
    if len(content) > MAX_BODY:
        return None, f"larger than {MAX_BODY} bytes"
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8"
    if not within_depth(text):
        return None, f"nested deeper than {MAX_DEPTH} levels"
    try:
        return json.loads(text), None
    except (ValueError, RecursionError):
        return text, None


class Transport:
    """Requests to one host over one keep-alive connection pool. The `httpx.AsyncClient` is made on first use
    inside the running event loop (a pool belongs to the loop it was made in: used from another loop, a new one
    is made) and closed by `aclose`."""

    def __init__(self, host: str, *, max_connections: int, timeout: float) -> None:
        self.host = host.rstrip("/")
        self.max_connections = max_connections
        self.timeout = timeout
        self.http2 = importlib.util.find_spec("h2") is not None
        """HTTP/2 where the `h2` package is installed (py-clob-client-v2 depends on httpx[http2]); else 1.1."""
        self._client: httpx.AsyncClient | None = None
        self._loop: object = None

    def _current(self) -> httpx.AsyncClient:
        loop = anyio.lowlevel.current_token().native_token
        if self._client is None or self._loop is not loop:
            # The caller's cancel scope is the deadline; httpx's own timeouts are a backstop, except that a connect
            # which takes half of it fails first as a ConnectTimeout: provably nothing sent.
            self._client = httpx.AsyncClient(
                http2=self.http2, timeout=httpx.Timeout(2 * self.timeout, connect=self.timeout / 2),
                limits=httpx.Limits(max_connections=self.max_connections,
                                    max_keepalive_connections=self.max_connections))
            self._loop = loop
        return self._client

    async def aclose(self) -> None:
        client, loop, self._client, self._loop = self._client, self._loop, None, None
        # A pool made in another event loop cannot be closed from this one (its sockets belong to that loop, which
        # may be closed by now): it is dropped, and its sockets close when collected.
        if client is not None and loop is anyio.lowlevel.current_token().native_token:
            await client.aclose()

    async def request(self, method: str, path: str, *, headers: Mapping[str, str],
                      params: Mapping[str, str] | None = None, content: str | None = None,
                      before_send: Callable[[], None] | None = None) -> Answer | NoAnswer:
        """One request, never retried. `before_send` runs right before the first byte is written (after the wait
        for a connection); what it raises is raised here, and nothing was sent. Cancellation passes through;
        the connection of a cancelled request is closed, never reused."""
        sending = False
        refused: BaseException | None = None

        async def trace(event: str, info: Mapping[str, Any]) -> None:
            nonlocal sending, refused
            if event.endswith(_SENDING):
                if before_send is not None:
                    try:
                        before_send()
                    except BaseException as err:
                        refused = err
                        raise
                sending = True

        client = self._current()
        wire_headers = {**CLIENT_HEADERS, **({"Accept-Encoding": "gzip"} if method == "GET" else {}), **headers}
        request = client.build_request(method, f"{self.host}{path}", headers=wire_headers, params=params,
                                       content=content, extensions={"trace": trace})
        try:
            with own_calls():
                response = await client.send(request, stream=True)
                try:
                    content_read, cut = await _read_capped(response)
                finally:
                    await response.aclose()
        except Exception as err:  # noqa: BLE001 - whatever broke, the request got no answer
            if refused is not None:
                raise refused.with_traceback(None) from None  # without httpx's frames (their locals hold headers)
            before_any_byte = not sending and isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout))
            return NoAnswer(_cause(err), maybe_sent=not before_any_byte,
                            timed_out=isinstance(err, httpx.TimeoutException))
        if cut is not None:
            return Answer(response.status_code, response.headers, None, cut)
        body, unreadable = parse_body(content_read)
        return Answer(response.status_code, response.headers, body, unreadable)


def read_body(what: str, answer: Answer | NoAnswer, *, host: str, timeout: float) -> object:
    """The body of a read's answer; TransientError for anything else (a read changes nothing on the exchange: when
    it fails, that is all). The messages name the host and the system's reason, or the deadline that passed."""
    if isinstance(answer, NoAnswer):
        if answer.timed_out:
            raise TransientError(f"{what}: no answer within {timeout}s")
        raise TransientError(f"{what}: cannot reach {host}: {answer.cause}")
    if answer.status != 200:
        raise read_error(what, answer.status, answer.readable_body)
    if answer.unreadable is not None:
        raise TransientError(f"{what}: unreadable answer ({answer.unreadable})")
    return answer.body


async def _read_capped(response: httpx.Response) -> tuple[bytes, str | None]:
    """The decoded body up to MAX_BODY; (what was read, why it stopped) when it was cut off or too large."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > MAX_BODY:
                return b"", f"larger than {MAX_BODY} bytes"
            chunks.append(chunk)
    except httpx.HTTPError as err:  # the status and headers came; the body broke off (or did not decode)
        return b"", f"body cut off: {_cause(err)}"
    return b"".join(chunks), None


def _cause(err: BaseException) -> str:
    if isinstance(err, httpx.TimeoutException):
        return "timed out"
    return transport_cause(err, start=err)
