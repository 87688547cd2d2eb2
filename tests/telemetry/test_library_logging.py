"""exitguard logs like a library: silent until the application opts in, never touching the application's
handlers or any other logging state, and costing next to nothing while silent (issue 13, section 1).

The process-wide behaviour (what an application that configured nothing sees, what importing changes) is
tested in fresh interpreters: in this one, pytest and the other tests have configured logging already.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
from decimal import Decimal
from typing import Any

import anyio
import loguru
import pytest
from loguru import logger

from exitguard import ExitEngine, ManualClock, PaperExchange, Position, add_log_sink, configure_logging
from exitguard.pytest_plugin import capturing_events
from exitguard.telemetry import logs
from exitguard.telemetry.logs import EventMessage, emit, records_enabled

PAPER_EXIT = """
import anyio
from decimal import Decimal
from exitguard import ExitEngine, PaperExchange, Position

async def paper_exit():
    exchange = PaperExchange()
    exchange.set_balance("tok", Decimal("9"))  # 10 expected: a balance mismatch (WARNING) on the way
    exchange.set_bids("tok", [(Decimal("0.60"), Decimal("100"))])
    async with ExitEngine(exchange) as engine:
        engine.track(Position(key="p1", token_id="tok", shares=Decimal("10")))
        await engine.exit("p1", reason="stop_loss", limit_price=Decimal("0.55"))
        exchange.set_balance("tok2", Decimal("10"))
        engine.track(Position(key="p2", token_id="tok2", shares=Decimal("10")))
        await engine.exit("p2", reason="stop_loss", limit_price=Decimal("0.55"))  # no bids: not filled
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, check=True)


# -- silent unless the application opts in -------------------------------------------------------------

def test_an_application_that_configures_no_logging_gets_no_output_from_a_paper_exit() -> None:
    # loguru's default handler (stderr, DEBUG) is still in place: exitguard's records never reach it.
    done = run_python(PAPER_EXIT + "anyio.run(paper_exit)\nprint('done')")

    assert done.stdout == "done\n"
    assert done.stderr == ""


def test_after_logger_enable_the_application_gets_exitguards_events() -> None:
    done = run_python(PAPER_EXIT + "from loguru import logger\nlogger.enable('exitguard')\nanyio.run(paper_exit)")

    assert "position_tracked key=p1" in done.stderr
    assert "exit_balance_mismatch key=p1" in done.stderr
    assert "exit_not_filled key=p2" in done.stderr


def test_the_package_is_disabled_until_enabled_and_enable_is_the_applications_switch() -> None:
    with capturing_events() as outer:  # enabled inside
        assert records_enabled()
    assert outer.records == []
    logger.disable("exitguard")
    assert not records_enabled()
    logger.enable("exitguard")
    try:
        assert records_enabled()
    finally:
        logger.disable("exitguard")


# -- never touch the application's handlers --------------------------------------------------------------

def test_add_log_sink_leaves_the_applications_own_handler_in_place() -> None:
    done = run_python("""
        import io, sys
        from loguru import logger
        logger.remove()
        mine = io.StringIO()
        logger.add(mine, format="app: {message}")          # the application's own handler
        import exitguard
        ours = io.StringIO()
        handler = exitguard.add_log_sink(ours, level="WARNING")
        logger.info("the app's own message")
        exitguard.configure_logging(level="ERROR")         # the earlier name: adds too, removes nothing
        logger.info("still mine")
        logger.remove(handler)
        print(mine.getvalue(), end="")
        print("ours:", repr(ours.getvalue()))
    """)

    assert done.stdout.splitlines() == ["app: the app's own message", "app: still mine", "ours: ''"]


def test_add_log_sink_returns_its_handler_id_and_takes_only_exitguards_records(
        exchange: PaperExchange, clock: ManualClock) -> None:
    exchange.set_balance("tok", Decimal("9"))
    lines: list[str] = []
    was_enabled = records_enabled()
    handler = add_log_sink(lines.append, level="WARNING")  # type: ignore[arg-type]
    try:
        logger.warning("an application line")

        async def paper_exit() -> None:
            async with ExitEngine(exchange, clock=clock) as engine:
                engine.track(Position("p1", "tok", Decimal("10")))
                await engine.exit("p1", reason="r", limit_price=Decimal("0.55"))

        anyio.run(paper_exit)
    finally:
        logger.remove(handler)  # the id it returned is the handler it added
        if not was_enabled:
            logger.disable("exitguard")
    assert configure_logging is add_log_sink
    assert [line.split(" | ")[2].split()[0] for line in lines] == ["exit_balance_mismatch"]


