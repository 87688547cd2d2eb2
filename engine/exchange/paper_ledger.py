"""Where the paper exchange keeps shares: the two ledgers of Polymarket, and the exchange's lagging balance cache.

Outcome shares sit in one of two ledgers, and the id says which (exitguard.exchange.ledgers): a CTF token id (a
hash) in the Conditional Tokens contract, a Protocol V2 position id (bits 40..103 clear) in the PositionManager.
A token lives in exactly one of them, so holdings are kept by token id, and each ledger is the part of them its
ids name. The paper exchange reads and refreshes a balance in the ledger the id names, as the Polymarket adapter
does (`asset_type=CONDITIONAL` or `CONDITIONAL-V2`), and records each read in `ledger_reads`.

`misread_v2_through_ctf()` shows the hazard this routing exists for: every balance read and refresh then goes
through the CTF ledger, as a client that knows nothing of V2 sends them, and a V2 position that holds every share
reads "0" (an engine would report it ALREADY_EXITED and forget it).
"""

from __future__ import annotations

from collections import defaultdict, deque
from decimal import Decimal

from exitguard.clock import Clock
from exitguard.exchange.ledgers import Ledger, ledger_of
from exitguard.states import InvalidValue, micro_to_shares, shares_to_micro


class PaperLedgers:
    """The balances of a paper exchange (a base of PaperExchange): on chain, and as its cache shows them."""

    clock: Clock

    def __init__(self) -> None:
        self._chain: dict[str, int] = {}
        """Token -> micro-shares on chain, in the ledger its id names (a token lives in exactly one)."""
        self._cached: dict[str, int] = {}
        self._changed_at: dict[str, float] = {}
        self._lag: dict[str, float | None] = {}
        self._raw_balances: dict[str, deque[object]] = defaultdict(deque)
        self._misread_v2 = False
        self.ledger_reads: list[tuple[Ledger, str]] = []
        """Every balance read and refresh as (ledger, token id): the `asset_type` the real adapter sends."""

    # -- setting up --------------------------------------------------------------------------------

    def set_balance(self, token_id: str, shares: object) -> None:
        """Shares held on chain. With a balance lag on the token, `get_balance` shows it later."""
        micro = shares_to_micro(shares, "shares")
        if micro < 0:
            raise InvalidValue("shares", shares, "must not be negative")
        self._set_chain(token_id, micro)

    def balance(self, token_id: str) -> Decimal:
        """The true (chain) balance, whatever the exchange's cache says."""
        return micro_to_shares(self._chain.get(token_id, 0))

    def ledger_balance(self, ledger: Ledger, token_id: str) -> Decimal:
        """What one ledger holds of the token on chain: 0 in the ledger its id does not name."""
        return self.balance(token_id) if ledger_of(token_id) is ledger else Decimal(0)

    # -- faults ------------------------------------------------------------------------------------

    def lag_balance(self, token_id: str, delay: float | None = None) -> None:
        """From now on, a change to the token's balance shows in `get_balance` only after `delay` seconds
        (None: only after `refresh_balance`), as the real exchange's balance cache lags fills."""
        self._lag[token_id] = delay
        self._cached.setdefault(token_id, self._chain.get(token_id, 0))

    def corrupt_next_balance(self, token_id: str, raw: object) -> None:
        """The next balance read for the token returns `raw` as-is (e.g. "-5", "NaN", "abc", None)."""
        self._raw_balances[token_id].append(raw)

    def misread_v2_through_ctf(self, on: bool = True) -> None:
        """Balance reads and refreshes of every id go through the CTF ledger, as from a client unaware of
        Protocol V2: a V2 position then reads "0" however many shares it holds (the live hazard)."""
        self._misread_v2 = on

    # -- the exchange's side -----------------------------------------------------------------------

    def _read_ledger(self, token_id: str) -> object:
        """The balance a read answers, in the ledger the read goes to (the id's own, unless misread)."""
        ledger = self._ledger_read(token_id)
        if self._raw_balances[token_id]:
            return self._raw_balances[token_id].popleft()
        return str(self._visible_balance(token_id) if ledger is ledger_of(token_id) else 0)

    def _refresh_ledger(self, token_id: str) -> None:
        if self._ledger_read(token_id) is ledger_of(token_id):
            self._cached[token_id] = self._chain.get(token_id, 0)

    def _ledger_read(self, token_id: str) -> Ledger:
        ledger = Ledger.CTF if self._misread_v2 else ledger_of(token_id)
        self.ledger_reads.append((ledger, token_id))
        return ledger

    def _set_chain(self, token_id: str, micro: int) -> None:
        self._chain[token_id] = micro
        if token_id in self._lag:
            self._changed_at[token_id] = self.clock.monotonic()
        else:
            self._cached[token_id] = micro

    def _visible_balance(self, token_id: str) -> int:
        if token_id not in self._lag:
            return self._chain.get(token_id, 0)
        delay = self._lag[token_id]
        changed = self._changed_at.get(token_id)
        if delay is not None and changed is not None and self.clock.monotonic() - changed >= delay:
            self._cached[token_id] = self._chain.get(token_id, 0)
        return self._cached.get(token_id, 0)
