"""Where the CLI keeps its own journal when the operator names none: a per-user state directory.

The conventions platformdirs follows for `user_state_dir`, without the dependency: XDG on Linux and the
BSDs (`$XDG_STATE_HOME/exitguard`, else `~/.local/state/exitguard`; a relative XDG path is ignored, as the
spec says), `~/Library/Application Support/exitguard` on macOS, `%LOCALAPPDATA%\\exitguard` on Windows.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

APP = "exitguard"
DEFAULT_JOURNAL = "exits.journal"


def state_dir(environ: Mapping[str, str] | None = None, *, platform: str | None = None,
              home: Path | None = None) -> Path:
    """The per-user state directory for exitguard (not created)."""
    env = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    if platform == "win32":
        local = env.get("LOCALAPPDATA", "").strip()
        return (Path(local) if local else home / "AppData" / "Local") / APP
    if platform == "darwin":
        return home / "Library" / "Application Support" / APP
    xdg = env.get("XDG_STATE_HOME", "").strip()
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else home / ".local" / "state"
    return base / APP


def default_journal(environ: Mapping[str, str] | None = None) -> Path:
    """The journal of one-off live exits; its folder is created (owner-only) when missing."""
    folder = state_dir(environ)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    return folder / DEFAULT_JOURNAL
