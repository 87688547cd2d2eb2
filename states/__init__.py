"""The position state machine: pure decisions, no I/O, no clock, no logging."""

from exitguard.states.answers import SELL_ANSWERS, AnswerEffect, AnswerRule, SellAnswer
from exitguard.states.balance import BalanceKind, BalanceVerdict, Excess, assess_balance, parse_excess
from exitguard.states.effects import take_permit
from exitguard.states.errors import InvalidValue, PermitError, QuantityOutOfBounds, TransitionRefused
from exitguard.states.interrupted import INTERRUPTED, RESTARTED, Settle, on_interrupt, on_restart
from exitguard.states.lookups import (
    CONCLUSIONS,
    RESOLUTIONS,
    UNFILLED,
    Conclusion,
    LookupStatus,
    balance_moved_without_fill,
    conclude,
)
from exitguard.states.machine import MACHINE, allowed_triggers, fire
from exitguard.states.market import MarketRules, stepped_down_price
from exitguard.states.outcomes import (
    BALANCE_MISMATCH,
    EXIT_PAUSED,
    FILL_MISMATCH,
    REDEEM_HINT,
    REPORTS,
    DivergenceKind,
    ExitOutcome,
    Report,
    verify_divergence,
)
from exitguard.states.permit import DEFAULT_PERMIT_MAX_AGE, SellPermit, permit_is_fresh
from exitguard.states.quantities import (
    EXACT,
    MAX_SHARES,
    MICRO,
    exact,
    micro_to_shares,
    parse_price,
    parse_raw_balance,
    shares_to_micro,
)
from exitguard.states.record import FINAL_STATES, IN_FLIGHT_STATES, PositionRecord, State
from exitguard.states.refresh import AFTER_THE_FIRST_READ, Reading, RefreshReason, balance_refresh, in_settlement_window
from exitguard.states.table import TABLE, TRIGGERS, Edge

__all__ = [
    "AFTER_THE_FIRST_READ",
    "AnswerEffect",
    "AnswerRule",
    "BALANCE_MISMATCH",
    "DivergenceKind",
    "EXIT_PAUSED",
    "ExitOutcome",
    "FILL_MISMATCH",
    "INTERRUPTED",
    "LookupStatus",
    "CONCLUSIONS",
    "Conclusion",
    "UNFILLED",
    "balance_moved_without_fill",
    "conclude",
    "RESOLUTIONS",
    "REDEEM_HINT",
    "REPORTS",
    "RESTARTED",
    "Reading",
    "RefreshReason",
    "Report",
    "SELL_ANSWERS",
    "SellAnswer",
    "Settle",
    "on_interrupt",
    "on_restart",
    "BalanceKind",
    "BalanceVerdict",
    "DEFAULT_PERMIT_MAX_AGE",
    "Edge",
    "FINAL_STATES",
    "IN_FLIGHT_STATES",
    "InvalidValue",
    "MACHINE",
    "EXACT",
    "Excess",
    "MAX_SHARES",
    "MICRO",
    "QuantityOutOfBounds",
    "MarketRules",
    "PermitError",
    "PositionRecord",
    "SellPermit",
    "State",
    "TABLE",
    "TRIGGERS",
    "TransitionRefused",
    "allowed_triggers",
    "assess_balance",
    "exact",
    "parse_excess",
    "balance_refresh",
    "in_settlement_window",
    "fire",
    "micro_to_shares",
    "parse_price",
    "parse_raw_balance",
    "permit_is_fresh",
    "shares_to_micro",
    "stepped_down_price",
    "take_permit",
    "verify_divergence",
]
