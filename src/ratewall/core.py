"""The sans-IO core: everything a decision needs except talking to the store.

Both facades (:class:`~ratewall.RateLimiter`, :class:`~ratewall.AsyncRateLimiter`) do::

    plan = core.plan(identity, policy, op, cost)       # no I/O
    if plan.decision is None:                          # not answered locally
        replies = store.run([plan.call])               # the only I/O (awaited when async)
        decision = core.decide(plan, replies[0])       # no I/O

so the two differ by one ``await``. The core resolves policies, builds keys, consults the
local deny cache, turns store replies into :class:`~ratewall.Decision` objects, applies
the policy's failure mode, and keeps the circuit breaker.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from .algorithms import Rule, rule_for
from .decision import Decision
from .errors import StoreError
from .keys import DEFAULT_PREFIX, KeyBuilder, validate_name
from .local_cache import DenyCache
from .policy import Policy

__all__ = ["CHECK", "PEEK", "RESET", "Call", "Core", "Plan", "Reply"]

CHECK: Final = 0
PEEK: Final = 1
RESET: Final = 2

# A store reply: allowed (0/1), remaining, reset µs, retry µs (-1 if allowed), store now µs,
# then on refusal the key's stored state (integers).
Reply = Sequence[int]


class Call(NamedTuple):
    """One operation for the store: the unit stores execute (and later batch)."""

    key: str
    op: int
    cost: int
    rule: Rule


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    policy: Policy
    rule: Rule


class Plan(NamedTuple):
    compiled: _Compiled
    call: Call
    decision: Decision | None  # set when the core could answer without the store


class _Breaker:
    """Consecutive store failures open the circuit for ``cooldown`` µs: calls then fail fast
    without touching the network; the first call after the cooldown probes the store."""

    __slots__ = ("cooldown", "failures", "open_until", "threshold")

    def __init__(self, threshold: int, cooldown: int) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.failures = 0
        self.open_until = 0

    def is_open(self, now: int) -> bool:
        return self.failures >= self.threshold and now < self.open_until

    def failed(self, now: int) -> None:
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown

    def succeeded(self) -> None:
        self.failures = 0


class BreakerOpenError(Exception):
    """Raised inside the core when the breaker is open (never escapes a facade)."""


class Core:
    """Decides everything that can be decided without I/O. Thread-safe."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        *,
        key_prefix: str = DEFAULT_PREFIX,
        local_cache_size: int = 10_000,
        local_clock: Callable[[], int],
        breaker_threshold: int = 3,
        breaker_cooldown: float = 1.0,
    ) -> None:
        if not policies:
            raise ValueError("a rate limiter needs at least one policy")
        compiled: dict[str, _Compiled] = {}
        for name, policy in policies.items():
            validate_name(name, source="<limiter>", field=f"policies.{name}")
            if not isinstance(policy, Policy):
                raise TypeError(
                    f"policies[{name!r}] must be a ratewall.Policy, got {type(policy).__name__}"
                )
            compiled[name] = _Compiled(name, policy, rule_for(policy))
        self.policies: Mapping[str, Policy] = {n: c.policy for n, c in compiled.items()}
        self._compiled = compiled
        self._keys = KeyBuilder(key_prefix)
        self.deny_cache = DenyCache(local_cache_size)
        self._now = local_clock
        self._breaker = _Breaker(breaker_threshold, round(breaker_cooldown * 1_000_000))

    # -- planning -------------------------------------------------------------------------

    def plan(self, identity: str, policy: str, op: int, cost: int = 1) -> Plan:
        compiled = self._compiled.get(policy)
        if compiled is None:
            known = ", ".join(sorted(self._compiled))
            raise KeyError(f"unknown policy {policy!r}; this limiter knows: {known}")
        if type(identity) is not str:
            raise TypeError(f"identity must be a str, got {type(identity).__name__}")
        rule = compiled.rule
        if type(cost) is not int or not 1 <= cost <= rule.capacity:
            raise ValueError(
                f"cost must be an integer from 1 to {rule.capacity} for policy {policy!r} "
                f"(a cost above the policy's capacity could never be allowed), got {cost!r}"
            )
        key = self._keys.key(identity, policy)
        call = Call(key, op, cost, rule)
        if op == RESET:
            self.deny_cache.forget(key)
            return Plan(compiled, call, None)
        refusal = self.deny_cache.refusal(key, rule, cost, self._now())
        if refusal is not None:
            return Plan(
                compiled,
                call,
                _decision(
                    compiled, refusal.allowed, refusal.remaining, refusal.reset, refusal.retry
                ),
            )
        if self._breaker.is_open(self._now()):
            return Plan(
                compiled,
                call,
                self._failure_mode(
                    compiled,
                    BreakerOpenError(
                        "the store failed repeatedly; not retrying until the circuit breaker's "
                        "cooldown ends"
                    ),
                ),
            )
        return Plan(compiled, call, None)

    # -- deciding -------------------------------------------------------------------------

    def decide(self, plan: Plan, reply: Reply) -> Decision:
        self._breaker.succeeded()
        call = plan.call
        allowed = reply[0] == 1
        if call.op != RESET:
            if allowed:
                self.deny_cache.forget(call.key)
            elif self.deny_cache.maxsize:
                self.deny_cache.remember(call.key, tuple(reply[5:]), reply[4], self._now())
        return _decision(plan.compiled, allowed, reply[1], reply[2], reply[3])

    def failure(self, plan: Plan, error: BaseException) -> Decision:
        """The store failed on ``plan``: count it, then raise or answer per the failure mode."""
        self._breaker.failed(self._now())
        return self._failure_mode(plan.compiled, error)

    def _failure_mode(self, compiled: _Compiled, error: BaseException) -> Decision:
        mode = compiled.policy.failure_mode
        if mode == "raise":
            raise StoreError(
                f"rate-limit store failed for policy {compiled.name!r}: "
                f"{type(error).__name__}: {error}"
            ) from error
        capacity = compiled.rule.capacity
        cooldown = self._breaker.cooldown / 1_000_000
        if mode == "open":
            return Decision(True, compiled.name, capacity, capacity, 0.0, None, degraded=True)
        return Decision(False, compiled.name, capacity, 0, cooldown, cooldown, degraded=True)


def _decision(
    compiled: _Compiled, allowed: bool, remaining: int, reset: int, retry: int
) -> Decision:
    return Decision(
        allowed,
        compiled.name,
        compiled.rule.capacity,
        max(0, remaining),
        reset / 1_000_000,
        None if allowed else retry / 1_000_000,
    )
