"""Per-rule stats in the style of envoyproxy/ratelimit, for Prometheus.

The Go service counts, per domain and descriptor rule, ``total_hits``, ``over_limit``,
``near_limit``, ``within_limit`` and ``shadow_mode`` (in hits: a request's ``hits_addend``
counts that many). ratewall serve counts the same, as one counter::

    ratewall_service_rule_hits_total{domain="rl", rule="rl.database_users", stat="over_limit"}

``rule`` is the rule's path (the domain, then ``key`` or ``key_value`` per level);
descriptors that no rule matches, and unknown domains, are not counted (their names come
from the request, so counting them would let callers create series without bound).

These counters live in prometheus-client (so with ``PROMETHEUS_MULTIPROC_DIR`` set, as
``ratewall serve --workers N`` does, every worker's counts are summed at scrape time). The
library's own ``ratewall_decisions_total`` counts per policy what the limiter decided; a
shadow-mode *rule* of the service refuses nothing, so its would-be refusals appear there as
``limited`` and here as ``shadow_mode``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

from .engine import DescriptorIn, DescriptorStatus

__all__ = ["NEAR_LIMIT", "STATS", "RuleStats"]

#: The stats counted per rule, as envoyproxy/ratelimit names them.
STATS: Final = ("total_hits", "over_limit", "near_limit", "within_limit", "shadow_mode")
#: An allowed hit that leaves at most this fraction of the limit is also ``near_limit``
#: (envoyproxy/ratelimit's default NEAR_LIMIT_RATIO is 0.8 of the limit used).
NEAR_LIMIT: Final = 0.2

_counter: Any = None
_lock = threading.Lock()


def _shared_counter() -> Any:
    """One prometheus-client counter per process (registering a second one would clash)."""
    global _counter  # noqa: PLW0603 - one per process, made on first use
    with _lock:
        if _counter is None:
            from prometheus_client import Counter

            _counter = Counter(
                "ratewall_service_rule_hits",
                "Hits per descriptor rule of ratewall serve, as envoyproxy/ratelimit counts "
                "them (stat: total_hits, over_limit, near_limit, within_limit, shadow_mode).",
                ("domain", "rule", "stat"),
            )
        return _counter


class RuleStats:
    """Counts each request's outcomes per rule. Needs prometheus-client."""

    def __init__(self) -> None:
        self._counter = _shared_counter()
        self._children: dict[tuple[str, str, str], Any] = {}

    def _add(self, domain: str, rule: str, stat: str, hits: int) -> None:
        key = (domain, rule, stat)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(domain, rule, stat)
        child.inc(hits)

    def count(
        self, domain: str, descriptors: Sequence[DescriptorIn], outcomes: Sequence[DescriptorStatus]
    ) -> None:
        for descriptor, outcome in zip(descriptors, outcomes, strict=True):
            rule = outcome.rule
            if rule is None:
                continue
            hits = descriptor.cost
            path = rule.path
            self._add(domain, path, "total_hits", hits)
            decision = outcome.decision
            if outcome.over_limit:
                self._add(domain, path, "over_limit", hits)
            elif decision is not None and decision.shadowed:
                self._add(domain, path, "over_limit", hits)
                self._add(domain, path, "shadow_mode", hits)
            else:
                self._add(domain, path, "within_limit", hits)
                if decision is not None and decision.remaining <= decision.limit * NEAR_LIMIT:
                    self._add(domain, path, "near_limit", hits)
