"""The one shared `transitions.Machine` and `fire`, the only way a record changes state.

`model=None` and no `add_model`: `fire` drives any record through the machine's events directly,
so 100,000 positions cost no per-model registration (add_model scans a list) and no per-model
machine (~12 KB each).
"""

from __future__ import annotations

from transitions import Machine, MachineError

from exitguard.states.dispatch import compile_machine, dispatch
from exitguard.states.errors import InvalidValue, TransitionRefused
from exitguard.states.quiet import QuietMachine
from exitguard.states.record import PositionRecord, State
from exitguard.states.table import PAYLOAD, TABLE


def build_machine() -> Machine:
    machine = QuietMachine(
        model=None,
        states=State,
        initial=State.OPEN,
        auto_transitions=False,
        send_event=True,
        ignore_invalid_triggers=False,
        name="position",
    )
    for edge in TABLE:
        machine.add_transition(
            edge.trigger,
            edge.source,
            # A self-edge is internal (dest=None): staying in SELLING is no new entry into it.
            None if edge.dest == edge.source else edge.dest,
            conditions=list(edge.guards),
            before=list(edge.before),
            after=list(edge.after),
        )
    return machine


MACHINE = build_machine()
DISPATCH = compile_machine(MACHINE)
"""MACHINE's transitions as a lookup table (states/dispatch.py): what `fire` runs."""


def fire(record: PositionRecord, trigger: str, **payload: object) -> State:
    """Apply `trigger` to `record` or raise `TransitionRefused`, leaving the record untouched."""
    _check_payload(record, trigger, payload)
    before = record.state
    moved = dispatch(MACHINE, DISPATCH, record, trigger, payload)
    if moved is None:
        raise TransitionRefused(record.key, before, trigger, "not allowed from this state")
    if not moved:
        raise TransitionRefused(record.key, before, trigger, "no guard passed")
    return record.state


def fire_through_transitions(record: PositionRecord, trigger: str, **payload: object) -> State:
    """`fire` through `transitions`' own event dispatch: what the compiled table is tested against."""
    _check_payload(record, trigger, payload)
    before = record.state
    try:
        moved = MACHINE.events[trigger].trigger(record, **payload)
    except MachineError:
        raise TransitionRefused(record.key, before, trigger, "not allowed from this state") from None
    if not moved:
        raise TransitionRefused(record.key, before, trigger, "no guard passed")
    return record.state


def _check_payload(record: PositionRecord, trigger: str, payload: dict[str, object]) -> None:
    """Refuse an unknown trigger, or a payload without the fields its transitions read."""
    required = PAYLOAD.get(trigger)
    if required is None:
        raise TransitionRefused(record.key, record.state, trigger, "no such trigger")
    if not required.issubset(payload):  # no set built when nothing is missing
        missing = required - payload.keys()
        raise InvalidValue(f"{trigger}.payload", sorted(payload), f"missing {', '.join(sorted(missing))}")


def allowed_triggers(state: State) -> tuple[str, ...]:
    return tuple(dict.fromkeys(edge.trigger for edge in TABLE if edge.source == state))
