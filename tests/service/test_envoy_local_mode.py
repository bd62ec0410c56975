"""``ratewall serve --envoy-failure-mode local``: while the store fails, each worker process
enforces its share of every envoy rule's limit in memory, ``ceil(limit / N)`` with N the
``--envoy-local-nodes`` (default: ``--workers``, the processes of this instance)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ratewall import ConfigError
from ratewall.embedded import LocalServer
from ratewall.service.runner import ServiceOptions, _load

from ._support import Code, Service, rls_request, rls_stub, write

EDGE = """
domain: edge
descriptors:
  - key: remote_address
    rate_limit: {unit: minute, requests_per_unit: 6}
"""


def _edge(tmp_path: Path) -> str:
    return write(tmp_path / "edge.yaml", EDGE)


@pytest.mark.parametrize(("workers", "nodes", "expected"), [(1, None, 1), (4, None, 4), (2, 8, 8)])
def test_local_nodes_default_to_the_workers(
    tmp_path: Path, workers: int, nodes: int | None, expected: int
) -> None:
    options = ServiceOptions(
        envoy_config=(_edge(tmp_path),),
        store="redis://127.0.0.1:1",
        workers=workers,
        envoy_failure_mode="local",
        envoy_local_nodes=nodes,
    )
    (policy,) = _load(options).policies.values()
    assert (policy.failure_mode, policy.local_nodes) == ("local", expected)


def test_local_nodes_without_the_local_mode_is_a_clear_error(tmp_path: Path) -> None:
    options = ServiceOptions(envoy_config=(_edge(tmp_path),), envoy_local_nodes=2)
    with pytest.raises(ConfigError, match=r"--envoy-local-nodes.*only with --envoy-failure-mode"):
        _load(options)


@pytest.mark.slow
def test_a_worker_enforces_its_share_while_the_store_is_down(
    fresh_server: LocalServer, tmp_path: Path
) -> None:
    args = ("--envoy-config", _edge(tmp_path), "--store", fresh_server.url)
    local = ("--envoy-failure-mode", "local", "--envoy-local-nodes", "2")
    with Service(*args, *local) as service:
        fresh_server.stop()
        channel, stub = rls_stub(service.grpc_target)
        with channel:
            codes = [
                stub.ShouldRateLimit(
                    rls_request("edge", [("remote_address", "10.0.0.1")], hits=1), timeout=5
                ).overall_code
                for _ in range(5)
            ]
    ok, over = Code.Value("OK"), Code.Value("OVER_LIMIT")
    assert codes == [ok, ok, ok, over, over]  # ceil(6 / 2) = 3 in this worker
