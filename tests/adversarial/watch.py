"""The promise, checked: every invariant of the adversarial runs, and the issue point each one guards.

The hostile exchange tells the watch when an order is posted, leaves for the book and executes (the
truth, whatever the engine was told); the run asks it to check the engine's states and the ledger after
every step. A broken invariant is recorded as a `Violation` naming the rule and the point of issue 11
that promises it ("promise" for DESIGN.md's own two rules), never raised inside an exchange call: the
engine treats whatever a sell raises as an unknown outcome, which would hide it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from adversarial.hostile import Post, Told, Truth

FINAL = frozenset({"CLOSED", "RECONCILED", "DUST"})


@dataclass(frozen=True)
class Violation:
    point: str
    """The promise it breaks: "promise" (DESIGN.md), or the point of issue 11 ("A.2", "A.3", ...)."""
    rule: str
    detail: str
    key: str | None
    step: int
    at: float

    def __str__(self) -> str:
        return f"[{self.point}] {self.rule}: {self.detail} (step {self.step}, key={self.key})"


@dataclass
class Watch:
    """Observer of the hostile exchange, and the per-step checks of the run."""

    now: Callable[[], float]
    """The engine's monotonic clock."""
    horizon: float
    """Seconds after which a posted order can no longer arrive (issue 11 A.2, default 30 s)."""
    permit_max_age: float
    state_of: Callable[[str], str | None] = lambda key: None
    """The engine's state of a key (None when no engine is running)."""
    stuck_after: float = 400.0
    """An unknown outcome still unresolved this long after it was first seen is stuck (A.3)."""
    violations: list[Violation] = field(default_factory=list)
    checks: int = 0
    step: int = 0
    attempts: set[str] = field(default_factory=set)
    fills: Counter[str] = field(default_factory=Counter)
    sold: Counter[str] = field(default_factory=Counter)
    """Token -> micro-shares our orders sold (the truth, answered or not)."""
    unresolved_since: dict[str, float] = field(default_factory=dict)

    def fail(self, point: str, rule: str, detail: str, key: str | None = None) -> None:
        self.violations.append(Violation(point, rule, detail, key, self.step, self.now()))

    def check(self, ok: bool, point: str, rule: str, detail: Callable[[], str], key: str | None = None) -> bool:
        self.checks += 1
        if not ok:
            self.fail(point, rule, detail(), key)
        return ok

    # -- told by the hostile exchange -------------------------------------------------------------------

    def posted(self, post: Post, earlier: list[Post]) -> None:
        key, permit, now = post.key, post.permit, post.posted_at
        self.check(permit.attempt_id not in self.attempts, "promise", "a permit is used once",
                   lambda: f"permit {permit.attempt_id} posted a second time", key)
        self.attempts.add(permit.attempt_id)
        state = self.state_of(key)
        self.check(state in (None, "SELLING"), "promise", "a sell only from SELLING",
                   lambda: f"posted for {key} in state {state}", key)
        for old in earlier:
            self.check(old.told is not Told.WAITING, "promise", "one sell in flight per position",
                       lambda old=old: f"{permit.attempt_id} posted while {old.permit.attempt_id} is still waiting "
                                       "for its answer", key)
            if old.told is not Told.UNKNOWN:
                continue
            # The engine was not told what became of `old`: only a resolution may allow a new post.
            self.check(old.truth is not Truth.FILLED, "A.2", "no second sell after an unknown outcome that filled",
                       lambda old=old: f"{old.permit.attempt_id} filled (answer lost), yet {permit.attempt_id} "
                                       "was posted: a double sell", key)
            self.check(old.truth is not Truth.TRAVELLING, "A.2", "no second sell while an order can still arrive",
                       lambda old=old: f"{old.permit.attempt_id} is still on its way (arrives at "
                                       f"t={old.late_due}), yet {permit.attempt_id} was posted", key)
            if old.truth is Truth.UNSENT:
                age = now - old.posted_at
                self.check(age >= self.horizon - 0.5, "A.2", "nothing found is not a no before the horizon",
                           lambda old=old, age=age: f"{old.permit.attempt_id} (never arrived) settled as not filled "
                                                    f"{age:.2f}s after its post, before the {self.horizon}s horizon; "
                                                    f"{permit.attempt_id} posted", key)

    def left(self, post: Post, stale_cache: bool) -> None:
        permit, key = post.permit, post.key
        age = self.now() - permit.verified_at
        self.check(age <= self.permit_max_age + 1e-9, "A.5", "a permit is fresh when its order leaves",
                   lambda: f"{permit.attempt_id} left {age:.3f}s after its verification "
                           f"(max {self.permit_max_age}s)", key)
        self.check(not stale_cache, "A.4", "refresh the balance cache after our own fill",
                   lambda: f"{permit.attempt_id} ({permit.token_id}) was verified on a balance cache not "
                           "refreshed since our last fill of the token", key)

    def executed(self, post: Post) -> None:
        if post.truth is Truth.FILLED:
            self.fills[post.key] += 1
            self.sold[post.permit.token_id] += post.permit.shares
            self.check(self.fills[post.key] <= 1, "promise", "one fill per position (no double sell)",
                       lambda: f"{post.key} filled {self.fills[post.key]} times, the last by "
                               f"{post.permit.attempt_id}", post.key)

    # -- after every step --------------------------------------------------------------------------------

    def check_positions(self, states: dict[str, str], unresolved: set[str]) -> None:
        """No position stuck: each is final, OPEN, or SELLING with an unknown outcome being resolved."""
        now = self.now()
        for key, state in states.items():
            if state in FINAL or state == "OPEN":
                self.check(key not in unresolved, "promise", "only a SELLING position is unresolved",
                           lambda key=key, state=state: f"{key} is {state} and flagged unresolved", key)
                continue
            self.check(state == "SELLING" and key in unresolved, "promise", "no position stuck",
                       lambda key=key, state=state: f"{key} is {state} with no exit running "
                                                    f"(unresolved={key in unresolved})", key)
        for key in list(self.unresolved_since):
            if key not in unresolved:
                del self.unresolved_since[key]
        for key in unresolved:
            since = self.unresolved_since.setdefault(key, now)
            self.check(now - since <= self.stuck_after, "A.3", "the engine resolves every unknown outcome itself",
                       lambda key=key, since=since: f"{key} unresolved for {now - since:.1f}s "
                                                    f"(limit {self.stuck_after}s)", key)

    def check_ledger(self, token: str, bought: int, removed: int, sold: int, balance: int) -> None:
        """Micro-shares: never sold more than held, and the exchange's balance is what the ledger says."""
        self.check(0 <= sold <= bought - removed, "promise", "sold <= held per token",
                   lambda: f"{token}: sold {sold} of {bought} bought ({removed} sold elsewhere)")
        self.check(balance == bought - removed - sold and balance >= 0, "promise", "the ledger adds up",
                   lambda: f"{token}: balance {balance} != {bought} - {removed} - {sold}")
