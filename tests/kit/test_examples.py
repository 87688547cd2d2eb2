"""The examples in examples/ run as documented, and the README shows them as they are."""

from __future__ import annotations

import importlib.util
import runpy
from pathlib import Path

import anyio
import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "embed.py"

pytest_plugins = ["pytester"]


def test_embedding_example_exits_its_position(capsys) -> None:
    namespace = runpy.run_path(str(EXAMPLE))
    states = anyio.run(namespace["main"])
    assert states == {"entry-42": "CLOSED"}
    assert "sold 25 after 3 attempt(s)" in capsys.readouterr().out


# -- the README's test example (engine/testing.py's fixtures) ------------------------------------------

ROOT = EXAMPLE.parent.parent
TEST_EXAMPLE = ROOT / "examples" / "test_your_bot.py"
TESTING_SECTION = "## Testing your bot with exitguard"


def readme_test_example() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split(TESTING_SECTION, 1)[1]
    return section.split("```python\n", 1)[1].split("```\n", 1)[0]


def test_the_readme_test_example_is_the_file_the_suite_runs() -> None:
    assert readme_test_example() == TEST_EXAMPLE.read_text(encoding="utf-8")


def test_the_readme_test_example_passes_as_a_user_would_run_it(pytester: pytest.Pytester) -> None:
    # A fresh folder with only the example in it: no conftest of ours, the plugin comes from the entry point.
    pytester.makepyfile(test_your_bot=TEST_EXAMPLE.read_text(encoding="utf-8"))

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")

    backends = 1 + (importlib.util.find_spec("trio") is not None)  # anyio runs each test on every backend
    result.assert_outcomes(passed=5 * backends)
