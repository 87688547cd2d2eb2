"""Issue 14 section 2: `fire` runs a table compiled from the built `transitions.Machine`. For every state, every
trigger (and one that does not exist) and every payload of the decision tables, the table does exactly what
`transitions`' own dispatch does: the same state, the same permit, the same record fields, the same refusal."""

from __future__ import annotations

import copy
import itertools
from decimal import Decimal

import pytest

from exitguard.states import TRIGGERS, BalanceKind, BalanceVerdict, PositionRecord, SellPermit, State, fire
from exitguard.states.machine import DISPATCH, MACHINE, fire_through_transitions
from exitguard.states.table import PAYLOAD, TABLE

TEN = 10_000_000

VERDICTS: list[object] = [
    BalanceVerdict(BalanceKind.SELLABLE, TEN, TEN, TEN, 0),
    BalanceVerdict(BalanceKind.SELLABLE, TEN, 12 * TEN, 11 * TEN, TEN),
    BalanceVerdict(BalanceKind.SELLABLE, TEN, TEN, 0, TEN),  # inconsistent: a guard must refuse it
    BalanceVerdict(BalanceKind.ALREADY_EXITED, TEN, 0, 0, 0),
    BalanceVerdict(BalanceKind.ALREADY_EXITED, TEN, 5, 0, 5),  # inconsistent
    BalanceVerdict(BalanceKind.UNSETTLED_ZERO, TEN, 0, 0, 0),
    BalanceVerdict(BalanceKind.DUST, TEN, 3, 0, 3),
    BalanceVerdict(BalanceKind.DUST, TEN, 0, 0, 0),  # inconsistent
    "not a verdict",
]

VALUES: dict[str, list[object]] = {
    "verdict": VERDICTS,
    "verified_at": [12.5],
    "reason": ["tp", None],
    "limit_price": [Decimal("0.55")],
    "attempt_id": ["a9", "", 7],
    "error": ["boom"],
    "shares": [TEN, 4 * TEN],
    "definitely_not_filled": [True, False, "yes"],
}
OPTIONAL: dict[str, list[dict[str, object]]] = {
    "sell_filled": [{}, {"avg_price": Decimal("0.6"), "order_id": "o1"}],
    "resolved_filled": [{}, {"avg_price": Decimal("0.6"), "order_id": "o1"}],
    "sell_unknown": [{}, {"sent_at": "2026-01-01T00:00:00+00:00"}],
    "sell_killed": [{}],
}


def payloads(trigger: str) -> list[dict[str, object]]:
    required = sorted(PAYLOAD.get(trigger, frozenset()))
    found: list[dict[str, object]] = [{}]  # nothing at all: refused for its missing payload (or not at all)
    for values in itertools.product(*(VALUES.get(name, ["x"]) for name in required)):
        for extra in OPTIONAL.get(trigger, [{}]):
            found.append({**dict(zip(required, values, strict=True)), **extra})
    if trigger == "sell_killed":
        found.append({"reason": "killed"})  # definitely_not_filled missing: the guard reads .get
    return found


def records() -> list[PositionRecord]:
    """A record in each state, with and without an unresolved outcome, a permit, an attempt under way."""
    made = []
    for state, unresolved, permit in itertools.product(State, (False, True), (False, True)):
        record = PositionRecord("p1", "tok", TEN)
        record.state = state
        record.unresolved = unresolved
        record.attempts, record.attempt_id, record.reason = 1, "a1", "tp"
        if permit:
            record.permit = SellPermit("p1", "tok", TEN, TEN, 1.0, "a1")
            record.inflight = SellPermit("p1", "tok", TEN, TEN, 1.0, "a0")
        made.append(record)
    return made


def outcome(run, record: PositionRecord, trigger: str, payload: dict[str, object]) -> tuple[object, ...]:  # noqa: ANN001
    try:
        result: object = run(record, trigger, **payload)
    except Exception as err:  # noqa: BLE001 - the refusal itself is compared
        result = (type(err), str(err))
    return result, tuple(getattr(record, name) for name in PositionRecord.__slots__)


CASES = [(record, trigger, payload) for record in records() for trigger in (*TRIGGERS, "no_such_trigger")
         for payload in payloads(trigger)]


def test_the_cases_cover_every_state_trigger_and_edge() -> None:
    assert {(r.state, t) for r, t, _ in CASES} == {(s, t) for s in State for t in (*TRIGGERS, "no_such_trigger")}
    assert len(CASES) > 1000
    assert {(edge.source, edge.trigger) for edge in TABLE} == {(state, trigger) for state, trigger in DISPATCH}
    assert set(DISPATCH) == {(MACHINE.get_state(source).value, trigger) for trigger, event in MACHINE.events.items()
                             for source in event.transitions}


def test_every_edge_is_taken_at_least_once_and_refusals_are_exercised() -> None:
    taken, refused = set(), 0
    for record, trigger, payload in CASES:
        mine = copy.copy(record)
        before = mine.state
        try:
            fire(mine, trigger, **payload)
            taken.add((before, trigger, mine.state))
        except Exception:  # noqa: BLE001
            refused += 1
    assert taken == {(edge.source, edge.trigger, edge.dest) for edge in TABLE}
    assert refused > 100


@pytest.mark.parametrize("state", list(State))
def test_the_compiled_table_does_what_transitions_does(state: State) -> None:
    differ = []
    for record, trigger, payload in CASES:
        if record.state is not state:
            continue
        ours, theirs = copy.copy(record), copy.copy(record)
        got = outcome(fire, ours, trigger, payload)
        expected = outcome(fire_through_transitions, theirs, trigger, payload)
        if got != expected:
            differ.append((state, record.unresolved, trigger, payload, got, expected))
    assert differ == []
