"""Live connection settings, read from the environment. Secrets never leave this object in text form: the
private key and the API credentials are held as `Secret` (repr and str masked, unwrapped by the adapter at
the call that needs them), and an error about any POLYMARKET_* variable shows its value only when that value
does not look like a key or secret: a private key pasted into POLYMARKET_HOST is not echoed either."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, NoReturn

from exitguard.exchange.polymarket.channel import AUTO
from exitguard.exchange.polymarket.ratelimit import SIGNER_TIERS, Tier
from exitguard.exchange.polymarket.secrets import REDACTED, Secret, masked, secret
from exitguard.states import InvalidValue

DEFAULT_HOST = "https://clob.polymarket.com"
POLYGON = 137
AMOY = 80002
SIGNATURE_TYPES = {0: "EOA", 1: "POLY_PROXY", 2: "POLY_GNOSIS_SAFE", 3: "POLY_1271"}

ENV = {
    "host": "POLYMARKET_HOST",
    "chain_id": "POLYMARKET_CHAIN_ID",
    "private_key": "POLYMARKET_PRIVATE_KEY",
    "api_key": "POLYMARKET_API_KEY",
    "api_secret": "POLYMARKET_API_SECRET",
    "api_passphrase": "POLYMARKET_API_PASSPHRASE",
    "signature_type": "POLYMARKET_SIGNATURE_TYPE",
    "funder": "POLYMARKET_FUNDER",
    "rate_tier": "POLYMARKET_RATE_TIER",
    "channel_url": "POLYMARKET_USER_CHANNEL_URL",
}
"""Setting -> environment variable."""

_PRIVATE_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_NUMBER = re.compile(r"[0-9]{1,9}")
_CREDS = ("api_key", "api_secret", "api_passphrase")


def _refuse(name: str, value: object, why: str) -> NoReturn:
    """Raise InvalidValue naming the variable. Callers pass a Secret or a masked value, never raw text: a
    traceback with locals (loguru's diagnose) prints every name on the raising line."""
    shown = masked(value)
    raise InvalidValue(ENV[name], shown, why)


class PolymarketSettings:
    """What the adapter needs to trade. API credentials are all three or none (then derived from the key).

    Text settings may be given as str or Secret; the key and the credentials are kept as Secret."""

    __slots__ = ("private_key", "host", "chain_id", "api_key", "api_secret", "api_passphrase", "signature_type",
                 "funder", "rate_tier", "channel_url")
    private_key: Secret
    host: str
    chain_id: int
    api_key: Secret | None
    api_secret: Secret | None
    api_passphrase: Secret | None
    signature_type: int
    funder: str | None
    rate_tier: Tier | None
    """The signer's per-signer rate-limit tier, when set: it replaces the warm-up's read of the tier endpoint and
    caps what `Poly-RateLimit-Tier` headers may raise. None: read from the exchange (Standard until read)."""
    channel_url: str | None
    """The user channel followed for fills and settlement (exitguard.exchange.polymarket.channel): a ws(s) URL; None:
    off; "auto" (the default): the production channel when `host` is the production host, else off."""

    def __init__(self, private_key: str | Secret, host: str | Secret = DEFAULT_HOST, chain_id: int = POLYGON,
                 api_key: str | Secret | None = None, api_secret: str | Secret | None = None,
                 api_passphrase: str | Secret | None = None, signature_type: int = 0,
                 funder: str | Secret | None = None, rate_tier: str | Tier | Secret | None = None,
                 channel_url: str | Secret | None = AUTO) -> None:
        key = private_key if isinstance(private_key, Secret) else Secret(private_key) \
            if isinstance(private_key, str) else None
        if key is None or not _PRIVATE_KEY.fullmatch(key.reveal()):
            _refuse("private_key", REDACTED, "must be 64 hex digits (optionally 0x-prefixed)")
        url = secret(host) if isinstance(host, (str, Secret)) else Secret(f"<{type(host).__name__}>")
        if not url.reveal().startswith(("https://", "http://")):
            _refuse("host", url, "must be an http(s) URL")
        if _PRIVATE_KEY.search(url.reveal()):
            _refuse("host", REDACTED, "holds 64 hex digits: a private key pasted into the wrong variable?")
        if isinstance(chain_id, bool) or chain_id not in (POLYGON, AMOY):
            _refuse("chain_id", chain_id, f"must be {POLYGON} (Polygon) or {AMOY} (Amoy)")
        creds = tuple(secret(c) if isinstance(c, (str, Secret)) else c for c in (api_key, api_secret, api_passphrase))
        if any(c is not None for c in creds) and not all(isinstance(c, Secret) and c.reveal() for c in creds):
            missing = [ENV[name] for name, value in zip(_CREDS, creds, strict=True)
                       if not isinstance(value, Secret) or not value.reveal()]
            raise InvalidValue(", ".join(missing), None,
                               "API credentials are all three or none (none: derived from the private key)")
        if isinstance(signature_type, bool) or signature_type not in SIGNATURE_TYPES:
            _refuse("signature_type", signature_type,
                    f"must be one of {', '.join(f'{k} ({v})' for k, v in SIGNATURE_TYPES.items())}")
        wallet = secret(funder) if isinstance(funder, (str, Secret)) else funder
        if wallet is not None and (not isinstance(wallet, Secret) or not _ADDRESS.fullmatch(wallet.reveal())):
            _refuse("funder", wallet, "must be a 0x-prefixed 20-byte address")
        if signature_type != 0 and wallet is None:
            _refuse("funder", None, f"required with signature type {signature_type}: the wallet holding the shares")
        tier = None if rate_tier is None else Tier.parse(
            rate_tier.reveal() if isinstance(rate_tier, Secret) else rate_tier)
        if rate_tier is not None and tier is None:
            _refuse("rate_tier", rate_tier, f"must be one of {', '.join(SIGNER_TIERS)} (the tier's name, any case)")
        channel = None if channel_url is None else secret(channel_url) if isinstance(channel_url, (str, Secret)) \
            else Secret(f"<{type(channel_url).__name__}>")
        if channel is not None and channel.reveal() != AUTO and (
                not channel.reveal().startswith(("wss://", "ws://")) or _PRIVATE_KEY.search(channel.reveal())):
            _refuse("channel_url", channel, f"must be a ws(s):// URL, {AUTO!r} or unset")
        for name, value in (("private_key", key), ("host", url.reveal()), ("chain_id", chain_id),
                            ("api_key", creds[0]), ("api_secret", creds[1]), ("api_passphrase", creds[2]),
                            ("signature_type", signature_type),
                            ("funder", None if wallet is None else wallet.reveal()), ("rate_tier", tier),
                            ("channel_url", None if channel is None else channel.reveal())):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"PolymarketSettings is immutable; build new settings instead of setting {name}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolymarketSettings) and all(
            getattr(self, name) == getattr(other, name) for name in PolymarketSettings.__slots__)

    __hash__ = None  # type: ignore[assignment]

    @property
    def has_api_creds(self) -> bool:
        return self.api_key is not None

    def __repr__(self) -> str:
        return (f"PolymarketSettings(host={masked(self.host)!r}, chain_id={self.chain_id}, private_key={REDACTED}, "
                f"api_key={REDACTED if self.api_key else None}, api_secret={REDACTED if self.api_secret else None}, "
                f"api_passphrase={REDACTED if self.api_passphrase else None}, "
                f"signature_type={self.signature_type}, funder={self.funder!r}, "
                f"rate_tier={self.rate_tier and str(self.rate_tier)!r}, channel_url={masked(self.channel_url)!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PolymarketSettings:
        """Read the POLYMARKET_* variables. Raises InvalidValue naming the variable that is missing or bad.

        Every value is wrapped in a Secret as it is read: whichever variable a key was pasted into, no frame
        of this function holds it in clear."""
        env = os.environ if environ is None else environ

        def text(name: str) -> Secret | None:
            value = env.get(ENV[name])
            return Secret(value.strip()) if isinstance(value, str) and value.strip() else None

        def number(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            if not _NUMBER.fullmatch(raw.reveal()):
                _refuse(name, raw, "must be an integer")
            return int(raw.reveal())

        key = text("private_key")
        if key is None:
            raise InvalidValue(ENV["private_key"], None, "is not set; live trading needs the wallet's signing key")
        host = text("host")
        return cls(
            private_key=key,
            host=DEFAULT_HOST if host is None else Secret(host.reveal().rstrip("/")),
            chain_id=number("chain_id", POLYGON),
            api_key=text("api_key"),
            api_secret=text("api_secret"),
            api_passphrase=text("api_passphrase"),
            signature_type=number("signature_type", 0),
            funder=text("funder"),
            rate_tier=text("rate_tier"),
            channel_url=None if (url := text("channel_url")) is not None and url.reveal().lower() == "off"
            else AUTO if url is None else url,
        )
