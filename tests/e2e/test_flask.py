"""Flask over real HTTP: the README example under gunicorn workers sharing Redis, and the
extension's routes, decorator, configuration and failure rules under werkzeug's server."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import httpx
import pytest
from flask import Flask, request

from ratewall import ConfigError, Decision, Policy, RateLimiter
from ratewall.embedded import LocalServer
from ratewall.http import (
    ClientIP,
    Header,
    PathParam,
    Route,
    RouteLimit,
    User,
    WSGIRateLimitMiddleware,
)
from ratewall.http.steps import Item
from ratewall.integrations.flask import FlaskRateLimit
from ratewall.testing import FakeClock

from ..http._support import ratelimit_members, wsgi_app
from ._support import (
    assert_example_shares_one_limit,
    free_port,
    serve_wsgi,
    wire,
)

POLICIES = {"login": Policy(5, 60), "login_ip": Policy(3, 60), "profile": Policy(2, 60)}
USER = {"X-User-ID": "user_123"}
LOGIN = [Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST")]


@pytest.mark.slow
def test_readme_example_under_gunicorn_workers_shares_one_limit(
    redis_url: str, redis_server: LocalServer
) -> None:
    assert_example_shares_one_limit("gunicorn", "flask_app:app", redis_url, redis_server.port)


def limiter(clock: FakeClock | None = None) -> RateLimiter:
    return RateLimiter(POLICIES, clock=clock or FakeClock())


def posts(
    http: httpx.Client, url: str, count: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    return [http.post(url, headers=headers) for _ in range(count)]


def test_routes_and_decorator_answer_like_the_wsgi_middleware(http: httpx.Client) -> None:
    clock, reference_clock = FakeClock(), FakeClock()
    limits = FlaskRateLimit(limiter=limiter(clock), routes=LOGIN)
    app = Flask(__name__)
    limits.init_app(app)

    @app.post("/login")
    def login() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/users/<int:user_id>")
    @limits.limit("profile", PathParam("user_id"))
    def profile(user_id: int) -> str:
        return f"user {user_id}"

    reference = WSGIRateLimitMiddleware(wsgi_app(), limiter(reference_clock), LOGIN)
    with serve_wsgi(app) as url, serve_wsgi(reference) as other:
        allowed = posts(http, url + "/login", 5, USER)
        posts(http, other + "/login", 5, USER)
        clock.advance(45)
        reference_clock.advance(45)
        refused = posts(http, url + "/login", 1, USER)[0]
        expected = posts(http, other + "/login", 1, USER)[0]
        profiles = [http.get(f"{url}/users/{n}") for n in (7, 7, 7, 8)]
    assert [r.json() for r in allowed] == [{"ok": True}] * 5
    assert [ratelimit_members(r.headers)["login"]["r"] for r in allowed] == [4, 3, 2, 1, 0]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "15"
    assert wire(refused) == wire(expected)
    assert [r.status_code for r in profiles] == [200, 200, 429, 200]
    assert profiles[0].text == "user 7"
    assert ratelimit_members(profiles[0].headers) == {"profile": {"q": 2, "w": 60, "r": 1, "t": 60}}


def test_a_view_limited_by_a_route_and_its_decorator_reports_both(http: httpx.Client) -> None:
    limits = FlaskRateLimit(limiter=limiter(), routes=LOGIN)
    app = Flask(__name__)

    @app.post("/login")
    @limits.limit("login_ip")
    async def login() -> str:  # async views work too (Flask runs them to completion)
        return "ok"

    limits.init_app(app)  # after the decorator: the application-factory order
    with serve_wsgi(app) as url:
        responses = posts(http, url + "/login", 4, USER)
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert ratelimit_members(responses[0].headers) == {
        "login_ip": {"q": 3, "w": 60, "r": 2, "t": 60},
        "login": {"q": 5, "w": 60, "r": 4, "t": 60},
    }
    assert responses[3].json()["violated-policies"] == ["login_ip"]


def test_init_app_reads_the_config_file_from_the_app_config(
    tmp_path: Path, http: httpx.Client
) -> None:
    config = tmp_path / "limits.json"
    config.write_text(
        json.dumps(
            {
                "store": "redis://127.0.0.1:1/0",  # overridden below
                "policies": {
                    "login": {"limit": 2, "window": 60},
                    "api": {"limit": 1, "window": 60},
                },
                "routes": [
                    {"match": "POST /login", "identity": "header:X-User-ID", "policies": ["login"]}
                ],
            }
        )
    )
    limits = FlaskRateLimit()

    def create_app() -> Flask:
        app = Flask(__name__)
        app.config.update(RATEWALL_CONFIG=str(config), RATEWALL_STORE="memory://")
        limits.init_app(app)

        @app.post("/login")
        def login() -> str:
            return "ok"

        @app.get("/api")
        @limits.limit("api")
        def api() -> str:
            return "ok"

        return app

    first, second = create_app(), create_app()  # one extension, two apps, two limiters
    assert limits.limiter_for(first) is not limits.limiter_for(second)
    with serve_wsgi(first) as url, serve_wsgi(second) as other:
        assert [r.status_code for r in posts(http, url + "/login", 3, USER)] == [200, 200, 429]
        assert [r.status_code for r in posts(http, other + "/login", 3, USER)] == [200, 200, 429]
        assert [http.get(url + "/api").status_code for _ in range(2)] == [200, 429]


def test_user_identities_come_from_the_user_callable(http: httpx.Client) -> None:
    limits = FlaskRateLimit(limiter=limiter(), user=lambda: request.headers.get("X-Login"))
    app = Flask(__name__)
    limits.init_app(app)

    @app.post("/login")
    @limits.limit("login_ip", User(), on_missing_identity="reject")
    def login() -> str:
        return "ok"

    with serve_wsgi(app) as url:
        alice = posts(http, url + "/login", 4, {"X-Login": "alice"})
        bob = posts(http, url + "/login", 1, {"X-Login": "bob"})
        anonymous = posts(http, url + "/login", 1)
    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    assert bob[0].status_code == 200
    assert anonymous[0].status_code == 400
    assert anonymous[0].headers["content-type"] == "application/problem+json"


class BrokenLimiter:
    def __init__(self, policies: dict[str, Policy]) -> None:
        self.policies = policies

    def check_many(self, items: Sequence[Item], /) -> list[Decision]:
        raise RuntimeError("limiter bug")


def test_failures_never_become_a_500(caplog: pytest.LogCaptureFixture, http: httpx.Client) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    app = Flask(__name__)
    limits = FlaskRateLimit(app, limiter=BrokenLimiter(POLICIES), routes=LOGIN)
    closed = FlaskRateLimit(
        limiter=RateLimiter({"login": Policy(5, 60, failure_mode="closed")}, store=dead)
    )

    @app.post("/login")
    @limits.limit("login_ip")
    def login() -> str:
        return "ok"

    unavailable_app = Flask("unavailable")
    closed.init_app(unavailable_app)

    @unavailable_app.post("/login")
    @closed.limit("login", Header("X-User-ID"))
    def login_closed() -> str:
        return "ok"

    with caplog.at_level(logging.ERROR, "ratewall.http"):
        with serve_wsgi(app) as url:
            passed = posts(http, url + "/login", 4, USER)
        with serve_wsgi(unavailable_app) as url:
            unavailable = posts(http, url + "/login", 1, USER)[0]
    assert [r.status_code for r in passed] == [200] * 4
    assert "raised RuntimeError" in caplog.text
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"


def test_mistakes_fail_at_startup() -> None:
    limits = FlaskRateLimit(limiter=limiter())
    app = Flask(__name__)
    limits.init_app(app)
    with pytest.raises(ConfigError, match="unknown policy 'logn'"):
        limits.limit("logn")(lambda: "ok")

    later = FlaskRateLimit()
    later.limit("login", ClientIP())(lambda: "ok")
    with pytest.raises(ConfigError, match="RATEWALL_CONFIG"):
        later.init_app(Flask(__name__))

    unconfigured = FlaskRateLimit(limiter=limiter())
    bare = Flask(__name__)
    bare.testing = True  # let the exception out of the test client

    @bare.get("/")
    @unconfigured.limit("login")
    def index() -> str:
        return "ok"

    with pytest.raises(RuntimeError, match="init_app"):
        bare.test_client().get("/")
