"""The reads a verification makes: the market's rules (cached) and the balance, with the exchange's balance
cache refreshed wherever it may lag (states.balance_refresh decides where).

A token is marked "refresh first" by what the engine learns about its cache: our own fill on it (or a lookup
that found one), a refusal for lack of balance. The mark stays until a refresh of that token has succeeded:
a refresh that fails leaves it for the next verification, so a cache known to be behind is never trusted.

A token whose market no longer trades (closed or resolved, its book gone) is marked closed when the engine learns
it (a rules read at warm-up or in an attempt, a sell refused for it): from then on its rules read raises
MarketClosed at once, with nothing asked of the exchange. Nothing clears the mark but a new engine: a Polymarket
market does not reopen once closed, and a restarted engine learns the state afresh at warm-up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from decimal import Decimal

import anyio

from exitguard.errors import MarketClosed
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
        self._closed: dict[str, str] = {}
        """Token -> why its market is known closed (the exchange's words)."""
        # Optional (port.py, issue 12): adapters written before it keep working without it.
        self._reserve: Callable[[str], Awaitable[None]] | None = getattr(exchange, "reserve_sell", None)
        self.reserves = self._reserve is not None
        """Whether the exchange offers `reserve_sell`: without it an attempt skips `reserve`, which awaits nothing."""
        self._on_tick: tuple[Decimal, MarketRules] | None = None
        """The last (price, rules) found on the tick: the exit's own check, asked again by its attempt."""

    # -- the sell's slot ---------------------------------------------------------------------------

    async def reserve(self, attempt_id: str) -> None:
        """Take the attempt's rate-limit slot before the balance is read, where the exchange offers it: a wait
        for the slot then ages no permit. Raises what the adapter raises (a failed verification: nothing sent)."""
        if self._reserve is not None:
            await self._reserve(attempt_id)

    # -- the balance -------------------------------------------------------------------------------

    def distrust_balance(self, token: str) -> None:
        """The next verification of the token refreshes the exchange's cache before it reads."""
        self._refresh_first.add(token)

    def refresh_pending(self, token: str) -> bool:
        """Whether the token is marked "refresh first" (no refresh has succeeded since it was marked)."""
        return token in self._refresh_first

    async def balance(self, record: PositionRecord, *, settling: bool) -> int:
        """The exchange's balance for the record's token in micro-shares, refreshed first where the cache
        may lag (states.balance_refresh: a mark; a first reading below the shares held while the last buy
        settles (`settling`), or above them)."""
        token = record.token_id
        if balance_refresh(marked=token in self._refresh_first, reading=None, expected=record.expected,
                           settling=settling):
            return await self.fresh_balance(token)
        reading = await self._read(token)
        if balance_refresh(marked=False, reading=reading, expected=record.expected, settling=settling) is not None:
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

    def check_tick(self, price: Decimal, rules: MarketRules) -> None:
        """`check_tick`, answered at once for the very price and rules objects that passed last: both are immutable,
        so the answer is the same (an exit checks before its first attempt, which checks again)."""
        last = self._on_tick
        if last is not None and last[0] is price and last[1] is rules:
            return
        check_tick(price, rules)
        self._on_tick = price, rules

    def off_tick(self, price: Decimal, rules: MarketRules) -> InvalidValue | None:
        """The refusal of a price off the rules' tick, returned rather than raised; None when on the tick."""
        try:
            self.check_tick(price, rules)
        except InvalidValue as err:
            return err
        return None

    def forget_rules(self, token: str) -> None:
        self._rules.pop(token, None)

    async def market(self, token: object, timeout: float) -> MarketRules:
        """The rules a bot asks for (`ExitEngine.market`): the token checked first, the read bounded."""
        if not isinstance(token, str) or not token.strip():
            raise InvalidValue("token_id", token, "must be a non-empty string")
        with anyio.fail_after(timeout):
            return await self.rules(token)

    def remember_closed(self, token: str, why: str = "") -> None:
        """The token's market no longer trades: every later rules read of it raises MarketClosed at once."""
        self._closed.setdefault(token, why or "the exchange refused a sell: the market no longer trades")
        self._rules.pop(token, None)

    def check_open(self, token: str) -> None:
        """Raise MarketClosed, with nothing asked of the exchange, when the token's market is known closed."""
        why = self._closed.get(token)
        if why is not None:
            raise MarketClosed(f"market of token_id={token} known closed since: {why}")

    async def rules(self, token: str) -> MarketRules:
        self.check_open(token)
        rules = self._rules.get(token)
        if rules is None:
            try:
                rules = await self.exchange.market_rules(token)
            except MarketClosed as err:
                self.remember_closed(token, str(err))
                raise
            if not isinstance(rules, MarketRules):
                raise InvalidValue(f"market_rules[token_id={token}]", rules, "the exchange returned no MarketRules")
            self._rules[token] = rules
        return rules


def check_tick(price: Decimal, rules: MarketRules) -> None:
    """Refuse a limit price off the market's tick (before anything is sent)."""
    if not rules.price_is_on_tick(price):
        raise InvalidValue("limit_price", price, f"not on the market's tick size {rules.tick_size}")
