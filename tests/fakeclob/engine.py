"""POST /order: validation in the order the fake checks it, then matching against resting bids.

Rejections raise `Reject(status, body)` and change nothing, except a killed FOK/FAK: the real CLOB
acknowledges it (the 400 carries its orderID, `/data/order` knows it, a re-post is `Duplicated`), so it
is recorded as CANCELED with nothing matched. A SELL matches bids best price first at or above its
limit price, one trade per bid level consumed; price improvement goes to the seller.
BUY support is minimal: there is no ask side, so a BUY FOK/FAK is killed and a GTC/GTD BUY rests.
"""

from __future__ import annotations

import time
from decimal import Decimal
from fractions import Fraction

from . import signing
from .state import Level, Order, State, Trade
from .wire import (
    ERR_BUY_PRECISION,
    ERR_FAK,
    ERR_FOK,
    ERR_INVALID_TOKEN,
    ERR_MARKET_NOT_READY,
    ERR_ORDER_PAYLOAD,
    ERR_OWNER,
    ERR_SELL_PRECISION,
    ERR_SIGNATURE,
    ERR_SIGNER,
    ERR_VERSION_MISMATCH,
    RAW_PER_SHARE,
    SHARE_STEP_RAW,
    USDC_STEP_RAW,
    err_balance,
    err_book_gone,
    err_duplicated,
    err_min_size,
    err_tick,
    fmt_fraction,
    units,
)

ORDER_TYPES = ("GTC", "GTD", "FOK", "FAK")
IMMEDIATE = ("FOK", "FAK")


class Reject(Exception):
    """An answer other than 200; `body` is sent as-is (dict -> JSON)."""

    def __init__(self, status: int, body: dict | str) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body


def _error(message: str, status: int = 400) -> Reject:
    return Reject(status, {"error": message})


def post_order(state: State, payload: object, api_key: str, address: str) -> dict:
    """Run one authenticated POST /order and return the 200 body (or raise Reject)."""
    with state.lock:
        order_type, parsed, market = _validate_envelope(state, payload, api_key, address)
        shares, usdc = ((parsed.maker_amount, parsed.taker_amount) if parsed.side == "SELL"
                        else (parsed.taker_amount, parsed.maker_amount))
        _validate_amounts(state, parsed, order_type, shares, usdc, market)
        if parsed.side == "SELL":
            return _match_sell(state, parsed, order_type, shares, usdc, market, api_key)
        return _rest_or_kill_buy(state, parsed, order_type, shares, usdc, market, api_key)


def _validate_envelope(state, payload, api_key, address):
    if not isinstance(payload, dict) or not isinstance(payload.get("order"), dict):
        raise _error(ERR_ORDER_PAYLOAD)
    order_type = payload.get("orderType")
    if order_type not in ORDER_TYPES:
        raise _error(ERR_ORDER_PAYLOAD)
    order = payload["order"]
    if signing.is_v1_shaped(order):
        raise _error(ERR_VERSION_MISMATCH)
    if payload.get("owner") != api_key:
        raise _error(ERR_OWNER)
    market = state.market_of(str(order.get("tokenId")))
    if market is None:
        raise _error(ERR_INVALID_TOKEN)
    try:
        parsed = signing.parse(order, state.chain_id, market.neg_risk, v2=market.v2)
    except Exception:
        raise _error(ERR_ORDER_PAYLOAD) from None
    if parsed.signer.lower() != address.lower():
        raise _error(ERR_SIGNER)
    if parsed.signature_type == 0 and parsed.maker.lower() != address.lower():
        raise _error(ERR_OWNER)
    recovered = signing.recovered_signer(parsed)
    if recovered is None or recovered.lower() != parsed.signer.lower():
        raise _error(ERR_SIGNATURE)
    if parsed.order_hash in state.orders:
        raise _error(err_duplicated(parsed.order_hash))
    # Where the real engine checks the market's state is undocumented [fake]: after the sender is known.
    if market.closed:
        raise _error(err_book_gone(market.condition_id))
    if state.not_ready.get(market.condition_id, 0) > 0:
        state.not_ready[market.condition_id] -= 1
        raise _error(ERR_MARKET_NOT_READY)
    return order_type, parsed, market


def _validate_amounts(state, parsed, order_type, shares, usdc, market) -> None:
    oid = parsed.order_hash
    if parsed.side == "SELL":
        # Maker (shares) at most 2 dp; a FOK/FAK taker (pUSD) at most 4 dp.
        if shares % SHARE_STEP_RAW or (order_type in IMMEDIATE and usdc % USDC_STEP_RAW):
            raise _error(ERR_SELL_PRECISION)
    elif order_type in IMMEDIATE and (usdc % SHARE_STEP_RAW or shares % USDC_STEP_RAW):
        raise _error(ERR_BUY_PRECISION)
    price = Fraction(usdc, shares)
    tick = Fraction(market.tick_size)
    if (price / tick).denominator != 1 or not tick <= price <= 1 - tick:
        raise _error(err_tick(oid, fmt_fraction(price), market.tick_size))
    if shares < int(market.min_order_size * RAW_PER_SHARE):
        raise _error(err_min_size(oid, units(shares), market.min_order_size))
    if parsed.side == "SELL":
        cached = state.ledger(parsed.token_id)[1].get(parsed.token_id, 0)
        if shares > cached:  # the real check reads the server's cache, not the chain
            raise _error(err_balance(cached, shares))


