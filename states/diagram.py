"""Mermaid and Graphviz DOT text for the position machine, read from the built Machine itself.

Drawing from the live `transitions` objects (not from a hand-kept copy) means the picture a reviewer
signs off is the machine that runs. Pure string building; writing files is the CLI's job.
"""

from __future__ import annotations

from collections.abc import Iterator

from transitions import Machine

from exitguard.states.machine import MACHINE
from exitguard.states.record import FINAL_STATES


def _edges(machine: Machine) -> Iterator[tuple[str, str, str]]:
    for name, event in machine.events.items():
        for source, transitions in event.transitions.items():
            for transition in transitions:
                names = [getattr(cond.func, "__name__", str(cond.func)) for cond in transition.conditions]
                guards = [name if cond.target else f"not {name}"
                          for name, cond in zip(names, transition.conditions, strict=True)]
                label = name + (f" [{' and '.join(guards)}]" if guards else "")
                yield source, transition.dest or source, label


def _states(machine: Machine) -> list[str]:
    return list(machine.states)


def to_mermaid(machine: Machine = MACHINE) -> str:
    lines = ["stateDiagram-v2", f"    [*] --> {machine.initial}"]
    lines += [f"    {source} --> {dest}: {label}" for source, dest, label in _edges(machine)]
    lines += [f"    {state} --> [*]" for state in _states(machine) if state in FINAL_STATES]
    return "\n".join(lines) + "\n"


def to_dot(machine: Machine = MACHINE) -> str:
    lines = [
        f"digraph {machine.name.rstrip(': ') or 'machine'} {{",
        "    rankdir=LR;",
        '    node [shape=box, style=rounded, fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    __start__ [shape=point, label=""];',
        f"    __start__ -> {machine.initial};",
    ]
    for state in _states(machine):
        shape = ", peripheries=2" if state in FINAL_STATES else ""
        lines.append(f'    {state} [label="{state}"{shape}];')
    lines += [f'    {source} -> {dest} [label="{label}"];' for source, dest, label in _edges(machine)]
    lines.append("}")
    return "\n".join(lines) + "\n"


DIAGRAMS = {"position.mmd": to_mermaid, "position.dot": to_dot}
"""File name in diagrams/ -> renderer."""