def test_add_log_sink_with_only_exitguard_false_also_takes_the_applications_records() -> None:
    lines: list[str] = []
    was_enabled = records_enabled()
    handler = add_log_sink(lines.append, level="WARNING", only_exitguard=False)  # type: ignore[arg-type]
    try:
        logger.warning("an application line")
    finally:
        logger.remove(handler)
        if not was_enabled:
            logger.disable("exitguard")
    assert [line.split(" | ")[2].strip() for line in lines] == ["an application line"]


# -- free when disabled ----------------------------------------------------------------------------------

class Exploding:
    """A field value that fails the test if anything turns it into text."""

    def __str__(self) -> str:
        raise AssertionError("a disabled or filtered-out event was rendered")

    __format__ = __repr__ = lambda self, *_: self.__str__()  # noqa: E731


def emit_from_exitguard(event: str, **fields: Any) -> None:
    """Call emit as the engine does, from a module under the `exitguard` name (loguru checks the caller's)."""
    exec("emit(event, **fields)", {"__name__": "exitguard.probe", "emit": emit, "event": event, "fields": fields})


def test_emit_renders_nothing_while_exitguard_is_disabled() -> None:
    lines: list[object] = []
    handler = logger.add(lines.append, level="TRACE")  # a handler that would take every level
    try:
        assert not records_enabled()
        emit_from_exitguard("position_tracked", key="p1", token=Exploding(), shares=Decimal("1"))
    finally:
        logger.remove(handler)
    assert lines == []


def test_emit_renders_nothing_when_no_handler_takes_the_level() -> None:
    # In a fresh interpreter: this one has handlers at DEBUG (loguru's default among them).
    done = run_python("""
        import sys
        from decimal import Decimal
        from loguru import logger
        from exitguard.telemetry.logs import emit

        class Exploding:
            def __str__(self):
                raise AssertionError("an event below every handler's level was rendered")
            __format__ = __repr__ = lambda self, *_: self.__str__()

        logger.remove()
        logger.add(sys.stdout, level="INFO", format="{message}")
        logger.enable("exitguard")
        exec("emit('position_tracked', key='p1', token=Exploding(), shares=Decimal(1))",  # DEBUG
             {"__name__": "exitguard.probe", "emit": emit, "Exploding": Exploding, "Decimal": Decimal})
        exec("emit('exit_settled', key='p1', token='tok', order_id='o1', shares=Decimal(2))",
             {"__name__": "exitguard.probe", "emit": emit, "Decimal": Decimal})
    """)

    assert done.stdout == "exit_settled key=p1 token=tok order_id=o1 shares=2\n"
    assert done.stderr == ""


def test_event_message_renders_the_fields_as_before() -> None:
    message = EventMessage("exit_filled")

    assert message.format(event="exit_filled", key="p1", shares=Decimal("9.47"), order_id=None) == \
        "exit_filled key=p1 shares=9.47"
    assert message.format(event="exit_filled") == "exit_filled"


