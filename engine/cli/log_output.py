"""Where the `exitguard` command's own log lines go: the CLI is an application, so it turns exitguard's
records on for itself, and keeps them out of the tables it prints on stdout.

Every command that runs the engine takes the same three options (`add_log_options`) and opens its logs
with `command_logs` for as long as it runs. Defaults: WARNING and above on stderr, so a table on the same
terminal gets at most the lines that need a look; `--log-file PATH` sends the logs (INFO and above unless
`--log-level` says otherwise) to a file and nothing to stderr.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from loguru import logger

from exitguard.states import InvalidValue
from exitguard.telemetry.logs import add_log_sink, records_enabled

STDERR_LEVEL = "WARNING"
FILE_LEVEL = "INFO"
LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")


def add_log_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-file", type=Path, metavar="PATH",
                        help=f"write the log lines to this file (default level {FILE_LEVEL}) instead of stderr")
    parser.add_argument("--log-level", default=None, type=str.upper,
                        help=f"lowest level logged (default {STDERR_LEVEL} on stderr, {FILE_LEVEL} to --log-file)")
    parser.add_argument("--json-logs", action="store_true", help="log JSON lines instead of text")


def log_level(args: argparse.Namespace) -> str:
    """The level the options ask for, checked before anything runs."""
    level = args.log_level or (FILE_LEVEL if args.log_file is not None else STDERR_LEVEL)
    if level not in LEVELS:
        raise InvalidValue("--log-level", args.log_level, f"must be one of {', '.join(LEVELS)}")
    return str(level)


@contextmanager
def command_logs(*, err: TextIO, level: str, json: bool = False, log_file: Path | None = None) -> Iterator[None]:
    """exitguard's records on, to `log_file` or else to `err`, for the block. After it, the handler it added
    (and only that one) is removed and exitguard's records are as they were: `main()` called in-process
    leaves its caller's logging as it found it."""
    was_enabled = records_enabled()
    handler = add_log_sink(err if log_file is None else log_file, json=json, level=level)
    try:
        yield
    finally:
        logger.remove(handler)
        if not was_enabled:
            logger.disable("exitguard")


def drop_default_handler() -> None:
    """The `exitguard` program owns its process's logging: loguru's default handler (stderr, DEBUG, every
    module) would print what `command_logs` keeps off the terminal. Called by the program's entry point
    only, never by `main()` used in-process, whose caller's handlers are its own."""
    try:
        logger.remove(0)
    except ValueError:  # already gone: something in this process configured loguru first
        pass
