"""Per-signer order buckets, as the real CLOB keeps them since July 2026 (WIRE.md section 7).

Every POST /order that passes L2 auth takes one token from the bucket of the signer address it was
authenticated for (the `POLY_ADDRESS` header). The bucket's rate and burst are the signer's tier; the
reply carries `Poly-RateLimit-Remaining`, `-Reset` and `-Tier`. Without a token: 429 with the documented
body and `Retry-After`, nothing executed (enforcement), or the order goes through with
`Poly-RateLimit-Warning: true` (warning mode, the first two weeks).

The buckets read `clock` (monotonic() and wall()), so a test can put them on its virtual time.
"""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

# docs.polymarket.com/api-reference/trading-rate-limits, "Volume tiers": order refill per second, order burst.
TIERS: dict[str, tuple[int, int]] = {
    "standard": (40, 60),
    "copper": (60, 90),
    "bronze": (80, 120),
    "silver": (200, 300),
    "gold": (400, 600),
    "platinum": (450, 675),
    "diamond": (525, 787),
    "elite": (600, 900),
}
MODES = ("enforce", "warn", "off")


class _SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.fromtimestamp(time.time(), tz=UTC)


class SignerLimits:
    """State behind `FakeClob`'s lock."""

    def __init__(self) -> None:
        self.mode = "enforce"
        self.default_tier = "standard"
        self.tiers: dict[str, str] = {}
        """Signer address (lower case) -> tier, for signers not at the default."""
        self.clock: object = _SystemClock()
        self.rejected = 0
        """429s sent by this limiter."""
        self.switches: list[tuple[int, str, str]] = []
        """(orders from now, address, tier): a tier change that lands mid-burst."""
        self._buckets: dict[str, list[float]] = {}
        """Address -> [tokens, updated (monotonic)]."""
        self._seen = 0

    def tier_of(self, address: str) -> str:
        return self.tiers.get(address.lower(), self.default_tier)

    def set_tier(self, address: str, tier: str) -> None:
        if tier not in TIERS:
            raise ValueError(f"tier must be one of {list(TIERS)}")
        key = address.lower()
        self._refill(key)
        self.tiers[key] = tier
        bucket = self._buckets.get(key)
        if bucket is not None:
            # As the real buckets are described: capacity is the tier's burst; tokens beyond it are gone.
            bucket[0] = min(bucket[0], float(TIERS[tier][1]))

    def drain(self, address: str) -> None:
        """Empty the signer's bucket (another process with the same signer spent it)."""
        key = address.lower()
        self._refill(key)
        self._buckets[key][0] = 0.0

    def take(self, address: str) -> tuple[bool, dict[str, str]]:
        """One order from `address`: (admitted, the reply's rate-limit headers)."""
        self._seen += 1
        for due in [s for s in self.switches if s[0] <= self._seen]:
            self.switches.remove(due)
            self.set_tier(due[1], due[2])
        if self.mode == "off":
            return True, {}
        key = address.lower()
        tier = self.tier_of(key)
        rate = TIERS[tier][0]
        tokens = self._refill(key)
        headers = {"Poly-RateLimit-Tier": tier}
        if tokens >= 1:
            self._buckets[key][0] = tokens - 1
            headers["Poly-RateLimit-Remaining"] = str(math.floor(tokens - 1))
            headers["Poly-RateLimit-Reset"] = str(self._unix(0.0))
            return True, headers
        wait = (1 - tokens) / rate
        headers["Poly-RateLimit-Remaining"] = str(math.floor(tokens))
        headers["Poly-RateLimit-Reset"] = str(self._unix(wait))
        if self.mode == "warn":
            headers["Poly-RateLimit-Warning"] = "true"
            return True, headers
        self.rejected += 1
        headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return False, headers

    def _refill(self, key: str) -> float:
        rate, burst = TIERS[self.tier_of(key)]
        now = self.clock.monotonic()  # type: ignore[attr-defined]
        bucket = self._buckets.setdefault(key, [float(burst), now])
        bucket[0] = min(float(burst), bucket[0] + (now - bucket[1]) * rate)
        bucket[1] = now
        return bucket[0]

    def _unix(self, seconds: float) -> int:
        """A Unix time in whole seconds, rounded up: the end of a wait of `seconds`."""
        return math.ceil(self.clock.wall().timestamp() + seconds)  # type: ignore[attr-defined]