def test_loguru_formats_the_message_only_after_its_level_and_enabled_checks() -> None:
    """What `emit` relies on, pinned for the loguru the project allows (>=0.7,<0.8): `message.format` runs
    after the level and module checks, and keyword arguments land in `record["extra"]`."""
    assert loguru.__version__.startswith("0.7.")
    calls: list[str] = []

    class Counting(str):
        def format(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
            calls.append(str(self))
            return str(self)

    seen: list[Any] = []
    handler = logger.add(lambda message: seen.append(message.record), level="DEBUG")
    try:
        logger.log("TRACE", Counting("below the level"), field=1)  # below every handler here (DEBUG at least)
        exec("logger.log('INFO', message, field=2)",
             {"__name__": "exitguard.probe", "logger": logger, "message": Counting("disabled module")})
        logger.log("INFO", Counting("taken"), field=3)
    finally:
        logger.remove(handler)
    assert calls == ["taken"]
    assert [record["extra"]["field"] for record in seen] == [3]


def test_emit_asks_nothing_of_loguru_beyond_its_public_api() -> None:
    source = open(logs.__file__, encoding="utf-8").read()  # noqa: SIM115
    assert "_core" not in source and "min_level" not in source


# -- no global state changes at import -----------------------------------------------------------------

def test_importing_exitguard_changes_no_stdlib_logger_and_no_loguru_handler() -> None:
    done = run_python("""
        import logging, sys
        import transitions, anyio, httpx  # third-party loggers exist before, as in an application
        from loguru import logger

        def stdlib_state():
            loggers = {"": logging.getLogger()}
            loggers.update((name, item) for name, item in logging.root.manager.loggerDict.items()
                           if isinstance(item, logging.Logger))
            return {name: (list(item.filters), list(item.handlers), item.level, item.propagate, item.disabled)
                    for name, item in loggers.items()}

        before = stdlib_state()
        logger.info("before")
        import exitguard, exitguard.pytest_plugin, exitguard.cli.main, exitguard.polymarket
        logger.info("after")
        after = stdlib_state()
        changed = [name for name in before if before[name] != after[name]]
        new_with_config = [name for name in after.keys() - before.keys() if any(after[name][:2])]
        print(changed, new_with_config, logging.getLogger("transitions.core").filters)
    """)

    assert done.stdout.strip() == "[] [] []"
    # loguru's default handler is still the only one, and exitguard did not disable the application's records
    assert [line.rsplit(" - ", 1)[-1] for line in done.stderr.splitlines()] == ["before", "after"]


@pytest.mark.anyio
async def test_the_position_machine_logs_nothing_through_stdlib_logging(
        exchange: PaperExchange, clock: ManualClock) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    transitions_logger = logging.getLogger("transitions")
    level = transitions_logger.level
    transitions_logger.addHandler(handler)
    transitions_logger.setLevel(logging.DEBUG)
    try:
        async with ExitEngine(exchange, clock=clock) as engine:
            engine.track(Position("p1", "tok", Decimal("10")))
            exchange.lose_next_sell_response()
            await engine.exit("p1", reason="r", limit_price=Decimal("0.55"))  # VERIFYING, SELLING, unknown
            await engine.reconcile("p1")
    finally:
        transitions_logger.removeHandler(handler)
        transitions_logger.setLevel(level)
    assert engine.state("p1") == "CLOSED"
    assert records == []


# -- the bridge to stdlib logging (README, "Log events") ---------------------------------------------------

def test_the_readme_bridge_to_stdlib_logging_delivers_exitguards_events_with_their_fields() -> None:
    done = run_python(PAPER_EXIT + """
import logging
from loguru import logger

class PropagateHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(record.name).handle(record)

logger.remove()
logger.add(PropagateHandler(), format="{message}", level="INFO")
logger.enable("exitguard")

class Show(logging.Handler):
    def emit(self, record):
        print(record.name.split(".")[0], record.levelname, record.extra["event"], record.getMessage().split()[0])

logging.getLogger("exitguard").addHandler(Show())
logging.getLogger("exitguard").setLevel(logging.INFO)
anyio.run(paper_exit)
""")

    assert done.stdout.splitlines() == [
        "exitguard WARNING exit_balance_mismatch exit_balance_mismatch",
        "exitguard INFO exit_filled exit_filled",
        "exitguard WARNING exit_not_filled exit_not_filled",
    ]


# -- emit_each: a bulk load's events, one loguru call when nobody wants them --------------------------------

def emit_each_from_exitguard(event: str, items: list[Any], fields_of: Any) -> None:
    exec("emit_each(event, items, fields_of)", {"__name__": "exitguard.probe", "emit_each": logs.emit_each,
                                                "event": event, "items": items, "fields_of": fields_of})


def test_emit_each_builds_one_records_fields_and_renders_nothing_while_exitguard_is_disabled() -> None:
    lines: list[object] = []
    built: list[int] = []
    handler = logger.add(lines.append, level="TRACE")
    try:
        assert not records_enabled()
        emit_each_from_exitguard("position_tracked", [1, 2, 3],
                                 lambda item: built.append(item) or {"key": f"p{item}", "token": Exploding()})
    finally:
        logger.remove(handler)
    assert lines == []
    assert built == [1]  # the probe's fields; the other two were never asked for


def test_emit_each_emits_every_item_in_order_with_its_fields_when_wanted() -> None:
    with capturing_events() as events:
        emit_each_from_exitguard("position_tracked", [1, 2, 3],
                                 lambda item: {"key": f"p{item}", "token": f"t{item}", "shares": Decimal(item)})
    assert [(r["key"], r["token"], r["shares"], r["level"]) for r in events.named("position_tracked")] == [
        ("p1", "t1", Decimal(1), "DEBUG"), ("p2", "t2", Decimal(2), "DEBUG"), ("p3", "t3", Decimal(3), "DEBUG")]


def test_emit_each_of_nothing_emits_nothing() -> None:
    with capturing_events() as events:
        emit_each_from_exitguard("position_tracked", [], lambda item: {"key": item})
    assert events.records == []


def test_emit_each_respects_the_level_handlers_take() -> None:
    with capturing_events(level="INFO") as events:  # position_tracked is DEBUG
        emit_each_from_exitguard("position_tracked", [1, 2], lambda item: {"key": f"p{item}"})
    assert events.named("position_tracked") == []
