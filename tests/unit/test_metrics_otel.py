"""The OpenTelemetry instruments, read through the SDK's in-memory reader."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from ratewall import Policy, RateLimiter
from ratewall.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, Metrics
from ratewall.metrics.otel import instrument


def _collected(reader: InMemoryMetricReader) -> dict[str, Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }


def _points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted(p.attributes.items())): p for p in metric.data.data_points}


def test_the_instruments_have_otel_names_units_and_explicit_buckets() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics()
    assert instrument(provider, metrics) is metrics
    assert instrument(provider, metrics) is metrics  # once per pair: no second callbacks
    limiter = RateLimiter({"login": Policy(limit=2, window=60)}, observer=metrics)
    for _ in range(3):
        limiter.check("user_123", "login")
    metrics.on_store_call(0.0003, 4, None)
    metrics.on_store_call(0.00002, 1, TimeoutError())
    metrics.record_reload(True)

    collected = _collected(reader)
    decisions = collected["ratewall.decisions"]
    assert decisions.unit == "{decision}"
    assert decisions.data.is_monotonic
    points = _points(decisions)
    assert points[("outcome", "allowed"), ("policy", "login")].value == 2
    assert points[("outcome", "limited"), ("policy", "login")].value == 1
    assert points[("outcome", "shadow_limited"), ("policy", "login")].value == 0
    assert _points(collected["ratewall.near_limit"])[(("policy", "login"),)].value == 1
    assert _points(collected["ratewall.store.errors"])[(("kind", "timeout"),)].value == 1
    assert _points(collected["ratewall.config.reloads"])[(("result", "success"),)].value == 1
    assert _points(collected["ratewall.store.calls"])[()].value == 2

    duration = collected["ratewall.store.call.duration"]
    assert duration.unit == "s"
    (point,) = duration.data.data_points
    assert tuple(point.explicit_bounds) == LATENCY_BUCKETS
    assert point.count == 2
    assert point.bucket_counts[0] == 1  # 20 µs: below the first bound, not lumped at 5 ms
    assert point.bucket_counts[LATENCY_BUCKETS.index(0.0005)] == 1
    (batch,) = collected["ratewall.store.batch.size"].data.data_points
    assert tuple(batch.explicit_bounds) == BATCH_BUCKETS
    assert batch.sum == 5
    provider.shutdown()


def test_labels_stay_bounded_under_many_identities() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = Metrics()
    instrument(provider, metrics)
    limiter = RateLimiter({"api": Policy(limit=1, window=60)}, observer=metrics)
    limiter.check("warm-up", "api")
    before = {name: set(_points(m)) for name, m in _collected(reader).items()}
    for n in range(100_000):
        limiter.check(f"user-{n}", "api")
    after = {name: set(_points(m)) for name, m in _collected(reader).items()}
    assert after == before
    provider.shutdown()


def test_metrics_otel_uses_the_global_meter_provider() -> None:
    limiter = RateLimiter({"otel_api": Policy(limit=5, window=60)}, metrics="otel")
    assert limiter.metrics is not None
    limiter.check("u", "otel_api")
    assert limiter.metrics.snapshot().decisions["otel_api"]["allowed"] >= 1
