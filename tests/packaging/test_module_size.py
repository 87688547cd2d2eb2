"""No module of the package over 400 lines: past that a module holds more than one idea, and reading it
is the first thing a change costs."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAX_LINES = 400


def test_no_module_over_400_lines() -> None:
    sizes = {path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
             for folder in ("engine", "states") for path in sorted((REPO / folder).rglob("*.py"))}

    assert sizes, "no modules found"
    over = {path: lines for path, lines in sizes.items() if lines > MAX_LINES}
    assert over == {}, f"modules over {MAX_LINES} lines: {over}"
