"""Live connection settings, read from the environment. Secrets never leave this object in text form:
its repr masks them, and an error about a malformed secret names the variable, never the value."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

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
}
"""Setting -> environment variable."""

REDACTED = "<redacted>"
_PRIVATE_KEY = re.compile(r"(0x)?[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")


@dataclass(frozen=True, slots=True)
class PolymarketSettings:
    """What the adapter needs to trade. API credentials are all three or none (then derived from the key)."""

    private_key: str = field(repr=False)
    host: str = DEFAULT_HOST
    chain_id: int = POLYGON
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    api_passphrase: str | None = field(default=None, repr=False)
    signature_type: int = 0
    funder: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, str) or not _PRIVATE_KEY.fullmatch(self.private_key):
            raise InvalidValue(ENV["private_key"], REDACTED, "must be 64 hex digits (optionally 0x-prefixed)")
        if not isinstance(self.host, str) or not self.host.startswith(("https://", "http://")):
            raise InvalidValue(ENV["host"], self.host, "must be an http(s) URL")
        if self.chain_id not in (POLYGON, AMOY):
            raise InvalidValue(ENV["chain_id"], self.chain_id, f"must be {POLYGON} (Polygon) or {AMOY} (Amoy)")
        creds = (self.api_key, self.api_secret, self.api_passphrase)
        if any(c is not None for c in creds) and not all(isinstance(c, str) and c for c in creds):
            missing = [ENV[name] for name, value in zip(("api_key", "api_secret", "api_passphrase"), creds,
                                                        strict=True) if not value]
            raise InvalidValue(", ".join(missing), None,
                               "API credentials are all three or none (none: derived from the private key)")
        if self.signature_type not in SIGNATURE_TYPES:
            raise InvalidValue(ENV["signature_type"], self.signature_type,
                               f"must be one of {', '.join(f'{k} ({v})' for k, v in SIGNATURE_TYPES.items())}")
        if self.funder is not None and not _ADDRESS.fullmatch(self.funder):
            raise InvalidValue(ENV["funder"], self.funder, "must be a 0x-prefixed 20-byte address")
        if self.signature_type != 0 and self.funder is None:
            raise InvalidValue(ENV["funder"], None,
                               f"required with signature type {self.signature_type}: the wallet holding the shares")

    @property
    def has_api_creds(self) -> bool:
        return self.api_key is not None

    def __repr__(self) -> str:
        return (f"PolymarketSettings(host={self.host!r}, chain_id={self.chain_id}, private_key={REDACTED}, "
                f"api_key={self.api_key!r}, api_secret={REDACTED if self.api_secret else None}, "
                f"api_passphrase={REDACTED if self.api_passphrase else None}, "
                f"signature_type={self.signature_type}, funder={self.funder!r})")

    __str__ = __repr__

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PolymarketSettings:
        """Read the POLYMARKET_* variables. Raises InvalidValue naming the variable that is missing or bad."""
        env = os.environ if environ is None else environ

        def text(name: str) -> str | None:
            value = env.get(ENV[name])
            return value.strip() or None if value is not None else None

        def number(name: str, default: int) -> int:
            raw = text(name)
            if raw is None:
                return default
            try:
                return int(raw)
            except ValueError:
                raise InvalidValue(ENV[name], raw, "must be an integer") from None

        key = text("private_key")
        if key is None:
            raise InvalidValue(ENV["private_key"], None, "is not set; live trading needs the wallet's signing key")
        return cls(
            private_key=key,
            host=(text("host") or DEFAULT_HOST).rstrip("/"),
            chain_id=number("chain_id", POLYGON),
            api_key=text("api_key"),
            api_secret=text("api_secret"),
            api_passphrase=text("api_passphrase"),
            signature_type=number("signature_type", 0),
            funder=text("funder"),
        )
