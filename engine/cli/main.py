"""The `exitguard` command: run a scenario on the paper exchange (`run`), one exit (`exit`), a journal's
positions and audit trail (`status`, `history`), or write the state diagrams (`diagram`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from exitguard import __version__
from exitguard.cli import exit as exit_command
from exitguard.cli import journal as journal_commands
from exitguard.cli.run import run_demo
from exitguard.states.diagram import DIAGRAMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exitguard", description="Verified exits for Polymarket positions.")
    parser.add_argument("--version", action="version", version=f"exitguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="replay a scenario (JSON lines) on the paper exchange; "
                                          "with no file, the bundled demo")
    run.add_argument("scenario", nargs="?", type=Path, help="scenario file (default: the bundled demo)")
    run.add_argument("--json-logs", action="store_true", help="log JSON lines to stderr")
    run.add_argument("--log-level", default="INFO", help="log level for stderr (default INFO)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a live line on stderr with the steps done and the positions by state "
                          "(default: only when stderr is a terminal)")

    exit_command.add_parser(commands)
    journal_commands.add_parsers(commands)

    diagram = commands.add_parser("diagram", help="write the position machine's diagrams (Mermaid, DOT)")
    diagram.add_argument("--out", type=Path, default=Path("diagrams"), help="folder (default ./diagrams)")
    diagram.add_argument("--check", action="store_true", help="fail if the files differ from the code")

    args = parser.parse_args(argv)
    if args.command == "run":
        return run_demo(args.scenario, json_logs=args.json_logs, log_level=args.log_level, out=sys.stdout,
                    progress=args.progress)
    if args.command == "exit":
        return exit_command.run(args)
    if args.command in ("status", "history"):
        return journal_commands.run(args)
    return _diagram(args.out, check=args.check, out=sys.stdout)



def _diagram(folder: Path, *, check: bool, out: TextIO) -> int:
    stale = []
    for name, render in DIAGRAMS.items():
        path = folder / name
        text = render()
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if check:
            stale.append(str(path))
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}", file=out)
    if stale:
        print(f"exitguard: stale diagrams (run `exitguard diagram`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
