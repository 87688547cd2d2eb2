"""The Polymarket adapter: the exchange port on py-clob-client-v2 (CLOB V2).

Importing this package imports the client (and its module-level HTTP client); `engine` itself does not.
"""

from engine.polymarket.adapter import PolymarketExchange
from engine.polymarket.ratelimit import DOCUMENTED_LIMITS, Family, Limit
from engine.polymarket.settings import ENV, PolymarketSettings

__all__ = ["DOCUMENTED_LIMITS", "ENV", "Family", "Limit", "PolymarketExchange", "PolymarketSettings"]
