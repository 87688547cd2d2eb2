"""Scenarios: JSON lines that set up the paper exchange, track positions, request exits, inject faults.

The whole file is parsed and checked before anything runs, so a typo on line 40 never leaves a
half-played scenario behind. Each line is one object with an "op":

  {"op": "engine", "max_attempts": 2, "step_ticks": 1, "max_slippage": "0.02"}   (first, optional)
  {"op": "market", "token": "T", "tick_size": "0.01", "min_order_size": "5"}
  {"op": "balance", "token": "T", "shares": "10"}
  {"op": "bids", "token": "T", "bids": [["0.60", "100"]]}
  {"op": "track", "key": "p1", "token": "T", "shares": "10"}
  {"op": "exit", "key": "p1", "reason": "take_profit", "limit_price": "0.55", "copies": 1}
  {"op": "reconcile", "key": "p1"}
  {"op": "fault", "fault": "fail_next", "operation": "sell", "error": "killed", "count": 1}
  {"op": "fault", "fault": "lose_sell_response", "count": 1}
  {"op": "fault", "fault": "balance_lag", "token": "T", "delay": null}
  {"op": "fault", "fault": "corrupt_balance", "token": "T", "raw": "NaN"}
  {"op": "fault", "fault": "latency", "seconds": 0.05}
  {"op": "fault", "fault": "close_market", "token": "T"}       (its book is gone: exits end MARKET_CLOSED)

Quantities and prices are strings (exact decimals); a JSON float is refused. `copies` > 1 starts that
many exit() calls on the same position at once (a race). Blank lines and lines starting with # are skipped.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio

from exitguard.cli.scenario_input import MAX_DEPTH, bounded_count, not_utf8, too_deep
from exitguard.errors import (
    ExchangeError,
    ExitRefused,
    InsufficientBalance,
    OrderKilled,
    OrderRejected,
    PositionConflict,
    ScenarioError,
    TransientError,
    UnknownOutcome,
)
from exitguard.exchange.paper import KILLED_MESSAGE, NO_BALANCE_MESSAGE, OPERATIONS, PaperExchange
from exitguard.exits import ExitEngine
from exitguard.position import ExitResult, Position
from exitguard.retry import RetryPolicy
from exitguard.settings import parse_seconds
from exitguard.states import InvalidValue, TransitionRefused, parse_price, shares_to_micro
from exitguard.states.errors import shown

FAULT_ERRORS: dict[str, Callable[[], ExchangeError]] = {
    "killed": lambda: OrderKilled(KILLED_MESSAGE, status=400),
    "insufficient_balance": lambda: InsufficientBalance(NO_BALANCE_MESSAGE, status=400),
    "rejected": lambda: OrderRejected("invalid order", status=400),
    "transient": lambda: TransientError("service unavailable", status=503),
    "rate_limited": lambda: TransientError("too many requests", status=429),
    "unknown": lambda: UnknownOutcome("connection dropped after send"),
}


@dataclass(frozen=True)
class Step:
    line: int
    op: str
    args: dict[str, Any]


@dataclass
class ScenarioReport:
    results: list[ExitResult] = field(default_factory=list)
    final_states: dict[str, str] = field(default_factory=dict)


# -- parsing -------------------------------------------------------------------------------------

def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidValue(name, value, "must be a non-empty string")
    return value


def _refuse_json_float(value: Any, name: str) -> None:
    if isinstance(value, JsonFloat):
        raise InvalidValue(name, value, "is a JSON float, which is not exact: write it as a string")


def _shares(value: Any, name: str) -> Decimal:
    _refuse_json_float(value, name)
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise InvalidValue(name, value, "must be a decimal string such as \"10.5\" (a JSON float is not exact)")
    if shares_to_micro(value, name) < 0:
        raise InvalidValue(name, value, "must not be negative")
    return Decimal(value)


def _positive_shares(value: Any, name: str) -> Decimal:
    shares = _shares(value, name)
    if shares <= 0:
        raise InvalidValue(name, value, "must be positive")
    return shares


def _price(value: Any, name: str) -> Decimal:
    _refuse_json_float(value, name)
    if not isinstance(value, str):
        raise InvalidValue(name, value, "must be a decimal string such as \"0.55\"")
    return parse_price(value, name)


def _seconds(value: Any, name: str) -> float | None:
    if value is None:
        return None
    return parse_seconds(value, name, allow_zero=True)


def _bids(value: Any, name: str) -> list[tuple[Decimal, Decimal]]:
    if not isinstance(value, list):
        raise InvalidValue(name, value, "must be a list of [price, size] pairs")
    bids = []
    for index, level in enumerate(value):
        if not isinstance(level, list) or len(level) != 2:
            raise InvalidValue(f"{name}[{index}]", level, "must be a [price, size] pair")
        bids.append((_price(level[0], f"{name}[{index}].price"),
                     _positive_shares(level[1], f"{name}[{index}].size")))
    return bids


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def convert(value: Any, name: str) -> str:
        if value not in options:
            raise InvalidValue(name, value, f"must be one of {', '.join(options)}")
        return str(value)
    return convert


def _raw(value: Any, name: str) -> Any:
    return value


_OPS: dict[str, dict[str, tuple[bool, Callable[[Any, str], Any]]]] = {
    "engine": {"max_attempts": (False, bounded_count()), "step_ticks": (False, bounded_count(0)),
               "max_slippage": (False, _shares)},
    "market": {"token": (True, _text), "tick_size": (False, _price), "min_order_size": (False, _shares)},
    "balance": {"token": (True, _text), "shares": (True, _shares)},
    "bids": {"token": (True, _text), "bids": (True, _bids)},
    "track": {"key": (True, _text), "token": (True, _text), "shares": (True, _positive_shares)},
    "exit": {"key": (True, _text), "reason": (True, _text), "limit_price": (True, _price),
             "copies": (False, bounded_count())},
    "reconcile": {"key": (True, _text)},
    "fault": {"fault": (True, _choice(("fail_next", "lose_sell_response", "balance_lag", "corrupt_balance",
                                       "latency", "close_market"))),
              "operation": (False, _choice(OPERATIONS)), "error": (False, _choice(tuple(FAULT_ERRORS))),
              "count": (False, bounded_count()), "token": (False, _text), "delay": (False, _seconds),
              "raw": (False, _raw), "seconds": (False, _seconds)},
}
"""op -> field -> (required, converter(value, field_name))."""

_FAULT_NEEDS = {"fail_next": ("operation",), "balance_lag": ("token",), "corrupt_balance": ("token", "raw"),
                "latency": ("seconds",), "lose_sell_response": (), "close_market": ("token",)}


def parse_scenario(text: str, source: str = "<scenario>") -> list[Step]:
    steps: list[Step] = []
    tracked: set[str] = set()
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        deep = too_deep(line)
        if deep is not None:
            raise ScenarioError(source, number, deep, f"nested deeper than {MAX_DEPTH} levels")
        try:
            obj = json.loads(line, parse_float=JsonFloat)
        except json.JSONDecodeError as err:
            raise ScenarioError(source, number, "<line>", f"not valid JSON ({err.msg})") from None
        except RecursionError:
            raise ScenarioError(source, number, "<line>", f"nested deeper than {MAX_DEPTH} levels") from None
        except ValueError as err:  # an integer past Python's digit limit
            raise ScenarioError(source, number, "<line>", f"unreadable number ({shown(str(err))})") from None
        if not isinstance(obj, dict):
            raise ScenarioError(source, number, "<line>", "must be a JSON object")
        op = obj.get("op")
        if op not in _OPS:
            raise ScenarioError(source, number, "op", f"{op!r} is not one of {', '.join(_OPS)}")
        if op == "engine" and steps:
            raise ScenarioError(source, number, "op", "'engine' must be the first step")
        spec = _OPS[op]
        unknown = sorted(set(obj) - set(spec) - {"op"})
        if unknown:
            raise ScenarioError(source, number, unknown[0], f"unknown field for op {op!r}")
        args: dict[str, Any] = {}
        for name, (required, convert) in spec.items():
            if name not in obj:
                if required:
                    raise ScenarioError(source, number, name, "missing")
                continue
            try:
                args[name] = convert(obj[name], name)
            except InvalidValue as err:
                raise ScenarioError.from_invalid(source, number, err) from None
        if op == "fault":
            for name in _FAULT_NEEDS[args["fault"]]:
                if name not in obj:
                    raise ScenarioError(source, number, name, f"missing (needed by fault {args['fault']!r})")
        if op == "engine":
            try:
                RetryPolicy(**args)  # checked now so that a bad policy stops the file before it runs
            except InvalidValue as err:
                raise ScenarioError.from_invalid(source, number, err) from None
        if op == "track":
            tracked.add(args["key"])
        elif op in ("exit", "reconcile") and args["key"] not in tracked:
            raise ScenarioError(source, number, "key", f"{args['key']!r} is not tracked by an earlier line")
        steps.append(Step(number, op, args))
    return steps


class JsonFloat(float):
    """A JSON number with a fraction or exponent: fine for seconds, refused for shares and prices."""


def load_scenario(path: Path) -> list[Step]:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ScenarioError(str(path), 0, "<file>", f"cannot read: {err.strerror or err}") from None
    undecodable = not_utf8(data)
    if undecodable is not None:
        raise ScenarioError(str(path), undecodable[0], "<line>", undecodable[1])
    return parse_scenario(data.decode("utf-8"), str(path))


def bundled_demo() -> tuple[str, str]:
    """(name, text) of the demo scenario shipped inside the package."""
    from importlib.resources import files

    resource = files("exitguard.cli").joinpath("scenarios/demo.jsonl")
    return "demo.jsonl", resource.read_text(encoding="utf-8")


# -- running -------------------------------------------------------------------------------------

ResultHook = Callable[[Step, ExitResult], None]
ProgressHook = Callable[[int, int, Mapping[str, int]], None]
"""(steps done, steps in all, positions by state) after every step. The mapping is live: the run keeps
updating it, so copy it to keep a snapshot."""

_KEYED_OPS = frozenset({"track", "exit", "reconcile"})
"""The steps that can change a position's state; every other step leaves all states as they were."""


