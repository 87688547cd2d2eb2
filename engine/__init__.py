"""exitguard's runtime: the exit engine, the exchange port and its adapters, divergence and metrics."""

from exitguard.clock import Clock, ManualClock, SystemClock
from exitguard.errors import (
    EngineClosed,
    ExchangeError,
    ExitRefused,
    InsufficientBalance,
    JournalError,
    MarketClosed,
    NotFilled,
    OrderKilled,
    OrderRejected,
    PermitExpired,
    PositionConflict,
    QuantityOutOfBounds,
    ScenarioError,
    TransientError,
    UnjournaledSales,
    UnknownOutcome,
    UnknownPosition,
    WalletInUse,
)
from exitguard.exchange.paper import PaperExchange
from exitguard.exchange.port import (
    Exchange,
    ExchangeNotice,
    Fill,
    LookupStatus,
    NoticeKind,
    SellDeadline,
    SellLookup,
    Settlement,
    SettlementStatus,
)
from exitguard.exits import ExitEngine
from exitguard.position import ExitOutcome, ExitResult, Position
from exitguard.retry import RetryPolicy
from exitguard.states import InvalidValue, MarketRules, PermitError, SellPermit, TransitionRefused
from exitguard.telemetry.divergence import DivergenceAlert, DivergenceDetector, DivergenceEvent, DivergenceKind
from exitguard.telemetry.logs import add_log_sink, configure_logging

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
    "ExchangeNotice",
    "ExitEngine",
    "ExitOutcome",
    "ExitRefused",
    "ExitResult",
    "Fill",
    "InsufficientBalance",
    "InvalidValue",
    "JournalError",
    "LookupStatus",
    "ManualClock",
    "MarketClosed",
    "MarketRules",
    "NotFilled",
    "NoticeKind",
    "OrderKilled",
    "OrderRejected",
    "PaperExchange",
    "PermitError",
    "PermitExpired",
    "Position",
    "PositionConflict",
    "QuantityOutOfBounds",
    "RetryPolicy",
    "ScenarioError",
    "SellDeadline",
    "SellLookup",
    "SellPermit",
    "Settlement",
    "SettlementStatus",
    "SystemClock",
    "TransientError",
    "TransitionRefused",
    "UnjournaledSales",
    "UnknownOutcome",
    "UnknownPosition",
    "WalletInUse",
    "add_log_sink",
    "configure_logging",
]
