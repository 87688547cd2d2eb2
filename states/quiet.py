"""The position machine's `transitions` classes, without transitions' own logging.

`transitions` logs every step of every transition through the stdlib logger `transitions.core`: two INFO
lines per state change and about ten DEBUG lines per trigger. For the position machine they would repeat,
unstructured and for every position, what the engine's own events say, and a host with
`logging.basicConfig(level=INFO)` would get them. A library must not quieten them by changing that logger
(a filter, a level): the host's logging configuration is the host's. So the machine does not produce them,
through transitions' own extension points (`state_cls`, `transition_cls`, `event_cls`): each class below
does what its parent does, minus the logging. The machine uses no queue and no machine-level
prepare/finalize/exception callbacks, which is all the parent's extra machinery is for.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

from transitions import Machine, MachineError
from transitions.core import Event, EventData, State, Transition


class QuietState(State):
    def enter(self, event_data: Any) -> None:
        event_data.machine.callbacks(self.on_enter, event_data)

    def exit(self, event_data: Any) -> None:
        event_data.machine.callbacks(self.on_exit, event_data)


class QuietTransition(Transition):
    def execute(self, event_data: Any) -> bool:
        machine = event_data.machine
        machine.callbacks(self.prepare, event_data)
        if not all(condition.check(event_data) for condition in self.conditions):
            return False
        machine.callbacks(chain(machine.before_state_change, self.before), event_data)
        if self.dest:  # None: an internal transition, no exit from or entry into a state
            self._change_state(event_data)
        machine.callbacks(chain(self.after, machine.after_state_change), event_data)
        return True


class QuietEvent(Event):
    def trigger(self, model: Any, *args: Any, **kwargs: Any) -> bool:
        """The first transition from the model's state whose conditions pass; MachineError when none
        leaves that state (as `ignore_invalid_triggers=False` does)."""
        event_data = EventData(None, self, self.machine, model, args=args, kwargs=kwargs)
        event_data.state = self.machine.get_model_state(model)
        candidates = self.transitions.get(event_data.state.name)
        if not candidates:
            raise MachineError(f"{self.machine.name}Can't trigger event {self.name} from state "
                               f"{event_data.state.name}!")
        for transition in candidates:
            event_data.transition = transition
            if transition.execute(event_data):
                event_data.result = True
                break
        return bool(event_data.result)


class QuietMachine(Machine):
    state_cls = QuietState
    transition_cls = QuietTransition
    event_cls = QuietEvent

    def callbacks(self, funcs: Any, event_data: Any) -> None:
        for func in funcs:
            self.callback(func, event_data)
