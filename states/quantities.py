"""Exact share and price arithmetic.

Shares live as integer micro-shares: the exchange's raw 6-decimal units ("5000000" is 5 shares). A float
never touches a quantity: 4.35 as a float is 4.3499999..., and rounding that down sells 4.34.

Every Decimal operation of the library runs in `EXACT` (through `exact()`), never in the application's
`decimal.getcontext()`: an application that sets precision 4, or traps Inexact, must change no result here,
and nothing here changes its context.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from decimal import (
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
    localcontext,
)

from exitguard.states.errors import InvalidValue, QuantityOutOfBounds

MICRO = 1_000_000
"""Raw units per share on Polymarket's conditional tokens."""

MAX_SHARES = 10**12
"""The absolute bound on any quantity, in shares. No wallet holds a trillion shares of one token: a larger
figure is a typo, a unit error or a hostile answer, and acting on it would be an order for an absurd amount."""

MAX_MICRO = MAX_SHARES * MICRO
"""The same bound in raw units (10^18)."""

EXACT = Context(prec=60, rounding=ROUND_HALF_EVEN, Emin=-999_999, Emax=999_999,
                traps=[InvalidOperation, DivisionByZero, Overflow])
"""The one decimal context of the library. 60 digits hold any bounded quantity times any price exactly;
only averages (a price over several fills) round, at the 60th digit."""


def exact() -> AbstractContextManager[Context]:
    """`with exact():` runs the block in a fresh copy of EXACT; the caller's context is back afterwards."""
    return localcontext(EXACT)


def shares_to_micro(value: object, field: str = "shares") -> int:
    """Exact Decimal/int/str shares -> micro-shares. Refuses floats, NaN, infinities and sub-micro digits.

    Integer arithmetic on the Decimal's exact ratio: no context is involved (none could round or signal), and at
    100,000 positions a `localcontext` per call was most of what tracking cost."""
    # A Decimal (the usual case) skips `_decimal`'s dispatch on type; a subclass takes the long way.
    if type(value) is Decimal and value.is_finite():
        # Most of what a bot holds: inside the bound by its leading digit, and at most 6 decimal places. The
        # same exact ratio as below, minus the checks such a value cannot fail.
        if -7 < value.adjusted() < _MAX_SHARES_DIGITS:
            numerator, denominator = value.as_integer_ratio()
            if denominator == 1:
                return numerator * MICRO
            micro, finer = divmod(numerator * MICRO, denominator)
            if not finer:
                return micro
        amount = value
    else:
        amount = _decimal(value, field)
    if not amount:
        return 0
    # The exponent of the leading digit bounds the magnitude before any integer is built, so an exponent of a
    # million costs nothing: 10**adjusted <= |amount| < 10**(adjusted + 1).
    adjusted = amount.adjusted()
    if adjusted > _MAX_SHARES_DIGITS:
        raise QuantityOutOfBounds(field, value, f"beyond the bound of {MAX_SHARES:.0e} shares")
    if adjusted < -6:
        raise InvalidValue(field, value, "more than 6 decimal places (finer than one micro-share)")
    numerator, denominator = amount.as_integer_ratio()  # exact, and no context is involved
    if abs(numerator) > MAX_SHARES * denominator:
        raise QuantityOutOfBounds(field, value, f"beyond the bound of {MAX_SHARES:.0e} shares")
    micro, finer = divmod(numerator * MICRO, denominator)
    if finer:
        raise InvalidValue(field, value, "more than 6 decimal places (finer than one micro-share)")
    return micro


_MAX_SHARES_DIGITS = len(str(MAX_SHARES)) - 1
"""10**12: its leading digit's exponent."""

_MAX_MICRO_DIGITS = len(str(MAX_MICRO)) + 2
"""Digits a raw balance string may have on the fast path (leading zeros included); longer ones go the exact way."""


def is_canonical_shares(amount: Decimal) -> bool:
    """Whether a positive, whole-micro `amount` is already what `micro_to_shares` would build for it (no exponent,
    no trailing zero after the point), so that a caller may keep it instead of building it again."""
    text = str(amount)
    return "E" not in text and ("." not in text or text[-1] != "0")


def micro_to_shares(micro: int) -> Decimal:
    """Exact shares with no trailing zeros and no exponent: 10000000 -> Decimal("10").

    Built from its digits (or its int): a Decimal made from a string or an int is exact whatever the context."""
    whole, part = divmod(-micro if micro < 0 else micro, MICRO)
    if not part:
        return Decimal(-whole if micro < 0 else whole)  # from an int: exact too, without the text
    sign = "-" if micro < 0 else ""
    return Decimal(f"{sign}{whole}.{f'{part:06d}'.rstrip('0')}")


def parse_raw_balance(value: object, field: str = "balance") -> int:
    """The exchange's raw balance (a string of micro-units on the wire) -> micro-shares, or a clear error.

    A balance we cannot read exactly is never guessed at: missing, non-numeric, NaN, negative and
    fractional raw values are all refused, because the next step sells what this returns.
    """
    if value is None:
        raise InvalidValue(field, value, "missing from the exchange's answer")
    if type(value) is str:
        # The wire's usual form, digits only: int() reads it exactly with no Decimal and no context. Anything
        # else (a sign, a fraction, an exponent, more digits than int() parses) takes the exact path below.
        text = value.strip()
        if text.isdigit() and text.isascii() and len(text) <= _MAX_MICRO_DIGITS:
            raw_int = int(text)
            if raw_int > MAX_MICRO:
                raise _beyond_raw_bound(field, value)
            return raw_int
    raw = _decimal(value, field)
    if raw < 0:
        raise InvalidValue(field, value, "negative")
    if raw > MAX_MICRO:
        raise _beyond_raw_bound(field, value)
    with exact():
        whole = raw == raw.to_integral_value()
    if not whole:
        raise InvalidValue(field, value, "raw units must be a whole number")
    return int(raw)


def _beyond_raw_bound(field: str, value: object) -> QuantityOutOfBounds:
    return QuantityOutOfBounds(field, value, f"beyond the bound of {MAX_MICRO:.0e} raw units ({MAX_SHARES:.0e} shares)")


def parse_price(value: object, field: str = "limit_price") -> Decimal:
    """A probability price strictly between 0 and 1, as an exact Decimal."""
    price = _decimal(value, field)
    if not (0 < price < 1):
        raise InvalidValue(field, value, "must be strictly between 0 and 1")
    return price


def round_down_to_step(micro: int, step_micro: int) -> int:
    """Largest multiple of the exchange's size step not above `micro`; selling never rounds up."""
    return micro - micro % step_micro


def _decimal(value: object, field: str) -> Decimal:
    if isinstance(value, bool) or isinstance(value, float):
        raise InvalidValue(field, value, "use Decimal, int or str; floats are not exact")
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, (int, str)):
        try:
            with exact():  # a malformed string signals through the context: ours traps it
                amount = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise InvalidValue(field, value, "not a number") from None
    else:
        raise InvalidValue(field, value, f"unexpected type {type(value).__name__}")
    if not amount.is_finite():
        raise InvalidValue(field, value, "not a finite number")
    return amount

