"""Signing a FOK SELL for exactly the permit's shares, and knowing its order id before it is posted.

py-clob-client-v2 computes order amounts in floats: `round_down(4.35, 2)` is `floor(434.99999999999994)
/ 100` = 4.34, so the order it signs can differ from the size asked for. Here the amounts come from exact
integers (micro-shares x a Decimal price) and everything else (contract routing, salt, timestamp,
EIP-712 signature) from the client's own builder. The signed amounts are then checked against the permit:
a mismatch refuses the sell before anything is sent.

Which exchange an order is signed for follows from the id alone (positions.py), as in the official SDK: a
Protocol V2 position id is signed for ExchangeV3 (EIP-712 domain version "3", the client config's
`exchange_v3`, never neg-risk), a CTF token id for CTFExchangeV2 (domain "2", or its neg-risk twin).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from py_clob_client_v2.clob_types import CreateOrderOptions, OrderArgsV2
from py_clob_client_v2.config import get_contract_config
from py_clob_client_v2.order_builder.builder import ROUNDING_CONFIG, OrderBuilder
from py_clob_client_v2.order_utils import ExchangeOrderBuilderV2, Side

from exitguard.exchange.polymarket.positions import is_v2_position_id
from exitguard.states import MICRO, MarketRules, PermitError, SellPermit, exact

FOK_TAKER_UNIT = 100
"""Raw USDC units: FOK/FAK taker amounts have at most 4 decimals."""

ORDER_VERSION = 2
"""CLOB V2 orders (the exchange refuses V1 signatures since 2026-04-28)."""
POSITION_ORDER_VERSION = 3
"""The EIP-712 domain version of ExchangeV3, which settles Protocol V2 positions. The client's builder picks it
for `OrderArgsV2(position_id=...)` whatever version it is asked for; `/version` still answers 2 (CTF orders)."""


class ExactAmountsBuilder(OrderBuilder):  # type: ignore[misc]  # the client ships no type hints
    """The client's OrderBuilder with exact amounts: size and price arrive as Decimal, never float."""

    def get_order_amounts(self, side: Any, size: Any, price: Any, round_config: Any) -> tuple[Side, int, int]:
        if side not in ("SELL", Side.SELL) or not isinstance(size, Decimal) or not isinstance(price, Decimal):
            raise PermitError("exact order amounts: only SELL with Decimal size and price is built here")
        with exact():
            maker = size * MICRO
            if maker != maker.to_integral_value():
                raise PermitError(f"exact order amounts: {size} shares are not whole micro-units")
            # The exchange takes FOK taker amounts to 4 decimals (100 raw units): the proceeds we insist on
            # round down, by less than 0.0001 USDC, so a sell at the limit still matches.
            taker = (maker * price) // FOK_TAKER_UNIT * FOK_TAKER_UNIT
        return Side.SELL, int(maker), int(taker)


@dataclass(frozen=True, slots=True)
class SignedSell:
    order: Any
    """py_clob_client_v2's SignedOrderV2."""
    order_id: str
    """The order hash: the id the exchange answers with, known before posting (lost responses are looked up)."""
    shares: int
    taker_amount: int
    token_id: str
    signed_at: int
    """Unix seconds from the order's own timestamp (a lower bound for its trades' match time)."""


def sign_sell(builder: ExactAmountsBuilder, permit: SellPermit, limit_price: Decimal, rules: MarketRules,
              *, neg_risk: bool, chain_id: int) -> SignedSell:
    if permit.shares % rules.size_step:
        raise PermitError(f"permit for {permit.shares} raw units of {permit.token_id} is off the "
                          f"{rules.size_step}-unit size step; nothing sent")
    with exact():
        tick = format(rules.tick_size.normalize(), "f")
    if tick not in ROUNDING_CONFIG:
        raise PermitError(f"tick size {tick} of token {permit.token_id} is not one the client can sign for")
    v2 = is_v2_position_id(permit.token_id)
    # A V2 position is never signed neg-risk, even when its book says `neg_risk`: ExchangeV3 settles every
    # Protocol V2 module (binary, neg-risk, combinatorial; the module is the id's top byte), and the client
    # itself signs V3 without neg-risk (`neg_risk = False if version == 3`). Refusing would leave such a
    # position unsellable; signing it for the neg-risk CTF exchange would be refused by the exchange.
    neg_risk = neg_risk and not v2
    with exact():  # the client's builder runs in our decimal context too, never the application's
        size = Decimal(permit.shares) / MICRO
        args = (OrderArgsV2(position_id=permit.token_id, price=limit_price, size=size, side="SELL") if v2
                else OrderArgsV2(token_id=permit.token_id, price=limit_price, size=size, side="SELL"))
        order = builder.build_order(args, CreateOrderOptions(tick_size=tick, neg_risk=neg_risk),
                                    version=POSITION_ORDER_VERSION if v2 else ORDER_VERSION)
    if int(order.makerAmount) != permit.shares or int(order.side) != int(Side.SELL) \
            or order.tokenId != permit.token_id:
        raise PermitError(f"signed order sells {order.makerAmount} raw units of {order.tokenId}, the permit "
                          f"allows {permit.shares} of {permit.token_id}; nothing sent")
    return SignedSell(order=order, order_id=order_hash(order, builder, neg_risk=neg_risk, chain_id=chain_id),
                      shares=permit.shares, taker_amount=int(order.takerAmount), token_id=permit.token_id,
                      signed_at=int(order.timestamp) // 1000)


def order_hash(order: Any, builder: OrderBuilder, *, neg_risk: bool, chain_id: int) -> str:
    """The order's EIP-712 hash for the exchange it was signed for: the id the CLOB answers with."""
    config = get_contract_config(chain_id)
    if is_v2_position_id(str(order.tokenId)):
        exchange, version = config.exchange_v3, POSITION_ORDER_VERSION
    else:
        exchange, version = (config.neg_risk_exchange_v2 if neg_risk else config.exchange_v2), ORDER_VERSION
    eip712 = ExchangeOrderBuilderV2(exchange, chain_id, builder.signer, domain_version=str(version))
    return str(eip712.build_order_hash(eip712.build_order_typed_data(order)))
