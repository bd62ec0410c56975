"""The counters: the outcome mapping, thread safety, bounded labels, the Prometheus
collector (registered once per process), composing with a user's observer, the config
setting."""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from ratewall import ConfigError, Decision, Policy, RateLimiter
from ratewall.config import load_config
from ratewall.metrics import (
    LATENCY_BUCKETS,
    OUTCOMES,
    FanOut,
    Metrics,
    Snapshot,
    default_metrics,
    observer_for,
)
from ratewall.metrics.prometheus import RatewallCollector, register
from ratewall.testing import DecisionCapture, FailingStore, FakeClock


def _decision(
    allowed: bool, *, remaining: int = 5, shadowed: bool = False, source: str = "store"
) -> Decision:
    return Decision(
        allowed,
        "api",
        10,
        remaining,
        1.0,
        None if allowed else 1.0,
        degraded=source == "failure",
        shadowed=shadowed,
        source=source,  # type: ignore[arg-type]
    )


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("decision", "outcome"),
    [
        (_decision(True), "allowed"),
        (_decision(True, source="lease"), "allowed"),
        (_decision(False), "limited"),
        (_decision(False, source="cache"), "limited"),
        (_decision(True, shadowed=True), "shadow_limited"),
        (_decision(True, source="exempt", remaining=10), "exempt"),
        (_decision(True, source="failure", remaining=10), "failed_open"),
        (_decision(False, source="failure", remaining=0), "failed_closed"),
        (_decision(True, source="local", remaining=3), "failed_open"),
        (_decision(False, source="local", remaining=0), "failed_closed"),
    ],
)
def test_each_decision_counts_under_exactly_one_outcome(decision: Decision, outcome: str) -> None:
    metrics = Metrics()
    metrics.on_decision(decision)
    counts = metrics.snapshot().decisions["api"]
    assert counts == {name: int(name == outcome) for name in OUTCOMES}


def test_a_store_error_raised_to_the_caller_counts_as_error() -> None:
    metrics = Metrics()
    metrics.on_error("api", ConnectionRefusedError())
    assert metrics.snapshot().decisions["api"]["error"] == 1


def test_cache_answers_are_counted_beside_the_refusal() -> None:
    metrics = Metrics()
    metrics.on_decision(_decision(False, source="cache"))
    metrics.on_decision(_decision(False))
    snapshot = metrics.snapshot()
    assert snapshot.cache_answers == {"api": 1}
    assert snapshot.decisions["api"]["limited"] == 2


def test_near_limit_counts_allowed_decisions_at_or_below_the_fraction() -> None:
    clock = FakeClock()
    metrics = Metrics()
    limiter = RateLimiter({"api": Policy(limit=10, window=60)}, observer=metrics, clock=clock)
    for _ in range(11):
        limiter.check("u", "api")
    snapshot = metrics.snapshot()
    # remaining 2, 1 and 0 are within 20% of 10; the eleventh is refused, not near.
    assert snapshot.near_limit == {"api": 3}
    assert snapshot.decisions["api"]["allowed"] == 10
    assert snapshot.decisions["api"]["limited"] == 1

    strict = Metrics(near_limit=0.0)
    strict.on_decision(_decision(True, remaining=1))
    strict.on_decision(_decision(True, remaining=0))
    assert strict.snapshot().near_limit == {"api": 1}


@pytest.mark.parametrize("fraction", [-0.1, 1.5, "0.2", None])
def test_near_limit_must_be_a_fraction(fraction: object) -> None:
    with pytest.raises(ValueError, match="near_limit must be a fraction"):
        Metrics(near_limit=fraction)  # type: ignore[arg-type]


