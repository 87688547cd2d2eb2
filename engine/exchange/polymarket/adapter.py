"""PolymarketExchange: the exchange port on py-clob-client-v2 (CLOB V2).

The client builds and signs orders (EIP-712, with coincurve) and the L1/L2 auth headers; the adapter sends every
request itself (transport.py: one `httpx.AsyncClient` on the event loop, keep-alive, no worker threads), under a
rate-limit bucket and a deadline that is a cancel scope, and reads every answer's status, headers and body.
Three of the client's habits are kept away from exits:
- `post_order` polls /data/trades for up to 30 s when a match has no settlement hash yet; a "matched"
  reply already is the fill, so the adapter posts the signed order itself and follows settlement later;
- `retry_on_error=True` re-posts once on 5xx or a dropped connection; the adapter's post never retries
  (a re-post is answered "Duplicated" and may double an exit's risk);
- its HTTP helpers log every non-200 at ERROR through stdlib logging and parse bodies with `resp.json()`;
  the adapter logs nothing there and parses with a depth and size guard.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any, Self

import anyio
from py_clob_client_v2.client import ClobClient

from exitguard.clock import Clock, SystemClock
from exitguard.errors import ExchangeError, OrderRejected, TransientError, UnknownOutcome
from exitguard.exchange.polymarket import answers, endpoints, history, reads
from exitguard.exchange.polymarket.channel import AUTO, FollowsUserChannel, user_channel
from exitguard.exchange.polymarket.orders import ORDER_VERSION, ExactAmountsBuilder, SignedSell, sign_sell
from exitguard.exchange.polymarket.ratelimit import TIER_PATH, Family, Limit, RateLimited, RateLimits, Tier
from exitguard.exchange.polymarket.secrets import MaskedCreds, MaskedHeaders, mask_text, secure_client
from exitguard.exchange.polymarket.settings import PolymarketSettings
from exitguard.exchange.polymarket.transport import Answer, NoAnswer, Transport, read_body
from exitguard.exchange.port import Fill, LookupStatus, SellDeadline, SellLookup, Settlement
from exitguard.settings import parse_count, parse_seconds
from exitguard.states import InvalidValue, MarketRules, PermitError, SellPermit


class PolymarketExchange(FollowsUserChannel):  # the port's optional follow_fills: channel.py
    """The real exchange. Build it from a `ClobClient` (L2: key and API credentials) or from settings, and close
    it when done (its connections belong to the event loop it ran in):

    ```python
    async with PolymarketExchange.from_settings(PolymarketSettings.from_env()) as exchange:
        ...
    ```
    """

    def __init__(
        self,
        client: ClobClient,
        *,
        call_timeout: float = 5.0,
        max_connections: int = 64,
        max_order_wait: float = 0.5,
        rate_limits: dict[Family, Limit] | None = None,
        rate_tier: Tier | str | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Any] | None = None,
        user_channel_url: str | None = AUTO,
    ) -> None:
        if not isinstance(client, ClobClient):
            raise InvalidValue("client", type(client).__name__, "must be a py_clob_client_v2 ClobClient")
        if client.signer is None:
            raise InvalidValue("client", "ClobClient without a key", "selling needs a signing key (L1)")
        secure_client(client)  # masked key and credentials (same values), and the HTTP logs redact them
        self.client = client
        self.call_timeout = parse_seconds(call_timeout, "call_timeout")
        self.max_order_wait = parse_seconds(max_order_wait, "max_order_wait", allow_zero=True)
        self.clock: Clock = clock or SystemClock()
        self.limits = RateLimits(rate_limits, now=self.clock.monotonic, sleep=sleep or anyio.sleep, tier=rate_tier,
                                 wall=lambda: self.clock.wall().timestamp())
        self.user_channel = user_channel(client.host, user_channel_url)  # None: off (channel.py)
        self.transport = Transport(client.host, max_connections=parse_count(max_connections, "max_connections"),
                                   timeout=self.call_timeout)
        self._builder = ExactAmountsBuilder(client.signer, client.builder.signature_type, client.builder.funder)
        self._markets: dict[str, reads.TokenMarket] = {}
        self._warming: dict[str, anyio.Event] = {}
        self._version: int | None = None
        self._prepared: dict[str, tuple[SignedSell, Decimal]] = {}
        """attempt id -> an order signed by prepare_sell, not yet posted."""
        self._signed: dict[str, SignedSell] = {}
        """attempt id -> the order signed for it; kept so that a lost answer can be looked up by id."""
        self._creds_lock = anyio.Lock()
        self._posting: set[str] = set()
        """Order ids whose POST has not returned: the request may still be on its way out."""
        self._left: dict[str, float] = {}
        """Order id -> when its POST returned or was cancelled (monotonic): the request left our hands."""
        self._given_up: dict[str, float] = {}
        """Order id -> when `sell` returned or raised (monotonic). With cancel scopes both are the same moment;
        `left_late` stays in the port for adapters whose request can outlive the call."""

    @classmethod
    def from_settings(cls, settings: PolymarketSettings, **options: Any) -> PolymarketExchange:
        if not isinstance(settings, PolymarketSettings):
            raise InvalidValue("settings", type(settings).__name__, "must be PolymarketSettings")
        creds = None
        if settings.api_key is not None and settings.api_secret is not None and settings.api_passphrase is not None:
            creds = MaskedCreds(settings.api_key, settings.api_secret, settings.api_passphrase)
        try:
            client = ClobClient(settings.host, settings.chain_id, key=settings.private_key.reveal(), creds=creds,
                                signature_type=settings.signature_type, funder=settings.funder,
                                retry_on_error=False)
            secure_client(client)
        except Exception as err:  # noqa: BLE001 - the client's own errors may quote the key
            raise InvalidValue("POLYMARKET_PRIVATE_KEY", "<redacted>",
                               f"the client refused the settings ({type(err).__name__})") from None
        return cls(client, **{"rate_tier": settings.rate_tier, "user_channel_url": settings.channel_url, **options})

    async def aclose(self) -> None:
        """Close the connections (idempotent; the exchange opens new ones if used again)."""
        await self.transport.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        traceback: TracebackType | None) -> None:
        await self.aclose()

    @property
    def wallet(self) -> str:
        """The wallet traded (the port's `wallet`): the funder holding the shares, else the signer's address."""
        return str(self.client.builder.funder or self.client.signer.address()).lower()

    def __repr__(self) -> str:
        return (f"PolymarketExchange(host={self.client.host!r}, chain_id={self.client.chain_id}, "
                f"address={self.client.signer.address()!r}, markets_warm={len(self._markets)})")

    # -- the exchange port -------------------------------------------------------------------------

    async def get_balance(self, token_id: str) -> object:
        await self._ensure_creds()
        body = await self._read(Family.BALANCE, "balance", endpoints.GET_BALANCE_ALLOWANCE,
                                endpoints.balance_params(self.client, token_id))
        if not isinstance(body, dict) or "balance" not in body:
            raise TransientError(f"balance-allowance for token_id={token_id}: answer without a balance: "
                                 f"{_short(body)}")
        return body["balance"]

    async def refresh_balance(self, token_id: str) -> None:
        await self._ensure_creds()
        await self._read(Family.BALANCE_UPDATE, "balance refresh", endpoints.UPDATE_BALANCE_ALLOWANCE,
                         endpoints.balance_params(self.client, token_id))

    async def market_rules(self, token_id: str) -> MarketRules:
        return (await self._market(token_id)).rules

    async def warm_up(self, token_id: str) -> None:
        await self._ensure_creds()
        await self._read_tier()
        await self._market(token_id)

    async def reserve_sell(self, attempt_id: str) -> None:
        """The port's optional reservation (port.py): the order's IP and signer slots, taken before the balance read."""
        await self.limits.reserve(attempt_id)

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal) -> str:
        return (await self._prepare(permit, limit_price)).order_id

    async def _prepare(self, permit: SellPermit, limit_price: Decimal) -> SignedSell:
        if not isinstance(permit, SellPermit):
            raise PermitError(f"polymarket: sell needs a SellPermit, got {type(permit).__name__}; nothing sent")
        prepared = self._prepared.pop(permit.attempt_id, None)
        if prepared is not None and prepared[1] == limit_price:
            return prepared[0]
        await self._ensure_creds()
        market = await self._market(permit.token_id)
        version = await self._order_version()
        if version != ORDER_VERSION:
            raise OrderRejected(f"exchange runs order version {version}; this adapter signs V{ORDER_VERSION} "
                                "orders only; nothing sent")
        try:
            signed = sign_sell(self._builder, permit, limit_price, market.rules, neg_risk=market.neg_risk,
                               chain_id=self.client.chain_id)
        except Exception as err:  # the signer's frames hold the key: re-raised without them, message masked
            raise PermitError(f"polymarket: signing the order for {permit.token_id} failed ({type(err).__name__}: "
                              f"{mask_text(str(err)[:100])}); nothing sent") from None
        self._prepared[permit.attempt_id] = (signed, limit_price)
        return signed

    async def sell(self, permit: SellPermit, limit_price: Decimal, *, deadline: SellDeadline) -> Fill:
        if isinstance(permit, SellPermit) and permit.attempt_id in self._signed:
            raise PermitError(f"polymarket: permit {permit.attempt_id} already used; nothing sent")
        signed = await self._prepare(permit, limit_price)
        self._prepared.pop(permit.attempt_id, None)

        # The order slot. The permit's verification ages while the post waits: past `max_order_wait`, or past the
        # permit's own deadline, give the slot up (nothing sent) and let the next attempt verify afresh.
        try:
            await self.limits.acquire_order(permit.attempt_id, max(0.0, min(self.max_order_wait, deadline.remaining())))
        except RateLimited as err:
            deadline.check(f"order {signed.order_id}")
            raise TransientError(f"order for {permit.token_id}: {err}; nothing sent") from None

        deadline.check(f"order {signed.order_id}")
        self._signed[permit.attempt_id] = signed
        try:
            answer = await self._post(signed, deadline)
        finally:
            self._given_up[signed.order_id] = self.clock.monotonic()
        if isinstance(answer, NoAnswer):
            if not answer.maybe_sent:  # a connect that failed (or timed out) before any byte was written
                raise TransientError(f"order {signed.order_id}: cannot reach {self.client.host}: {answer.cause}; "
                                     "nothing sent")
            if answer.timed_out:
                raise UnknownOutcome(f"order {signed.order_id}: no answer within {self.call_timeout}s; it may "
                                     "have executed") from None
            result = answers.post_answer(None, answer.cause, signed)
        else:
            result = answers.post_answer(answer.status, answer.readable_body, signed)
        if isinstance(result, ExchangeError):
            if isinstance(answer, Answer) and answers.is_version_mismatch(answer.body):
                self._version = None
            elif isinstance(result, OrderRejected):
                # Tick and minimum size can change (ticks shrink near 0 and 1): look them up again next time.
                self._markets.pop(permit.token_id, None)
            raise result
        return result

    async def lookup_sell(self, permit: SellPermit, order_id: str | None = None) -> SellLookup:
        """What the exchange shows of the order (exitguard.exchange.polymarket.reads): the order endpoint
        first; when it knows nothing (a 404, `null`, an empty or unreadable body) or cannot conclude, the
        trades of the token since the order was signed. A failed read raises: it is no empty answer."""
        signed = self._signed.get(permit.attempt_id)
        if signed is None and order_id is None:
            # Without a journal, orders are known only to the adapter that signed them: one this adapter
            # never signed was never sent by this process (the engine still waits out its horizon).
            return SellLookup(LookupStatus.NOT_FOUND)
        ref = reads.OrderRef.of(signed) if signed is not None else reads.OrderRef.recovered(
            order_id, permit)  # type: ignore[arg-type]
        if ref.order_id in self._posting:
            return SellLookup(LookupStatus.PENDING)
        late = max(0.0, self._left.get(ref.order_id, 0.0) - self._given_up.get(ref.order_id, math.inf))
        await self._ensure_creds()
        try:
            order = await self._read(Family.ORDER_LOOKUP, "order lookup", endpoints.order_path(ref.order_id))
        except TransientError as err:
            if err.status != 404:
                raise
            order = None  # unknown to the order endpoint, which forgets finished orders: the trades decide
        shown = None
        if reads.is_order(order, ref):
            assert isinstance(order, dict)
            shown = reads.order_lookup(order, await self._trades(reads.associated_trades(order)), ref)
            if shown.status in (LookupStatus.FILLED, LookupStatus.NOT_FILLED):
                return replace(shown, left_late=late)
        recent = await self._trade_pages("trade lookup", asset_id=ref.token_id, after=ref.trades_after)
        found = reads.lookup_from_trades(recent, ref)
        if found.status is LookupStatus.NOT_FOUND and shown is not None:
            found = shown  # the order endpoint shows it, not finished: it may still fill
        return replace(found, left_late=late)

    async def our_sells_since(self, since: datetime) -> list[str]:
        """The port's optional audit after an unclean stop (exitguard.journal.audit): ids of our sell orders with a
        trade at or after `since`, from every page of our trade history (history.py). Any failed page raises."""
        await self._ensure_creds()
        # Our address as our orders carry it (their `maker`): the filter may not ignore its case.
        query = history.trades_query(str(self.client.builder.funder or self.client.signer.address()), since)
        pages = history.SalesPages(self.wallet)
        while not pages.done:
            pages.read(await self._read(Family.TRADES, "trade audit", endpoints.TRADES,
                                        history.page_params(query, pages.cursor)))
        return pages.orders()

    async def settlement(self, fill: Fill) -> Settlement:
        await self._ensure_creds()
        return reads.settlement(fill, await self._trades(fill.trade_ids))

    async def _trades(self, trade_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        trades: list[dict[str, Any]] = []
        for trade_id in trade_ids:
            found = await self._trade_pages("trade lookup", trade_id=trade_id, first_page_only=True)
            trades.extend(t for t in found if isinstance(t, dict) and t.get("id") == trade_id)
        return trades

    # -- internals ---------------------------------------------------------------------------------

    async def _post(self, signed: SignedSell, deadline: SellDeadline) -> Answer | NoAnswer:
        """One POST /order, never retried. Raises PermitExpired, with nothing sent, when the wait for a
        connection outlived the permit: the deadline is checked again right before the first byte is written."""
        body = endpoints.order_body(self.client, signed.order)
        headers = endpoints.l2_headers(self.client, "POST", endpoints.POST_ORDER, body)
        self._posting.add(signed.order_id)
        try:
            with anyio.move_on_after(self.call_timeout) as scope:
                answer = await self.transport.request("POST", endpoints.POST_ORDER, headers=headers, content=body,
                                                      before_send=lambda: deadline.check(f"order {signed.order_id}"))
            if scope.cancelled_caught:
                return NoAnswer("timed out", maybe_sent=True, timed_out=True)
        finally:
            # The request has left our hands only now (answered, failed, or cancelled with its connection
            # closed): the lookup horizon counts from here, and until here a lookup cannot conclude anything.
            self._left[signed.order_id] = self.clock.monotonic()
            self._posting.discard(signed.order_id)
        if isinstance(answer, Answer):
            self.limits.observe(Family.ORDER, answer.status, answer.headers)
        return answer

    async def _read_tier(self) -> None:
        """The signer's rate-limit tier, read once at warm-up (ratelimit.py); a failed read keeps the tier in use."""
        if self.limits.begin_tier_read():
            try:
                self.limits.tier_read(await self._read(Family.GENERAL, "rate-limit tier", TIER_PATH))
            except ExchangeError as err:
                self.limits.tier_read(err)

    async def _market(self, token_id: str) -> reads.TokenMarket:
        while True:
            market = self._markets.get(token_id)
            if market is not None:
                return market
            warming = self._warming.get(token_id)
            if warming is None:
                break
            # A warm-up is already fetching it: wait for that instead of asking twice (if it failed, the
            # loop asks again).
            await warming.wait()
        done = self._warming[token_id] = anyio.Event()
        try:
            failed: Exception | None = None
            async with anyio.create_task_group() as group:
                if self._version is None:  # the adapter's first market: the version beside the book, not after it
                    group.start_soon(self._prefetch_version)
                try:
                    book = await self._read(Family.BOOK, "order book", endpoints.GET_ORDER_BOOK,
                                            {"token_id": token_id}, auth=False)
                except Exception as err:  # noqa: BLE001 - raised as it is below, not wrapped in a group
                    failed = err
            if failed is not None:
                raise failed
            market = reads.market_from_book(token_id, book)
            await self._order_version()
        finally:
            del self._warming[token_id]
            done.set()
        self._markets[token_id] = market
        return market

    async def _prefetch_version(self) -> None:
        with contextlib.suppress(ExchangeError):  # a failed read is asked again where the version is needed
            await self._order_version()

    async def _order_version(self) -> int:
        version = self._version
        if version is None:
            try:
                body = await self._read(Family.GENERAL, "version", endpoints.VERSION, auth=False)
            except TransientError:
                body = None
            version = self._version = endpoints.version_of(body, ORDER_VERSION)
        return version

    async def _ensure_creds(self) -> None:
        if self.client.creds is not None:
            return
        async with self._creds_lock:
            if self.client.creds is None:
                body = await self._read(Family.GENERAL, "API key derivation", endpoints.DERIVE_API_KEY, auth=None)
                self.client.set_api_creds(endpoints.derived_creds(body))
                secure_client(self.client)

    async def _trade_pages(self, what: str, *, asset_id: str | None = None, after: int | None = None,
                           trade_id: str | None = None, first_page_only: bool = False) -> list[object]:
        """Every trade of a GET /data/trades query (or its first page), each page its own request (history.py)."""
        pages = history.TradePages(what, first_page_only=first_page_only)
        while not pages.done:
            pages.read(await self._read(Family.TRADES, what, endpoints.TRADES, endpoints.trade_params(
                asset_id=asset_id, after=after, trade_id=trade_id, cursor=pages.cursor)))
        return pages.found

    async def _read(self, family: Family, what: str, path: str, params: dict[str, str] | None = None, *,
                    auth: bool | None = True) -> object:
        """A GET that changes nothing on the exchange: on timeout or transport error it failed, no more.
        `auth`: True for the L2 (API key) headers, None for L1 (the signer's), False for none."""
        await self.limits.acquire(family)
        if auth:
            headers = endpoints.l2_headers(self.client, "GET", path)
        else:
            headers = endpoints.l1_headers(self.client) if auth is None else MaskedHeaders()
        answer: Answer | NoAnswer = NoAnswer("timed out", maybe_sent=True, timed_out=True)
        with anyio.move_on_after(self.call_timeout):
            answer = await self.transport.request("GET", path, headers=headers, params=params)
        if isinstance(answer, Answer):
            self.limits.observe(family, answer.status, answer.headers)
        return read_body(what, answer, host=self.client.host, timeout=self.call_timeout)


def _short(body: object, limit: int = 200) -> str:
    text = repr(body)
    return text if len(text) <= limit else text[:limit] + "..."
