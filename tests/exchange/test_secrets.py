"""Issue 11, C.16: the private key, the API secret and the passphrase never reach an error, a traceback with
locals (loguru's diagnose), or the HTTP stack's debug logs, wherever they were pasted."""

from __future__ import annotations

import base64
import io
import logging
import math
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fakeclob import FakeClob
from loguru import logger
from py_clob_client_v2.client import ClobClient

from exitguard import ExitEngine, ExitOutcome, Position, UnknownOutcome
from exitguard.exchange.polymarket.secrets import (
    HTTP_LOGGERS,
    REDACTED,
    MaskedCreds,
    Secret,
    mask_text,
    own_calls,
    secure_client,
)
from exitguard.exchange.port import SellDeadline
from exitguard.polymarket import ENV, PolymarketExchange, PolymarketSettings
from exitguard.states import InvalidValue, SellPermit
from exitguard.telemetry.logs import records_enabled

TOKEN = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
KEY = "0x" + "4c7a9e" * 10 + "d1f3"
PASSPHRASE = "9f3b" * 16
SECRET = base64.urlsafe_b64encode(bytes(range(7, 39))).decode()  # 44 characters, as the CLOB issues them
API_KEY = "1b2c3d4e-5f60-4718-9a2b-3c4d5e6f7a8b"
VALID = {"POLYMARKET_PRIVATE_KEY": KEY, "POLYMARKET_API_KEY": API_KEY, "POLYMARKET_API_SECRET": SECRET,
         "POLYMARKET_API_PASSPHRASE": PASSPHRASE}
PASTED = {"key": KEY, "key-without-0x": KEY[2:], "passphrase": PASSPHRASE, "secret": SECRET,
          "secret-base64": base64.b64encode(bytes(range(200, 232))).decode()}


def never_shown(text: str, *secrets: str) -> None:
    for secret in secrets or (KEY, KEY[2:], PASSPHRASE, SECRET, *PASTED.values()):
        assert secret not in text, f"a secret leaked into: {text[:300]}"


@pytest.fixture
def diagnosed() -> Iterator[io.StringIO]:
    """A loguru sink as an application might add it: tracebacks with every local's value, and exitguard's
    records turned on (they are off until the application asks)."""
    was_enabled = records_enabled()
    logger.enable("exitguard")
    out = io.StringIO()
    handler = logger.add(out, level="DEBUG", diagnose=True, backtrace=True, colorize=False)
    yield out
    logger.remove(handler)
    if not was_enabled:
        logger.disable("exitguard")


