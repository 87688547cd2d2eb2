"""The `exitguard` command: run a scenario on the paper exchange (`run`), one exit (`exit`), a journal's
positions and audit trail (`status`, `history`), its unknown outcomes settled (`reconcile`), a dry run
against Polymarket (`check`), or write the state diagrams (`diagram`).

Bad input of any command is one line on stderr and exit code 2, never a traceback; Ctrl-C is exit code 130."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from exitguard import __version__
from exitguard.cli import check as check_command
from exitguard.cli import exit as exit_command
from exitguard.cli import journal as journal_commands
from exitguard.cli import reconcile as reconcile_command
from exitguard.cli.log_output import add_log_options, drop_default_handler, log_level
from exitguard.cli.run import run_demo
from exitguard.cli.venue import BAD_INPUT, INTERRUPTED
from exitguard.states import InvalidValue
from exitguard.states.diagram import DIAGRAMS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="exitguard", description="Verified exits for Polymarket positions.")
    parser.add_argument("--version", action="version", version=f"exitguard {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="replay a scenario (JSON lines) on the paper exchange; "
                                          "with no file, the bundled demo")
    run.add_argument("scenario", nargs="?", type=Path, help="scenario file (default: the bundled demo)")
    add_log_options(run)
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="a live line on stderr with the steps done and the positions by state "
                          "(default: only when stderr is a terminal)")

    exit_command.add_parser(commands)
    journal_commands.add_parsers(commands)
    reconcile_command.add_parser(commands)
    check_command.add_parser(commands)

    diagram = commands.add_parser("diagram", help="write the position machine's diagrams (Mermaid, DOT)")
    diagram.add_argument("--out", type=Path, default=Path("diagrams"), help="folder (default ./diagrams)")
    diagram.add_argument("--check", action="store_true", help="fail if the files differ from the code")

    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except BAD_INPUT as error:  # a command's own handling missed it: still one line, code 2
        print(f"exitguard {args.command}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nexitguard {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        try:
            level = log_level(args)
        except InvalidValue as error:
            print(f"exitguard run: {error}", file=sys.stderr)
            return 2
        return run_demo(args.scenario, json_logs=args.json_logs, log_level=level, out=sys.stdout,
                        progress=args.progress, log_file=args.log_file)
    if args.command == "exit":
        return exit_command.run(args)
    if args.command in ("status", "history"):
        return journal_commands.run(args)
    if args.command == "reconcile":
        return reconcile_command.run(args)
    if args.command == "check":
        return check_command.run(args)
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


def console() -> int:
    """The `exitguard` program (its console script and `python -m exitguard.cli.main`): the process is
    the command's own, so loguru's default handler goes before `main` adds the command's log output."""
    drop_default_handler()
    code = main()
    if code == INTERRUPTED:
        # After Ctrl-C a background thread (the journal's flusher, a library's own) may still hold the
        # interpreter's exit; the journal is closed and the position's state printed by now, so the process
        # ends at once.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(console())
