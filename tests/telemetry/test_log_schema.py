"""docs/log-events.md is the log schema: every event in engine.logs.EVENTS is documented with its level,
and every event emitted during a representative run carries exactly the documented fields and types.

The representative run is the bundled demo plus each fault the demo does not show. An event in EVENTS
that the run does not emit must be listed in EMITTED_ELSEWHERE with the test that covers it, so a new
event is either exercised here or knowingly left to another test.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
from crashkit.lost_writes import stop_uncleanly
from loguru import logger

from exitguard import (
    DivergenceDetector,
    ExitEngine,
    Fill,
    JournalError,
    RetryPolicy,
    SellPermit,
    Settlement,
    SettlementStatus,
    TransientError,
)
from exitguard.cli.scenario import bundled_demo, parse_scenario, run_scenario
from exitguard.exchange.paper import PaperExchange
from exitguard.position import Position
from exitguard.pytest_plugin import FrozenClock
from exitguard.telemetry.logs import EVENTS, records_enabled

DOC = Path(__file__).resolve().parents[2] / "docs" / "log-events.md"

EMITTED_ELSEWHERE: dict[str, str] = {
    "recovery_reopened": "tests/engine/test_journal.py: needs a journal left by an engine that died while verifying",
    "journal_write_failed": "tests/engine/test_journal_faults.py: needs a journal whose writes fail (disk full)",
    "shutdown_grace_expired": "tests/engine/test_lifetime.py: needs an exit that outlives the shutdown's grace "
                              "period (virtual time there; real waiting here)",
    **{name: "tests/exchange/test_user_channel.py: needs the Polymarket adapter's user channel (the fake CLOB's "
             "WebSocket); the fields are checked against this page there" for name in (
        "user_channel_connected", "user_channel_disconnected", "user_channel_connect_failed",
        "user_channel_auth_rejected", "user_channel_event_malformed", "user_channel_backfill",
        "user_channel_failed")},
    **{name: "tests/exchange/test_rate_tiers.py: needs the Polymarket adapter's rate limits and the fake CLOB's "
             "per-signer buckets; the fields are checked against this page there" for name in (
        "rate_tier_set", "rate_tier_read_failed", "rate_limited", "rate_limit_warning",
        "rate_limit_header_malformed")},
}
"""Event name -> why this run does not emit it (and what does), for events the paper run cannot produce."""

TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (float, int),  # as in Python type hints, an int is acceptable where a float is
    "bool": (bool,),
    "Decimal": (Decimal,),
}


# -- reading the doc ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EventDoc:
    level: str | None
    fields: dict[str, str]
    """Field name -> documented type, included field sets resolved."""


def cells(row: str) -> list[str]:
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", row.strip())[1:-1]]


def parse_sections(text: str, part: str) -> dict[str, tuple[str, dict[str, str]]]:
    """`### name` sections under `## part`: name -> (the lines before the table, fields by name)."""
    body = text.split(f"\n## {part}\n", 1)[1].split("\n## ", 1)[0]
    sections: dict[str, tuple[str, dict[str, str]]] = {}
    for chunk in body.split("\n### ")[1:]:
        heading, _, rest = chunk.partition("\n")
        name = heading.strip().strip("`")
        prose = "\n".join(line for line in rest.splitlines() if not line.startswith("|"))
        rows = [cells(line) for line in rest.splitlines() if line.startswith("|")]
        assert not rows or rows[0] == ["field", "type", "meaning"], f"{name}: table header {rows[0]}"
        fields = {row[0].strip("`"): row[1].strip("`") for row in rows[2:]}
        sections[name] = (prose, fields)
    return sections


def load_schema(path: Path = DOC) -> dict[str, EventDoc]:
    text = path.read_text(encoding="utf-8")
    field_sets = {name: fields for name, (_, fields) in parse_sections(text, "Field sets").items()}
    schema = {}
    for name, (prose, own) in parse_sections(text, "Events").items():
        level = re.search(r"^Level: \*\*(\w+)\*\*\.", prose, re.MULTILINE)
        included = re.search(r"^Level: .*Includes: `(\w+)`", prose, re.MULTILINE)
        fields = dict(field_sets[included.group(1)]) if included else {}
        fields.update(own)
        schema[name] = EventDoc(level.group(1) if level else None, fields)
    return schema


CONTAINER = re.compile(r"^(list|dict)\[(?:str, )?(\w+)\]$")


def type_known(documented: str) -> bool:
    for option in (option.strip() for option in documented.split("|")):
        container = CONTAINER.match(option)
        if option != "None" and option not in TYPES and not (container and container.group(2) in TYPES):
            return False
    return True


def is_a(value: object, name: str) -> bool:
    allowed = TYPES[name]
    return isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)


def type_problem(value: object, documented: str) -> str | None:
    """None when `value` has the documented type (`T`, `T | None`, `list[T]`, `dict[str, T]`)."""
    for option in (option.strip() for option in documented.split("|")):
        container = CONTAINER.match(option)
        if option == "None":
            ok = value is None
        elif container and container.group(1) == "list":
            ok = isinstance(value, list) and all(is_a(item, container.group(2)) for item in value)
        elif container:
            ok = isinstance(value, dict) and all(isinstance(key, str) and is_a(item, container.group(2))
                                                 for key, item in value.items())
        else:
            ok = is_a(value, option)
        if ok:
            return None
    return f"{value!r} ({type(value).__name__}) is not {documented}"


def schema_problems(record: dict[str, Any], schema: dict[str, EventDoc]) -> list[str]:
    """What is wrong with one captured record (`extra` plus `level`) against the documented schema."""
    name = record["extra"].get("event")
    doc = schema.get(name)
    if doc is None:
        return [f"{name}: not documented"]
    problems = []
    if record["level"] != doc.level:
        problems.append(f"{name}: logged at {record['level']}, documented {doc.level}")
    fields = {key: value for key, value in record["extra"].items() if key != "event"}
    if set(fields) != set(doc.fields):
        problems.append(f"{name}: fields {sorted(fields)} != documented {sorted(doc.fields)}")
    for field, value in fields.items():
        if field in doc.fields and (problem := type_problem(value, doc.fields[field])):
            problems.append(f"{name}.{field}: {problem}")
    return problems


# -- the representative run --------------------------------------------------------------------------

class FaultyPaper(PaperExchange):
    """The paper exchange plus what it cannot do by itself: fills with trade ids whose settlement is
    scripted, a failing warm-up, and a sell held at a gate."""

    def __init__(self, clock: FrozenClock) -> None:
        super().__init__(clock=clock)
        self.trade_ids: tuple[str, ...] = ()
        self.settlements: list[Settlement | Exception] = []
        self.warm_up_error: Exception | None = None
        self.warm_up_failed = anyio.Event()
        self.gate: anyio.Event | None = None
        self.at_gate = anyio.Event()

    async def warm_up(self, token_id: str) -> None:
        await super().warm_up(token_id)
        if self.warm_up_error is not None:
            self.warm_up_failed.set()
            raise self.warm_up_error

    async def sell(self, permit: SellPermit, limit_price: Decimal, **options: object) -> Fill:
        if self.gate is not None:
            self.at_gate.set()
            await self.gate.wait()
        fill = await super().sell(permit, limit_price, **options)
        return replace(fill, trade_ids=self.trade_ids)

    async def settlement(self, fill: Fill) -> Settlement:
        await anyio.lowlevel.checkpoint()
        answer = self.settlements.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def market(exchange: PaperExchange, token: str, shares: str = "10", bid: str = "0.60") -> None:
    exchange.set_balance(token, Decimal(shares))
    exchange.set_bids(token, [(Decimal(bid), Decimal("1000"))])


P = Decimal("0.55")


async def faults_the_demo_does_not_show(clock: FrozenClock) -> None:
    paper = FaultyPaper(clock)

    def boom(alert: object) -> None:
        raise RuntimeError("the pager is down")

    engine = ExitEngine(paper, clock=clock, settlement_poll_interval=None,
                        retry=RetryPolicy(max_attempts=2, step_ticks=1, max_slippage=Decimal("0.01")),
                        divergence=DivergenceDetector(threshold=1, on_alert=boom, clock=clock))
    async with engine:
        # a killed FOK retried one tick lower
        market(paper, "retry", bid="0.54")
        engine.track(Position("retry", "retry", Decimal("10")))
        await engine.exit("retry", reason="r", limit_price=P)
        # a top-up, then the kill switch: an exit refused while paused, then resumed
        market(paper, "topped", shares="15")
        engine.track(Position("topped", "topped", Decimal("10")))
        engine.update("topped", shares=Decimal("15"), last_buy_at=clock.wall())
        engine.pause("operator: incident")
        await engine.exit("topped", reason="r", limit_price=P)
        engine.resume()
        # verification failures: an error, a malformed answer, a zero inside the settlement window
        for token in ("error", "corrupt", "unsettled"):
            market(paper, token, shares="0" if token == "unsettled" else "10")
            engine.track(Position(token, token, Decimal("10"), last_buy_at=clock.wall()))
        paper.fail_next("get_balance", error=TransientError("paper: down", status=503))
        await engine.exit("error", reason="r", limit_price=P)
        paper.corrupt_next_balance("corrupt", "NaN")
        await engine.exit("corrupt", reason="r", limit_price=P)
        await engine.exit("unsettled", reason="r", limit_price=P)
        # a market that no longer trades (its book gone): MARKET_CLOSED, nothing sent
        market(paper, "closed")
        paper.close_market("closed")
        engine.track(Position("closed", "closed", Decimal("10")))
        await engine.exit("closed", reason="r", limit_price=P)
        # a permit that went stale before sending
        market(paper, "stale")
        engine.track(Position("stale", "stale", Decimal("10")))
        with clock.ticking(3.0):
            await engine.exit("stale", reason="r", limit_price=P)
        # a lost answer whose first lookup fails; the second lookup settles it
        market(paper, "lost")
        engine.track(Position("lost", "lost", Decimal("10")))
        paper.lose_next_sell_response()
        await engine.exit("lost", reason="r", limit_price=P)
        paper.fail_next("lookup_sell")
        await engine.reconcile("lost")
        await engine.reconcile("lost")
        # an exit cancelled while its sell is in flight
        market(paper, "cancelled")
        engine.track(Position("cancelled", "cancelled", Decimal("10")))
        paper.gate = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.exit("cancelled", reason="r", limit_price=P))
            await paper.at_gate.wait()
            group.cancel_scope.cancel()
        paper.gate = None
        # a failed warm-up
        paper.warm_up_error = TransientError("paper: rules unavailable", status=503)
        market(paper, "cold")
        engine.track(Position("cold", "cold", Decimal("10")))
        await paper.warm_up_failed.wait()
        await anyio.lowlevel.checkpoint()  # the engine logs the failure once the warm-up task ends
        paper.warm_up_error = None
        # settlement: settled, check failed, failed with the shares returned (tracked anew, or not)
        paper.trade_ids = ("trade-1",)
        for token in ("settles", "check-fails", "returns", "conflicts"):
            market(paper, token)
            engine.track(Position(token, token, Decimal("10")))
            await engine.exit(token, reason="r", limit_price=P)
        paper.trade_ids = ()
        market(paper, "conflicts")
        engine.track(Position("conflicts-again", "conflicts", Decimal("10")))
        paper.settlements = [Settlement(SettlementStatus.SETTLED), TransientError("paper: no answer", status=503),
                             Settlement(SettlementStatus.FAILED, returned_shares=10_000_000),
                             Settlement(SettlementStatus.FAILED, returned_shares=10_000_000)]
        await engine.check_settlements()


async def restart_on_a_journal(path: Path, clock: FrozenClock) -> None:
    """An engine on a journal is left with a sell in flight (cancelled at the gate, so it is unresolved);
    the next engine on the journal hands it to the resolver: a lookup that fails plans a retry, the next
    one settles it."""
    paper = FaultyPaper(clock)
    market(paper, "restart")
    async with ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None) as engine:
        engine.track(Position("restart", "restart", Decimal("10")))
        paper.gate = anyio.Event()
        async with anyio.create_task_group() as group:
            group.start_soon(lambda: engine.exit("restart", reason="r", limit_price=P))
            await paper.at_gate.wait()
            group.cancel_scope.cancel()
    paper.gate = None
    async with ExitEngine(paper, journal=path, clock=clock, settlement_poll_interval=None) as engine:
        paper.fail_next("lookup_sell")
        await engine.reconcile("restart")
        await engine.resolve_unknowns()


class Unauditable(PaperExchange):
    our_sells_since = None  # an adapter without the port's optional audit


async def unclean_restarts_audited(path: Path, clock: FrozenClock) -> None:
    """After an unclean stop: an audit whose trade query fails (refused), one that passes, and one that an exchange
    without `our_sells_since` cannot do (skipped)."""
    paper = PaperExchange(clock=clock)
    market(paper, "audited")

    def engine(exchange: PaperExchange) -> ExitEngine:
        return ExitEngine(exchange, journal=path, clock=clock, settlement_poll_interval=None)

    async with engine(paper) as running:
        running.track(Position("audited", "audited", Decimal("10")))
        await running.exit("audited", reason="r", limit_price=P)
        stop_uncleanly(running)
    paper.fail_next_trade_query()
    with pytest.raises(JournalError):
        async with engine(paper):
            pass
    async with engine(paper) as running:
        stop_uncleanly(running)
    async with engine(Unauditable(clock=clock)):
        pass


@pytest.fixture(scope="module")
def captured(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    was_enabled = records_enabled()
    logger.enable("exitguard")  # silent by default: the application (here, the test) opts in
    handler = logger.add(lambda message: records.append({"extra": dict(message.record["extra"]),
                                                         "level": message.record["level"].name}), level="DEBUG")
    try:
        async def run() -> None:
            name, text = bundled_demo()
            await run_scenario(parse_scenario(text, name), source=name)
            await faults_the_demo_does_not_show(FrozenClock())
            await restart_on_a_journal(tmp_path_factory.mktemp("journal") / "exits.journal", FrozenClock())
            await unclean_restarts_audited(tmp_path_factory.mktemp("audited") / "exits.journal", FrozenClock())

        anyio.run(run)
    finally:
        logger.remove(handler)
        if not was_enabled:
            logger.disable("exitguard")
    return records


# -- the tests ---------------------------------------------------------------------------------------

def test_every_event_is_documented_with_its_level() -> None:
    documented = {name: doc.level for name, doc in load_schema().items()}

    assert documented == EVENTS


def test_every_documented_type_is_known() -> None:
    unknown = {f"{name}.{field}": documented for name, doc in load_schema().items()
               for field, documented in doc.fields.items() if not type_known(documented)}

    assert unknown == {}


def test_every_emitted_event_has_exactly_the_documented_fields_and_types(captured: list[dict[str, Any]]) -> None:
    schema = load_schema()

    problems = sorted({problem for record in captured for problem in schema_problems(record, schema)})

    assert problems == []


def test_the_run_emits_every_event_not_covered_elsewhere(captured: list[dict[str, Any]]) -> None:
    emitted = {record["extra"].get("event") for record in captured}

    assert set(EVENTS) - emitted - set(EMITTED_ELSEWHERE) == set()
    assert set(EMITTED_ELSEWHERE) <= set(EVENTS)


# -- the checker itself ------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "documented", "ok"), [
    (Decimal("1"), "Decimal", True), ("1", "Decimal", False), (1.0, "Decimal", False),
    (1, "int", True), (True, "int", False), (1, "float", True), (True, "float", False),
    (None, "str | None", True), ("x", "str | None", True), (None, "str", False), (False, "bool", True),
    (["a"], "list[str]", True), ([1], "list[str]", False), ({"a": 1}, "dict[str, int]", True),
    ({"a": "1"}, "dict[str, int]", False), ({1: 1}, "dict[str, int]", False),
])
def test_type_check(value: object, documented: str, ok: bool) -> None:
    assert (type_problem(value, documented) is None) is ok


def test_a_record_with_an_extra_field_or_a_wrong_level_is_reported() -> None:
    schema = {"exit_settled": EventDoc("INFO", {"key": "str"})}
    record = {"extra": {"event": "exit_settled", "key": "p1", "shares": Decimal(1)}, "level": "WARNING"}

    assert schema_problems(record, schema) == [
        "exit_settled: logged at WARNING, documented INFO",
        "exit_settled: fields ['key', 'shares'] != documented ['key']",
    ]

