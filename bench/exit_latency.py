"""Exit latency through the real Polymarket adapter, against the fake CLOB with injected round-trip time.

Prints p50 and p99 per flow as a ratio to the floor measured in the same run: one balance read plus one
post of an order signed beforehand, straight through py-clob-client-v2 (no settlement polling). Next
to it, the naive flow a bot would write: balance read, then `create_order` + `post_order`, with cold or
warm client caches and pure-Python signing. As on the real CLOB, a matching post is answered with trade
ids but no settlement hashes; the fake settles the trades right after answering ("instant" settlement),
so `post_order` needs one poll of /data/trades.

Target (issue 3): exitguard <= 1.10 x the floor at p99, on a warm token and on a token tracked a
second before the exit; since issue 14 also on an exit right after `track()` (the market's rules are read in
parallel with the balance).

Then (issue 14 section 5) the requests one exit makes in each balance-cache case: a buy that paid its fee in
shares (a reading below the tracked shares, outside the settlement window: the truth, 2 requests), the same
reading inside the settlement window of the last buy (refreshed and read again), and the exit right after our
own fill on the token (refreshed before the read).

    python bench/exit_latency.py [--rtt 0.05] [--samples 100] [--calls-only]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import anyio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fakeclob import FakeClob  # noqa: E402
from loguru import logger  # noqa: E402
from py_clob_client_v2.clob_types import AssetType, BalanceAllowanceParams, OrderArgsV2, OrderType  # noqa: E402
from py_clob_client_v2.http_helpers import helpers as http  # noqa: E402

from exitguard import ExitEngine, ExitOutcome, Position  # noqa: E402
from exitguard.exchange.polymarket import endpoints  # noqa: E402
from exitguard.polymarket import PolymarketExchange  # noqa: E402

LIMIT = 1.10
"""p99 of an exit over p99 of the floor (issue 3)."""
SHARES = Decimal("10")
PRICE = Decimal("0.55")
PURE_PYTHON_SIGNING = "eth_keys.backends.NativeECCBackend"


def post_fok(client: object, order: object) -> object:
    """The floor's post: POST /order of an order signed beforehand, once, as the adapter sends it."""
    body = endpoints.order_body(client, order)  # type: ignore[arg-type]
    headers = endpoints.l2_headers(client, "POST", endpoints.POST_ORDER, body)  # type: ignore[arg-type]
    return http.post(f"{client.host}{endpoints.POST_ORDER}", headers=headers, data=body,  # type: ignore[attr-defined]
                     retry_on_error=False)


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Run:
    def __init__(self, clob: FakeClob) -> None:
        self.clob = clob
        self.tokens = 0

    def fresh_token(self) -> str:
        self.tokens += 1
        token = str(10**70 + self.tokens)
        self.clob.add_market(token, tick_size="0.01", min_order_size="5")
        self.refill(token)
        return token

    def refill(self, token: str) -> None:
        self.clob.set_balance(token, SHARES)
        self.clob.set_bids(token, [(Decimal("0.60"), Decimal("1000000"))])


def requests_for(clob: FakeClob, token: str, since: int) -> int:
    """Requests made for this exit: about its token, plus the token-less ones (/version, /data/trades)."""
    count = 0
    for request in clob.requests[since:]:
        body = request.body if isinstance(request.body, dict) else {}
        order = body.get("order") if isinstance(body.get("order"), dict) else {}
        about = request.query.get("token_id") or order.get("tokenId")
        count += about == token or (about is None and request.path in ("/version", "/data/trades"))
    return count


def floor(run: Run, samples: int) -> tuple[list[float], float]:
    client = run.clob.client()
    token = run.fresh_token()
    args = OrderArgsV2(token_id=token, price=float(PRICE), size=float(SHARES), side="SELL")
    client.create_order(args)  # warms the client's caches; signing happens before each timing
    params = BalanceAllowanceParams(asset_type=AssetType.CONDITIONAL, token_id=token)
    times = []
    before = len(run.clob.requests)
    for _ in range(samples):
        run.refill(token)
        order = client.create_order(args)
        started = time.perf_counter()
        client.get_balance_allowance(params)
        answer = post_fok(client, order)
        times.append(time.perf_counter() - started)
        assert answer.get("status") == "matched", answer
    return times, (len(run.clob.requests) - before) / samples


