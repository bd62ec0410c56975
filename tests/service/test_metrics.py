"""``GET /metrics`` of ``ratewall serve`` after real decisions on a real Redis/Valkey:
ratewall's counters by policy and outcome, the envoyproxy/ratelimit-style per-rule stats,
and their sums over ``--workers``."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ._support import Code, Service, rls_request, rls_stub, write

pytestmark = pytest.mark.slow

LIMITS = """
policies:
  per_user: {limit: 5, window: 600}
  roomy: {limit: 1000, window: 600}
domains:
  rl:
    - key: user
      policy: per_user
    - key: source_cluster
      value: proxy
      descriptors:
        - key: destination_cluster
          policy: per_user
          shadow_mode: true
    - key: bulk
      policy: roomy
timeout: 5s
"""

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(service: Service) -> Samples:
    """Every sample of one scrape, by name and sorted labels (a fresh connection each time,
    so that with several workers the scrapes reach different ones)."""
    answer = httpx.get(service.http + "/metrics", timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def decisions(samples: Samples, policy: str, outcome: str) -> float:
    return samples.get(
        ("ratewall_decisions_total", (("outcome", outcome), ("policy", policy))), 0.0
    )


def rule_hits(samples: Samples, rule: str, stat: str) -> float:
    key = (("domain", "rl"), ("rule", rule), ("stat", stat))
    return samples.get(("ratewall_service_rule_hits_total", key), 0.0)


def test_metrics_count_decisions_and_rule_stats(redis_url: str, tmp_path: Path) -> None:
    limits = write(tmp_path / "limits.yaml", LIMITS)
    with Service("--config", limits, "--store", redis_url) as service:
        channel, stub = rls_stub(service.grpc_target)
        with channel:
            codes = Counter(
                stub.ShouldRateLimit(rls_request("rl", [("user", "ann")])).overall_code
                for _ in range(7)
            )
            shadow = [("source_cluster", "proxy"), ("destination_cluster", "db")]
            shadowed = Counter(
                stub.ShouldRateLimit(rls_request("rl", shadow)).overall_code for _ in range(7)
            )
            # Unknown domains and unmatched descriptors are answered OK, not counted per rule.
            stub.ShouldRateLimit(rls_request("nope", [("user", "ann")]))
            stub.ShouldRateLimit(rls_request("rl", [("other", "x")]))
            # hits_addend counts that many hits.
            stub.ShouldRateLimit(rls_request("rl", [("bulk", "b")], hits=3))
        assert codes == {Code.Value("OK"): 5, Code.Value("OVER_LIMIT"): 2}
        assert shadowed == {Code.Value("OK"): 7}
        body = {"checks": [{"policy": "per_user", "identity": "bo", "cost": 1}]}
        assert httpx.post(service.http + "/v1/check", json=body, timeout=10).status_code == 200
        samples = scrape(service)
    # The limiter's view, per policy: the shadow-mode rule's would-be refusals are refusals
    # of per_user there; the service let them through.
    assert decisions(samples, "per_user", "allowed") == 5 + 5 + 1
    assert decisions(samples, "per_user", "limited") == 2 + 2
    assert decisions(samples, "roomy", "allowed") == 1
    assert decisions(samples, "roomy", "limited") == 0
    # envoyproxy/ratelimit's stats, per rule, in hits.
    user = "rl.user"
    assert rule_hits(samples, user, "total_hits") == 7
    assert rule_hits(samples, user, "within_limit") == 5
    assert rule_hits(samples, user, "over_limit") == 2
    assert rule_hits(samples, user, "near_limit") == 2  # remaining 1 and 0 of 5: <= 20%
    assert rule_hits(samples, user, "shadow_mode") == 0
    proxy = "rl.source_cluster_proxy.destination_cluster"
    assert rule_hits(samples, proxy, "total_hits") == 7
    assert rule_hits(samples, proxy, "within_limit") == 5
    assert rule_hits(samples, proxy, "over_limit") == 2
    assert rule_hits(samples, proxy, "shadow_mode") == 2
    assert rule_hits(samples, "rl.bulk", "total_hits") == 3
    assert rule_hits(samples, "rl.bulk", "within_limit") == 3
    rules = {dict(labels)["rule"] for name, labels in samples if "rule_hits" in name}
    assert rules == {user, proxy, "rl.bulk"}
    assert samples["ratewall_store_calls_total", ()] >= 1


def test_metrics_sum_the_workers(redis_url: str, tmp_path: Path) -> None:
    limits = write(tmp_path / "limits.yaml", LIMITS)
    calls = 40
    with Service("--config", limits, "--store", redis_url, workers=2) as service:
        # One channel is one connection, which the kernel gives one worker: use several.
        for n in range(calls // 5):
            with grpc.insecure_channel(service.grpc_target) as channel:
                stub = rls_stub_on(channel)
                for _ in range(5):
                    answer = stub.ShouldRateLimit(rls_request("rl", [("bulk", f"b{n}")]))
                    assert answer.overall_code == Code.Value("OK")
        # A scrape sums its own worker's counts at once and the other's as last published
        # (every second): wait, bounded, for the other worker's file.
        deadline = time.monotonic() + 20
        while True:
            samples = scrape(service)
            if decisions(samples, "roomy", "allowed") == calls or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert decisions(samples, "roomy", "allowed") == calls
        assert rule_hits(samples, "rl.bulk", "total_hits") == calls
        # Every later scrape, whichever worker answers it, sees the same totals.
        for _ in range(4):
            again = scrape(service)
            assert decisions(again, "roomy", "allowed") == calls
            assert rule_hits(again, "rl.bulk", "within_limit") == calls


def rls_stub_on(channel: grpc.Channel) -> Any:
    from envoy.service.ratelimit.v3 import rls_pb2_grpc

    return rls_pb2_grpc.RateLimitServiceStub(channel)
