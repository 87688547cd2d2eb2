"""What a scenario file may hold before anything parses it: UTF-8 text, JSON nested no deeper than a scenario
needs, counts a run can finish. Each check reads the raw text, so a hostile file is refused, with the line
and field named, before a parser can crash or a run can hang on it."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from exitguard.settings import parse_count

MAX_COUNT = 10_000
"""Copies, attempts, ticks and fault counts of a scenario: 10^100 copies of an exit is a hang, not a test."""
MAX_DEPTH = 8
"""Levels of nesting a field may have (bids need 2). json.loads recurses in C: a line nested 100,000 deep can
crash the interpreter instead of raising, so deeper is refused from the text, before parsing."""

_JSON_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def bounded_count(minimum: int = 1) -> Callable[[Any, str], int]:
    """A scenario converter: a whole number from `minimum` to MAX_COUNT."""
    return lambda value, name: parse_count(value, name, minimum, MAX_COUNT)


def too_deep(line: str) -> str | None:
    """The field (or "<line>") whose value nests deeper than MAX_DEPTH, read from the text without parsing."""
    depth, field = 0, "<line>"
    for token in _JSON_NESTING.finditer(line):
        text = token.group()
        if text[0] == '"':
            field = text[1:-1] if depth == 1 else field
            continue
        depth += 1 if text in "[{" else -1
        if depth > MAX_DEPTH + 1:  # the line's own object is the first level
            return field
    return None


def not_utf8(data: bytes) -> tuple[int, str] | None:
    """(line, why) of the first bytes that are not UTF-8, or None when the whole file is."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        return line, f"not UTF-8 text (byte 0x{data[err.start]:02x} at column {column})"
    return None