async def run_scenario(steps: list[Step], *, on_result: ResultHook | None = None,
                       on_progress: ProgressHook | None = None,
                       exchange: PaperExchange | None = None, source: str = "<scenario>") -> ScenarioReport:
    """Play the steps on a paper exchange. Exits of one step run concurrently; steps run in order.

    A step the engine refuses (a finished position, a price off tick, a token already held) stops the
    run with a ScenarioError naming its line."""
    paper = exchange or PaperExchange()
    retry = RetryPolicy()
    if steps and steps[0].op == "engine":
        retry = RetryPolicy(**steps[0].args)
    report = ScenarioReport()
    async with ExitEngine(paper, retry=retry) as engine:
        tally = _StateTally(engine) if on_progress is not None else None
        for done, step in enumerate(steps, start=1):
            try:
                await _play(step, engine, paper, report, on_result)
            except InvalidValue as err:
                raise ScenarioError.from_invalid(source, step.line, err) from None
            except (ExitRefused, PositionConflict, TransitionRefused) as err:
                raise ScenarioError(source, step.line, "key", str(err)) from None
            if on_progress is not None and tally is not None:
                if step.op in _KEYED_OPS:
                    tally.recount(step.args["key"])
                on_progress(done, len(steps), tally.counts)
        report.final_states = engine.states()
    return report


