"""Markets of the paper exchange that no longer trade: `close_market(token)`.

On Polymarket a market that closed or resolved loses its order book: GET /book answers 404 `No orderbook exists
for the requested token id`, and an order for it is refused (`the orderbook <condition> does not exist`). The
shares stay in the wallet, to be redeemed on chain (tests/fakeclob/WIRE.md section 2a). The paper exchange models
both: after `close_market(token)`, its rules read and its warm-up raise `MarketClosed`, and so does a sell, which
reaches the exchange (it is in `calls`) and is refused before it meets a book (it is not in `sells`). Balances,
lookups and settlement answer as before. A closed market does not reopen (nor does Polymarket's).
"""

from __future__ import annotations

from exitguard.errors import MarketClosed

BOOK_GONE = "No orderbook exists for the requested token id"
ORDER_REFUSED = "the orderbook {token} does not exist"

REFUSED_WHEN_CLOSED = {"market_rules": BOOK_GONE, "sell": ORDER_REFUSED}
"""Operation -> the refusal it meets on a closed market (the others answer as before)."""


class PaperMarketStates:
    """The closed markets of a paper exchange (a base of PaperExchange)."""

    # Set by the first close_market (no __init__ of its own: PaperExchange's stays as it is).
    _closed_markets: frozenset[str] = frozenset()

    def close_market(self, token_id: str) -> None:
        """From now on the token's market no longer trades: its book is gone and its orders are refused."""
        self._closed_markets = self._closed_markets | {token_id}

    def market_is_closed(self, token_id: str) -> bool:
        return token_id in self._closed_markets

    def refuse_if_closed(self, operation: str, token_id: str) -> None:
        """Raise the refusal `operation` meets when the token's market is closed."""
        words = REFUSED_WHEN_CLOSED.get(operation)
        if words is not None and self.market_is_closed(token_id):
            status = 404 if operation == "market_rules" else 400
            raise MarketClosed(f"paper: {words.format(token=token_id)}", status=status)
