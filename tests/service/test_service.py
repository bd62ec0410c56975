"""``ratewall serve`` as a subprocess on a real Redis/Valkey: gRPC, HTTP, signals, bad input,
failure modes, and exactness across service workers and in-process limiters."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import Any

import grpc
import httpx
import jsonschema
import pytest
import yaml

from ratewall import AsyncRateLimiter, Policy, StoreError
from ratewall.embedded import LocalServer
from ratewall.service import AsyncServiceClient, ServiceClient

from ._support import Code, Service, rls_request, rls_stub, write

pytestmark = pytest.mark.slow

# A generous store timeout: on a loaded machine a timed-out call is a failure-mode answer,
# and these tests count answers (a stopped server still refuses at once).
LIMITS = """
timeout: 5s
policies:
  per_user: {limit: 5, window: 60}
  global: {limit: 1000, window: 60, algorithm: token_bucket}
  shared: {limit: 50, window: 600}
domains:
  rl:
    - key: user
      policy: per_user
    - key: generic_key
      value: global
      policy: global
    - key: shared
      policy: shared
    - key: source_cluster
      value: proxy
      descriptors:
        - key: destination_cluster
          policy: per_user
          shadow_mode: true
        - key: destination_cluster
          value: free
          unlimited: true
"""

ENVOY = """
domain: edge
descriptors:
  - key: category
    value: account
    rate_limit: {replaces: [{name: per_ip}], unit: minute, requests_per_unit: 4}
  - key: remote_address
    rate_limit: {name: per_ip, unit: second, requests_per_unit: 10}
  - key: foo
    descriptors:
      - key: bar
        value: banned
        rate_limit: {unit: minute, requests_per_unit: 0}
"""

OPENAPI = yaml.safe_load(files("ratewall.service").joinpath("openapi.yaml").read_text())


def conforms(body: Any, schema: str) -> None:
    """``body`` matches components.schemas[schema] of the service's OpenAPI file."""
    jsonschema.validate(body, {**OPENAPI, "$ref": f"#/components/schemas/{schema}"})


@pytest.fixture
def configs(tmp_path: Path) -> tuple[str, str]:
    return write(tmp_path / "limits.yaml", LIMITS), write(tmp_path / "edge.yaml", ENVOY)


@pytest.fixture
def service(redis_url: str, configs: tuple[str, str]) -> Iterator[Service]:
    limits, edge = configs
    with Service(
        "--config", limits, "--envoy-config", edge, "--store", redis_url,
        env={"RATEWALL_ADMIN_TOKEN": "s3cret"},
    ) as running:  # fmt: skip
        yield running


def post(service: Service, path: str, body: object, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(service.http + path, content=content, timeout=10, **kwargs)


def check(service: Service, *items: tuple[str, str, int]) -> httpx.Response:
    body = {"checks": [{"policy": p, "identity": i, "cost": c} for p, i, c in items]}
    return post(service, "/v1/check", body)


def test_http_check_runs_the_request_flow_and_matches_the_openapi_file(service: Service) -> None:
    answers = [check(service, ("per_user", "alice", 1)) for _ in range(6)]
    for response in answers:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        conforms(response.json(), "CheckResponse")
    decisions = [r.json()["decisions"][0] for r in answers]
    assert [d["allowed"] for d in decisions] == [True] * 5 + [False]
    assert [d["remaining"] for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert decisions[5]["retry_after"] > 0
    assert decisions[0]["retry_after"] is None
    # cost 0 peeks; a batch is answered in order.
    batch = check(service, ("per_user", "alice", 0), ("global", "alice", 3), ("per_user", "bob", 2))
    allowed = [d["allowed"] for d in batch.json()["decisions"]]
    assert allowed == [False, True, True]
    assert [d["policy"] for d in batch.json()["decisions"]] == ["per_user", "global", "per_user"]


def test_a_refused_batch_consumes_nothing(service: Service) -> None:
    check(service, *[("per_user", "carol", 1)] * 5)  # carol is at her limit
    refused = check(service, ("per_user", "dave", 2), ("per_user", "carol", 1))
    assert [d["allowed"] for d in refused.json()["decisions"]] == [True, False]
    peek = check(service, ("per_user", "dave", 0)).json()["decisions"][0]
    assert peek["remaining"] == 4  # dave's 2 were not consumed (a peek counts a request of 1)


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        ({"checks": []}, 400, "checks"),
        ({"checks": [{"policy": "nope", "identity": "a"}]}, 400, "checks[0].policy"),
        ({"checks": [{"policy": "per_user", "identity": "a", "cost": -1}]}, 400, "checks[0].cost"),
        ({"checks": [{"policy": "per_user", "identity": "a", "cost": 6}]}, 400, "checks[0].cost"),
        ({"checks": [{"policy": "per_user", "identity": 5}]}, 400, "checks[0].identity"),
        ({"checks": [{"policy": "per_user", "identity": "a", "x": 1}]}, 400, "checks[0].x"),
        ({"checks": [{"policy": "per_user", "identity": "a"}] * 1001}, 400, "checks"),
        (b"x" * (1 << 21), 413, None),
    ],
)
def test_bad_checks_get_400_problems_naming_the_field_and_consume_nothing(
    service: Service, body: object, status: int, field: str | None
) -> None:
    # The first item is valid: a rejected batch must not consume it.
    if isinstance(body, dict) and len(body["checks"]) == 1:
        body = {"checks": [{"policy": "per_user", "identity": "erin"}, *body["checks"]]}
        field = field.replace("checks[0]", "checks[1]") if field else None
    response = post(service, "/v1/check", body)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    conforms(problem, "Problem")
    if field is not None:
        assert problem["invalid-params"][0]["name"] == field
    peek = check(service, ("per_user", "erin", 0)).json()["decisions"][0]
    assert peek["remaining"] == 4  # nothing consumed