@pytest.mark.slow
def test_no_update_is_lost_between_threads() -> None:
    metrics = Metrics()
    allowed, refused = _decision(True), _decision(False)
    threads, per_thread = 8, 20_000
    start = threading.Barrier(threads)

    def hammer() -> None:
        start.wait()
        for _ in range(per_thread):
            metrics.on_decision(allowed)
            metrics.on_decision(refused)
            metrics.on_store_call(0.0003, 2, None)
            metrics.on_store_call(0.0003, 1, None)  # the unlocked path of single calls

    workers = [threading.Thread(target=hammer) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    snapshot = metrics.snapshot()
    assert snapshot.decisions["api"]["allowed"] == threads * per_thread
    assert snapshot.decisions["api"]["limited"] == threads * per_thread
    calls = 2 * threads * per_thread
    assert snapshot.store_calls == calls
    # One call in 16 sampled, counted by the same exact counter: the 1st, 17th, ...
    assert snapshot.latency.count == -(-calls // 16)
    assert snapshot.batch.counts[:2] == [calls // 2, calls // 2]
    assert snapshot.batch.total == 3 * threads * per_thread


def test_store_calls_fill_the_histograms_and_error_kinds() -> None:
    metrics = Metrics(latency_sample=1)
    metrics.on_store_call(0.00004, 1, None)  # 40 µs: the first bucket
    metrics.on_store_call(0.0007, 64, None)
    metrics.on_store_call(0.05, 1, TimeoutError())
    metrics.on_store_call(0.001, 1, ConnectionRefusedError())
    metrics.on_store_call(0.001, 1, ValueError())
    snapshot = metrics.snapshot()
    assert snapshot.store_calls == 5
    assert snapshot.latency.counts[0] == 1
    assert snapshot.latency.counts[LATENCY_BUCKETS.index(0.001)] == 3  # 0.7 ms and 2 × 1 ms
    assert snapshot.latency.counts[LATENCY_BUCKETS.index(0.05)] == 1
    assert snapshot.latency.total == pytest.approx(0.05274)
    assert snapshot.batch.total == 68
    assert snapshot.store_errors == {"timeout": 1, "connection": 1, "protocol": 0, "other": 1}


def test_the_latency_histogram_samples_one_call_in_n_and_counts_every_call() -> None:
    metrics = Metrics(latency_sample=4)
    for n in range(10):
        metrics.on_store_call(0.001 * (n + 1), 1, None)  # 1 ms, 2 ms, ... 10 ms
    metrics.on_store_call(0.0007, 32, None)  # the 11th: batches are sampled alike
    metrics.on_store_call(0.05, 1, TimeoutError())
    snapshot = metrics.snapshot()
    assert snapshot.store_calls == 12  # exact
    assert snapshot.store_errors["timeout"] == 1  # exact
    assert snapshot.batch.counts[0] == 11
    assert snapshot.batch.total == 43
    # The 1st, 5th and 9th calls: 1 ms, 5 ms and 9 ms.
    assert snapshot.latency.count == 3
    assert snapshot.latency.total == pytest.approx(0.015)
    assert snapshot.latency_sample == 4
    assert Metrics().latency_sample == 16


@pytest.mark.parametrize("sample", [0, -1, 1.5, True, "16", 2_000_000])
def test_latency_sample_must_be_a_positive_int(sample: object) -> None:
    with pytest.raises(ValueError, match="latency_sample"):
        Metrics(latency_sample=sample)  # type: ignore[arg-type]


def test_the_prometheus_histogram_says_it_is_sampled() -> None:
    registry = CollectorRegistry()
    registry.register(RatewallCollector(Metrics(latency_sample=8)))
    text = generate_latest(registry).decode()
    assert "one call in 8 sampled" in text


def test_breaker_transitions_and_reloads() -> None:
    metrics = Metrics()
    metrics.on_breaker(True, ConnectionRefusedError())
    metrics.on_breaker(False, None)
    metrics.on_breaker(True, ConnectionRefusedError())
    metrics.record_reload(True)
    metrics.record_reload(False)
    metrics.record_reload(True)
    snapshot = metrics.snapshot()
    assert snapshot.breaker == {"open": 2, "closed": 1}
    assert snapshot.reloads == {"success": 2, "failure": 1}


def test_a_snapshot_survives_json_and_adds_up() -> None:
    metrics = Metrics()
    metrics.on_decision(_decision(True, remaining=1))
    metrics.on_decision(_decision(False, source="cache"))
    metrics.on_store_call(0.0002, 3, TimeoutError())
    metrics.on_breaker(True, None)
    metrics.record_reload(False)
    once = metrics.snapshot()
    copy = Snapshot.from_json(json.loads(json.dumps(once.to_json())))
    assert copy == once
    total = Snapshot()
    total.add(once)
    total.add(copy)
    assert total.decisions["api"]["allowed"] == 2
    assert total.near_limit == {"api": 2}
    assert total.cache_answers == {"api": 2}
    assert total.store_errors["timeout"] == 2
    assert total.latency.count == 2
    assert total.reloads["failure"] == 2


def test_the_collector_exposes_prometheus_names_and_base_units() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    registry.register(RatewallCollector(metrics))
    limiter = RateLimiter({"login": Policy(limit=2, window=60)}, observer=metrics)
    for _ in range(3):
        limiter.check("user_123", "login")
    metrics.on_store_call(0.0003, 4, None)
    samples = _samples(registry)
    assert samples["ratewall_decisions_total", (("outcome", "allowed"), ("policy", "login"))] == 2
    assert samples["ratewall_decisions_total", (("outcome", "limited"), ("policy", "login"))] == 1
    assert samples["ratewall_near_limit_total", (("policy", "login"),)] == 1
    assert samples["ratewall_store_calls_total", ()] == 1
    assert samples["ratewall_store_call_duration_seconds_bucket", (("le", "0.0005"),)] == 1
    assert samples["ratewall_store_call_duration_seconds_bucket", (("le", "0.00025"),)] == 0
    assert samples["ratewall_store_call_duration_seconds_count", ()] == 1
    assert samples["ratewall_store_batch_size_sum", ()] == 4
    assert samples["ratewall_config_reloads_total", (("result", "success"),)] == 0
    names = {name for name, _ in samples}
    assert all(name.startswith("ratewall_") for name in names)
    counters = {n for n in names if not n.startswith(("ratewall_store_call_", "ratewall_store_b"))}
    assert all(name.endswith("_total") for name in counters)


def test_limiters_asking_for_prometheus_share_one_registered_collector() -> None:
    before = default_metrics().snapshot().decisions.get("shared_policy", {}).get("allowed", 0)
    policies = {"shared_policy": Policy(limit=100, window=60)}
    first = RateLimiter(policies, metrics="prometheus")
    second = RateLimiter(policies, metrics="prometheus")
    assert first.metrics is second.metrics is default_metrics()
    assert register() is register()  # idempotent, no duplicate-name ValueError
    first.check("a", "shared_policy")
    second.check("b", "shared_policy")
    collected = [c for c in REGISTRY._collector_to_names if isinstance(c, RatewallCollector)]
    assert len(collected) == 1
    key = ("ratewall_decisions_total", (("outcome", "allowed"), ("policy", "shared_policy")))
    assert _samples(REGISTRY)[key] == before + 2


def test_labels_never_carry_identities() -> None:
    metrics = Metrics()
    registry = CollectorRegistry()
    registry.register(RatewallCollector(metrics))
    limiter = RateLimiter({"api": Policy(limit=1, window=60)}, observer=metrics)
    limiter.check("warm-up", "api")
    series_before = set(_samples(registry))
    for n in range(100_000):
        limiter.check(f"user-{n}", "api")
    samples = _samples(registry)
    assert set(samples) == series_before
    assert (
        samples["ratewall_decisions_total", (("outcome", "allowed"), ("policy", "api"))] == 100_001
    )
    assert not any("user-" in value for _, labels in samples for _, value in labels)


def test_metrics_and_a_users_observer_both_hear_every_event() -> None:
    capture = DecisionCapture()
    observer, metrics = observer_for("prometheus", capture)
    assert isinstance(observer, FanOut)
    assert metrics is default_metrics()

    fresh = Metrics()
    limiter = RateLimiter({"api": Policy(limit=1, window=60)}, observer=FanOut((fresh, capture)))
    limiter.check("u", "api")
    limiter.check("u", "api")
    assert [d.allowed for d in capture.decisions] == [True, False]
    assert fresh.snapshot().decisions["api"]["limited"] == 1


def test_an_observer_that_raises_does_not_deprive_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(DecisionCapture):
        def on_decision(self, decision: Decision) -> None:
            raise RuntimeError("observer bug")

    metrics = Metrics()
    limiter = RateLimiter({"api": Policy(limit=5, window=60)}, observer=FanOut((Broken(), metrics)))
    assert limiter.check("u", "api").allowed
    assert metrics.snapshot().decisions["api"]["allowed"] == 1
    assert "observer bug" in caplog.text


def test_a_limiter_with_metrics_creates_its_policies_series_at_zero() -> None:
    limiter = RateLimiter({"zero_policy": Policy(limit=1, window=60)}, metrics="prometheus")
    assert limiter.metrics is not None
    assert "zero_policy" in limiter.metrics.snapshot().decisions


def test_an_unknown_backend_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="metrics must be one of 'prometheus', 'otel'"):
        RateLimiter({"api": Policy(limit=1, window=60)}, metrics="statsd")


def test_the_config_setting_turns_metrics_on(tmp_path: Path) -> None:
    path = tmp_path / "limits.json"
    path.write_text(
        json.dumps({"policies": {"cfg_api": {"limit": 3, "window": 60}}, "metrics": "prometheus"})
    )
    config = load_config(path)
    assert config.metrics == "prometheus"
    limiter = RateLimiter.from_config(config)
    assert limiter.metrics is default_metrics()
    assert RateLimiter.from_config(load_config(path), metrics=None).metrics is default_metrics()


@pytest.mark.parametrize("value", ["statsd", 1, True, ["prometheus"]])
def test_a_bad_metrics_setting_names_the_file_and_field(tmp_path: Path, value: object) -> None:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({"policies": {"api": {"limit": 3, "window": 60}}, "metrics": value}))
    with pytest.raises(ConfigError) as raised:
        load_config(path)
    message = str(raised.value)
    assert str(path) in message
    assert "metrics" in message
    assert "expected one of prometheus, otel" in message


def test_counter_values_read_back_exactly() -> None:
    metrics = Metrics()
    metrics.watch(["api"])
    for _ in range(12_345):
        metrics.on_decision(_decision(False))
    assert metrics.snapshot().decisions["api"]["limited"] == 12_345


class _SlowPathMetrics(Metrics):
    """Counts through ``on_decision`` (a subclass is observed, not bound to the exits)."""


def _outcome_mix(metrics: Metrics) -> Snapshot:
    clock = FakeClock()
    policies = {
        "api": Policy(limit=5, window=60, exempt=frozenset({"health"})),
        "shadowed": Policy(limit=2, window=60, shadow=True),
        "tiered": Policy(limit=3, window=60, tiers={"pro": Policy(limit=6, window=60)}),
    }
    with RateLimiter(policies, observer=metrics, clock=clock) as limiter:
        for identity in ("a", "b"):
            for _ in range(7):
                limiter.check(identity, "api")
                limiter.check(identity, "shadowed")
                limiter.check(identity, "tiered", tier="pro")
                limiter.check(identity, "tiered")
        limiter.check("health", "api")
    return metrics.snapshot()


def test_the_exits_bound_counters_count_exactly_what_on_decision_counts() -> None:
    fast, slow = Metrics(), _SlowPathMetrics()
    counted = _outcome_mix(fast)
    assert counted == _outcome_mix(slow)
    assert counted.decisions["api"]["allowed"] == 10
    assert counted.decisions["api"]["limited"] == 4
    assert counted.decisions["api"]["exempt"] == 1
    assert counted.decisions["shadowed"]["shadow_limited"] == 10
    assert counted.near_limit["tiered"] > 0


def test_no_decision_is_lost_between_threads_on_the_bound_counters() -> None:
    metrics = Metrics()
    threads, per_thread = 4, 5_000
    limiter = RateLimiter({"api": Policy(limit=per_thread, window=60)}, observer=metrics)
    start = threading.Barrier(threads)

    def hammer(identity: str) -> None:
        start.wait()
        for _ in range(per_thread * 2):  # half allowed, half refused
            limiter.check(identity, "api")

    workers = [threading.Thread(target=hammer, args=(f"u{n}",)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    counts = metrics.snapshot().decisions["api"]
    assert counts["allowed"] == threads * per_thread
    assert counts["limited"] == threads * per_thread


def test_a_forked_child_counts_from_zero_through_the_same_exits() -> None:
    metrics = Metrics()
    limiter = RateLimiter({"api": Policy(limit=100, window=60)}, observer=metrics)
    for _ in range(3):
        limiter.check("u", "api")
    read, write = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads: what is tested here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: report its own count and leave without pytest's cleanup
        try:
            limiter.check("u", "api")
            limiter.check("u", "api")
            os.write(write, str(metrics.snapshot().decisions["api"]["allowed"]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as reply:
        child_count = reply.read()
    os.waitpid(pid, 0)
    assert child_count == "2"
    assert metrics.snapshot().decisions["api"]["allowed"] == 3


@pytest.mark.parametrize("listening", [False, True])
def test_the_sync_stores_counted_calls_record_what_on_store_call_records(listening: bool) -> None:
    # RedisStore.run_one reports a single call in two steps, timing only the sampled ones
    # (and every call while something listens); the totals must be on_store_call's.
    reported, counted = Metrics(latency_sample=4), Metrics(latency_sample=4)
    heard: dict[str, list[tuple[float, int]]] = {"reported": [], "counted": []}
    if listening:
        reported.listen_to_store_calls(lambda s, n: heard["reported"].append((s, n)))
        counted.listen_to_store_calls(lambda s, n: heard["counted"].append((s, n)))
    calls = [(0.001 * (i % 7), TimeoutError("slow") if i % 5 == 3 else None) for i in range(23)]
    for seconds, error in calls:
        reported.on_store_call(seconds, 1, error)
        how = counted.counting_store_call()
        if how or error is not None:  # as the store reports: not a quiet success untimed
            counted.counted_store_call(how, seconds if how else 0.0, error)
    assert counted.snapshot() == reported.snapshot()
    assert counted.snapshot().latency.count == 6  # calls 0, 4, ..., 20: one in four
    assert counted.snapshot().store_errors["timeout"] == 4  # calls 3, 8, 13, 18
    assert heard["counted"] == heard["reported"]
    assert len(heard["counted"]) == (23 if listening else 0)


def test_a_shadowed_failure_counts_as_failed_closed_through_on_decision_too() -> None:
    # The counting exit and an observer that only gets on_decision agree.
    policies = {"watch": Policy(1, 60, shadow=True, failure_mode="closed")}
    exit_metrics, observed = Metrics(), Metrics()
    with RateLimiter(policies, store=FailingStore(), observer=exit_metrics) as limiter:
        decision = limiter.check("u", "watch")
    observed.on_decision(decision)
    assert exit_metrics.snapshot().decisions["watch"]["failed_closed"] == 1
    assert observed.snapshot().decisions["watch"] == exit_metrics.snapshot().decisions["watch"]
