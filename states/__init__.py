"""The position state machine: pure decisions, no I/O, no clock, no logging."""

from exitguard.states.answers import RESOLUTIONS, SELL_ANSWERS, AnswerEffect, AnswerRule, LookupStatus, SellAnswer
from exitguard.states.balance import BalanceKind, BalanceVerdict, assess_balance
from exitguard.states.effects import take_permit
from exitguard.states.errors import InvalidValue, PermitError, TransitionRefused
from exitguard.states.interrupted import INTERRUPTED, RESTARTED, Settle, on_interrupt, on_restart
from exitguard.states.machine import MACHINE, allowed_triggers, fire
from exitguard.states.market import MarketRules, stepped_down_price
from exitguard.states.outcomes import BALANCE_MISMATCH, FILL_MISMATCH, REPORTS, DivergenceKind, ExitOutcome, Report
from exitguard.states.permit import DEFAULT_PERMIT_MAX_AGE, SellPermit, permit_is_fresh
from exitguard.states.quantities import (
    MICRO,
    micro_to_shares,
    parse_price,
    parse_raw_balance,
    shares_to_micro,
)
from exitguard.states.record import FINAL_STATES, IN_FLIGHT_STATES, PositionRecord, State
from exitguard.states.table import TABLE, TRIGGERS, Edge

__all__ = [
    "AnswerEffect",
    "AnswerRule",
    "BALANCE_MISMATCH",
    "DivergenceKind",
    "ExitOutcome",
    "FILL_MISMATCH",
    "INTERRUPTED",
    "LookupStatus",
    "RESOLUTIONS",
    "REPORTS",
    "RESTARTED",
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
    "MICRO",
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
    "fire",
    "micro_to_shares",
    "parse_price",
    "parse_raw_balance",
    "permit_is_fresh",
    "shares_to_micro",
    "stepped_down_price",
    "take_permit",
]
