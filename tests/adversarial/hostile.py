"""HostileExchange: the paper exchange as a hostile world answers it, and the truth of every order.

It implements the exchange port around a `PaperExchange` (which keeps the balances, the book and the
matching) and, driven by a seeded `random.Random`, breaks the answers the way real exchanges and networks
do (issue 11):

    LOST_ANSWER       the sell executes, then the caller gets UnknownOutcome
    GARBAGE_ANSWER    the sell executes, then the caller gets an untyped exception (unreadable JSON, HTML, a
                      missing field, as a careless adapter lets them through)
    MALFORMED_FILL    the sell executes, then `sell` returns something that is not a Fill (None, a dict, text)
    LATE_ORDER        the sell raises UnknownOutcome and the order reaches the book only later (within
                      `late_by` seconds, always before the lookup horizon): `deliver_due()` executes it then
    STALE_AFTER_FILL  after one of our fills, get_balance shows the pre-fill balance until refresh_balance
    BLIND_LOOKUP      lookup_sell finds nothing (NOT_FOUND) for up to `blind_for` seconds after the post,
                      though the order may have filled (a filled order drops out of /data/order)
    FAILED_READ       a read (balance, refresh, rules, lookup) raises TransientError without acting
    LATENCY           every call waits up to `max_latency` seconds each way (`LONG_LATENCY`: now and then
                      long enough to run into the engine's timeouts)

Each fault has a rate (0..1) per opportunity; `calm()` switches them all off (the end of a run). Whatever
the engine is told, the exchange knows what really happened to each post (`Post.truth`), and an observer
(watch.py) is told when an order is posted, leaves for the book and executes, which is where the promise
is checked. Methods the port may gain later are passed through to the paper exchange untouched
(`__getattr__`), so a port change does not break the suite; only what is listed above is hostile.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import Any, Protocol

import anyio
import anyio.lowlevel

from exitguard.clock import Clock
from exitguard.errors import ExchangeError, TransientError, UnknownOutcome
from exitguard.exchange.paper import PaperExchange, SellStatus
from exitguard.exchange.port import Fill, LookupStatus, SellLookup
from exitguard.states import MarketRules, SellPermit, shares_to_micro


class Fault(StrEnum):
    LOST_ANSWER = "lost_answer"
    GARBAGE_ANSWER = "garbage_answer"
    MALFORMED_FILL = "malformed_fill"
    LATE_ORDER = "late_order"
    STALE_AFTER_FILL = "stale_after_fill"
    BLIND_LOOKUP = "blind_lookup"
    FAILED_READ = "failed_read"
    LATENCY = "latency"
    LONG_LATENCY = "long_latency"


class Truth(StrEnum):
    """What really became of a post, whatever the engine was told."""

    UNSENT = "unsent"
    """Never reached the book (cancelled on the way, refused before matching): it will never execute."""
    TRAVELLING = "travelling"
    """A late order: it will reach the book at `Post.late_due`."""
    FILLED = "filled"
    KILLED = "killed"
    """Reached the book and did not fill (FOK killed, refused for balance or rules): terminal, unfilled."""


class Told(StrEnum):
    """What the engine was told about a post."""

    WAITING = "waiting"
    """The call is still running."""
    FILL = "fill"
    NO = "no"
    """A typed, definite no (NotFilled / TransientError)."""
    UNKNOWN = "unknown"
    """UnknownOutcome, garbage, an untyped error, or the call was cancelled: it may have executed."""


@dataclass
class Post:
    """One call of `sell`: the permit, when it was posted and left, what the engine was told, and the truth."""

    key: str
    permit: SellPermit
    price: Decimal
    posted_at: float
    left_at: float | None = None
    returned_at: float | None = None
    told: Told = Told.WAITING
    truth: Truth = Truth.UNSENT
    late_due: float | None = None
    blind_until: float = 0.0
    fault: Fault | None = None
    send_options: dict[str, Any] = field(default_factory=dict)
    """The keyword arguments a late order reaches the book with."""


class Observer(Protocol):
    def posted(self, post: Post, earlier: list[Post]) -> None:
        """`sell` was called (before anything leaves). `earlier`: the position's previous posts."""

    def left(self, post: Post, stale_cache: bool) -> None:
        """The order leaves for the book now (or starts travelling late). `stale_cache`: the token's balance
        cache has not been refreshed since one of our fills."""

    def executed(self, post: Post) -> None:
        """The order reached the book; `post.truth` says how it ended."""


GARBAGE: tuple[Callable[[], Exception], ...] = (
    lambda: RuntimeError("hostile: 200 OK with an HTML body"),
    lambda: ValueError("hostile: Expecting value: line 1 column 1 (char 0)"),
    lambda: KeyError("orderID"),
)
"""After execution: an untyped error to raise."""
MALFORMED: tuple[object, ...] = (None, {"success": True}, "<html>502 Bad Gateway</html>")
"""After execution: a value that is not a Fill, returned as if it were one."""