@pytest.mark.parametrize("variable", list(ENV.values()))
@pytest.mark.parametrize("pasted", list(PASTED))
def test_a_key_or_secret_pasted_into_any_polymarket_variable_is_never_echoed(
    variable: str, pasted: str, diagnosed: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ENV.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in {**VALID, variable: PASTED[pasted]}.items():
        monkeypatch.setenv(name, value)
    try:
        settings = PolymarketSettings.from_env()  # read from os.environ: no frame of the test holds the values
    except InvalidValue as err:
        logger.exception("bad settings")
        assert variable in str(err) or variable in err.field
        for text in (str(err), repr(err), repr(err.value), repr(err.args), diagnosed.getvalue()):
            never_shown(text, PASTED[pasted], *PASTED.values())
    else:  # a place where a secret belongs (the credentials): accepted, and still never shown
        for text in (repr(settings), str(settings), f"{settings}"):
            never_shown(text, PASTED[pasted], KEY, SECRET, PASSPHRASE)


def test_settings_hold_the_key_and_credentials_as_secrets_unwrapped_only_on_purpose() -> None:
    settings = PolymarketSettings.from_env(VALID)
    assert isinstance(settings.private_key, Secret) and settings.private_key.reveal() == KEY
    assert settings.api_secret is not None and settings.api_secret.reveal() == SECRET
    assert str(settings.api_passphrase) == REDACTED and REDACTED in repr(settings)
    with pytest.raises(AttributeError):
        settings.host = "https://elsewhere"  # type: ignore[misc]


def test_a_readable_mistake_is_still_shown_so_the_operator_can_fix_it() -> None:
    with pytest.raises(InvalidValue) as caught:
        PolymarketSettings.from_env({**VALID, "POLYMARKET_HOST": "clob.polymarket.com"})
    assert "'clob.polymarket.com'" in str(caught.value)
    assert mask_text(f"token {TOKEN} of 0x{'ab' * 20}") == f"token {TOKEN} of 0x{'ab' * 20}"


# -- tracebacks with locals ------------------------------------------------------------------------

@pytest.fixture
def clob() -> Iterator[FakeClob]:
    with FakeClob() as fake:
        fake.stock(TOKEN)
        yield fake


def clob_secrets(clob: FakeClob) -> tuple[str, ...]:
    return (clob.private_key, clob.private_key.removeprefix("0x"), clob.creds.api_secret, clob.creds.api_passphrase,
            clob.creds.api_key)


def permit() -> SellPermit:
    return SellPermit(position_key="p1", token_id=TOKEN, shares=10_000_000, verified_balance=10_000_000,
                      verified_at=0.0, attempt_id="a1")


@pytest.mark.anyio
async def test_loguru_diagnose_on_a_signing_failure_in_the_order_path_never_shows_a_secret(
    clob: FakeClob, diagnosed: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = PolymarketExchange(clob.client())
    await exchange.warm_up(TOKEN)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise ValueError(f"cannot sign with {clob.private_key}")  # a library that quotes what it was given

    monkeypatch.setattr("eth_account.Account.sign_message", broken)
    with pytest.raises(Exception) as caught:
        await exchange.prepare_sell(permit(), Decimal("0.55"))
    logger.opt(exception=caught.value).error("sell failed")

    text = diagnosed.getvalue()
    assert "sell failed" in text and "signing the order" in text
    never_shown(text, *clob_secrets(clob))
    never_shown(repr(exchange.client.creds) + repr(exchange.client.signer), *clob_secrets(clob))


@pytest.mark.anyio
async def test_loguru_diagnose_on_a_transport_failure_in_the_order_path_never_shows_a_secret(
    clob: FakeClob, diagnosed: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = PolymarketExchange(clob.client())
    await exchange.warm_up(TOKEN)

    def cut(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the connection broke mid-request")

    monkeypatch.setattr(httpx.AsyncClient, "send", cut)
    with pytest.raises(UnknownOutcome) as caught:
        await exchange.sell(permit(), Decimal("0.55"), deadline=SellDeadline(math.inf, lambda: 0.0))
    logger.opt(exception=caught.value).error("post failed")
    await exchange.aclose()

    text = diagnosed.getvalue()
    assert "post failed" in text and "sell" in text
    never_shown(text, *clob_secrets(clob))


@pytest.mark.anyio
async def test_loguru_diagnose_through_the_frames_that_hold_the_l2_headers_never_shows_a_secret(
    clob: FakeClob, diagnosed: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange = PolymarketExchange(clob.client())
    await exchange.warm_up(TOKEN)
    checks: list[str] = []

    def check(self: SellDeadline, what: str) -> None:
        checks.append(what)
        if len(checks) == 2:  # the check right before the first byte, inside the request: its frames hold headers
            raise RuntimeError("a deadline clock that broke")

    monkeypatch.setattr(SellDeadline, "check", check)
    with pytest.raises(RuntimeError) as caught:
        await exchange.sell(permit(), Decimal("0.55"), deadline=SellDeadline(math.inf, lambda: 0.0))
    logger.opt(exception=caught.value).error("post failed")
    await exchange.aclose()

    text = diagnosed.getvalue()
    assert "post failed" in text and "headers" in text and "<request body" in text
    never_shown(text, *clob_secrets(clob))
    assert clob.count("POST", "/order") == 0


# -- the HTTP stack's debug logs -------------------------------------------------------------------

class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def debug_logs() -> Iterator[Captured]:
    captured = Captured()
    root = logging.getLogger()
    level = root.level
    root.addHandler(captured)
    root.setLevel(logging.DEBUG)
    yield captured
    root.removeHandler(captured)
    root.setLevel(level)


@pytest.mark.anyio
async def test_debug_logging_of_the_http_stack_during_a_live_exit_never_shows_a_secret(
    clob: FakeClob, debug_logs: Captured, diagnosed: io.StringIO
) -> None:
    clob.fail_next(1, 500, path="/order", body={"error": "boom"})  # the client logs a failed request's body
    derives = ClobClient(clob.host, clob.chain_id, key=clob.private_key)  # its credentials come over the wire
    async with ExitEngine(PolymarketExchange(derives), settlement_poll_interval=None) as engine:
        engine.track(Position(key="p1", token_id=TOKEN, shares=Decimal("10")))
        first = await engine.exit("p1", reason="tp", limit_price=Decimal("0.55"))
        second = await engine.reconcile("p1")
    assert first.outcome is ExitOutcome.UNKNOWN and second.outcome is not None

    names = {line.split(":")[0] for line in debug_logs.lines}
    assert {"httpx", "httpcore.http11"} <= names  # the stack really logged at DEBUG
    never_shown("\n".join(debug_logs.lines) + diagnosed.getvalue(), *clob_secrets(clob))


def test_hpack_header_blocks_of_the_adapters_own_requests_are_redacted_and_others_left_alone(
    clob: FakeClob, debug_logs: Captured
) -> None:
    from hpack import Encoder

    client = clob.client()
    secure_client(client)  # what the adapter does with every client it is given
    headers = [("poly_api_key", clob.creds.api_key), ("poly_passphrase", clob.creds.api_passphrase)]
    with own_calls():
        Encoder().encode(headers)
    ours = "\n".join(debug_logs.lines)
    assert "hpack" in ours
    never_shown(ours, *clob_secrets(clob))

    debug_logs.lines.clear()
    Encoder().encode([("x-other-library", "c0ffee-not-ours")])
    assert "c0ffee-not-ours" in "\n".join(debug_logs.lines)


def test_the_redaction_filter_sits_on_the_http_loggers_and_never_on_the_applications_handlers(
    clob: FakeClob,
) -> None:
    root_handlers = list(logging.getLogger().handlers)
    PolymarketExchange(clob.client())
    assert all(any(type(f).__name__ == "RedactSecrets" for f in logging.getLogger(n).filters) for n in HTTP_LOGGERS)
    assert logging.getLogger().handlers == root_handlers
    assert isinstance(PolymarketExchange(clob.client()).client.creds, MaskedCreds)
