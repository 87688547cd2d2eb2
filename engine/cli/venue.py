"""The exchange a command runs against: the paper exchange, or Polymarket with the POLYMARKET_* settings,
and the journal it keeps. Shared by `exit`, `reconcile` and `check`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from exitguard.errors import ExitRefused, JournalError, PositionConflict, UnknownPosition, WalletInUse
from exitguard.exchange.port import Exchange
from exitguard.states import InvalidValue

if TYPE_CHECKING:
    from exitguard.exchange.polymarket import PolymarketExchange, PolymarketSettings

BAD_INPUT: tuple[type[Exception], ...] = (InvalidValue, JournalError, PositionConflict, UnknownPosition,
                                          ExitRefused, WalletInUse)
"""What an operator typed (or the file, journal or settings named) cannot be used: one line on stderr,
exit code 2, nothing sent. Each of these errors names the field, file or key."""

INTERRUPTED = 130
"""The shell's code for a command ended by SIGINT (128 + 2)."""


@dataclass(frozen=True)
class Venue:
    exchange: Exchange
    name: str
    """For messages: "the paper exchange", or the host, chain and address traded."""
    live: bool
    """Built here from the POLYMARKET_* settings: the command owns it and closes it (`closing`)."""

    @asynccontextmanager
    async def closing(self) -> AsyncIterator[Exchange]:
        """The exchange for one command's event loop; a live one's connections are closed when the block ends. An
        exchange the caller passed in is the caller's to close."""
        try:
            yield self.exchange
        finally:
            close = getattr(self.exchange, "aclose", None)
            if self.live and close is not None:
                await close()


def live(environ: Mapping[str, str] | None, **options: object) -> tuple[PolymarketExchange, PolymarketSettings, str]:
    """The Polymarket adapter from the environment. Raises InvalidValue naming a missing or bad variable."""
    from exitguard.exchange.polymarket import PolymarketExchange, PolymarketSettings

    settings = PolymarketSettings.from_env(os.environ if environ is None else environ)
    exchange = PolymarketExchange.from_settings(settings, **options)
    return exchange, settings, f"{settings.host} (chain {settings.chain_id}) as {exchange.client.signer.address()}"


def live_venue(environ: Mapping[str, str] | None) -> Venue:
    exchange, _, name = live(environ)
    return Venue(exchange, name, live=True)


def existing_journal(path: Path) -> Path:
    """A journal the command must not create: a missing file is bad input (a typo would otherwise start an
    empty journal and report that it holds nothing)."""
    if not path.exists():
        raise JournalError(path, "no such file")
    if not path.is_file():
        raise JournalError(path, "is not a file")
    return path
