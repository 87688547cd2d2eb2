"""The reads a verification makes: the market's rules (cached) and the balance, with the exchange's balance
cache refreshed wherever it may lag (states.balance_refresh decides where).

A token is marked "refresh first" by what the engine learns about its cache: our own fill on it (or a lookup
that found one), a refusal for lack of balance. The mark stays until a refresh of that token has succeeded:
a refresh that fails leaves it for the next verification, so a cache known to be behind is never trusted.
"""

from __future__ import annotations

from decimal import Decimal

import anyio

from exitguard.exchange.port import Exchange
from exitguard.states import InvalidValue, MarketRules, PositionRecord, balance_refresh, parse_raw_balance
from exitguard.telemetry.metrics import EngineMetrics


class Verifier:
    """Balance and market-rule reads for one engine."""

    def __init__(self, exchange: Exchange, metrics: EngineMetrics) -> None:
        self.exchange = exchange
        self.metrics = metrics
        self._rules: dict[str, MarketRules] = {}
        self._refresh_first: set[str] = set()

    # -- the balance -------------------------------------------------------------------------------

    def distrust_balance(self, token: str) -> None:
        """The next verification of the token refreshes the exchange's cache before it reads."""
        self._refresh_first.add(token)

    def refresh_pending(self, token: str) -> bool:
        """Whether the token is marked "refresh first" (no refresh has succeeded since it was marked)."""
        return token in self._refresh_first

    async def balance(self, record: PositionRecord) -> int:
        """The exchange's balance for the record's token in micro-shares, refreshed first where the cache
        may lag (a mark, or a first reading other than the shares the position holds)."""
        token = record.token_id
        if balance_refresh(marked=token in self._refresh_first, reading=None, expected=record.expected):
            return await self.fresh_balance(token)
        reading = await self._read(token)
        if balance_refresh(marked=False, reading=reading, expected=record.expected) is not None:
            return await self.fresh_balance(token)
        return reading

    async def fresh_balance(self, token: str) -> int:
        """A balance read right after a successful refresh of the exchange's cache."""
        await self.exchange.refresh_balance(token)
        self.metrics.balance_refreshes += 1
        # Only now: a refresh that raised leaves the mark for the next verification.
        self._refresh_first.discard(token)
        return await self._read(token)

    async def _read(self, token: str) -> int:
        """One balance read in micro-shares; malformed answers raise."""
        return parse_raw_balance(await self.exchange.get_balance(token), f"balance[token_id={token}]")

    # -- the market's rules ------------------------------------------------------------------------

    def cached_rules(self, token: str) -> MarketRules | None:
        return self._rules.get(token)

    def forget_rules(self, token: str) -> None:
        self._rules.pop(token, None)

    async def market(self, token: object, timeout: float) -> MarketRules:
        """The rules a bot asks for (`ExitEngine.market`): the token checked first, the read bounded."""
        if not isinstance(token, str) or not token.strip():
            raise InvalidValue("token_id", token, "must be a non-empty string")
        with anyio.fail_after(timeout):
            return await self.rules(token)

    async def rules(self, token: str) -> MarketRules:
        rules = self._rules.get(token)
        if rules is None:
            rules = await self.exchange.market_rules(token)
            if not isinstance(rules, MarketRules):
                raise InvalidValue(f"market_rules[token_id={token}]", rules, "the exchange returned no MarketRules")
            self._rules[token] = rules
        return rules


def check_tick(price: Decimal, rules: MarketRules) -> None:
    """Refuse a limit price off the market's tick (before anything is sent)."""
    if not rules.price_is_on_tick(price):
        raise InvalidValue("limit_price", price, f"not on the market's tick size {rules.tick_size}")
