"""exitguard's runtime: the exit engine, the exchange port and its adapters, divergence and metrics."""

from engine.clock import Clock, ManualClock, SystemClock
from engine.divergence import DivergenceAlert, DivergenceDetector, DivergenceEvent, DivergenceKind
from engine.errors import (
    EngineClosed,
    ExchangeError,
    ExitRefused,
    InsufficientBalance,
    NotFilled,
    OrderKilled,
    OrderRejected,
    PositionConflict,
    TransientError,
    UnknownOutcome,
    UnknownPosition,
)
from engine.exchange import Exchange, Fill, LookupStatus, SellLookup, Settlement, SettlementStatus
from engine.exits import ExitEngine
from engine.logs import configure_logging
from engine.position import ExitOutcome, ExitResult, Position
from engine.retry import RetryPolicy
from states import InvalidValue, MarketRules, SellPermit, TransitionRefused

__version__ = "0.1.0"

__all__ = [
    "Clock",
    "DivergenceAlert",
    "DivergenceDetector",
    "DivergenceEvent",
    "DivergenceKind",
    "EngineClosed",
    "Exchange",
    "ExchangeError",
    "ExitEngine",
    "ExitOutcome",
    "ExitRefused",
    "ExitResult",
    "Fill",
    "InsufficientBalance",
    "InvalidValue",
    "LookupStatus",
    "ManualClock",
    "MarketRules",
    "NotFilled",
    "OrderKilled",
    "OrderRejected",
    "Position",
    "PositionConflict",
    "RetryPolicy",
    "SellLookup",
    "SellPermit",
    "Settlement",
    "SettlementStatus",
    "SystemClock",
    "TransientError",
    "TransitionRefused",
    "UnknownOutcome",
    "UnknownPosition",
    "configure_logging",
]
