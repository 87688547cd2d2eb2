"""The live adapter's public import path: `from exitguard.polymarket import PolymarketExchange, PolymarketSettings`.

The adapter lives with the other exchange adapters in `exitguard/exchange/polymarket/`. Importing this module
imports py-clob-client-v2 (and its module-level HTTP client); `import exitguard` alone does not.
"""

from exitguard.exchange.polymarket import (
    DOCUMENTED_LIMITS,
    ENV,
    Family,
    Limit,
    PolymarketExchange,
    PolymarketSettings,
)

__all__ = ["DOCUMENTED_LIMITS", "ENV", "Family", "Limit", "PolymarketExchange", "PolymarketSettings"]
