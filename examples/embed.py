"""Embedding exitguard in a bot: track what you bought, ask for exits, act on every outcome.

Runs on the paper exchange: `python examples/embed.py`.
"""

from __future__ import annotations

from decimal import Decimal

import anyio

from exitguard import ExitEngine, ExitOutcome, PaperExchange, Position, RetryPolicy, add_log_sink


async def main() -> dict[str, str]:
    exchange = PaperExchange()
    exchange.set_balance("YES-TOKEN", Decimal("25"))
    exchange.set_bids("YES-TOKEN", [(Decimal("0.52"), Decimal("10")), (Decimal("0.51"), Decimal("50"))])

    retry = RetryPolicy(max_attempts=3, step_ticks=1, max_slippage=Decimal("0.03"))
    async with ExitEngine(exchange, retry=retry, max_concurrent_exits=8) as engine:
        engine.track(Position(key="entry-42", token_id="YES-TOKEN", shares=Decimal("25")))

        result = await engine.exit("entry-42", reason="stop_loss", limit_price=Decimal("0.53"))

        if result.outcome is ExitOutcome.CLOSED:
            print(f"sold {result.shares_sold} after {result.attempts} attempt(s), "
                  f"verified in {result.verify_latency * 1000:.2f} ms")
        elif result.outcome is ExitOutcome.UNKNOWN:
            result = await engine.reconcile("entry-42")  # never resend: look the order up
        elif result.outcome in (ExitOutcome.NOT_FILLED, ExitOutcome.VERIFY_FAILED):
            print(f"nothing sold ({result.error}); the position is {engine.state('entry-42')}, retry later")
        print("metrics:", engine.metrics.snapshot())
        return engine.states()


if __name__ == "__main__":
    # exitguard is silent until the application opts in; this adds its warnings and errors on stderr.
    add_log_sink(level="WARNING")
    print(anyio.run(main))
