"""Live progress for `exitguard run`: one terminal line, rewritten in place, with the positions by state.

    progress: 41,200/80,002 steps  12.4 s  OPEN 38,800  CLOSED 1,100  RECONCILED 120  DUST 80

The line is for a person watching a terminal, never for a file or a pipe: the caller decides whether
to draw it at all (`exitguard run` draws it when stderr is a terminal). `update` is cheap enough to
call after every step of a 100,000-step run; it reads the clock and draws at most once per
`interval`. Anything else written to the same terminal while the line is up goes through `above()`,
which clears the line, writes, and puts the line back underneath.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Callable, Mapping
from typing import TextIO, cast

from exitguard.states import State

CLEAR_TO_END = "\x1b[K"
"""ANSI erase-in-line: removes what a longer earlier line left to the right of the cursor."""

DEFAULT_INTERVAL = 0.25
"""Seconds between redraws: four a second reads as live without costing anything measurable."""

STATE_ORDER = tuple(str(state) for state in State)


class ProgressLine:
    """Draws `progress: done/total steps  elapsed  STATE count ...` on `stream`.

    The first draw waits one `interval`, so a run that finishes sooner never flashes a line. `clock`
    returns monotonic seconds (injectable for tests); `width` is the terminal's width, read from the
    stream's terminal on every draw when not given."""

    def __init__(self, stream: TextIO, *, clock: Callable[[], float] = time.monotonic,
                 interval: float = DEFAULT_INTERVAL, width: int | None = None) -> None:
        self.stream = stream
        self._clock = clock
        self._interval = interval
        self._width = width
        self._started = clock()
        self._next_draw = self._started + interval
        self._done = 0
        self._total = 0
        self._states: Mapping[str, int] = {}
        self._text = ""
        self._shown = False

    def update(self, done: int, total: int, states: Mapping[str, int]) -> None:
        """Record where the run is; draw if the last draw is `interval` old. `states` may be a live
        mapping that the caller keeps updating: it is only read when a line is drawn."""
        self._done, self._total, self._states = done, total, states
        now = self._clock()
        if now >= self._next_draw:
            self._next_draw = now + self._interval
            self._draw(self.render(now))

    def render(self, now: float | None = None) -> str:
        """The line for the last update, states with no position left out; cut to the terminal's width
        (one column short, so that the cursor never wraps): the states at the end of the machine go first."""
        elapsed = (self._clock() if now is None else now) - self._started
        parts = [f"progress: {self._done:,}/{self._total:,} steps", _elapsed(elapsed)]
        parts += [f"{state} {self._states[state]:,}" for state in STATE_ORDER if self._states.get(state)]
        return "  ".join(parts)[: self._columns() - 1]

    def clear(self) -> None:
        """Take the line off the terminal (the cursor goes back to the start of the empty line)."""
        if self._shown:
            self._write("\r" + CLEAR_TO_END)
            self._shown = False

    def redraw(self) -> None:
        """Put the last drawn line back (after something else was written to the terminal)."""
        if self._text and not self._shown:
            self._draw(self._text)

    def close(self, *, keep: bool) -> None:
        """End of the run: leave the final line on its own (`keep`), or take it off the terminal."""
        if keep:
            self._draw(self.render())
            self._write("\n")
            self._shown = False
        else:
            self.clear()
        self._text = ""

    def above(self, stream: TextIO) -> TextIO:
        """`stream` with the line cleared before each write and redrawn after each complete line.
        For anything that shares the terminal with the progress line: the log handler, table rows."""
        return cast(TextIO, _WritesAbove(self, stream))

    def _draw(self, text: str) -> None:
        self._text = text
        self._write("\r" + text + CLEAR_TO_END)
        self._shown = True

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def _columns(self) -> int:
        if self._width is not None:
            return self._width
        try:
            return os.get_terminal_size(self.stream.fileno()).columns
        except (OSError, ValueError, io.UnsupportedOperation):
            return 80


class _WritesAbove(io.TextIOBase):
    """A text stream whose output appears above a progress line on the same terminal."""

    def __init__(self, line: ProgressLine, stream: TextIO) -> None:
        super().__init__()
        self._line = line
        self._stream = stream

    def write(self, text: str) -> int:
        self._line.clear()
        written = self._stream.write(text)
        if text.endswith("\n"):
            # The line must reach the terminal before the progress line is redrawn under it.
            self._stream.flush()
            self._line.redraw()
        return written

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def writable(self) -> bool:
        return True


def _elapsed(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"
