"""Wire constants and formatting for the fake CLOB: every string here is what the real CLOB sends.

Sources are in WIRE.md next to this file; keep the two in step. Amount arithmetic is on raw integers
(6-decimal units); this module only turns them into the strings the wire carries.
"""

from __future__ import annotations

import base64
from decimal import Decimal
from fractions import Fraction

RAW_PER_SHARE = 10**6            # conditional tokens and pUSD both have 6 decimals
SHARE_STEP_RAW = 10_000          # sizes are whole hundredths of a share (maker amount 2 dp)
USDC_STEP_RAW = 100              # FOK/FAK taker amount: at most 4 decimals
MAX_UINT256 = str(2**256 - 1)

INITIAL_CURSOR = "MA=="          # base64("0")
END_CURSOR = "LTE="              # base64("-1")

# --- error messages (docs.polymarket.com/resources/error-codes unless noted) ---------------------
ERR_L2_AUTH = "Unauthorized/Invalid api key"
ERR_L1_AUTH = "Invalid L1 Request headers"
ERR_DERIVE = "Could not derive api key!"                      # fake: wording not documented
ERR_INVALID_TOKEN = "Invalid token id"
ERR_NO_BOOK = "No orderbook exists for the requested token id"
ERR_MARKET_NOT_FOUND = "market not found"
ERR_MARKET_NOT_READY = "the market is not yet ready to process new orders"  # docs error-codes: not open *yet*


def err_book_gone(condition_id: str) -> str:
    """POST /order for a market that closed or resolved (seen in public bots' logs; WIRE.md section 2a)."""
    return f"the orderbook {condition_id} does not exist"
ERR_ORDER_PAYLOAD = "Invalid order payload"
ERR_VERSION_MISMATCH = "order_version_mismatch"               # seen: polymarket-cli #69
ERR_OWNER = "the order owner has to be the owner of the API KEY"
ERR_SIGNER = "the order signer address has to be the address of the API KEY"
ERR_SIGNATURE = "invalid signature"
ERR_TRADE_PARAMS = "Invalid trade params payload"
ERR_ASSET_TYPE = "Invalid asset type"                         # fake: wording not documented
ERR_FOK = "order couldn't be fully filled. FOK orders are fully filled or killed."
ERR_FAK = ("no orders found to match with FAK order. FAK orders are partially filled or killed "
           "if no match is found.")
ERR_SELL_PRECISION = ("invalid amounts, the sell orders maker amount supports a max accuracy of 2 "
                      "decimals, taker amount a max of 4 decimals")          # seen in bot logs
ERR_BUY_PRECISION = ("invalid amounts, the market buy orders maker amount supports a max accuracy "
                     "of 2 decimals, taker amount a max of 4 decimals")      # seen in bot logs


def err_duplicated(order_id: str) -> str:
    return f"order {order_id} is invalid. Duplicated."


def err_tick(order_id: str, price: str, tick: Decimal) -> str:
    return f"order {order_id} is invalid. Price ({price}) breaks minimum tick size rule: {tick}"


def err_min_size(order_id: str, size: str, minimum: Decimal) -> str:
    return f"order {order_id} is invalid. Size ({size}) lower than the minimum: {minimum}"


def err_balance(balance_raw: int, amount_raw: int) -> str:
    # The real text names raw units on both sides ("balance: 0, order amount: 5000000").
    return (f"not enough balance / allowance: the balance is not enough -> balance: {balance_raw}, "
            f"order amount: {amount_raw}")


# Bodies for injected failures (fail_next) when the caller gives none. 425 is plain text: the real
# client shows `PolyApiException[status_code=425, error_message=service not ready]` (py-clob-client #273).
DEFAULT_FAULT_BODIES: dict[int, dict | str] = {
    400: {"error": ERR_ORDER_PAYLOAD},
    401: {"error": ERR_L2_AUTH},
    425: "service not ready",
    429: {"error": "Too Many Requests"},
    500: {"error": "Internal server error"},
    503: {"error": "Trading is currently disabled. Check polymarket.com for updates"},
}


def units(raw: int) -> str:
    """Raw 6-decimal units as the wire's decimal string: 5_000_000 -> "5", 2_809_999 -> "2.809999"."""
    return fmt_decimal(Decimal(raw).scaleb(-6))


def fmt_decimal(value: Decimal) -> str:
    """Shortest plain decimal string (no exponent, no trailing zeros): Decimal("0.50") -> "0.5"."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def fmt_fraction(value: Fraction, places: int = 6) -> str:
    """A price that is a ratio of two amounts: exact when it terminates within `places` decimals,
    otherwise floored there (only error texts and odd hand-made orders ever need the floor)."""
    scaled = value * 10**places
    return fmt_decimal(Decimal(scaled.numerator // scaled.denominator).scaleb(-places))


def to_raw(shares: Decimal | int | str) -> int:
    """Exact shares -> raw units; refuses floats and anything finer than 1e-6 (no silent rounding)."""
    if isinstance(shares, float):
        raise TypeError("use Decimal, int or str for amounts, never float")
    value = Decimal(str(shares)) * RAW_PER_SHARE
    if value != value.to_integral_value():
        raise ValueError(f"{shares} is finer than the 6-decimal raw unit")
    return int(value)


def from_raw(raw: int) -> Decimal:
    return Decimal(raw).scaleb(-6)


def encode_cursor(offset: int) -> str:
    return base64.b64encode(str(offset).encode()).decode()


def decode_cursor(cursor: str) -> int:
    """Base64 of a decimal offset; raises ValueError when it is not one."""
    return int(base64.b64decode(cursor.encode(), validate=True).decode())