def naive(run: Run, samples: int, *, cold: bool) -> tuple[list[float], float]:
    os.environ["ECC_BACKEND_CLASS"] = PURE_PYTHON_SIGNING
    try:
        token = run.fresh_token()
        client = run.clob.client()
        params = BalanceAllowanceParams(asset_type=AssetType.CONDITIONAL, token_id=token)
        if not cold:
            client.create_order(OrderArgsV2(token_id=token, price=float(PRICE), size=float(SHARES), side="SELL"))
        times = []
        requests = 0
        for _ in range(samples):
            run.refill(token)
            if cold:
                client = run.clob.client()
            before = len(run.clob.requests)
            started = time.perf_counter()
            balance = int(client.get_balance_allowance(params)["balance"])
            order = client.create_order(OrderArgsV2(token_id=token, price=float(PRICE), size=balance / 1e6,
                                                    side="SELL"))
            answer = client.post_order(order, OrderType.FOK)
            times.append(time.perf_counter() - started)
            requests += requests_for(run.clob, token, before)
            assert answer.get("status") == "matched", answer
        return times, requests / samples
    finally:
        del os.environ["ECC_BACKEND_CLASS"]


async def exitguard(run: Run, samples: int, *, mode: str, gap: float) -> tuple[list[float], float]:
    """mode: "warm" (token warmed long before), "tracked_1s" (tracked one second before the exit),
    "cold" (exit right after track: it waits for the warm-up in flight)."""
    exchange = PolymarketExchange(run.clob.client())
    times: list[float] = []
    requests: list[int] = []
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        # One token per exit, warmed long before: an exit on a token we have just sold from refreshes the
        # exchange's balance cache first (its cache may still show the shares sold), which is a third call
        # and another flow than "warm".
        warm_tokens = [run.fresh_token() for _ in range(samples)] if mode == "warm" else []
        for token in warm_tokens:
            await exchange.warm_up(token)
        if not warm_tokens:
            # A running engine's adapter: its connections open, its API credentials, the signer's tier and the
            # order version known (another token's warm-up), so that each flow measures its own tokens' state
            # and not the first request of a fresh process.
            await exchange.warm_up(run.fresh_token())

        async def one(i: int) -> None:
            token = warm_tokens[i] if mode == "warm" else run.fresh_token()
            key = f"{mode}-{i}"
            engine.track(Position(key=key, token_id=token, shares=SHARES))
            if mode == "tracked_1s":
                await anyio.sleep(1.0)
            run.refill(token)
            before = len(run.clob.requests)
            started = time.perf_counter()
            result = await engine.exit(key, reason="bench", limit_price=PRICE)
            times.append(time.perf_counter() - started)
            requests.append(requests_for(run.clob, token, before))
            assert result.outcome is ExitOutcome.CLOSED, result
            await engine.check_settlements()  # untimed: the trades are already confirmed on the fake
            engine.forget(key)

        if mode == "tracked_1s":
            # Staggered so that every exit comes one second after its own track, one at a time.
            async with anyio.create_task_group() as tg:
                for i in range(samples):
                    tg.start_soon(one, i)
                    await anyio.sleep(gap)
        else:
            for i in range(samples):
                await one(i)
    return times, sum(requests) / len(requests)


CALL_CASES = (
    # (case, shares on the exchange, seconds since the last buy (None: unknown), sold from the token just before,
    #  target requests)
    ("fee paid in shares, last buy 5 min ago", Decimal("9.98"), 300.0, False, 2),
    ("fee paid in shares, no last buy known", Decimal("9.98"), None, False, 2),
    ("reading below, inside the settlement window", Decimal("9.98"), 5.0, False, None),
    ("right after our own fill on the token", SHARES, 300.0, True, None),
)