class _StateTally:
    """Positions by state, kept in step with the engine at O(1) per step: `engine.states()` walks every
    position, which at 100,000 positions is milliseconds a call. Exact for a scenario on the paper
    exchange, where a state changes only in a step that names the position (paper fills carry no trade
    ids, so no settlement can reopen a position in the background)."""

    def __init__(self, engine: ExitEngine) -> None:
        self._engine = engine
        self._known = engine.states()
        self.counts: Counter[str] = Counter(self._known.values())

    def recount(self, key: str) -> None:
        before = self._known.get(key)
        after = self._engine.state(key)
        if before == after:
            return
        if before is not None:
            self.counts[before] -= 1
        self.counts[after] += 1
        self._known[key] = after


async def _play(step: Step, engine: ExitEngine, paper: PaperExchange, report: ScenarioReport,
                on_result: ResultHook | None) -> None:
    args = step.args
    if step.op == "market":
        paper.set_market(args["token"], tick_size=args.get("tick_size", Decimal("0.01")),
                         min_order_size=args.get("min_order_size", Decimal("5")))
    elif step.op == "balance":
        paper.set_balance(args["token"], args["shares"])
    elif step.op == "bids":
        paper.set_bids(args["token"], args["bids"])
    elif step.op == "track":
        engine.track(Position(key=args["key"], token_id=args["token"], shares=args["shares"]))
    elif step.op == "exit":
        results: list[ExitResult] = []
        refusals: list[Exception] = []

        async def one() -> None:
            try:
                results.append(await engine.exit(args["key"], reason=args["reason"],
                                                 limit_price=args["limit_price"]))
            except (InvalidValue, ExitRefused, PositionConflict, TransitionRefused) as err:
                refusals.append(err)  # raised below as itself, not wrapped in an ExceptionGroup

        async with anyio.create_task_group() as group:
            for _ in range(args.get("copies", 1)):
                group.start_soon(one)
        if refusals:
            raise refusals[0]
        for result in results:
            _report(step, result, report, on_result)
    elif step.op == "reconcile":
        _report(step, await engine.reconcile(args["key"]), report, on_result)
    elif step.op == "fault":
        _inject(paper, args)


def _report(step: Step, result: ExitResult, report: ScenarioReport, on_result: ResultHook | None) -> None:
    report.results.append(result)
    if on_result is not None:
        on_result(step, result)


def _inject(paper: PaperExchange, args: dict[str, Any]) -> None:
    fault = args["fault"]
    if fault == "fail_next":
        error = FAULT_ERRORS[args.get("error", "transient")]()
        paper.fail_next(args["operation"], args.get("count", 1), error)
    elif fault == "lose_sell_response":
        paper.lose_next_sell_response(args.get("count", 1))
    elif fault == "balance_lag":
        paper.lag_balance(args["token"], args.get("delay"))
    elif fault == "corrupt_balance":
        paper.corrupt_next_balance(args["token"], args["raw"])
    elif fault == "latency":
        paper.latency = args["seconds"] or 0.0
    elif fault == "close_market":
        paper.close_market(args["token"])
