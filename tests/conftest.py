"""Shared fixtures. Async tests use anyio's pytest plugin on asyncio (`@pytest.mark.anyio`)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from loguru import logger

from exitguard import ManualClock
from exitguard.exchange.paper import PaperExchange


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
    capture = LogCapture()
    handler = logger.add(capture.sink, level="DEBUG")
    yield capture
    logger.remove(handler)