def test_health_readiness_metrics_and_unknown_paths(service: Service) -> None:
    assert httpx.get(service.http + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(service.http + "/readyz")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    metrics = httpx.get(service.http + "/metrics")
    assert metrics.status_code == 200
    assert "ratewall_decisions_total" in metrics.text
    assert httpx.get(service.http + "/nope").status_code == 404
    assert httpx.get(service.http + "/v1/check").status_code == 405


def test_reset_needs_the_admin_token_when_one_is_set(service: Service) -> None:
    check(service, *[("per_user", "frank", 1)] * 5)
    body = {"policy": "per_user", "identity": "frank"}
    assert post(service, "/v1/reset", body).status_code == 401
    wrong = post(service, "/v1/reset", body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401
    done = post(service, "/v1/reset", body, headers={"authorization": "Bearer s3cret"})
    assert done.status_code == 204
    assert check(service, ("per_user", "frank", 1)).json()["decisions"][0]["remaining"] == 4


def test_json_endpoint_is_envoyproxy_ratelimits(service: Service) -> None:
    request = {"domain": "rl", "descriptors": [{"entries": [{"key": "user", "value": "gus"}]}]}
    codes = [post(service, "/json", request).status_code for _ in range(6)]
    assert codes == [200] * 5 + [429]
    body = post(service, "/json", request).json()
    conforms(body, "RateLimitResponse")
    assert body["overallCode"] == "OVER_LIMIT"
    assert body["statuses"][0]["currentLimit"] == {
        "requestsPerUnit": 5,
        "unit": "MINUTE",
        "name": "per_user",
    }
    assert post(service, "/json", b'{"domain": 5}').status_code == 400
    assert post(service, "/json", b'{"domain": "rl", "descriptors": []}').status_code == 400


def test_grpc_statuses_costs_and_headers(service: Service) -> None:
    channel, stub = rls_stub(service.grpc_target)
    with channel:
        first = stub.ShouldRateLimit(rls_request("rl", [("user", "hal")], hits=3))
        assert first.overall_code == Code.Value("OK")
        (status,) = first.statuses
        assert (status.current_limit.requests_per_unit, status.limit_remaining) == (5, 2)
        assert 0 < status.duration_until_reset.ToNanoseconds() <= 60 * 10**9
        headers = {h.key: h.value for h in first.response_headers_to_add}
        assert headers == {
            "ratelimit-policy": '"per_user";q=5;w=60',
            "ratelimit": '"per_user";r=2;t=60',
        }
        # A descriptor's own hits_addend wins; 0 only checks.
        peek = stub.ShouldRateLimit(rls_request("rl", ([("user", "hal")], 0), hits=9))
        assert peek.overall_code == Code.Value("OK")
        assert peek.statuses[0].limit_remaining == 1
        over = stub.ShouldRateLimit(rls_request("rl", ([("user", "hal")], 3)))
        assert over.overall_code == Code.Value("OVER_LIMIT")
        headers = {h.key: h.value for h in over.response_headers_to_add}
        assert int(headers["retry-after"]) >= 1
        # One refused descriptor: the others are not consumed either.
        both = stub.ShouldRateLimit(
            rls_request("rl", [("generic_key", "global")], ([("user", "hal")], 3))
        )
        assert [s.code for s in both.statuses] == [Code.Value("OK"), Code.Value("OVER_LIMIT")]
        after = stub.ShouldRateLimit(rls_request("rl", ([("generic_key", "global")], 0)))
        assert after.statuses[0].limit_remaining == 999  # untouched: a peek counts 1


def test_grpc_rules_unknown_domains_and_envoy_semantics(service: Service) -> None:
    channel, stub = rls_stub(service.grpc_target)
    ok, over = Code.Value("OK"), Code.Value("OVER_LIMIT")
    with channel:
        assert stub.ShouldRateLimit(rls_request("nope", [("user", "x")])).overall_code == ok
        too_deep = rls_request("rl", [("user", "x"), ("more", "y")])
        assert stub.ShouldRateLimit(too_deep).statuses[0].current_limit.requests_per_unit == 0
        empty = stub.ShouldRateLimit(rls_request("rl", []))
        assert empty.overall_code == ok
        free = stub.ShouldRateLimit(
            rls_request("rl", [("source_cluster", "proxy"), ("destination_cluster", "free")])
        )
        assert free.statuses[0].limit_remaining == 0xFFFFFFFF
        # Shadow mode: counted, never refused.
        shadow = [("source_cluster", "proxy"), ("destination_cluster", "db")]
        answers = [stub.ShouldRateLimit(rls_request("rl", shadow)) for _ in range(7)]
        assert {a.overall_code for a in answers} == {ok}
        assert answers[-1].statuses[0].limit_remaining == 0
        # replaces: the category rule replaces per_ip.
        replaced = stub.ShouldRateLimit(
            rls_request("edge", [("remote_address", "1.2.3.4")], [("category", "account")])
        )
        assert replaced.statuses[0].current_limit.requests_per_unit == 0
        assert replaced.statuses[1].current_limit.requests_per_unit == 4
        banned = stub.ShouldRateLimit(rls_request("edge", [("foo", "a"), ("bar", "banned")]))
        assert banned.overall_code == over


def test_bad_grpc_input_is_a_clear_status_and_the_worker_keeps_serving(service: Service) -> None:
    channel, stub = rls_stub(service.grpc_target)
    with channel:
        for request, code in [
            (rls_request("", [("user", "x")]), grpc.StatusCode.INVALID_ARGUMENT),
            (rls_request("rl"), grpc.StatusCode.INVALID_ARGUMENT),
            (
                rls_request("rl", *[[("user", str(i))] for i in range(300)]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
            (
                rls_request("rl", [(f"k{i}", "v") for i in range(100)]),
                grpc.StatusCode.INVALID_ARGUMENT,
            ),
        ]:
            with pytest.raises(grpc.RpcError) as caught:
                stub.ShouldRateLimit(request)
            assert caught.value.code() == code
        # Bytes that are not a RateLimitRequest at all.
        raw = channel.unary_unary(
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        with pytest.raises(grpc.RpcError) as caught:
            raw(b"\xff\xff\xff\xff")
        assert caught.value.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
        ok = stub.ShouldRateLimit(rls_request("rl", [("user", "ivy")]))
        assert ok.overall_code == Code.Value("OK")


def test_sighup_reloads_and_keeps_the_old_rules_on_a_bad_file(
    redis_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "limits.yaml"
    write(path, LIMITS)
    with Service("--config", str(path), "--store", redis_url) as service:
        write(path, LIMITS.replace("per_user: {limit: 5", "per_user: {limit: 3"))
        service.signal(signal.SIGHUP)
        service.wait_for("reloaded")
        assert check(service, ("per_user", "jo", 1)).json()["decisions"][0]["limit"] == 3
        write(path, "policies: [")
        service.signal(signal.SIGHUP)
        service.wait_for("reload failed")
        assert check(service, ("per_user", "jo", 1)).json()["decisions"][0]["limit"] == 3


def test_store_failure_follows_each_policys_failure_mode(
    fresh_server: LocalServer, tmp_path: Path
) -> None:
    limits = write(
        tmp_path / "modes.yaml",
        """
policies:
  opened: {limit: 5, window: 60, failure_mode: open}
  closed: {limit: 5, window: 60, failure_mode: closed}
  raised: {limit: 5, window: 60}
domains:
  rl:
    - {key: open, policy: opened}
    - {key: closed, policy: closed}
    - {key: raise, policy: raised}
""",
    )
    with Service("--config", limits, "--store", fresh_server.url) as service:
        fresh_server.stop()
        channel, stub = rls_stub(service.grpc_target)
        with channel:
            opened = stub.ShouldRateLimit(rls_request("rl", [("open", "a")]), timeout=5)
            assert opened.overall_code == Code.Value("OK")
            closed = stub.ShouldRateLimit(rls_request("rl", [("closed", "a")]), timeout=5)
            assert closed.overall_code == Code.Value("OVER_LIMIT")
            with pytest.raises(grpc.RpcError) as caught:
                stub.ShouldRateLimit(rls_request("rl", [("raise", "a")]), timeout=5)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert httpx.get(service.http + "/readyz", timeout=5).status_code == 503
        failed = check(service, ("raised", "a", 1))
        assert (failed.status_code, failed.headers["retry-after"]) == (503, "1")
        assert httpx.get(service.http + "/healthz").status_code == 200


def test_python_clients_have_the_limiters_api(service: Service) -> None:
    with ServiceClient(service.http, token="s3cret") as client:
        assert client.check("kim", "per_user", 2).remaining == 3
        assert client.peek("kim", "per_user").remaining == 2  # after a request of 1
        refused = client.check_many([("kim", "per_user", 3), ("kim", "global")])
        assert [d.allowed for d in refused] == [True, True]
        assert not client.check("kim", "per_user").allowed
        client.reset("kim", "per_user")
        assert client.check("kim", "per_user").remaining == 4
        with pytest.raises(KeyError):
            client.check("kim", "nope")
        with pytest.raises(ValueError, match="capacity"):
            client.check("kim", "per_user", 50)

    async def use_async() -> None:
        async with AsyncServiceClient(service.http) as client:
            assert (await client.check("lee", "per_user")).remaining == 4
            assert (await client.peek("lee", "per_user")).remaining == 3

    asyncio.run(use_async())
    with ServiceClient("http://127.0.0.1:9") as down, pytest.raises(StoreError):
        down.check("x", "per_user")


def test_workers_and_in_process_limiters_admit_exactly_the_limit(
    redis_url: str, tmp_path: Path
) -> None:
    limits = write(tmp_path / "limits.yaml", LIMITS)
    with Service("--config", limits, "--store", redis_url, workers=2) as service:

        async def load() -> int:
            channel = grpc.aio.insecure_channel(service.grpc_target)
            from envoy.service.ratelimit.v3 import rls_pb2_grpc

            stub = rls_pb2_grpc.RateLimitServiceStub(channel)
            limiter = AsyncRateLimiter({"shared": Policy(50, 600)}, redis_url, timeout=5)
            async with httpx.AsyncClient(base_url=service.http, timeout=10) as http:

                async def by_grpc() -> bool:
                    answer = await stub.ShouldRateLimit(rls_request("rl", [("shared", "pool")]))
                    return bool(answer.overall_code == Code.Value("OK"))

                async def by_http() -> bool:
                    body = {"checks": [{"policy": "shared", "identity": "pool"}]}
                    answer = await http.post("/v1/check", json=body)
                    return bool(answer.json()["decisions"][0]["allowed"])

                async def in_process() -> bool:
                    return (await limiter.check("pool", "shared")).allowed

                kinds = [by_grpc, by_http, in_process]
                results = await asyncio.gather(*(kinds[i % 3]() for i in range(240)))
            await limiter.aclose()
            await channel.close()
            return sum(results)

        assert asyncio.run(load()) == 50


def test_the_http_socket_says_tcp_so_asyncio_sets_nodelay() -> None:
    # With proto 0, asyncio leaves Nagle on for accepted connections, and every response
    # on a kept-alive connection waited ~40 ms for the client's delayed ACK.
    import socket

    from ratewall.service.runner import _listen

    sock = _listen("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP
