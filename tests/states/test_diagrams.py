"""The committed diagrams are generated from the machine; a stale file fails here."""

from __future__ import annotations

from pathlib import Path

from exitguard.cli.main import main
from exitguard.states.diagram import DIAGRAMS, to_mermaid
from exitguard.states.table import TABLE

DIAGRAM_DIR = Path(__file__).resolve().parents[2] / "diagrams"


def test_committed_diagrams_match_the_machine() -> None:
    for name, render in DIAGRAMS.items():
        committed = (DIAGRAM_DIR / name).read_text(encoding="utf-8")
        assert committed == render(), f"diagrams/{name} is stale: run `exitguard diagram`"


def test_every_edge_and_guard_of_the_table_is_drawn() -> None:
    mermaid = to_mermaid()
    for edge in TABLE:
        assert f"{edge.source} --> {edge.dest}: {edge.trigger}" in mermaid
        for guard in edge.guards:
            assert guard.__name__ in mermaid


def test_diagram_check_fails_on_a_stale_file(tmp_path: Path, capsys) -> None:
    assert main(["diagram", "--out", str(tmp_path)]) == 0
    assert main(["diagram", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "position.mmd").write_text("stateDiagram-v2\n", encoding="utf-8")
    assert main(["diagram", "--out", str(tmp_path), "--check"]) == 1
    assert "stale" in capsys.readouterr().err


def test_readme_shows_the_current_diagram() -> None:
    readme = (DIAGRAM_DIR.parent / "README.md").read_text(encoding="utf-8")
    assert "```mermaid\n" + to_mermaid() + "```" in readme
