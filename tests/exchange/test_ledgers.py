"""Which ledger holds a token, from its id alone (exitguard.exchange.ledgers; the adapter imports it as
exitguard.exchange.polymarket.positions)."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from exitguard.exchange.ledgers import Ledger, is_v2_position_id, ledger_of

CTF_TOKENS = (
    "71321045679252212594626385532706912750332728571942532289631379312455583992563",
    "52114319501245915516055106046884209969926127482827954674443846427813813222426",
)
"""CTF token ids: keccak hashes (getPositionId(collateral, collectionId)), 77 digits like these."""


def v2_position_id(market: str, outcome: int, module: int = 1) -> str:
    """As Protocol V2 builds a position id (Polymarket/py-sdk `decode_v2_outcome_position_id` reads it back): the
    module in the top byte (1 binary, 2 neg-risk, 3 combinatorial), a 16-byte market hash in bits 120..247, bits
    40..103 reserved and zero, the outcome index in the low byte."""
    digest = int.from_bytes(keccak(text=market)[:16], "big")
    return str((module << 248) | (digest << 120) | outcome)


def ctf_token_id(seed: str) -> str:
    return str(int.from_bytes(keccak(text=seed), "big"))


@pytest.mark.parametrize("token", CTF_TOKENS)
def test_ctf_token_ids_are_read_through_the_ctf_ledger(token: str) -> None:
    assert not is_v2_position_id(token) and ledger_of(token) is Ledger.CTF
    assert ledger_of(token) == "CONDITIONAL"


@pytest.mark.parametrize(("module", "outcome"), [(1, 0), (1, 1), (2, 0), (2, 1), (3, 1)])
def test_v2_position_ids_are_read_through_the_position_manager(module: int, outcome: int) -> None:
    position = v2_position_id("will-it-rain-tomorrow", outcome, module)
    assert is_v2_position_id(position) and ledger_of(position) is Ledger.POSITION_MANAGER
    assert ledger_of(position) == "CONDITIONAL-V2"  # the raw string py-clob-client-v2 1.2.1 has no constant for


def test_one_set_bit_anywhere_in_40_to_103_makes_a_ctf_token_id() -> None:
    position = int(v2_position_id("will-it-rain-tomorrow", 1))
    for bit in range(40, 104):
        assert not is_v2_position_id(str(position | 1 << bit)), bit
    for bit in (*range(0, 40), *range(104, 256)):
        assert is_v2_position_id(str(1 << bit)), bit


def test_a_hash_is_a_v2_id_with_probability_two_to_the_minus_64() -> None:
    """Thousands of keccak ids: none has all 64 reserved bits clear (expected 2^-64 each)."""
    assert not any(is_v2_position_id(ctf_token_id(f"collection:{n}")) for n in range(5_000))


@pytest.mark.parametrize("small", ["0", "1", "123", "555", str(2**40 - 1)])
def test_small_integers_are_v2_position_ids_by_the_bit_rule(small: str) -> None:
    """As in the SDK (`isV2PositionId`): only bits 40..103 decide, so test ids like "123" are V2 positions,
    signed for ExchangeV3. Tests of the CTF path must use realistic (hash) token ids."""
    assert is_v2_position_id(small) and ledger_of(small) is Ledger.POSITION_MANAGER


@pytest.mark.parametrize("other", ["tok", "", " 123", "0x7b", "-1", "1e5", "١٢٣", str(2**256), "9" * 79,
                                   "9" * 5000])
def test_what_is_not_a_decimal_uint256_is_no_position_id(other: str) -> None:
    """A paper exchange's "tok", hex, signs, exponents, non-ASCII digits, too big: the CTF ledger, as before."""
    assert not is_v2_position_id(other) and ledger_of(other) is Ledger.CTF


def test_the_largest_uint256_with_clear_reserved_bits_is_a_v2_id() -> None:
    largest = (1 << 256) - 1 - (((1 << 64) - 1) << 40)
    assert is_v2_position_id(str(largest)) and not is_v2_position_id(str(largest + (1 << 40)))
