"""The live adapter's secrets: held in `Secret`, unwrapped only at the call that needs them, shown nowhere.

Where a secret could surface, and what keeps it out:
- error messages about a POLYMARKET_* setting: `masked` replaces any value that looks like a key or secret
  (64 hex digits, with or without 0x; a base64 / base64url run of 24 characters or more), whichever
  variable it was pasted into;
- tracebacks with locals (loguru's `diagnose=True` prints the value of every name on each line of the
  traceback, attributes read with `inspect.getattr_static`): settings, credentials and the signer hold their
  secrets in `Secret` or behind properties, whose reprs mask them; the adapter re-raises the client's own
  exceptions as typed errors `from None`, so no frame of the client (whose locals hold raw headers) is shown;
- the HTTP stack's debug logs (httpx, httpcore, hpack for HTTP/2 header blocks, the client's own logger):
  `RedactSecrets`, a filter on those loggers, redacts the adapter's own secrets from their records, and
  the HTTP/2 header blocks that hpack logs encoded while the adapter's own calls run. The application's
  handlers are never touched.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from eth_account import Account
from py_clob_client_v2.clob_types import ApiCreds
from py_clob_client_v2.signer import Signer

REDACTED = "<redacted>"
_HEX_KEY = re.compile(r"(?<![0-9A-Za-z])(?:0x)?[0-9a-fA-F]{64}(?![0-9A-Za-z])")
_BASE64_RUN = re.compile(r"[A-Za-z0-9+/_=-]{24,}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


def _secret_runs(text: str) -> Iterator[re.Match[str]]:
    yield from _HEX_KEY.finditer(text)
    for run in _BASE64_RUN.finditer(text):
        # Random base64 mixes digits and both cases; a long hostname or a word-like-name-with-dashes does
        # not, a token id is digits only, and an address is public.
        found = run.group()
        mixed = any(c.isdigit() for c in found) or (found.lower() != found and found.upper() != found)
        if mixed and any(c.isalpha() for c in found) and not _ADDRESS.fullmatch(found):
            yield run


def looks_secret(value: object) -> bool:
    """Whether the value holds something shaped like a key or a secret anywhere in it."""
    return isinstance(value, (str, bytes, Secret)) and next(_secret_runs(_text(value)), None) is not None


def masked(value: object) -> object:
    """The value as an error may show it: REDACTED when it looks like a key or secret, else the value (a
    Secret that does not look like one, such as a mistyped chain id, is shown as its text)."""
    if looks_secret(value):
        return REDACTED
    return value.reveal() if isinstance(value, Secret) else value


def mask_text(text: str) -> str:
    """The text with every key- or secret-shaped run replaced (for messages the client's exceptions carry)."""
    for run in sorted(_secret_runs(text), key=lambda match: match.start(), reverse=True):
        text = text[:run.start()] + REDACTED + text[run.end():]
    return text


def _text(value: str | bytes | Secret) -> str:
    if isinstance(value, Secret):
        return value.reveal()
    return value.decode("latin-1") if isinstance(value, bytes) else value


class Secret:
    """A secret string whose repr and str are REDACTED. `reveal()` at the last moment, inside the call."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"a Secret holds a str, not {type(value).__name__}")
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED})"

    def __str__(self) -> str:
        return REDACTED

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(self._value.encode(), other.reveal().encode())

    def __hash__(self) -> int:
        return hash((Secret, self._value))

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is not pickled: it would leave the process in clear")


def secret(value: str | Secret) -> Secret:
    return value if isinstance(value, Secret) else Secret(value)


class MaskedCreds(ApiCreds):  # type: ignore[misc]  # the client ships no type hints
    """The client's ApiCreds with a masked repr; its three values are properties over Secrets, so a traceback
    that names `creds.api_secret` shows a property object, never the value."""

    __slots__ = ("_key", "_secret", "_passphrase")

    def __init__(self, api_key: Secret, api_secret: Secret, api_passphrase: Secret) -> None:  # noqa: D107
        self._key, self._secret, self._passphrase = api_key, api_secret, api_passphrase

    @classmethod
    def of(cls, creds: Any) -> MaskedCreds:
        if isinstance(creds, MaskedCreds):
            return creds
        return cls(Secret(creds.api_key), Secret(creds.api_secret), Secret(creds.api_passphrase))

    @property
    def api_key(self) -> str:
        return self._key.reveal()

    @property
    def api_secret(self) -> str:
        return self._secret.reveal()

    @property
    def api_passphrase(self) -> str:
        return self._passphrase.reveal()

    def __repr__(self) -> str:
        return f"ApiCreds(api_key={REDACTED}, api_secret={REDACTED}, api_passphrase={REDACTED})"

    def secrets(self) -> tuple[Secret, ...]:
        return self._key, self._secret, self._passphrase


class MaskedSigner(Signer):  # type: ignore[misc]
    """The client's Signer with the private key behind a property over a Secret."""

    def __init__(self, private_key: Secret, chain_id: int) -> None:  # noqa: D107 - Signer's own, key wrapped
        self._key = private_key
        self.chain_id = chain_id
        self.account = Account.from_key(private_key.reveal())

    @property
    def private_key(self) -> str:
        return self._key.reveal()

    def secret(self) -> Secret:
        return self._key

    def __repr__(self) -> str:
        return f"Signer(address={self.address()!r}, private_key={REDACTED})"


class MaskedHeaders(dict[str, str]):
    """Request headers whose repr masks the L2 credentials (POLY_API_KEY, POLY_PASSPHRASE, POLY_SIGNATURE)."""

    def __repr__(self) -> str:
        return repr({k: (REDACTED if k.upper().startswith("POLY_") else v) for k, v in self.items()})


class MaskedBody(str):
    """A request body (it names our API key as the order's owner) whose repr does not show it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<request body, {len(self)} characters>"


# -- the HTTP stack's logs ------------------------------------------------------------------------

HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy",
                "httpcore.socks", "hpack.hpack", "hpack.table", "py_clob_client_v2.client",
                "py_clob_client_v2.http_helpers.helpers")
"""Every logger of the stack under the client (checked against the installed httpx, httpcore, hpack and
py-clob-client-v2): httpx logs the request line, httpcore its trace events, hpack the HTTP/2 header blocks
(names and values at DEBUG), the client its failed requests."""

_own_calls: ContextVar[int] = ContextVar("exitguard_own_http_calls", default=0)
"""How many of the adapter's own calls this task (or thread) is inside: a context variable, so that another
library's request on the same event loop, between two of ours, is not taken for one of ours."""


class RedactSecrets(logging.Filter):
    """Redacts the adapter's own secrets from the HTTP stack's records. A record that carries none of them is
    left as it is, except hpack's encoded header blocks while one of the adapter's own calls runs: those are
    Huffman-coded, so no search finds the secret in them, and they carry the L2 headers."""

    def __init__(self) -> None:
        super().__init__("exitguard.secrets")
        self._secrets: list[Secret] = []
        self._lock = threading.Lock()

    def remember(self, *secrets: Secret) -> None:
        with self._lock:
            self._secrets.extend(s for s in secrets if s not in self._secrets and len(s.reveal()) >= 8)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        hidden = message
        for each in list(self._secrets):
            hidden = hidden.replace(each.reveal(), REDACTED)
        if record.name.startswith("hpack.") and _own_calls.get() and "header block" in hidden:
            hidden = "hpack: HTTP/2 header block of an exitguard request (redacted: it carries API credentials)"
        if hidden != message:
            record.msg, record.args = hidden, ()
        return True

    def __repr__(self) -> str:
        return f"RedactSecrets({len(self._secrets)} secrets)"


REDACTION = RedactSecrets()
"""One filter for every adapter in the process (the client's HTTP client is module-global too)."""


def redact_http_logs(*secrets: Secret) -> None:
    """Put REDACTION on the HTTP stack's loggers (once) and teach it these secrets."""
    REDACTION.remember(*secrets)
    for name in HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if REDACTION not in logger.filters:
            logger.addFilter(REDACTION)


@contextmanager
def own_calls() -> Iterator[None]:
    """Marks the block as one of the adapter's own calls (the transport's requests; check.py's client calls)."""
    token = _own_calls.set(_own_calls.get() + 1)
    try:
        yield
    finally:
        _own_calls.reset(token)


def secure_client(client: Any) -> None:
    """Hold the client's key and credentials masked (MaskedSigner, MaskedCreds: same values, masked reprs,
    no secret readable as an attribute by a traceback's locals) and teach the log filter its secrets. Run on
    every client the adapter uses, and again after credentials are derived."""
    if client.signer is not None and not isinstance(client.signer, MaskedSigner):
        client.signer = client.builder.signer = MaskedSigner(Secret(client.signer.private_key), client.chain_id)
    if client.creds is not None and not isinstance(client.creds, MaskedCreds):
        client.set_api_creds(MaskedCreds.of(client.creds))
    known = [] if client.creds is None else list(client.creds.secrets())
    if isinstance(client.signer, MaskedSigner):
        key = client.signer.secret()
        known += [key, Secret(key.reveal().removeprefix("0x"))]
    redact_http_logs(*known)
