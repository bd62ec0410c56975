"""ratewall's metrics through opentelemetry-api (``pip install 'ratewall[otel]'``).

The same counters as the Prometheus collector, under OpenTelemetry's names: dotted, no
``_total`` (an exporter adds it), units as UCUM annotations. Counters are observable
(read when the reader collects, nothing per decision); the two histograms record each store
call, with explicit buckets (the SDK's default ones are for milliseconds and would put
every sub-millisecond call in the first). Attributes are named as the Prometheus labels
(``policy``, ``outcome``, ...), so that one dashboard serves both.

The application configures the SDK (a ``MeterProvider`` with its readers and exporters);
:func:`instrument` takes the global provider unless given one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

from opentelemetry import metrics as otel_metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from . import default_metrics
from ._counters import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics, Snapshot

__all__ = ["instrument"]

_instrumented: dict[tuple[int, int], Metrics] = {}
_lock = threading.Lock()


def _observe(
    metrics: Metrics, read: Callable[[Snapshot], Iterable[tuple[int, dict[str, str]]]]
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, attributes) for value, attributes in read(metrics.snapshot())]

    return callback


def _decisions(snapshot: Snapshot) -> Iterable[tuple[int, dict[str, str]]]:
    for policy, outcomes in snapshot.decisions.items():
        for outcome, value in outcomes.items():
            yield value, {"policy": policy, "outcome": outcome}


def _by(label: str, field: str) -> Callable[[Snapshot], Iterable[tuple[int, dict[str, str]]]]:
    def read(snapshot: Snapshot) -> Iterable[tuple[int, dict[str, str]]]:
        values: dict[str, int] = getattr(snapshot, field)
        return [(value, {label: name}) for name, value in values.items()]

    return read


def instrument(
    meter_provider: MeterProvider | None = None, metrics: Metrics | None = None
) -> Metrics:
    """Create ratewall's instruments on ``meter_provider`` (the global one if ``None``) for
    ``metrics`` (the process's shared ones if ``None``), once per pair; returns them."""
    counters = metrics or default_metrics()
    provider = meter_provider or otel_metrics.get_meter_provider()
    with _lock:
        if _instrumented.get((id(provider), id(counters))) is counters:
            return counters
        _instrumented[id(provider), id(counters)] = counters
    meter = provider.get_meter("ratewall")
    meter.create_observable_counter(
        "ratewall.decisions",
        [_observe(counters, _decisions)],
        unit="{decision}",
        description="Rate-limit decisions, by policy and outcome.",
    )
    meter.create_observable_counter(
        "ratewall.near_limit",
        [_observe(counters, _by("policy", "near_limit"))],
        unit="{decision}",
        description="Allowed decisions that left at most the near-limit fraction of the limit.",
    )
    meter.create_observable_counter(
        "ratewall.local_cache.answers",
        [_observe(counters, _by("policy", "cache_answers"))],
        unit="{decision}",
        description="Refusals this process's deny cache answered without a store call.",
    )
    meter.create_observable_counter(
        "ratewall.store.calls",
        [_observe(counters, lambda snapshot: [(snapshot.store_calls, {})])],
        unit="{call}",
        description="Round trips to the store (one may carry a batch of decisions).",
    )
    meter.create_observable_counter(
        "ratewall.store.errors",
        [_observe(counters, _by("kind", "store_errors"))],
        unit="{error}",
        description="Failed round trips to the store, by kind.",
    )
    meter.create_observable_counter(
        "ratewall.breaker.transitions",
        [_observe(counters, _by("state", "breaker"))],
        unit="{transition}",
        description="Circuit-breaker transitions: open (the store keeps failing), closed.",
    )
    meter.create_observable_counter(
        "ratewall.config.reloads",
        [_observe(counters, _by("result", "reloads"))],
        unit="{reload}",
        description="Config reloads, by result.",
    )
    duration = meter.create_histogram(
        "ratewall.store.call.duration",
        unit="s",
        description="Duration of one round trip to the store.",
        explicit_bucket_boundaries_advisory=list(LATENCY_BUCKETS),
    )
    batch = meter.create_histogram(
        "ratewall.store.batch.size",
        unit="{decision}",
        description="Decisions carried by one store round trip.",
        explicit_bucket_boundaries_advisory=list(BATCH_BUCKETS),
    )

    def record(seconds: float, calls: int) -> None:
        duration.record(seconds)
        batch.record(calls)

    counters.listen_to_store_calls(record)
    return counters
