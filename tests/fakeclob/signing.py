"""The order hash (the CLOB's orderID) and signer recovery for a posted V2 order.

Built with the client's own ExchangeOrderBuilderV2 on the same typed data it signs, so the id the
fake returns is byte-for-byte the hash a client can compute before posting.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.order_utils import ExchangeOrderBuilderV2, Side, SignatureTypeV2
from py_clob_client_v2.order_utils.model.order_data_v2 import OrderV2

# Keys order_to_json_v2 puts in "order"; a V1 order has nonce/feeRateBps/taker and no timestamp.
V2_KEYS = ("salt", "maker", "signer", "tokenId", "makerAmount", "takerAmount", "side",
           "expiration", "signatureType", "timestamp", "metadata", "builder", "signature")
V1_ONLY_KEYS = ("nonce", "feeRateBps", "taker")


@dataclass(frozen=True)
class SignedOrder:
    """A posted order, parsed: amounts are raw integers, side is "BUY"/"SELL"."""

    order_hash: str
    maker: str
    signer: str
    token_id: str
    maker_amount: int
    taker_amount: int
    side: str
    signature_type: int
    expiration: str
    signature: str
    typed_data: dict


def is_v1_shaped(order: dict) -> bool:
    return any(k in order for k in V1_ONLY_KEYS) or "timestamp" not in order


def parse(order: dict, chain_id: int, neg_risk: bool, *, v2: bool = False) -> SignedOrder:
    """Raises (KeyError/ValueError/TypeError) on anything the real CLOB would call an invalid payload.
    The hash is taken in the domain the market's orders must be signed for: ExchangeV3, version "3", for a
    Protocol V2 market (never neg-risk); CTFExchangeV2 or its neg-risk twin, version "2", otherwise. An
    order signed for another domain then recovers to another address: `invalid signature`."""
    missing = [k for k in V2_KEYS if k not in order]
    if missing:
        raise KeyError(f"missing {missing}")
    side = order["side"]
    if side not in ("BUY", "SELL"):
        raise ValueError(f"bad side {side!r}")
    maker_amount, taker_amount = int(order["makerAmount"]), int(order["takerAmount"])
    if maker_amount <= 0 or taker_amount <= 0:
        raise ValueError("amounts must be positive")
    config = get_contract_config(chain_id)
    if v2:
        contract, version = config.exchange_v3, "3"
    else:
        contract, version = (config.neg_risk_exchange_v2 if neg_risk else config.exchange_v2), "2"
    builder = ExchangeOrderBuilderV2(contract, chain_id, signer=None, domain_version=version)
    unsigned = OrderV2(
        salt=str(int(order["salt"])), maker=order["maker"], signer=order["signer"],
        tokenId=str(order["tokenId"]), makerAmount=str(maker_amount), takerAmount=str(taker_amount),
        side=Side.BUY if side == "BUY" else Side.SELL,
        signatureType=SignatureTypeV2(int(order["signatureType"])),
        timestamp=str(int(order["timestamp"])), metadata=order["metadata"], builder=order["builder"],
        expiration=str(order["expiration"]),
    )
    typed = builder.build_order_typed_data(unsigned)
    return SignedOrder(
        order_hash=builder.build_order_hash(typed), maker=order["maker"], signer=order["signer"],
        token_id=str(order["tokenId"]), maker_amount=maker_amount, taker_amount=taker_amount,
        side=side, signature_type=int(order["signatureType"]), expiration=str(order["expiration"]),
        signature=str(order["signature"]), typed_data=typed,
    )


def recovered_signer(order: SignedOrder) -> str | None:
    """The EOA whose EIP-712 signature this is (None when it is not a valid 65-byte signature).
    POLY_1271 (smart-wallet) signatures are not supported by the fake and never verify."""
    if order.signature_type == int(SignatureTypeV2.POLY_1271):
        return None
    try:
        # The order hash is the EIP-712 digest that was signed: recover from it directly rather
        # than encoding the typed data a second time.
        return Account._recover_hash(bytes.fromhex(order.order_hash[2:]),
                                     signature=bytes.fromhex(order.signature.removeprefix("0x")))
    except Exception:
        return None
