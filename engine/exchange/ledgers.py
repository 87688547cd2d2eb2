"""Which ledger holds a token: the CTF contract (a "token id", a hash) or Protocol V2's PositionManager (a
"position id").

The id says which: a V2 position id has bits 40..103 of its uint256 clear (the official SDK's
`isV2PositionId`, Polymarket/py-sdk and @polymarket/client); a CTF token id is a keccak hash, whose 64 bits
there are all zero with probability 2^-64. Reading a V2 position through the CTF ledger answers "0" for
shares that are all still held, so the ledger is never guessed: it follows from the id, as in the SDK.

Here, outside the Polymarket package, because the paper exchange routes by the same rule and `import exitguard`
imports the paper exchange but never the Polymarket client.
"""

from __future__ import annotations

from enum import StrEnum

_V2_MASK = ((1 << 64) - 1) << 40
"""Bits 40..103."""
_UINT256 = 1 << 256


class Ledger(StrEnum):
    """The `asset_type` of GET /balance-allowance (and its /update) for a token of this ledger."""

    CTF = "CONDITIONAL"
    POSITION_MANAGER = "CONDITIONAL-V2"
    """py-clob-client-v2 1.2.1 has no constant for it: the raw string is what the exchange takes."""


def is_v2_position_id(token_id: str) -> bool:
    """True for a Protocol V2 position id: a decimal uint256 with bits 40..103 clear. Anything that is not a
    decimal uint256 (a paper exchange's "tok", hex) is no position id."""
    if len(token_id) > 78 or not token_id.isascii() or not token_id.isdigit():
        return False  # 78 digits hold any uint256; longer is no id (and int() would refuse past 4,300)
    value = int(token_id)
    return value < _UINT256 and not value & _V2_MASK


def ledger_of(token_id: str) -> Ledger:
    return Ledger.POSITION_MANAGER if is_v2_position_id(token_id) else Ledger.CTF