def _record(state, parsed, order_type, shares, usdc, market, api_key, status, matched, trades):
    state.orders[parsed.order_hash] = Order(
        id=parsed.order_hash, status=status, owner=api_key, maker_address=parsed.maker,
        condition_id=market.condition_id, token_id=parsed.token_id, side=parsed.side,
        original_raw=shares, matched_raw=matched, price=fmt_fraction(Fraction(usdc, shares)),
        outcome=market.outcome(parsed.token_id), expiration=parsed.expiration,
        order_type=order_type, trade_ids=[t.id for t in trades], created_at=int(time.time()),
    )
    state.publish("order", state.orders[parsed.order_hash])


def _kill(state, parsed, order_type, shares, usdc, market, api_key, message) -> Reject:
    _record(state, parsed, order_type, shares, usdc, market, api_key, "CANCELED", 0, [])
    return Reject(400, {"error": message, "orderID": parsed.order_hash})


def _match_sell(state, parsed, order_type, shares, usdc, market, api_key) -> dict:
    limit = Fraction(usdc, shares)
    book = state.bids.get(parsed.token_id, [])
    eligible = [level for level in book if Fraction(level.price) >= limit]  # book is best first
    available = sum(level.size_raw for level in eligible)
    if order_type == "FOK" and available < shares:
        raise _kill(state, parsed, order_type, shares, usdc, market, api_key, ERR_FOK)
    if order_type == "FAK" and available == 0:
        raise _kill(state, parsed, order_type, shares, usdc, market, api_key, ERR_FAK)

    fills: list[tuple[Level, int, int]] = []
    remaining = shares
    for level in eligible:
        if remaining == 0:
            break
        take = min(level.size_raw, remaining)
        proceeds = Fraction(take) * Fraction(level.price)
        fills.append((level, take, proceeds.numerator // proceeds.denominator))  # floor: never pay more
        level.size_raw -= take
        remaining -= take
    state.bids[parsed.token_id] = [level for level in book if level.size_raw > 0]

    matched = shares - remaining
    now = int(time.time())
    trades = _book_fills(state, parsed, market, api_key, fills, now)
    rests = remaining > 0 and order_type in ("GTC", "GTD")
    status = "LIVE" if rests else ("MATCHED" if matched else "CANCELED")
    _record(state, parsed, order_type, shares, usdc, market, api_key, status, matched, trades)
    return _reply(parsed.order_hash, matched, sum(f[2] for f in fills), trades,
                  "matched" if matched else "live", hashes=state.settlement == "instant")


def _book_fills(state, parsed, market, api_key, fills, now) -> list[Trade]:
    """Apply the fills to balances and create one trade per level, settled per `state.settlement`."""
    matched = sum(take for _, take, _ in fills)
    if not matched:
        return []
    token = parsed.token_id
    # The cache never exceeds the chain (fills lower both, credits and failed settlements only raise
    # the chain), so the balance check on the cache also covers the chain.
    chain, cache = state.ledger(token)
    cache[token] = cache.get(token, 0) - matched
    chain[token] = chain.get(token, 0) - matched
    trades = []
    for level, take, _proceeds in fills:
        trade = Trade(
            id=state.trade_id(), taker_order_id=parsed.order_hash, condition_id=market.condition_id,
            token_id=token, side=parsed.side, price=level.price, size_raw=take,
            status="MATCHED", match_time=now, last_update=now, outcome=market.outcome(token),
            owner=api_key, maker_address=parsed.maker, maker_order_id=level.order_id,
        )
        state.publish("trade", trade)  # MATCHED, before any settlement moves it on
        if state.settlement in ("instant", "after_reply"):
            state.settle(trade, "CONFIRMED", now)
        state.trades.append(trade)
        trades.append(trade)
    return trades


def _reply(order_id: str, making: int, taking: int, trades: list[Trade], status: str, *, hashes: bool) -> dict:
    body: dict = {
        "errorMsg": "", "orderID": order_id,
        "takingAmount": units(taking) if trades else "",
        "makingAmount": units(making) if trades else "",
        "status": status, "success": True,
    }
    if trades:
        body["tradeIDs"] = [t.id for t in trades]
        known = [t.transaction_hash for t in trades if t.status != "FAILED" and t.transaction_hash]
        if hashes and known:  # only when settlement is already known at reply time ("instant")
            body["transactionsHashes"] = known
    return body


def _rest_or_kill_buy(state, parsed, order_type, shares, usdc, market, api_key) -> dict:
    if order_type == "FOK":
        raise _kill(state, parsed, order_type, shares, usdc, market, api_key, ERR_FOK)
    if order_type == "FAK":
        raise _kill(state, parsed, order_type, shares, usdc, market, api_key, ERR_FAK)
    _record(state, parsed, order_type, shares, usdc, market, api_key, "LIVE", 0, [])
    return _reply(parsed.order_hash, 0, 0, [], "live", hashes=False)


def sorted_levels(levels: list[tuple[Decimal, int, str]]) -> list[Level]:
    """Bids best (highest price) first; ties keep the caller's order (time priority)."""
    return [Level(p, s, oid) for p, s, oid in sorted(levels, key=lambda x: -x[0])]
