"""What the service decides, whichever protocol asked: one :class:`Engine` per worker.

An :class:`Engine` holds the compiled config (policies, descriptor rules) and the async
limiters that decide on the shared store. A reload builds a new :class:`Rules` and swaps one
reference; calls in flight finish on the rules they started with.

How one Envoy request (a domain and its descriptors) is decided:

- each descriptor is matched to a rule (:mod:`.descriptors`), and ``replaces`` applied;
- the enforced descriptors that consume (cost > 0) are decided together, as one
  ``check_many``: one atomic script call, all or nothing, so a request refused by one limit
  consumes nothing from the others (the Go service counts every descriptor regardless);
- descriptors with cost 0 are peeks; shadow-mode descriptors are checked on their own (they
  are counted as if enforced but their refusal must not stop the others);
- an ``unlimited`` rule or a descriptor without a rule is OK without the store; a rule of
  0 requests per unit refuses without it.

Concurrent calls share store round trips through the async limiter's batching.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..decision import Decision
from ..descriptors import UNIT_SECONDS, DomainTable, Match, Rule, identity_of, unit_for_window
from ..limiter import AsyncRateLimiter
from ..policy import Policy

__all__ = [
    "MAX_UINT32",
    "DescriptorIn",
    "DescriptorStatus",
    "Engine",
    "LimiterFactory",
    "Rules",
    "StatusListener",
]

_log = logging.getLogger("ratewall.service")

MAX_UINT32: Final = 0xFFFFFFFF
#: Builds a limiter for some policies on the worker's shared store (see runner).
LimiterFactory = Callable[[Mapping[str, Policy]], AsyncRateLimiter]

#: Hears each ShouldRateLimit request's domain, descriptors and outcomes, in order.
StatusListener = Callable[[str, Sequence["DescriptorIn"], Sequence["DescriptorStatus"]], None]

# Distinct per-descriptor limit overrides (requests_per_unit, unit) one worker keeps
# limiters for; Envoy sends a handful in practice, so more is a misconfiguration.
MAX_OVERRIDES: Final = 256


@dataclass(frozen=True, slots=True)
class DescriptorIn:
    """One descriptor of a request: its entries, its cost (hits; 0 = check only) and the
    per-descriptor limit override Envoy may send (requests per unit, unit name)."""

    entries: tuple[tuple[str, str], ...]
    cost: int = 1
    override: tuple[int, str] | None = None


@dataclass(frozen=True, slots=True)
class DescriptorStatus:
    """One descriptor's answer. ``decision`` is None when no limit applied (no rule, or an
    unlimited one); ``limit``/``unit`` describe the applied limit to Envoy."""

    over_limit: bool
    decision: Decision | None = None
    rule: Rule | None = None
    limit: int = 0
    unit: str | None = None
    remaining: int = MAX_UINT32
    reset_after: float = 0.0


@dataclass(frozen=True, slots=True)
class Rules:
    """One config generation: the limiter over its policies and the descriptor rules."""

    limiter: AsyncRateLimiter
    table: DomainTable
    policies: Mapping[str, Policy]
    source: str


class Engine:
    """Decides on the shared store for both protocols. One per worker process."""

    def __init__(
        self,
        rules: Rules,
        *,
        make_limiter: LimiterFactory,
        on_outcomes: StatusListener | None = None,
    ) -> None:
        self.rules = rules
        #: Told every Envoy request's outcomes (the per-rule stats of :mod:`.stats`).
        self.on_outcomes = on_outcomes
        self._make_limiter = make_limiter
        self._overrides: dict[tuple[int, str], AsyncRateLimiter] = {}
        self._override_warned = False

    def swap(self, rules: Rules) -> Rules:
        """Put ``rules`` in force; return the previous ones (for the caller to close)."""
        previous, self.rules = self.rules, rules
        return previous

    # -- the HTTP API's batch ---------------------------------------------------------------

    async def check_batch(self, checks: Sequence[tuple[str, str, int]]) -> list[Decision]:
        """``(policy, identity, cost)`` items, validated by the caller: the items with a cost
        are decided all or nothing (``check_many``), the others peeked; answers in order."""
        limiter = self.rules.limiter
        consuming = [i for i, (_, _, cost) in enumerate(checks) if cost > 0]
        items = [(checks[i][1], checks[i][0], checks[i][2]) for i in consuming]
        peeks = [i for i, (_, _, cost) in enumerate(checks) if cost == 0]
        results: list[Decision | None] = [None] * len(checks)
        peeked = await asyncio.gather(*(limiter.peek(checks[i][1], checks[i][0]) for i in peeks))
        for index, decision in zip(peeks, peeked, strict=True):
            results[index] = decision
        if items:
            group = await _check_group(limiter, items)
            for index, decision in zip(consuming, group, strict=True):
                results[index] = decision
        return [d for d in results if d is not None]

    # -- Envoy's ShouldRateLimit --------------------------------------------------------------

    async def should_rate_limit(
        self, domain: str, descriptors: Sequence[DescriptorIn]
    ) -> list[DescriptorStatus]:
        """One outcome per descriptor, in order. Raises :class:`StoreError` when the store
        fails for a policy whose failure mode is ``raise``."""
        rules = self.rules
        matches = rules.table.resolve(domain, [d.entries for d in descriptors])
        outcomes: list[DescriptorStatus | None] = [None] * len(descriptors)
        # (index, limiter, identity, policy, cost) of what the store must decide.
        enforced: list[_Ask] = []
        peeks: list[_Ask] = []
        shadows: list[_Ask] = []
        blocked = False
        for index, (descriptor, found) in enumerate(zip(descriptors, matches, strict=True)):
            if descriptor.override is not None:
                ask = self._override(index, descriptor, descriptor.override, domain)
                if ask is None:
                    outcomes[index] = DescriptorStatus(False)
                    continue
                (peeks if descriptor.cost == 0 else enforced).append(ask)
                continue
            if found is None or found.rule.unlimited:
                outcomes[index] = DescriptorStatus(False, rule=found.rule if found else None)
                continue
            rule = found.rule
            if rule.blocked:
                if rule.shadow:  # would refuse everything; shadow mode lets it all through
                    outcomes[index] = DescriptorStatus(False, rule=rule)
                else:
                    outcomes[index] = _blocked(rule)
                    blocked = True
                continue
            ask = _Ask(index, rules.limiter, found, rule.policy or "", descriptor.cost)
            if descriptor.cost == 0:
                peeks.append(ask)
            elif rule.shadow:
                shadows.append(ask)
            else:
                enforced.append(ask)
        too_big = [a for a in enforced if a.cost > _capacity(a)]
        if blocked or too_big:
            # Refused whatever the store says: nothing may be consumed, so only look.
            peeks.extend(enforced)
            enforced = []
        decisions = await self._decide(enforced, peeks, shadows)
        for ask, answer in decisions:
            decision = _refused(answer) if ask in too_big else answer
            if ask.match is not None and ask.match.rule.shadow and not decision.allowed:
                decision = _shadowed(decision)
            outcomes[ask.index] = _outcome(ask, decision)
        result = [o if o is not None else DescriptorStatus(False) for o in outcomes]
        if self.on_outcomes is not None:
            try:
                self.on_outcomes(domain, descriptors, result)
            except Exception:  # noqa: BLE001 - stats must never fail a decision
                _log.exception("counting the outcomes of a request failed")
        return result

    async def _decide(
        self, enforced: list[_Ask], peeks: list[_Ask], shadows: list[_Ask]
    ) -> list[tuple[_Ask, Decision]]:
        groups: dict[AsyncRateLimiter, list[_Ask]] = {}
        for ask in enforced:
            groups.setdefault(ask.limiter, []).append(ask)
        jobs: list[Awaitable[Decision | list[Decision]]] = [
            a.limiter.peek(a.identity, a.policy, min(max(a.cost, 1), _capacity(a))) for a in peeks
        ]
        jobs += [a.limiter.check(a.identity, a.policy, min(a.cost, _capacity(a))) for a in shadows]
        jobs += [
            _check_group(limiter, [(a.identity, a.policy, a.cost) for a in asks])
            for limiter, asks in groups.items()
        ]
        # One job (the usual request: one descriptor) is awaited as it is: gather would wrap
        # it in a task of its own, which costs more than the rest of the decision here.
        answers = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)
        results: list[tuple[_Ask, Decision]] = []
        for ask, answer in zip([*peeks, *shadows], answers, strict=False):
            if isinstance(answer, Decision):
                results.append((ask, answer))
        for asks, answer in zip(groups.values(), answers[len(peeks) + len(shadows) :], strict=True):
            if isinstance(answer, list):
                results.extend(zip(asks, answer, strict=True))
        return results

    def _override(
        self, index: int, descriptor: DescriptorIn, override: tuple[int, str], domain: str
    ) -> _Ask | None:
        """A descriptor carrying its own limit: decided by a limiter of that one policy
        (the same on every worker, so they share the counter), bypassing the rules."""
        requests, unit = override
        if requests == 0 or unit not in UNIT_SECONDS:
            return None
        key = (requests, unit)
        limiter = self._overrides.get(key)
        if limiter is None:
            if len(self._overrides) >= MAX_OVERRIDES:
                if not self._override_warned:
                    self._override_warned = True
                    _log.warning(
                        "more than %d distinct descriptor limit overrides; further ones are "
                        "not enforced",
                        MAX_OVERRIDES,
                    )
                return None
            limiter = self._make_limiter(
                {f"override.{requests}.{unit}": Policy(requests, UNIT_SECONDS[unit])}
            )
            self._overrides[key] = limiter
        policy = f"override.{requests}.{unit}"
        identity = identity_of([domain, *(f"{k}={v}" for k, v in descriptor.entries)])
        rule = Rule(f"{domain}.override", policy, "", limit=requests, window=UNIT_SECONDS[unit])
        return _Ask(index, limiter, Match(rule, identity), policy, descriptor.cost)


@dataclass(frozen=True, slots=True, eq=False)
class _Ask:
    index: int
    limiter: AsyncRateLimiter
    match: Match | None
    policy: str
    cost: int

    @property
    def identity(self) -> str:
        return self.match.identity if self.match is not None else ""


def _capacity(ask: _Ask) -> int:
    return ask.limiter.policies[ask.policy].capacity


async def _check_group(
    limiter: AsyncRateLimiter, items: Sequence[tuple[str, str, int]]
) -> list[Decision]:
    if len(items) == 1:
        identity, policy, cost = items[0]
        return [await limiter.check(identity, policy, cost)]
    try:
        return await limiter.check_many(items)
    except ValueError:
        # A Redis Cluster cannot decide keys of several hash slots in one script call:
        # decide them one by one there (each still exact, the group no longer atomic).
        return list(await asyncio.gather(*(limiter.check(*item) for item in items)))


def _outcome(ask: _Ask, decision: Decision) -> DescriptorStatus:
    rule = ask.match.rule if ask.match is not None else None
    window = rule.window if rule is not None else 0.0
    return DescriptorStatus(
        not decision.allowed,
        decision,
        rule,
        decision.limit,
        unit_for_window(window),
        decision.remaining,
        decision.retry_after if decision.retry_after is not None else decision.reset_after,
    )


def _blocked(rule: Rule) -> DescriptorStatus:
    """A rule of 0 requests per unit: refused, without asking the store."""
    return DescriptorStatus(True, None, rule, 0, unit_for_window(rule.window), 0, rule.window)


def _refused(decision: Decision) -> Decision:
    """A peek turned into the refusal of a cost the policy could never admit."""
    wait = decision.reset_after if decision.reset_after > 0 else 1.0
    return dataclasses.replace(decision, allowed=False, retry_after=wait)


def _shadowed(decision: Decision) -> Decision:
    """A shadow-mode rule's refusal, let through (counted as if enforced)."""
    return dataclasses.replace(decision, allowed=True, retry_after=None, shadowed=True)
