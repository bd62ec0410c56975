"""Two real worker processes, one /metrics: with PROMETHEUS_MULTIPROC_DIR set, a scrape of
either worker reports the decisions of both (gunicorn forks its workers, uvicorn spawns
them)."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ._support import free_port, spawned

REQUESTS = 60
MAX_REQUESTS = 1_000  # until both workers have answered
SETTLE = 20.0  # seconds for every worker to publish (each does so once a second)

APP = textwrap.dedent(
    """
    import os

    from ratewall import Policy, RateLimiter
    from ratewall.metrics.prometheus import make_asgi_app, make_wsgi_app

    limiter = RateLimiter({"api": Policy(limit=1_000_000, window=60)}, metrics="prometheus")
    wsgi_metrics = make_wsgi_app()
    asgi_metrics = make_asgi_app()


    def app(environ, start_response):
        if environ["PATH_INFO"] == "/metrics":
            return wsgi_metrics(environ, start_response)
        limiter.check(environ.get("QUERY_STRING") or "anonymous", "api")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [str(os.getpid()).encode()]


    async def asgi_app(scope, receive, send):
        if scope["path"] == "/metrics":
            return await asgi_metrics(scope, receive, send)
        limiter.check(scope["query_string"].decode() or "anonymous", "api")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
    """
)


def _allowed(text: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "ratewall_decisions_total" and sample.labels == {
                "policy": "api",
                "outcome": "allowed",
            }:
                return sample.value
    raise AssertionError(f"no ratewall_decisions_total for api in:\n{text[:2000]}")


@pytest.mark.slow
@pytest.mark.parametrize("server", ["gunicorn", "uvicorn"])
def test_a_scrape_of_any_worker_counts_every_workers_decisions(tmp_path: Path, server: str) -> None:
    (tmp_path / "metrics_app.py").write_text(APP)
    shared = tmp_path / "prometheus"
    shared.mkdir()
    port = free_port()
    address = ["127.0.0.1", str(port)]
    argv = {
        "gunicorn": ["python", "-m", "gunicorn", "-w", "2", "-b", ":".join(address)],
        "uvicorn": ["python", "-m", "uvicorn", "--workers", "2", "--lifespan", "off"],
    }[server]
    if server == "gunicorn":
        argv.append("metrics_app:app")
    else:
        argv += ["--host", address[0], "--port", address[1], "metrics_app:asgi_app"]
    base = f"http://127.0.0.1:{port}"
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "PYTHONPATH": str(tmp_path)}
    with spawned(argv, env=env, cwd=tmp_path) as process:
        process.wait_for_http(f"{base}/metrics")
        pids: set[str] = set()
        sent = 0
        while sent < REQUESTS or (len(pids) < 2 and sent < MAX_REQUESTS):
            # A new connection per request lets the kernel hand requests to either worker.
            with httpx.Client(timeout=10.0) as client:
                pids.add(client.get(f"{base}/hit", params={f"user-{sent}": ""}).text)
            sent += 1
        assert len(pids) == 2, f"all {sent} requests went to one worker"
        deadline = time.monotonic() + SETTLE
        while True:
            totals = {_allowed(httpx.get(f"{base}/metrics", timeout=10.0).text) for _ in range(4)}
            if totals == {sent}:
                break
            assert time.monotonic() < deadline, f"scrapes said {totals}, not {sent}"
            assert max(totals) <= sent, f"counted twice: {totals}"
            time.sleep(0.2)
    assert len(list(shared.glob("ratewall_*.json"))) >= 2
