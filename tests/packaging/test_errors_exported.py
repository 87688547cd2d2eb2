"""Issue 13 §3: every error the library raises is importable from the top level (`exitguard.__all__`)."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import exitguard
import exitguard.states

NEVER_ESCAPES: dict[str, str] = {
    # The rate limiter's refusal to wait past `max_wait`: raised only when a caller passes max_wait, and the one
    # caller that does (PolymarketExchange.sell) turns it into a TransientError ("nothing sent").
    "exitguard.exchange.polymarket.buckets.RateLimited": "caught in exchange/polymarket/adapter.py sell() and in "
                                                         "ratelimit.py RateLimits.reserve()",
    # One failed line of `exitguard check --live`: caught inside the command and printed as a FAIL item.
    "exitguard.cli.check.CheckFailed": "caught in cli/check.py, printed as a checklist item",
    # The user channel's: a frame it cannot read, and a subscription the server closed; both logged and skipped.
    "exitguard.exchange.polymarket.channel_events.MalformedEvent": "caught in exchange/polymarket/channel.py _read()",
    "exitguard.exchange.polymarket.channel._Refused": "caught in exchange/polymarket/channel.py follow()",
}
"""Exceptions defined in the package that never reach a caller, each with where it is caught."""


def defined_errors() -> dict[str, type[BaseException]]:
    """Every exception class defined in an exitguard module, by its full name."""
    found: dict[str, type[BaseException]] = {}
    for package in (exitguard, exitguard.states):
        names = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")]
        for name in names:
            module = importlib.import_module(name)
            for value in vars(module).values():
                if (inspect.isclass(value) and issubclass(value, BaseException)
                        and value.__module__.split(".")[0] == "exitguard"):
                    found[f"{value.__module__}.{value.__qualname__}"] = value
    return found


def test_every_error_the_library_defines_is_exported_from_the_top_level() -> None:
    errors = defined_errors()

    missing = sorted(name for name, cls in errors.items()
                     if name not in NEVER_ESCAPES and getattr(exitguard, cls.__name__, None) is not cls)
    unlisted = sorted(name for name, cls in errors.items()
                      if name not in NEVER_ESCAPES and cls.__name__ not in exitguard.__all__)

    assert (missing, unlisted) == ([], [])
    assert {"ScenarioError", "WalletInUse", "PermitExpired", "QuantityOutOfBounds"} <= set(exitguard.__all__)


def test_the_exemptions_name_real_errors() -> None:
    assert set(NEVER_ESCAPES) <= set(defined_errors())
