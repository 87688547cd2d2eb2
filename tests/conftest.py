"""Shared fixtures. Async tests use anyio's pytest plugin on asyncio (`@pytest.mark.anyio`).

Also the guard that keeps the source folders from being imported under their own names: see
`SourceFoldersAreNotPackages`.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Iterator, Sequence
from decimal import Decimal
from types import ModuleType
from typing import Any

import pytest
from loguru import logger

from exitguard import ManualClock
from exitguard.exchange.paper import PaperExchange
from exitguard.telemetry.logs import records_enabled

SOURCE_FOLDERS = {"engine": "exitguard", "states": "exitguard.states"}
"""Folders at the repository root that install under another name (pyproject.toml's package-dir)."""


class SourceFoldersAreNotPackages(importlib.abc.MetaPathFinder):
    """Refuses `import engine` / `import states` (and their submodules).

    `python -m pytest` at the repository root puts the root on sys.path, so a stray `import engine.exits`
    would load a second copy of the code beside the installed `exitguard` one, with its own classes and
    module state, and work here while failing for every user of the wheel."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> None:
        top, _, rest = fullname.partition(".")
        if top in SOURCE_FOLDERS:
            instead = ".".join(filter(None, [SOURCE_FOLDERS[top], rest]))
            raise ImportError(f"import {instead} instead of {fullname}: the {top}/ folder installs as "
                              f"{SOURCE_FOLDERS[top]}, and code imports only exitguard.*", name=fullname)
        return None


sys.meta_path.insert(0, SourceFoldersAreNotPackages())


@pytest.fixture(scope="session", autouse=True)
def wallet_locks_of_this_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Wallet locks (exitguard.wallet_lock) in a folder of this test run, inherited by the engine processes it
    starts: two runs on one host (each with fakeclob's one test key) must not refuse each other's engines."""
    before = os.environ.get("EXITGUARD_LOCK_DIR")
    os.environ["EXITGUARD_LOCK_DIR"] = str(tmp_path_factory.mktemp("wallet-locks"))
    yield
    if before is None:
        del os.environ["EXITGUARD_LOCK_DIR"]
    else:
        os.environ["EXITGUARD_LOCK_DIR"] = before


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def exchange(clock: ManualClock) -> PaperExchange:
    """A paper exchange on the manual clock with one liquid token "tok" holding 10 shares."""
    paper = PaperExchange(clock=clock)
    paper.set_balance("tok", Decimal("10"))
    paper.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    return paper


class LogCapture:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def sink(self, message: Any) -> None:
        record = message.record
        self.records.append({"event": record["extra"].get("event"), "level": record["level"].name,
                             **record["extra"]})

    def events(self) -> list[str]:
        return [r["event"] for r in self.records]

    def named(self, event: str) -> list[dict[str, Any]]:
        return [r for r in self.records if r["event"] == event]


@pytest.fixture
def logs() -> Iterator[LogCapture]:
    """Every record at DEBUG and above during the test. exitguard is silent until the application turns
    its records on, so this turns them on for the test, and back off after it unless they already were."""
    was_enabled = records_enabled()
    logger.enable("exitguard")
    capture = LogCapture()
    handler = logger.add(capture.sink, level="DEBUG")
    yield capture
    logger.remove(handler)
    if not was_enabled:
        logger.disable("exitguard")
