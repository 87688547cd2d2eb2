"""Issue 11, C.12: the pure arithmetic runs in the library's own decimal context (states.EXACT).

An application that sets precision 4 and traps Inexact, Rounded and FloatOperation in its own
`decimal.getcontext()` changes no result, and the library leaves that context exactly as it found it.
"""

from __future__ import annotations

import decimal
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from exitguard import ManualClock, RetryPolicy
from exitguard.exchange.rules import market_rules
from exitguard.states import (
    MarketRules,
    assess_balance,
    micro_to_shares,
    parse_price,
    parse_raw_balance,
    shares_to_micro,
    stepped_down_price,
)
from exitguard.telemetry.divergence import DivergenceEvent, DivergenceKind


def hostile_context() -> decimal.Context:
    """What an application may well run with: few digits, and every rounding an error."""
    return decimal.Context(prec=4, traps=[decimal.Inexact, decimal.Rounded, decimal.FloatOperation,
                                          decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow])


@pytest.fixture
def hostile() -> Iterator[decimal.Context]:
    with decimal.localcontext(hostile_context()) as context:
        yield context


NOW = ManualClock().wall()
RULES = MarketRules(tick_size=Decimal("0.0001"), min_order_size=5_000_000, size_step=10_000)

UNIT_CALLS: dict[str, Callable[[], Any]] = {
    "shares_to_micro": lambda: shares_to_micro("12345.678901"),
    "shares_to_micro-bound": lambda: shares_to_micro("999999999999.999999"),
    "micro_to_shares": lambda: micro_to_shares(12_345_678_901),
    "micro_to_shares-whole": lambda: micro_to_shares(999_999_000_000),
    "parse_raw_balance": lambda: parse_raw_balance("12345678901.000"),
    "parse_price": lambda: parse_price("0.12345"),
    "price_is_on_tick": lambda: (RULES.price_is_on_tick(Decimal("0.1234")),
                                 RULES.price_is_on_tick(Decimal("0.12345"))),
    "stepped_down_price": lambda: stepped_down_price(Decimal("0.5555"), Decimal("0.0001"), 3, Decimal("0.5")),
    "retry_next_price": lambda: RetryPolicy(max_attempts=3, step_ticks=2, max_slippage=Decimal("0.00123"))
    .next_price(Decimal("0.5555"), Decimal("0.5551"), Decimal("0.0001")),
    "market_rules": lambda: market_rules(tick_size="0.0001", min_order_size="12345.67"),
    "assess_balance": lambda: assess_balance(12_345_678_901, 23_456_789_012, RULES, last_buy_at=None, now=NOW,
                                             settlement_window=timedelta(seconds=60)),
    "divergence_difference": lambda: DivergenceEvent(DivergenceKind.BALANCE_MISMATCH, "p", "t",
                                                     Decimal("12345.678901"), Decimal("23456.789012"), 0.0).difference,
}


@pytest.mark.parametrize("name", list(UNIT_CALLS))
def test_an_applications_hostile_decimal_context_changes_no_result(name: str) -> None:
    expected = UNIT_CALLS[name]()
    with decimal.localcontext(hostile_context()) as context:
        got = UNIT_CALLS[name]()
        assert not any(context.flags.values()), f"{name} signalled in the application's context: {context.flags}"
        assert context.prec == 4
    assert got == expected
    assert str(got) == str(expected)
