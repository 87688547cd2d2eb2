"""PolymarketExchange: the exchange port on py-clob-client-v2 (CLOB V2).

The client is synchronous (httpx), so every call runs in a worker thread under a capacity limiter, a
rate-limit bucket and a deadline. Three of the client's habits are kept away from exits:
- `post_order` polls /data/trades for up to 30 s when a match has no settlement hash yet; a "matched"
  reply already is the fill, so the adapter posts the signed order itself and follows settlement later;
- `retry_on_error=True` re-posts once on 5xx or a dropped connection; the adapter's post never retries
  (a re-post is answered "Duplicated" and may double an exit's risk);
- the client's module-global httpx client has a fixed 5 s timeout; the adapter sets its own deadline,
  and a post that outlives it is an unknown outcome, never a failure.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from py_clob_client_v2.client import ClobClient
from py_clob_client_v2.clob_types import (
    BalanceAllowanceParams,
    OrderType,
    RequestArgs,
    TradeParams,
)
from py_clob_client_v2.endpoints import POST_ORDER
from py_clob_client_v2.exceptions import PolyApiException, PolyException
from py_clob_client_v2.headers.headers import create_level_2_headers
from py_clob_client_v2.http_helpers import helpers as http
from py_clob_client_v2.order_utils.model.order_data_v2 import order_to_json_v2

from exitguard.clock import Clock, SystemClock
from exitguard.errors import ExchangeError, OrderRejected, TransientError, UnknownOutcome
from exitguard.exchange.polymarket import answers, history, reads
from exitguard.exchange.polymarket.orders import ORDER_VERSION, ExactAmountsBuilder, SignedSell, sign_sell
from exitguard.exchange.polymarket.positions import ledger_of
from exitguard.exchange.polymarket.ratelimit import Family, Limit, RateLimited, RateLimits
from exitguard.exchange.polymarket.secrets import (
    MaskedBody,
    MaskedCreds,
    MaskedHeaders,
    mask_text,
    own_call,
    own_calls,
    secure_client,
)
from exitguard.exchange.polymarket.settings import PolymarketSettings
from exitguard.exchange.port import Fill, LookupStatus, SellDeadline, SellLookup, Settlement
from exitguard.settings import parse_count, parse_seconds
from exitguard.states import InvalidValue, MarketRules, PermitError, SellPermit

T = TypeVar("T")


class PolymarketExchange:
    """The real exchange. Build it from a `ClobClient` (L2: key and API credentials) or from settings:

    ```python
    exchange = PolymarketExchange.from_settings(PolymarketSettings.from_env())
    ```
    """

    def __init__(
        self,
        client: ClobClient,
        *,
        call_timeout: float = 5.0,
        max_threads: int = 32,
        max_order_wait: float = 0.5,
        rate_limits: dict[Family, Limit] | None = None,
        clock: Clock | None = None,
        sleep: Callable[[float], Any] | None = None,
    ) -> None:
        if not isinstance(client, ClobClient):
            raise InvalidValue("client", type(client).__name__, "must be a py_clob_client_v2 ClobClient")
        if client.signer is None:
            raise InvalidValue("client", "ClobClient without a key", "selling needs a signing key (L1)")
        parse_count(max_threads, "max_threads")
        secure_client(client)  # masked key and credentials (same values), and the HTTP logs redact them
        self.client = client
        self.call_timeout = parse_seconds(call_timeout, "call_timeout")
        self.max_order_wait = parse_seconds(max_order_wait, "max_order_wait", allow_zero=True)
        self.clock: Clock = clock or SystemClock()
        self.limits = RateLimits(rate_limits, now=self.clock.monotonic, sleep=sleep or anyio.sleep)
        self._threads = anyio.CapacityLimiter(max_threads)
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
        """Order ids whose POST thread has not returned: the request may still be on its way out."""
        self._left: dict[str, float] = {}
        """Order id -> when its POST thread returned (monotonic): the request left our hands."""
        self._given_up: dict[str, float] = {}
        """Order id -> when `sell` returned or raised (monotonic); a worker may outlive it."""

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
        return cls(client, **options)

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
        params = BalanceAllowanceParams(asset_type=ledger_of(token_id), token_id=token_id)
        body = await self._read(Family.BALANCE, "balance", self.client.get_balance_allowance, params)
        if not isinstance(body, dict) or "balance" not in body:
            raise TransientError(f"balance-allowance for token_id={token_id}: answer without a balance: "
                                 f"{_short(body)}")
        return body["balance"]

    async def refresh_balance(self, token_id: str) -> None:
        await self._ensure_creds()
        params = BalanceAllowanceParams(asset_type=ledger_of(token_id), token_id=token_id)
        await self._read(Family.BALANCE_UPDATE, "balance refresh", self.client.update_balance_allowance, params)

    async def market_rules(self, token_id: str) -> MarketRules:
        return (await self._market(token_id)).rules

    async def warm_up(self, token_id: str) -> None:
        await self._ensure_creds()
        await self._market(token_id)

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
        try:
            # The permit's verification ages while the post waits: past `max_order_wait`, or past the
            # permit's own deadline, give the slot up (nothing sent) and let the next attempt verify afresh.
            await self.limits.acquire(Family.ORDER, max_wait=max(0.0, min(self.max_order_wait, deadline.remaining())))
        except RateLimited as err:
            deadline.check(f"order {signed.order_id}")
            raise TransientError(f"order for {permit.token_id}: {err}; nothing sent") from None
        deadline.check(f"order {signed.order_id}")
        self._signed[permit.attempt_id] = signed
        self._posting.add(signed.order_id)
        try:
            with anyio.fail_after(self.call_timeout):
                status, body = await anyio.to_thread.run_sync(self._post, signed, deadline, limiter=self._threads,
                                                              abandon_on_cancel=True)
        except TimeoutError:
            raise UnknownOutcome(f"order {signed.order_id}: no answer within {self.call_timeout}s; it may "
                                 "have executed") from None
        finally:
            self._given_up[signed.order_id] = self.clock.monotonic()
        answer = answers.post_answer(status, body, signed)
        if isinstance(answer, ExchangeError):
            if answers.is_version_mismatch(body):
                self._version = None
            elif isinstance(answer, OrderRejected):
                # Tick and minimum size can change (ticks shrink near 0 and 1): look them up again next time.
                self._markets.pop(permit.token_id, None)
            raise answer
        return answer

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
            order = await self._read(Family.ORDER_LOOKUP, "order lookup", self.client.get_order, ref.order_id)
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
        params = TradeParams(asset_id=ref.token_id, after=ref.trades_after)
        recent = await self._read(Family.TRADES, "trade lookup", self.client.get_trades, params)
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
            pages.read(await self._read(Family.TRADES, "trade audit", history.get_trades_page, self.client, query,
                                        pages.cursor))
        return pages.orders()

    async def settlement(self, fill: Fill) -> Settlement:
        await self._ensure_creds()
        return reads.settlement(fill, await self._trades(fill.trade_ids))

    async def _trades(self, trade_ids: tuple[str, ...]) -> list[dict[str, Any]]:
        trades: list[dict[str, Any]] = []
        for trade_id in trade_ids:
            found = await self._read(Family.TRADES, "trade lookup", self.client.get_trades, TradeParams(id=trade_id),
                                     True)
            trades.extend(t for t in found or [] if isinstance(t, dict) and t.get("id") == trade_id)
        return trades

    # -- internals ---------------------------------------------------------------------------------

    def _post(self, signed: SignedSell, deadline: SellDeadline) -> tuple[int | None, object]:
        """One POST /order, in a worker thread. Returns (status, body); never raises for an HTTP answer.
        Raises PermitExpired, with nothing sent, when waiting for this thread outlived the permit."""
        deadline.check(f"order {signed.order_id}")
        try:
            return 200, post_fok(self.client, signed.order)
        except PolyApiException as err:
            return err.status_code, err.error_msg
        except Exception as err:  # noqa: BLE001 - an answer the client could not hand over (a body nested too
            # deep to parse, a broken stream) came after the order left: no status, so WIRE_ANSWERS says UNKNOWN.
            return None, f"{type(err).__name__} while reading the answer"
        finally:
            # The request has left our hands only now that this thread returns: the lookup horizon counts
            # from here, and until here a lookup cannot conclude anything.
            self._left[signed.order_id] = self.clock.monotonic()
            self._posting.discard(signed.order_id)

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
            book = await self._read(Family.BOOK, "order book", self.client.get_order_book, token_id)
            market = reads.market_from_book(token_id, book)
            await self._order_version()
        finally:
            del self._warming[token_id]
            done.set()
        self._markets[token_id] = market
        return market

    async def _order_version(self) -> int:
        version = self._version
        if version is None:
            version = self._version = int(await self._read(Family.GENERAL, "version", self.client.get_version))
        return version

    async def _ensure_creds(self) -> None:
        if self.client.creds is not None:
            return
        async with self._creds_lock:
            if self.client.creds is None:
                creds = await self._read(Family.GENERAL, "API key derivation", self.client.derive_api_key)
                self.client.set_api_creds(creds)
                secure_client(self.client)

    async def _read(self, family: Family, what: str, call: Callable[..., T], *args: object) -> T:
        """A call that changes nothing on the exchange: on timeout or transport error it failed, no more."""
        await self.limits.acquire(family)
        try:
            with anyio.fail_after(self.call_timeout):
                return await anyio.to_thread.run_sync(own_call(call), *args, limiter=self._threads,
                                                      abandon_on_cancel=True)
        except TimeoutError:
            raise TransientError(f"{what}: no answer within {self.call_timeout}s") from None
        except PolyApiException as err:
            if err.status_code is None:  # no answer: say which host and why, as the operating system put it
                raise TransientError(f"{what}: cannot reach {self.client.host}: {reads.transport_cause(err)}") \
                    from None
            raise reads.read_error(what, err.status_code, err.error_msg) from None
        except PolyException as err:
            raise TransientError(f"{what}: {err.msg}") from None
        except Exception as err:  # noqa: BLE001 - the client indexes bodies it never checked (a page without
            # "data", an HTML answer): for a read that changes nothing, any of it is a failed read, no more.
            raise TransientError(f"{what}: unreadable answer ({type(err).__name__}: {mask_text(str(err)[:100])})") \
                from None


def post_fok(client: ClobClient, order: Any) -> object:
    """POST /order of a signed order as FOK, once: the bytes `post_order` sends, without its settlement
    polling and without a retry. Raises PolyApiException for a non-200 answer or a transport error."""
    payload = order_to_json_v2(order, client.creds.api_key, OrderType.FOK, False, False)
    serialized = MaskedBody(json.dumps(payload, separators=(",", ":"), ensure_ascii=False))
    if client.signer is None or client.creds is None:
        raise PolyException("L2 auth needs a signer and API credentials")
    # The client's public header builder, with the exact bytes that are sent (HMAC over the serialized body).
    headers = MaskedHeaders(create_level_2_headers(client.signer, client.creds, RequestArgs(
        method="POST", request_path=POST_ORDER, body=payload, serialized_body=serialized)))
    with own_calls():
        return http.post(f"{client.host}{POST_ORDER}", headers=headers, data=serialized, retry_on_error=False)


def _short(body: object, limit: int = 200) -> str:
    text = repr(body)
    return text if len(text) <= limit else text[:limit] + "..."