class HostileExchange:
    def __init__(self, paper: PaperExchange, clock: Clock, rng: random.Random, faults: Mapping[Fault, float],
                 *, late_by: tuple[float, float] = (0.5, 20.0), blind_for: float = 20.0, max_latency: float = 1.5,
                 long_latency: tuple[float, float] = (8.0, 25.0),
                 sleep: Callable[[float], Awaitable[None]] = anyio.sleep, observer: Observer | None = None) -> None:
        self.paper = paper
        self.clock = clock
        self.rng = rng
        self.faults: dict[Fault, float] = dict(faults)
        self.late_by = late_by
        self.blind_for = blind_for
        self.max_latency = max_latency
        self.long_latency = long_latency
        self.sleep = sleep
        self.observer = observer
        self.injected: Counter[Fault] = Counter()
        self.posts: dict[str, Post] = {}
        """Attempt id -> its post (the first one: a second post of one permit is a violation of its own)."""
        self.posts_by_key: defaultdict[str, list[Post]] = defaultdict(list)
        self.busy: Counter[str] = Counter()
        """Token -> exchange calls about it running right now."""
        self.travelling: list[Post] = []
        self._stale: dict[str, str] = {}
        """Token -> the raw balance its cache shows since our last fill (until a refresh)."""
        self._late_queued = anyio.Event()

    # -- switches -----------------------------------------------------------------------------------

    def calm(self) -> None:
        """No new faults from now on (orders already travelling still arrive late)."""
        self.faults.clear()

    def _roll(self, fault: Fault) -> bool:
        rate = self.faults.get(fault, 0.0)
        if rate and self.rng.random() < rate:
            self.injected[fault] += 1
            return True
        return False

    def stale(self, token_id: str) -> bool:
        return token_id in self._stale

    # -- the exchange port --------------------------------------------------------------------------

    async def get_balance(self, token_id: str) -> object:
        async with self._read(token_id):
            raw = await self.paper.get_balance(token_id)
            return self._stale.get(token_id, raw)

    async def refresh_balance(self, token_id: str) -> None:
        async with self._read(token_id):
            await self.paper.refresh_balance(token_id)
            self._stale.pop(token_id, None)

    async def market_rules(self, token_id: str) -> MarketRules:
        async with self._read(token_id):
            return await self.paper.market_rules(token_id)

    async def warm_up(self, token_id: str) -> None:
        await self.paper.warm_up(token_id)

    async def settlement(self, fill: Fill) -> Any:
        return await self.paper.settlement(fill)

    async def prepare_sell(self, permit: SellPermit, limit_price: Decimal, *args: Any, **kwargs: Any) -> str:
        # Signing, or waiting for a worker thread: the permit ages here.
        await self._latency()
        return await self.paper.prepare_sell(permit, limit_price, *args, **kwargs)

    async def lookup_sell(self, permit: SellPermit, *args: Any, **kwargs: Any) -> SellLookup:
        async with self._read(permit.token_id):
            post = self.posts.get(permit.attempt_id)
            if post is not None and self.clock.monotonic() < post.blind_until:
                self.injected[Fault.BLIND_LOOKUP] += 1
                return SellLookup(LookupStatus.NOT_FOUND)
            return await self.paper.lookup_sell(permit, *args, **kwargs)

    async def sell(self, permit: SellPermit, limit_price: Decimal, *args: Any, **kwargs: Any) -> Fill:
        key = getattr(permit, "position_key", "?")
        post = Post(key, permit, limit_price, posted_at=self.clock.monotonic())
        earlier = list(self.posts_by_key[key])
        self.posts.setdefault(permit.attempt_id, post)
        self.posts_by_key[key].append(post)
        if self.observer is not None:
            self.observer.posted(post, earlier)
        if self._roll(Fault.BLIND_LOOKUP):
            post.blind_until = post.posted_at + self.rng.uniform(1.0, self.blind_for)
        token = permit.token_id
        self.busy[token] += 1
        try:
            await self._latency()  # the way to the book: a rate-limit slot, the network
            deadline = kwargs.get("deadline")
            if self._roll(Fault.LATE_ORDER):
                if deadline is None or deadline.remaining() >= 0:
                    return self._travel(post, kwargs)
                # A permit past its deadline never starts travelling: the adapter refuses it now (below).
            fault = next((f for f in (Fault.LOST_ANSWER, Fault.GARBAGE_ANSWER, Fault.MALFORMED_FILL)
                          if self._roll(f)), None)
            post.fault = fault
            answer = await self._execute(post, *args, **kwargs)
            if post.truth is not Truth.UNSENT and fault is Fault.LOST_ANSWER:
                raise UnknownOutcome("hostile: the order executed, its answer was lost")
            if post.truth is not Truth.UNSENT and fault is Fault.GARBAGE_ANSWER:
                raise self.rng.choice(GARBAGE)()
            if post.truth is not Truth.UNSENT and fault is Fault.MALFORMED_FILL:
                return self.rng.choice(MALFORMED)  # type: ignore[return-value]  # the point: not a Fill
            if isinstance(answer, BaseException):
                raise answer
            await self._latency()  # the answer travels back
            post.told = Told.FILL
            return answer
        except ExchangeError as err:
            if post.told is Told.WAITING:
                post.told = Told.NO if err.definitely_not_filled else Told.UNKNOWN
            raise
        finally:
            self.busy[token] -= 1
            post.returned_at = self.clock.monotonic()
            if post.told is Told.WAITING:
                post.told = Told.UNKNOWN

    # -- late orders ----------------------------------------------------------------------------------

    def next_due(self) -> float | None:
        """When the next travelling order reaches the book (monotonic clock), or None."""
        return min((post.late_due for post in self.travelling if post.late_due is not None), default=None)

    async def wait_for_late_orders(self) -> None:
        """Returns when an order starts travelling (for a delivery task that sleeps until `next_due()`)."""
        await self._late_queued.wait()
        self._late_queued = anyio.Event()

    async def deliver_due(self) -> int:
        """Execute every travelling order whose time has come, in order. Returns how many arrived."""
        now = self.clock.monotonic()
        due = sorted((p for p in self.travelling if p.late_due is not None and p.late_due <= now),
                     key=lambda p: p.late_due or 0.0)
        for post in due:
            self.travelling.remove(post)
            await self._execute(post, **post.send_options)
        return len(due)

    def _travel(self, post: Post, kwargs: dict[str, Any]) -> Fill:
        post.left_at = self.clock.monotonic()
        post.truth = Truth.TRAVELLING
        post.fault = Fault.LATE_ORDER
        low, high = self.late_by
        post.late_due = post.left_at + self.rng.uniform(low, high)
        # The order left in time; when it reaches the book, no deadline of the sender applies any more.
        post.send_options = {name: (replace(value, not_after=math.inf) if name == "deadline" else value)
                             for name, value in kwargs.items()}
        self.travelling.append(post)
        self._late_queued.set()
        if self.observer is not None:
            self.observer.left(post, self.stale(post.permit.token_id))
        raise UnknownOutcome("hostile: no answer; the order is still on its way")

    async def _execute(self, post: Post, *args: Any, **kwargs: Any) -> Fill | BaseException:
        """Hand the order to the paper exchange's book; record the truth, even when the caller is cancelled
        after the book took the order. Returns the paper's answer (a Fill, or the typed error it raised)."""
        before = len(self.paper.sells)
        stale = self.stale(post.permit.token_id)
        chain_before = shares_to_micro(self.paper.balance(post.permit.token_id))
        try:
            return await self.paper.sell(post.permit, post.price, *args, **kwargs)
        except ExchangeError as err:
            return err
        finally:
            self._record_truth(post, before, stale, chain_before)

    def _record_truth(self, post: Post, before: int, stale: bool, chain_before: int) -> None:
        permit = post.permit
        reached = [s for s in self.paper.sells[before:] if s.attempt_id == permit.attempt_id]
        if not reached:
            return  # refused before the book (a used permit, a deadline passed, cancelled on the way)
        if post.truth is not Truth.TRAVELLING:
            post.left_at = self.clock.monotonic()
            if self.observer is not None:
                self.observer.left(post, stale)
        post.truth = Truth.FILLED if reached[-1].status is SellStatus.FILLED else Truth.KILLED
        if post.truth is Truth.FILLED and self._roll(Fault.STALE_AFTER_FILL):
            # The exchange's cache still shows what the token held before this fill.
            self._stale[permit.token_id] = str(chain_before)
        if self.observer is not None:
            self.observer.executed(post)

    # -- faults on every call ---------------------------------------------------------------------------

    async def _latency(self) -> None:
        if self._roll(Fault.LONG_LATENCY):
            await self.sleep(self.rng.uniform(*self.long_latency))
        elif self._roll(Fault.LATENCY):
            await self.sleep(self.rng.uniform(0.0, self.max_latency))
        else:
            await anyio.lowlevel.checkpoint()

    @asynccontextmanager
    async def _read(self, token_id: str) -> AsyncIterator[None]:
        """One read: latency both ways, maybe a TransientError instead of an answer, the token marked busy."""
        self.busy[token_id] += 1
        try:
            await self._latency()
            if self._roll(Fault.FAILED_READ):
                raise TransientError("hostile: 503 upstream read failed", status=503)
            yield
            await self._latency()
        finally:
            self.busy[token_id] -= 1

    def __getattr__(self, name: str) -> Any:
        # A method the port gained after this file was written: the paper exchange's, without faults.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.paper, name)