async def calls_per_case(run: Run, samples: int) -> list[tuple[str, float, int | None]]:
    """Requests per exit in each case of states/refresh.py (warm tokens: the rules are known)."""
    exchange = PolymarketExchange(run.clob.client())
    found = []
    async with ExitEngine(exchange, settlement_poll_interval=None) as engine:
        for case, shares, since_buy, after_fill, target in CALL_CASES:
            counts = []
            for i in range(samples):
                token = run.fresh_token()
                await engine.market(token)
                bought = None if since_buy is None else datetime.now(UTC) - timedelta(seconds=since_buy)
                if after_fill:
                    engine.track(Position(key=f"{case}-{i}-first", token_id=token, shares=SHARES))
                    first = await engine.exit(f"{case}-{i}-first", reason="bench", limit_price=PRICE)
                    assert first.outcome is ExitOutcome.CLOSED, first
                    await engine.check_settlements()
                run.clob.set_balance(token, shares)
                key = f"{case}-{i}"
                engine.track(Position(key=key, token_id=token, shares=SHARES, last_buy_at=bought))
                before = len(run.clob.requests)
                result = await engine.exit(key, reason="bench", limit_price=PRICE)
                counts.append(requests_for(run.clob, token, before))
                assert result.outcome is ExitOutcome.CLOSED, result
                await engine.check_settlements()
            found.append((case, sum(counts) / len(counts), target))
    return found


def print_calls(run: Run, samples: int) -> None:
    print(f"\n{'requests per exit, by balance-cache case (warm token)':<56} {'requests':>8}  target")
    for case, per_exit, target in anyio.run(calls_per_case, run, samples):
        verdict = "" if target is None else f"{target}: {'met' if per_exit <= target else 'MISSED'}"
        print(f"{case:<56} {per_exit:>8.1f}  {verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtt", type=float, default=0.05, help="seconds the fake adds to every request")
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--calls-only", action="store_true", help="only the requests per exit in each case")
    args = parser.parse_args()
    logger.remove()
    with FakeClob() as clob:
        # As on the real CLOB, the answer to a matching post carries trade ids, not settlement hashes;
        # the fake settles right after answering, so the naive flow's post_order polls /data/trades once.
        clob.settlement = "after_reply"
        clob.latency = args.rtt
        # Latency, not limits: at --rtt 0 the flows post faster than the Standard signer tier allows (bench/burst.py
        # measures the limits). The adapter reads the tier at warm-up and paces to it.
        clob.set_signer_tier("elite")
        run = Run(clob)
        if args.calls_only:
            print_calls(run, min(args.samples, 20))
            return
        floor_flow = ("floor: balance + post of a pre-signed order", lambda: floor(run, args.samples), False)
        # Each flow under a target is measured right after a floor of its own, so that whatever else
        # loads the machine at that moment weighs on both sides of the ratio.
        flows: list[tuple[str, Callable[[], tuple[list[float], float]], bool]] = [
            floor_flow,
            ("exitguard, warm token", lambda: anyio.run(lambda: exitguard(run, args.samples, mode="warm", gap=0)),
             True),
            floor_flow,
            ("exitguard, tracked 1 s before",
             lambda: anyio.run(lambda: exitguard(run, args.samples, mode="tracked_1s", gap=2.5 * args.rtt + 0.02)),
             True),
            floor_flow,
            ("exitguard, exit right after track",
             lambda: anyio.run(lambda: exitguard(run, args.samples, mode="cold", gap=0)), True),
            ("naive, warm client caches, pure-Python signing", lambda: naive(run, args.samples, cold=False), False),
            ("naive, cold client caches, pure-Python signing", lambda: naive(run, args.samples, cold=True), False),
        ]
        print(f"exit latency: fake CLOB on loopback, {args.rtt * 1000:.0f} ms added to every request, "
              f"{args.samples} exits per flow; ratios against the floor measured just before\n")
        print(f"{'flow':<48} {'requests':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 RTTs':>9} {'p50/floor':>10} "
              f"{'p99/floor':>10}  limit")
        base = (1.0, 1.0)
        for name, measure, targeted in flows:
            times, per_exit = measure()
            p50, p99 = percentile(times, 0.50), percentile(times, 0.99)
            if measure is floor_flow[1]:
                base = (p50, p99)
            verdict = ""
            if targeted:
                verdict = f"<= {LIMIT:.2f} at p99: {'met' if p99 / base[1] <= LIMIT else 'MISSED'}"
            rtts = p50 / args.rtt if args.rtt else 0.0
            print(f"{name:<48} {per_exit:>8.1f} {p50 * 1000:>8.1f} {p99 * 1000:>8.1f} {rtts:>9.2f} "
                  f"{p50 / base[0]:>10.3f} {p99 / base[1]:>10.3f}  {verdict}", flush=True)
        print_calls(run, min(args.samples, 20))

if __name__ == "__main__":
    main()
