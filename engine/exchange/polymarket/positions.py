"""The adapter's name for the ledger rule (exitguard.exchange.ledgers): a CTF token id is read as `CONDITIONAL`
and signed for CTFExchangeV2; a Protocol V2 position id (bits 40..103 clear) is read as `CONDITIONAL-V2` and
signed for ExchangeV3 (orders.py)."""

from exitguard.exchange.ledgers import Ledger, is_v2_position_id, ledger_of

__all__ = ["Ledger", "is_v2_position_id", "ledger_of"]
