"""The Polymarket adapter: the exchange port on py-clob-client-v2 (CLOB V2).

Public import path: `exitguard.polymarket`. Importing this package imports the client (and its module-level
HTTP client); `import exitguard` itself does not.
"""

from exitguard.exchange.polymarket.adapter import PolymarketExchange
from exitguard.exchange.polymarket.ratelimit import DOCUMENTED_LIMITS, Family, Limit
from exitguard.exchange.polymarket.settings import ENV, PolymarketSettings

__all__ = ["DOCUMENTED_LIMITS", "ENV", "Family", "Limit", "PolymarketExchange", "PolymarketSettings"]
