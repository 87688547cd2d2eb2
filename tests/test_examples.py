"""The embedding example in examples/ runs as documented."""

from __future__ import annotations

import runpy
from pathlib import Path

import anyio

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "embed.py"


def test_embedding_example_exits_its_position(capsys) -> None:
    namespace = runpy.run_path(str(EXAMPLE))
    states = anyio.run(namespace["main"])
    assert states == {"entry-42": "CLOSED"}
    assert "sold 25 after 3 attempt(s)" in capsys.readouterr().out
