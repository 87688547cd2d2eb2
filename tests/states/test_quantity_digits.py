"""Issue 14 section 3: share conversions work on the Decimal's digits with integer arithmetic (no decimal context
at all), and give exactly what the EXACT-context arithmetic gives: the same micro-shares, the same refusals, the
same normalised Decimal, under any application context."""

from __future__ import annotations

import decimal
import random
from decimal import Decimal, Inexact

import pytest

from exitguard.states import InvalidValue, QuantityOutOfBounds, micro_to_shares, shares_to_micro
from exitguard.states.quantities import MAX_SHARES, exact


def reference_micro(amount: Decimal) -> int | type[Exception]:
    """The context-based conversion these functions replaced."""
    if amount.copy_abs() > MAX_SHARES:
        return QuantityOutOfBounds
    with exact() as context:
        micro = amount.scaleb(6)
        finer = context.flags[Inexact] or micro != micro.to_integral_value()
    return InvalidValue if finer else int(micro)


def reference_shares(micro: int) -> Decimal:
    with exact():
        value = Decimal(micro).scaleb(-6).normalize()
        return value.quantize(Decimal(1)) if value == value.to_integral_value() else value


EDGES = ["0", "-0", "0E+999999", "0E-999999", "1E+999999", "1E-999999", "1e12", "1000000000000.000000",
         "1000000000000.000001", "999999999999.999999", "2e12", "1e13", "-1e13", "-1e12", "10", "10.000", "10.0000001",
         "0.000001", "0.0000001", "0.0000010", "1.23456789", "-5.5", "12.5E-3", "4.35", "1" + "0" * 80,
         "1." + "0" * 80, "1." + "0" * 80 + "1", "10000000000000E-1", "1" + "0" * 5000 + "E-5000", "00012.3400"]


def _random_values(count: int) -> list[str]:
    rng = random.Random(14)
    return [f"{rng.choice(['', '-'])}{rng.randint(0, 10 ** rng.randint(0, 20))}E{rng.randint(-14, 14)}"
            for _ in range(count)]


def _outcome(value: Decimal) -> int | type[Exception]:
    try:
        return shares_to_micro(value)
    except (InvalidValue, QuantityOutOfBounds) as err:
        return type(err)


@pytest.mark.parametrize("context", [None, decimal.Context(prec=4, traps=[Inexact, decimal.Rounded,
                                                                          decimal.FloatOperation])],
                         ids=["default", "hostile"])
def test_shares_to_micro_matches_the_exact_context_on_edges_and_random_values(
        context: decimal.Context | None) -> None:
    values = [Decimal(v) for v in EDGES + _random_values(5000)]
    expected = [reference_micro(v) for v in values]
    if context is None:
        got = [_outcome(v) for v in values]
    else:
        with decimal.localcontext(context):
            got = [_outcome(v) for v in values]
    mismatches = [(str(v), e, g) for v, e, g in zip(values, expected, got, strict=True) if e != g]
    assert mismatches == []


def test_micro_to_shares_matches_the_exact_context_digit_for_digit() -> None:
    rng = random.Random(6)
    micros = [0, 1, -1, 10, 999_999, 1_000_000, 10_500_000, -10_500_000, 10**18, -(10**18)]
    micros += [rng.randint(-(10**18), 10**18) for _ in range(5000)] + [rng.randint(1, 100) * 10**6 for _ in range(50)]
    with decimal.localcontext(decimal.Context(prec=3, traps=[Inexact, decimal.Rounded])):
        got = [micro_to_shares(m) for m in micros]
    expected = [reference_shares(m) for m in micros]
    assert [g.as_tuple() for g in got] == [e.as_tuple() for e in expected]
