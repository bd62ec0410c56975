"""ratewall's metrics for prometheus-client (``pip install 'ratewall[prometheus]'``).

:class:`RatewallCollector` reads the counters when scraped (nothing is copied per
decision). :func:`register` adds it to a registry once, however often it is called;
:func:`make_asgi_app` and :func:`make_wsgi_app` serve ``/metrics``. Names and labels are in
docs/metrics.md.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client import make_asgi_app as _asgi_app
from prometheus_client import make_wsgi_app as _wsgi_app
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from . import _shared, default_metrics
from ._counters import Histogram, Metrics, Snapshot

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication

__all__ = [
    "RatewallCollector",
    "families",
    "make_asgi_app",
    "make_wsgi_app",
    "register",
    "registry",
]


def _histogram(name: str, documentation: str, histogram: Histogram) -> HistogramMetricFamily:
    cumulative = histogram.cumulative()
    buckets = [(repr(bound), cumulative[i]) for i, bound in enumerate(histogram.bounds)]
    buckets.append(("+Inf", cumulative[-1]))
    return HistogramMetricFamily(name, documentation, buckets=buckets, sum_value=histogram.total)


def _labelled(
    name: str, documentation: str, label: str, values: dict[str, int]
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=(label,))
    for value_label, value in sorted(values.items()):
        family.add_metric((value_label,), value)
    return family


def families(snapshot: Snapshot) -> Iterator[Metric]:
    """The Prometheus metric families of ``snapshot``."""
    decisions = CounterMetricFamily(
        "ratewall_decisions",
        "Rate-limit decisions, by policy and outcome.",
        labels=("policy", "outcome"),
    )
    for policy, outcomes in sorted(snapshot.decisions.items()):
        for outcome, value in outcomes.items():
            decisions.add_metric((policy, outcome), value)
    yield decisions
    yield _labelled(
        "ratewall_near_limit",
        "Allowed decisions that left at most the near-limit fraction of the limit.",
        "policy",
        snapshot.near_limit,
    )
    yield _labelled(
        "ratewall_local_cache_answers",
        "Refusals this process's deny cache answered without a store call.",
        "policy",
        snapshot.cache_answers,
    )
    yield CounterMetricFamily(
        "ratewall_store_calls",
        "Round trips to the store (one may carry a batch of decisions).",
        value=snapshot.store_calls,
    )
    yield _labelled(
        "ratewall_store_errors",
        "Failed round trips to the store, by kind.",
        "kind",
        snapshot.store_errors,
    )
    yield _labelled(
        "ratewall_breaker_transitions",
        "Circuit-breaker transitions: open (the store keeps failing), closed (it answers).",
        "state",
        snapshot.breaker,
    )
    yield _labelled(
        "ratewall_config_reloads", "Config reloads, by result.", "result", snapshot.reloads
    )
    yield _histogram(
        "ratewall_store_call_duration_seconds",
        f"Duration of one round trip to the store: one call in {snapshot.latency_sample} "
        "sampled (ratewall_store_calls_total counts them all).",
        snapshot.latency,
    )
    yield _histogram(
        "ratewall_store_batch_size", "Decisions carried by one store round trip.", snapshot.batch
    )


class RatewallCollector(Collector):
    """Exposes ``metrics`` (the process's shared ones by default), summed over the server's
    worker processes when ``PROMETHEUS_MULTIPROC_DIR`` is set."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or default_metrics()

    def describe(self) -> list[Metric]:
        return list(families(Snapshot()))

    def collect(self) -> Iterator[Metric]:
        return families(_shared.totals(self.metrics))


_collectors: weakref.WeakKeyDictionary[CollectorRegistry, RatewallCollector] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def register(registry: CollectorRegistry | None = None) -> RatewallCollector:
    """Add the collector of the shared metrics to ``registry`` (prometheus-client's default
    one if ``None``) unless it is there already, and return it. In multi-process mode this
    process also starts publishing its counters for the others to sum."""
    target = REGISTRY if registry is None else registry
    with _lock:
        collector = _collectors.get(target)
        if collector is None:
            collector = RatewallCollector()
            target.register(collector)
            _collectors[target] = collector
    _shared.start_publishing(collector.metrics)
    return collector


def _registry() -> CollectorRegistry:
    if _shared.directory() is None:
        register()
        return REGISTRY
    from prometheus_client import multiprocess

    # prometheus-client's multi-process recipe (a registry of every worker's *.db files:
    # the application's own metrics), plus ratewall's counters summed the same way.
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    register(registry)
    return registry


def registry() -> CollectorRegistry:
    """The registry :func:`make_wsgi_app` serves (for ``generate_latest``): the default one,
    with ratewall's collector, or in multi-process mode one that sums every worker's."""
    return _registry()


def make_wsgi_app() -> WSGIApplication:
    """A WSGI app serving the metrics in Prometheus' text format (mount it at ``/metrics``):
    the default registry's, or in multi-process mode every worker's, summed."""
    return _wsgi_app(_registry())


def make_asgi_app() -> Callable[..., object]:
    """The ASGI twin of :func:`make_wsgi_app`."""
    return _asgi_app(_registry())
