"""The position machine's transitions compiled into a lookup table, for `fire`.

`transitions` stays the machine: the table is read off the built `Machine` (its events, their transitions per
source state, each transition's conditions and callbacks, the states' enter/exit callbacks) when the package is
imported, and does, step for step, what `QuietEvent.trigger` and `QuietTransition.execute` do. What it saves is
the library's generic dispatch around them (resolving callables by name, looking states up by name, chaining
empty callback lists): about 30 us of every transition. tests/states/test_compiled_dispatch.py runs both on the
same records for every state, trigger and payload of the decision tables and compares the results.

A machine that used what this table does not reproduce (callbacks named by string, a queued machine, an
`on_exception` hook) is refused when the table is built, so the two can never silently part.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transitions import Machine
from transitions.core import EventData

Callback = Callable[[EventData], Any]


@dataclass(frozen=True, slots=True)
class Step:
    """One transition of one (source state, trigger), in the order `transitions` tries them."""

    transition: Any
    prepare: tuple[Callback, ...]
    conditions: tuple[tuple[Callback, bool], ...]
    """(predicate, the value it must return)."""
    before: tuple[Callback, ...]
    leave: tuple[Callback, ...] | None
    """The source state's exit callbacks; None: an internal transition (no state change)."""
    dest: Any
    """The destination `transitions` State (None when internal)."""
    enter: tuple[Callback, ...]
    after: tuple[Callback, ...]


@dataclass(frozen=True, slots=True)
class Entry:
    """What one (source state, trigger) needs: its event, its state object, its transitions in order."""

    event: Any
    state: Any
    steps: tuple[Step, ...]


Table = dict[tuple[object, str], Entry]


def compile_machine(machine: Machine) -> Table:
    """(state value, trigger) -> the transitions to try. Every callable is resolved now, once."""
    if machine.has_queue or machine.on_exception or machine.prepare_event or machine.finalize_event:
        raise ValueError("the compiled dispatch does not reproduce queued machines or machine-level event hooks")
    if not machine.send_event or machine.model_attribute != "state":
        raise ValueError("the compiled dispatch passes EventData and moves `model.state`: the machine must use "
                         "send_event=True and the default model attribute")
    table: Table = {}
    for trigger, event in machine.events.items():
        for source, transitions in event.transitions.items():
            state = machine.get_state(source)
            table[state.value, trigger] = Entry(event, state, tuple(_step(machine, t) for t in transitions))
    return table


def _step(machine: Machine, transition: Any) -> Step:
    dest = None if transition.dest is None else machine.get_state(transition.dest)
    source = machine.get_state(transition.source)
    final = dest is not None and dest.final
    return Step(
        transition=transition,
        prepare=_callables(transition.prepare),
        conditions=tuple((_callable(c.func), c.target) for c in transition.conditions),
        before=_callables([*machine.before_state_change, *transition.before]),
        leave=None if dest is None else _callables(source.on_exit),
        dest=dest,
        enter=() if dest is None else _callables([*dest.on_enter, *(machine.on_final if final else ())]),
        after=_callables([*transition.after, *machine.after_state_change]),
    )


def _callables(funcs: list[Any]) -> tuple[Callback, ...]:
    return tuple(_callable(func) for func in funcs)


def _callable(func: Any) -> Callback:
    if not callable(func):
        raise ValueError(f"the compiled dispatch needs callables, not names: {func!r}")
    return func  # type: ignore[no-any-return]


def dispatch(machine: Machine, table: Table, model: Any, trigger: str, payload: dict[str, object]) -> bool | None:
    """Fire `trigger` on `model` as `machine.events[trigger].trigger(model, **payload)` would: True when a
    transition ran, False when none of its guards passed, None when no transition leaves the model's state."""
    entry = table.get((model.state, trigger))
    if entry is None or not entry.steps:
        return None
    event = EventData(entry.state, entry.event, machine, model, args=(), kwargs=payload)
    for step in entry.steps:
        event.transition = step.transition
        for func in step.prepare:
            func(event)
        # A loop rather than all(<generator>): no generator frame per transition. A guard that fails tries the next.
        for check, target in step.conditions:
            if check(event) != target:
                break
        else:
            for func in step.before:
                func(event)
            if step.leave is not None:
                for func in step.leave:
                    func(event)
                model.state = step.dest.value
                event.state = step.dest
                for func in step.enter:
                    func(event)
            for func in step.after:
                func(event)
            event.result = True
            return True
    return False
