"""The sans-IO core: everything a decision needs except talking to the store.

Both facades (:class:`~ratewall.RateLimiter`, :class:`~ratewall.AsyncRateLimiter`) do::

    plan = core.plan(identity, policy, op, cost)       # no I/O
    if plan.decision is None:                          # not answered locally
        reply = store.run_one(plan.call)               # the only I/O (awaited when async)
        decision = core.decide(plan, reply)            # no I/O

so the two differ by one ``await``. The core resolves policies, builds keys, consults the
local deny cache, turns store replies into :class:`~ratewall.Decision` objects, applies
the policy's failure mode, and keeps the circuit breaker.

A request checked against several policies at once (:meth:`Core.plan_many`) becomes one
*group* of calls that the store decides all or nothing: if any is refused, none is consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple, NoReturn

from ._calls import CHECK, LEASE, PEEK, RESET, Call, Reply, SlotCall
from ._exit import PolicyExit, exit_for
from ._fork import reset_in_child
from ._leases import LeaseBook
from ._local_mode import LocalShares
from .algorithms import (
    CONCURRENCY_CODE,
    SLOT_ACQUIRE,
    SLOT_PEEK,
    SLOT_RELEASE,
    SLOT_RENEW,
    SLOT_RESET,
    Rule,
    rule_for,
)
from .decision import Decision
from .keys import DEFAULT_PREFIX, KeyBuilder, validate_name
from .local_cache import DenyCache
from .observer import Observer
from .policy import Policy

__all__ = [
    "DEFAULT_BREAKER_COOLDOWN",
    "DEFAULT_BREAKER_THRESHOLD",
    "Core",
    "Plan",
    "PlanMany",
    "SlotPlan",
]

_log = logging.getLogger("ratewall")

#: Consecutive store failures that open the circuit breaker, and how long (seconds) it then
#: fails calls fast before a probe call may reach the store again.
DEFAULT_BREAKER_THRESHOLD: Final = 3
DEFAULT_BREAKER_COOLDOWN: Final = 1.0


#: The slot operations that make a decision (renewals and releases make none).
_SLOT_DECISIONS: Final = (SLOT_ACQUIRE, SLOT_PEEK)
_SLOT_OPS: Final = (SLOT_ACQUIRE, SLOT_RENEW, SLOT_RELEASE, SLOT_PEEK, SLOT_RESET)


@dataclass(frozen=True, slots=True)
class _Compiled:
    name: str
    policy: Policy
    rule: Rule
    capacity: int  # rule.capacity, one attribute away on the hot path
    keys: dict[str, str]  # identity -> key: the key builder's cache for this policy
    exit: PolicyExit  # where this policy's decisions are made (see ratewall._exit)
    # Whether some identities decide otherwise (exempt, overrides) or tiers exist: only then
    # does planning look at the three below.
    special: bool = False
    exempt: frozenset[str] = frozenset()
    overrides: Mapping[str, _Compiled] | None = None
    tiers: Mapping[str, _Compiled] | None = None


def _compile(
    name: str, policy: Policy, keys: dict[str, str], observer: Observer | None
) -> _Compiled:
    """A policy ready for planning. Its overrides and tiers share its name, key and state:
    only their rule (and the limit their decisions report) differs."""

    def variant(of: Policy) -> _Compiled:
        rule = rule_for(of)
        return _Compiled(
            name,
            of,  # its own numbers, for the failure mode "local"; the rest is the policy's
            rule,
            _checkable(rule),
            keys,
            exit_for(name, rule.capacity, observer, of.shadow),
        )

    rule = rule_for(policy)
    return _Compiled(
        name,
        policy,
        rule,
        _checkable(rule),
        keys,
        exit_for(name, rule.capacity, observer, policy.shadow),
        bool(policy.exempt or policy.overrides or policy.tiers),
        policy.exempt,
        {identity: variant(p) for identity, p in policy.overrides.items()},
        {tier: variant(p) for tier, p in policy.tiers.items()},
    )


def _checkable(rule: Rule) -> int:
    """The largest cost ``check`` accepts: none for a concurrency policy, so that the hot
    path's cost test sends every check of one to :meth:`Core.reject` (and its clear error),
    at no cost to the other policies."""
    return 0 if rule.algorithm == CONCURRENCY_CODE else rule.capacity


# Call(...) and Plan(...) go through a Python-level __new__; the hot path builds them with
# the tuple constructor itself, at half the cost.
_tuple_new = tuple.__new__


class Plan(NamedTuple):
    compiled: _Compiled
    call: Call
    decision: Decision | None  # set when the core could answer without the store
    generation: int  # the breaker's when planned (see _Breaker)


class SlotPlan(NamedTuple):
    compiled: _Compiled
    call: SlotCall
    decision: Decision | None  # set when the core could answer without the store
    generation: int


class PlanMany(NamedTuple):
    compiled: tuple[_Compiled, ...]
    calls: tuple[Call, ...]
    decisions: list[Decision] | None  # set when the core could answer without the store
    generation: int
    # The store requests: usually ``(calls,)``, one all-or-nothing group. With exempt items
    # or shadow policies (see Core._plan_split), the enforced calls as one group, then each
    # shadow policy's call alone, and ``order``: which call each reply belongs to (empty
    # when the plan was not split, the replies then in the calls' order).
    requests: tuple[tuple[Call, ...], ...] = ()
    order: tuple[int, ...] = ()


class _Breaker:
    """Consecutive store failures open the circuit for ``cooldown`` µs: calls then fail fast
    without touching the network; the first call after the cooldown probes the store.

    A failure counts only if its call was planned after the last counted failure
    (``generation``): calls caught by the same stall, concurrent or batched into one script
    call, are one piece of evidence, not one each. So a single 60 ms stall under load fails
    the calls it catches and nothing more, while a store that stays down fails three rounds
    of calls and opens the circuit, as it does for one caller at a time.
    """

    __slots__ = ("cooldown", "failures", "generation", "observer", "open_until", "threshold")

    def __init__(self, threshold: int, cooldown: int, observer: Observer | None = None) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.observer = observer
        self.failures = 0
        self.open_until = 0
        self.generation = 0  # counted failures so far: a plan records the value it saw

    def is_open(self, now: int) -> bool:
        return self.failures >= self.threshold and now < self.open_until

    def failed(self, now: int, generation: int, error: BaseException) -> None:
        """A call planned at ``generation`` failed with ``error``."""
        if generation != self.generation:
            return  # planned before the last counted failure: the same outage
        self.generation += 1
        self.failures += 1
        if self.failures >= self.threshold:
            self.open_until = now + self.cooldown
            if self.failures == self.threshold:
                _breaker_changed(self.observer, True, error)

    def succeeded(self) -> None:
        if self.failures >= self.threshold:
            _breaker_changed(self.observer, False, None)
        self.failures = 0


def _breaker_changed(observer: Observer | None, opened: bool, error: BaseException | None) -> None:
    """Say so once per transition (never once per request): a warning when the store starts
    failing, one when it answers again."""
    if opened:
        _log.warning(
            "ratewall: the rate-limit store is failing (%s: %s); policies answer per their "
            "failure_mode until it recovers",
            type(error).__name__,
            error,
        )
    else:
        _log.warning("ratewall: the rate-limit store answers again")
    if observer is not None:
        try:
            observer.on_breaker(opened, error)
        except Exception:  # noqa: BLE001 - an observer's bug must not fail the decision
            _log.exception("ratewall observer failed on a breaker transition")


class BreakerOpenError(Exception):
    """Stands for the store while the breaker is open (chained into StoreError)."""


_BREAKER_OPEN: Final = BreakerOpenError(
    "the store failed repeatedly; not retrying until the circuit breaker's cooldown ends"
)


class Core:
    """Decides everything that can be decided without I/O. Thread-safe."""

    def __init__(
        self,
        policies: Mapping[str, Policy],
        *,
        key_prefix: str = DEFAULT_PREFIX,
        local_cache_size: int = 10_000,
        local_clock: Callable[[], int],
        breaker_threshold: int = DEFAULT_BREAKER_THRESHOLD,
        breaker_cooldown: float = DEFAULT_BREAKER_COOLDOWN,
        slot_of: Callable[[str], int] | None = None,
        observer: Observer | None = None,
    ) -> None:
        if not policies:
            raise ValueError("a rate limiter needs at least one policy")
        self._keys = KeyBuilder(key_prefix)
        compiled: dict[str, _Compiled] = {}
        for name, policy in policies.items():
            validate_name(name, source="<limiter>", field=f"policies.{name}")
            if not isinstance(policy, Policy):
                raise TypeError(
                    f"policies[{name!r}] must be a ratewall.Policy, got {type(policy).__name__}"
                )
            compiled[name] = _compile(name, policy, self._keys.cache_for(name), observer)
        self.policies: Mapping[str, Policy] = {n: c.policy for n, c in compiled.items()}
        self.rules: Mapping[str, Rule] = {n: c.rule for n, c in compiled.items()}
        self.exits: Mapping[str, PolicyExit] = {n: c.exit for n, c in compiled.items()}
        #: The concurrency policies' names (their state is slots, not a rate).
        self.slot_policies: frozenset[str] = frozenset(
            n for n, c in compiled.items() if c.rule.algorithm == CONCURRENCY_CODE
        )
        #: Each policy compiled for deciding (its rule, exit, overrides and tiers).
        self.compiled: Mapping[str, _Compiled] = compiled
        self._compiled = compiled
        self.deny_cache = DenyCache(local_cache_size)
        # Leases share the local cache's bound (none without a local cache: the memory store).
        self.leases = LeaseBook(local_cache_size)
        self._now = local_clock
        self._breaker = _Breaker(breaker_threshold, round(breaker_cooldown * 1_000_000), observer)
        # On a Redis Cluster, one atomic call can only touch one hash slot.
        self._slot_of = slot_of
        self._observer = observer
        # The failure mode "local": this process's shares, bounded like the deny cache.
        self.local = LocalShares(local_cache_size or 10_000, local_clock, observer)
        reset_in_child(self)

    def reloaded(self, policies: Mapping[str, Policy]) -> Core:
        """A core for new ``policies`` with this one's settings and circuit breaker (the
        store's health does not change with the config). Its deny cache and leases start
        empty: a snapshot or a lease taken under the old rules is dropped, never misread."""
        core = Core(
            policies,
            key_prefix=self._keys.prefix,
            local_cache_size=self.deny_cache.maxsize,
            local_clock=self._now,
            slot_of=self._slot_of,
            observer=self._observer,
        )
        core._breaker = self._breaker
        core.local = self.local  # the shares consumed in an outage outlive a reload
        return core

    def _after_fork_in_child(self) -> None:
        """A forked child starts as a fresh process would: the parent's leases must not be
        spent twice, and a lock held by another thread at the fork would never be released."""
        self.deny_cache = DenyCache(self.deny_cache.maxsize)
        self.leases = LeaseBook(self.leases.maxsize)
        breaker = self._breaker
        self._breaker = _Breaker(breaker.threshold, breaker.cooldown, breaker.observer)

    # -- planning -------------------------------------------------------------------------

    def _call(
        self, identity: str, policy: str, op: int, cost: int, tier: str | None = None
    ) -> tuple[_Compiled, Call]:
        compiled = self._compiled.get(policy)
        if compiled is not None and (compiled.special or tier is not None):
            compiled = self.select(compiled, identity, tier)
        if (
            compiled is None
            or type(identity) is not str
            or type(cost) is not int
            or not 0 < cost <= compiled.capacity
        ):
            self.reject(identity, policy, cost)
        key = compiled.keys.get(identity)
        if key is None:
            key = self._keys.key(identity, policy)
        return compiled, _tuple_new(Call, (key, op, cost, compiled.rule))

    def reject(
        self, identity: object, policy: str, cost: object, tier: str | None = None
    ) -> NoReturn:
        """Raise the error a bad call deserves (unknown policy or tier, identity not a str,
        cost out of range); shared with the memory store, which checks calls itself."""
        compiled = self._compiled.get(policy)
        if compiled is None:
            known = ", ".join(sorted(self._compiled))
            raise KeyError(f"unknown policy {policy!r}; this limiter knows: {known}")
        if compiled.rule.algorithm == CONCURRENCY_CODE:
            raise ValueError(
                f"policy {policy!r} is a concurrency policy: its limit is slots held at once, "
                f"and a check could never give its slot back. Hold one with "
                f"`with limiter.slot(identity, {policy!r}) as decision:` (or acquire_slot(), "
                f"and release() when done); peek() and reset() work as for any policy"
            )
        if type(identity) is not str:
            raise TypeError(f"identity must be a str, got {type(identity).__name__}")
        compiled = self.select(compiled, identity, tier)
        capacity = compiled.rule.capacity
        why = ""
        if type(cost) is int and cost > capacity:
            why = " (a cost above the policy's capacity could never be allowed)"
        elif type(cost) is int and cost == 0:
            why = " (to ask without consuming, use peek())"
        raise ValueError(
            f"cost must be an integer from 1 to {capacity} for policy {policy!r}{why}, got {cost!r}"
        )

    @staticmethod
    def select(compiled: _Compiled, identity: str, tier: str | None) -> _Compiled:
        """The variant of ``compiled`` that decides for ``identity`` in ``tier``: its
        override, else the tier's limits, else the policy's own. Raises KeyError for a tier
        the policy does not define."""
        if tier is not None:
            tiers = compiled.tiers or {}
            if tier not in tiers:
                known = ", ".join(sorted(tiers)) or "none"
                raise KeyError(
                    f"unknown tier {tier!r} for policy {compiled.name!r}; its tiers: {known}"
                )
        overrides = compiled.overrides
        if overrides and type(identity) is str and identity in overrides:
            return overrides[identity]
        if tier is not None:
            return compiled.tiers[tier]  # type: ignore[index]  # checked above
        return compiled

    def plan(
        self, identity: str, policy: str, op: int, cost: int = 1, tier: str | None = None
    ) -> Plan:
        # _call inlined: this runs once per decision.
        compiled = self._compiled.get(policy)
        exempt: _Compiled | None = None
        if compiled is not None and (compiled.special or tier is not None):
            if type(identity) is str and identity in compiled.exempt:
                exempt = compiled  # decides with the policy's own limit, whatever the tier
            compiled = self.select(compiled, identity, tier)
        if (
            compiled is None
            or type(identity) is not str
            or type(cost) is not int
            or not 0 < cost <= compiled.capacity
        ):
            self.reject(identity, policy, cost)
        key = compiled.keys.get(identity)
        if key is None:
            key = self._keys.key(identity, policy)
        call = _tuple_new(Call, (key, op, cost, compiled.rule))
        breaker = self._breaker
        if exempt is not None and op != RESET:
            # Always allowed, nothing stored, the store not asked.
            return _tuple_new(Plan, (compiled, call, exempt.exit.exempt(), breaker.generation))
        if op == RESET:
            self.deny_cache.forget(key)
            self.leases.forget(key)
            return _tuple_new(Plan, (compiled, call, None, breaker.generation))
        leasing = op == CHECK and compiled.rule.lease and self.leases.maxsize
        if leasing:
            served = self.leases.spend(key, cost, self._now())
            if served is not None:
                decision = compiled.exit.allowed(served[0], served[1], "lease")
                return _tuple_new(Plan, (compiled, call, decision, breaker.generation))
        cache = self.deny_cache
        if cache.entries:
            known = cache.lookup(key, compiled.rule, cost, self._now())
            if known is not None:
                if not known.allowed:
                    decision = compiled.exit.refused(known[1], known[2], known[3], "cache")
                    return _tuple_new(Plan, (compiled, call, decision, breaker.generation))
                cache.forget(key)
        if breaker.failures and breaker.is_open(self._now()):
            decision = self._failure_mode(compiled, _BREAKER_OPEN, call)
            return Plan(compiled, call, decision, breaker.generation)
        if leasing and self.leases.start(key, self._now()):
            call = call._replace(op=LEASE)
        return _tuple_new(Plan, (compiled, call, None, breaker.generation))

    def plan_many(
        self,
        items: Sequence[tuple[str, str] | tuple[str, str, int] | tuple[str, str, int, str | None]],
        op: int,
    ) -> PlanMany:
        """One request against several (identity, policy[, cost[, tier]]) items, all or
        nothing."""
        if not items:
            raise ValueError("check_many needs at least one (identity, policy) item")
        exempt: dict[int, Decision] = {}
        pairs = []
        for index, item in enumerate(items):
            known_policy = self._compiled.get(item[1])
            if known_policy is not None and item[0] in known_policy.exempt:
                exempt[index] = known_policy.exit.exempt()
            pairs.append(
                self._call(
                    item[0],
                    item[1],
                    op,
                    item[2] if len(item) > 2 else 1,
                    item[3] if len(item) > 3 else None,  # a tier
                )
            )
        compiled = tuple(pair[0] for pair in pairs)
        calls = tuple(pair[1] for pair in pairs)
        if (
            exempt
            or any(c.exit.shadow for c in compiled)
            or (self._slot_of is not None and len({self._slot_of(c.key) for c in calls}) > 1)
        ):
            return self._plan_split(compiled, calls, exempt)
        now = self._now()
        generation = self._breaker.generation
        known = [self.deny_cache.lookup(c.key, c.rule, c.cost, now) for c in calls]
        if all(k is not None for k in known) and any(
            k is not None and not k.allowed for k in known
        ):
            # Every member's snapshot is here and one refuses: the store would refuse too.
            return PlanMany(
                compiled,
                calls,
                [
                    c.exit.allowed(k[1], k[2], "cache")
                    if k.allowed
                    else c.exit.refused(k[1], k[2], k[3], "cache")
                    for c, k in zip(compiled, known, strict=True)
                    if k is not None
                ],
                generation,
            )
        if self._breaker.is_open(now):
            return PlanMany(
                compiled, calls, self._failure_modes(compiled, calls, _BREAKER_OPEN), generation
            )
        return PlanMany(compiled, calls, None, generation, (calls,))

    def _plan_split(
        self, compiled: tuple[_Compiled, ...], calls: tuple[Call, ...], exempt: dict[int, Decision]
    ) -> PlanMany:
        """check_many with exempt items (decided here), shadow policies (decided alone), or,
        on a Redis Cluster, items in several hash slots: the store gets the enforced items
        as one group (on a Cluster, one group per hash slot: one atomic script call cannot
        span shards) and each shadow item on its own, in one round trip, so that a policy
        that only watches never blocks the others.

        Across a Cluster's groups the request is not all or nothing: a group refused by
        its own limit consumes nothing, while another group that passed keeps what it
        consumed. That errs toward refusing (the request is refused, and one identity's
        units are spent), never toward admitting more than a limit."""
        enforced = [i for i, c in enumerate(compiled) if i not in exempt and not c.exit.shadow]
        shadow = [i for i, c in enumerate(compiled) if i not in exempt and c.exit.shadow]
        groups = self._by_slot(calls, enforced) + [[i] for i in shadow]
        generation = self._breaker.generation
        if not groups:
            return PlanMany(compiled, calls, [exempt[i] for i in range(len(calls))], generation)
        if self._breaker.is_open(self._now()):
            asked = [i for i in range(len(calls)) if i not in exempt]
            decided = self._failure_modes(
                [compiled[i] for i in asked], [calls[i] for i in asked], _BREAKER_OPEN
            )
            decisions = dict(exempt)
            decisions.update(zip(asked, decided, strict=True))
            return PlanMany(compiled, calls, [decisions[i] for i in range(len(calls))], generation)
        requests = tuple(tuple(calls[i] for i in group) for group in groups)
        order = tuple(i for group in groups for i in group)
        return PlanMany(compiled, calls, None, generation, requests, order)

    def _by_slot(self, calls: tuple[Call, ...], indexes: list[int]) -> list[list[int]]:
        """``indexes`` as one group, or on a Redis Cluster one group per hash slot (in the
        order each slot first appears)."""
        if not indexes:
            return []
        slot_of = self._slot_of
        if slot_of is None:
            return [indexes]
        groups: dict[int, list[int]] = {}
        for index in indexes:
            groups.setdefault(slot_of(calls[index].key), []).append(index)
        return list(groups.values())

    # -- concurrency slots ----------------------------------------------------------------

    def plan_slot(
        self,
        identity: str,
        policy: str,
        op: int,
        token: str = "",
        cost: int = 1,
        tier: str | None = None,
    ) -> SlotPlan:
        """One slot operation (``algorithms.SLOT_*``) on a concurrency policy. An acquire or
        peek may be answered here: an exempt identity (allowed, nothing stored), or the
        failure mode while the circuit breaker is open."""
        compiled = self._compiled.get(policy)
        if compiled is None:
            self.reject(identity, policy, cost)
        if compiled.rule.algorithm != CONCURRENCY_CODE:
            raise ValueError(
                f"policy {policy!r} is a rate policy ({compiled.policy.algorithm}); slots need "
                f"a policy with algorithm 'concurrency'. Use check() or acquire() for it"
            )
        if type(identity) is not str:
            raise TypeError(f"identity must be a str, got {type(identity).__name__}")
        if op not in _SLOT_OPS:
            raise ValueError(f"unknown slot operation {op!r}")
        exempt = identity in compiled.exempt
        if compiled.special or tier is not None:
            compiled = self.select(compiled, identity, tier)
        if type(cost) is not int or not 0 < cost <= compiled.rule.limit:
            raise ValueError(
                f"cost must be an integer from 1 to {compiled.rule.limit} (the slots of policy "
                f"{policy!r}), got {cost!r}"
            )
        key = compiled.keys.get(identity)
        if key is None:
            key = self._keys.key(identity, policy)
        call = SlotCall(key, op, token, cost, compiled.rule)
        generation = self._breaker.generation
        decision: Decision | None = None
        if op in _SLOT_DECISIONS:
            if exempt:
                decision = compiled.exit.exempt()
            elif self._breaker.failures and self._breaker.is_open(self._now()):
                decision = self._failure_mode(compiled, _BREAKER_OPEN)
        return SlotPlan(compiled, call, decision, generation)

    def decide_slot(self, plan: SlotPlan, reply: Reply) -> Decision:
        """The decision of an acquire or peek from its reply (see ``lua/concurrency.lua``)."""
        if self._breaker.failures:
            self._breaker.succeeded()
        exit = plan.compiled.exit
        if reply[0] == 1:
            return exit.allowed(reply[1], reply[2])
        return exit.refused(reply[1], reply[2], reply[3])

    def slot_failure(self, plan: SlotPlan, error: BaseException) -> Decision:
        """The store failed on an acquire or peek: as :meth:`failure`."""
        self._breaker.failed(self._now(), plan.generation, error)
        return self._failure_mode(plan.compiled, error)

    # -- deciding -------------------------------------------------------------------------

    def decide(self, plan: Plan, reply: Reply) -> Decision:
        if self._breaker.failures:
            self._breaker.succeeded()
        compiled, call, _, _ = plan
        cache = self.deny_cache
        if reply[0] == 1:
            if cache.entries and call.key in cache.entries:
                cache.forget(call.key)
            if call.op == LEASE:
                return self._lease_granted(plan, reply)
            return compiled.exit.allowed(reply[1], reply[2])
        if call.op != RESET:
            if call.op == LEASE:
                self.leases.ended(call.key)
            if cache.maxsize:
                cache.remember(call.key, tuple(reply[5:]), reply[4], self._now())
        return compiled.exit.refused(reply[1], reply[2], reply[3])

    def _lease_granted(self, plan: Plan, reply: Reply) -> Decision:
        call = plan.call
        remaining = self.leases.granted(
            call.key, call.cost, reply[5], reply[1], reply[2], call.rule.window, self._now()
        )
        # The store decided this request (and granted the lease with it).
        return plan.compiled.exit.allowed(remaining, reply[2])

    def decide_many(self, plan: PlanMany, replies: Sequence[Sequence[Reply]]) -> list[Decision]:
        """Decisions from the replies to ``plan.requests`` (one list of replies each)."""
        self._breaker.succeeded()
        if not plan.order:  # the usual request: one group, replies in the calls' order
            self._learn(plan.calls, replies[0])
            return [
                c.exit.allowed(r[1], r[2]) if r[0] == 1 else c.exit.refused(r[1], r[2], r[3])
                for c, r in zip(plan.compiled, replies[0], strict=True)
            ]
        decisions: list[Decision | None] = [None] * len(plan.calls)
        position = 0
        for request, request_replies in zip(plan.requests, replies, strict=True):
            self._learn(request, request_replies)
            for reply in request_replies:
                index = plan.order[position]
                position += 1
                c = plan.compiled[index]
                decisions[index] = (
                    c.exit.allowed(reply[1], reply[2])
                    if reply[0] == 1
                    else c.exit.refused(reply[1], reply[2], reply[3])
                )
        return [
            decision if decision is not None else plan.compiled[i].exit.exempt()
            for i, decision in enumerate(decisions)
        ]

    def _learn(self, calls: Sequence[Call], replies: Sequence[Reply]) -> None:
        """Keep refused groups' snapshots in the deny cache; forget keys that passed."""
        cache = self.deny_cache
        if all(reply[0] == 1 for reply in replies):
            for call in calls:
                cache.forget(call.key)
        elif cache.maxsize:
            now = self._now()
            for call, reply in zip(calls, replies, strict=True):
                cache.remember(call.key, tuple(reply[5:]), reply[4], now)

    def failure(self, plan: Plan, error: BaseException) -> Decision:
        """The store failed on ``plan``: count it, then raise or answer per the failure mode."""
        if plan.call.op == LEASE:
            self.leases.ended(plan.call.key)
        self._breaker.failed(self._now(), plan.generation, error)
        return self._failure_mode(plan.compiled, error, plan.call)

    def failure_many(self, plan: PlanMany, error: BaseException) -> list[Decision]:
        self._breaker.failed(self._now(), plan.generation, error)
        if not plan.order:
            return self._failure_modes(plan.compiled, plan.calls, error)
        asked = sorted(set(plan.order))
        decided = dict(
            zip(
                asked,
                self._failure_modes(
                    [plan.compiled[i] for i in asked], [plan.calls[i] for i in asked], error
                ),
                strict=True,
            )
        )
        return [
            decided[i] if i in decided else compiled.exit.exempt()
            for i, compiled in enumerate(plan.compiled)
        ]

    def _failure_mode(
        self, compiled: _Compiled, error: BaseException, call: Call | None = None
    ) -> Decision:
        """The policy's failure mode's answer to ``call`` (``None`` for a slot operation: a
        concurrency policy cannot fail "local", see :class:`~ratewall.Policy`)."""
        mode = compiled.policy.failure_mode
        if mode == "raise":
            raise compiled.exit.store_error(error) from error
        if mode == "local" and call is not None:
            return self.local.decide(
                compiled.name,
                compiled.policy,
                call.key,
                PEEK if call.op == PEEK else CHECK,
                call.cost,
            )
        return compiled.exit.failed(mode == "open", self._breaker.cooldown / 1_000_000)

    def _failure_modes(
        self, compiled: Sequence[_Compiled], calls: Sequence[Call], error: BaseException
    ) -> list[Decision]:
        """The failure modes' answers to one request of several calls: the policies that
        fail "local" decide their calls together, all or nothing, like the store would."""
        local = [i for i, c in enumerate(compiled) if c.policy.failure_mode == "local"]
        if not local:
            return [
                self._failure_mode(c, error, call) for c, call in zip(compiled, calls, strict=True)
            ]
        # The other policies first (a "raise" raises before anything is consumed locally).
        others = {
            i: self._failure_mode(c, error, calls[i])
            for i, c in enumerate(compiled)
            if i not in local
        }
        # A request another policy refuses consumes nothing here either.
        op = CHECK if all(d.allowed for d in others.values()) else PEEK
        shared = self.local.decide_many(
            [(compiled[i].name, compiled[i].policy, calls[i].key, calls[i].cost) for i in local],
            op,
        )
        others.update(zip(local, shared, strict=True))
        return [others[i] for i in range(len(compiled))]
