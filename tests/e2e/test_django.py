"""Django over real HTTP: the README example under gunicorn workers sharing Redis, and the
middleware and decorator configured by ``settings.RATEWALL``, for ``def`` and ``async def``
views, under werkzeug's WSGI server and under uvicorn with Django's ASGI handler.

Django's settings are global to a process: this module configures them once (it is its own
URLconf) and each test overrides ``RATEWALL`` and ``MIDDLEWARE``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import django
import httpx
import pytest
from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import override_settings
from django.urls import path

from ratewall import Policy, RateLimiter
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
from ratewall.integrations import django as integration
from ratewall.integrations.django import RateLimitMiddleware, get_limiter, rate_limit
from ratewall.testing import FakeClock

from .._timing import STORE_TIMEOUT
from ..http._support import ratelimit_members, wsgi_app
from ._support import (
    assert_example_shares_one_limit,
    free_port,
    serve_asgi,
    serve_wsgi,
    wire,
)

MIDDLEWARE = "ratewall.integrations.django.RateLimitMiddleware"
USER = {"X-User-ID": "user_123"}
POLICIES: dict[str, dict[str, object]] = {
    "login": {"limit": 5, "window": 60},
    "login_ip": {"limit": 3, "window": 60},
    "profile": {"limit": 2, "window": 60},
}
PLAIN_ROUTE = {"match": "POST /plain", "identity": "header:X-User-ID", "policies": ["login"]}

if not settings.configured:
    settings.configure(
        ROOT_URLCONF=__name__,
        ALLOWED_HOSTS=["127.0.0.1"],
        MIDDLEWARE=[],
        RATEWALL={"policies": POLICIES},
    )
    django.setup()


@pytest.mark.slow
def test_readme_example_under_gunicorn_workers_shares_one_limit(
    redis_url: str, redis_server: LocalServer
) -> None:
    assert_example_shares_one_limit(
        "gunicorn", "django_app:application", redis_url, redis_server.port
    )


# -- this module's project --------------------------------------------------------------------


def plain(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@rate_limit("login", identity=Header("X-User-ID"))
def login(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@rate_limit("profile", PathParam("user_id"))
def profile(request: HttpRequest, user_id: int) -> HttpResponse:
    return HttpResponse(f"user {user_id}")


@rate_limit("login_ip", User(), on_missing_identity="reject")
def account(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


@rate_limit("login", identity=Header("X-User-ID"))
async def login_async(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True, "async": True})


@rate_limit("profile", PathParam("user_id"))
async def profile_async(request: HttpRequest, user_id: int) -> HttpResponse:
    return HttpResponse(f"async user {user_id}")


async def plain_async(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


class FakeAuthentication:
    """Stands in for ``AuthenticationMiddleware``: ``X-Login: <pk>`` logs a user in."""

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        pk = request.headers.get("X-Login")
        if pk:
            request.user = type("AUser", (), {"is_authenticated": True, "pk": pk})()
        return self.get_response(request)


urlpatterns = [
    path("plain", plain),
    path("login", login),
    path("users/<int:user_id>", profile),
    path("account", account),
    path("async/login", login_async),
    path("async/users/<int:user_id>", profile_async),
    path("async/plain", plain_async),
]


@pytest.fixture
def project() -> Iterator[Callable[..., str]]:
    """Serve this project with the given ``RATEWALL`` and middleware; its URL."""
    with contextlib.ExitStack() as stack:

        def serve(ratewall: object, middleware: tuple[str, ...] = (MIDDLEWARE,)) -> str:
            stack.enter_context(override_settings(RATEWALL=ratewall, MIDDLEWARE=list(middleware)))
            return stack.enter_context(serve_wsgi(WSGIHandler()))

        yield serve


@pytest.fixture(params=["wsgi", "asgi"])
def any_project(request: pytest.FixtureRequest) -> Iterator[Callable[..., str]]:
    """:func:`project`, once under WSGI (werkzeug) and once under ASGI (uvicorn running
    Django's ``ASGIHandler``: an async middleware stack)."""
    with contextlib.ExitStack() as stack:

        def serve(ratewall: object, middleware: tuple[str, ...] = (MIDDLEWARE,)) -> str:
            stack.enter_context(override_settings(RATEWALL=ratewall, MIDDLEWARE=list(middleware)))
            if request.param == "asgi":
                return stack.enter_context(serve_asgi(ASGIHandler()))
            return stack.enter_context(serve_wsgi(WSGIHandler()))

        yield serve


def posts(
    http: httpx.Client, url: str, count: int, headers: Mapping[str, str] | None = None
) -> list[httpx.Response]:
    return [http.post(url, headers=headers) for _ in range(count)]


def test_middleware_and_decorator_answer_like_the_wsgi_middleware(
    project: Callable[..., str], http: httpx.Client
) -> None:
    clock, reference_clock = FakeClock(), FakeClock()
    url = project({"policies": POLICIES, "routes": [PLAIN_ROUTE], "clock": clock})
    reference = WSGIRateLimitMiddleware(
        wsgi_app(),
        RateLimiter({"login": Policy(5, 60)}, clock=reference_clock),
        [Route("/plain", [RouteLimit("login", Header("X-User-ID"))], method="POST")],
    )
    with serve_wsgi(reference) as other:
        allowed = posts(http, url + "/plain", 5, USER)
        posts(http, other + "/plain", 5, USER)
        clock.advance(45)
        reference_clock.advance(45)
        refused = posts(http, url + "/plain", 1, USER)[0]
        expected = posts(http, other + "/plain", 1, USER)[0]
    assert [ratelimit_members(r.headers)["login"]["r"] for r in allowed] == [4, 3, 2, 1, 0]
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "15"
    assert wire(refused) == wire(expected)

    # The decorator shares the settings' limiter: "login" is spent for user_123 already.
    assert posts(http, url + "/login", 1, USER)[0].status_code == 429
    assert [r.status_code for r in posts(http, url + "/login", 6, {"X-User-ID": "u2"})] == [
        200
    ] * 5 + [429]
    profiles = [http.get(f"{url}/users/{n}") for n in (7, 7, 7, 8)]
    assert [r.status_code for r in profiles] == [200, 200, 429, 200]
    assert profiles[0].text == "user 7"
    assert ratelimit_members(profiles[0].headers) == {"profile": {"q": 2, "w": 60, "r": 1, "t": 60}}


def test_config_file_with_routes_and_the_user_identity(
    project: Callable[..., str], tmp_path: Path, http: httpx.Client
) -> None:
    config = tmp_path / "limits.yaml"
    policies = "\n".join(
        f"  {name}: {{limit: {p['limit']}, window: 60}}" for name, p in POLICIES.items()
    )
    config.write_text(
        f"store: redis://127.0.0.1:1/0\npolicies:\n{policies}\n"
        "routes:\n  - {match: POST /plain, identity: ip, policies: [login_ip]}\n"
    )
    url = project(
        {"config": config, "store": "memory://"},
        (f"{__name__}.FakeAuthentication", MIDDLEWARE),
    )
    assert get_limiter().store_url == "memory://"  # "store" overrides the file's
    assert [r.status_code for r in posts(http, url + "/plain", 4)] == [200, 200, 200, 429]
    alice = posts(http, url + "/account", 4, {"X-Login": "1"})
    bob = posts(http, url + "/account", 1, {"X-Login": "2"})
    anonymous = posts(http, url + "/account", 1)
    assert [r.status_code for r in alice] == [200, 200, 200, 429]
    assert bob[0].status_code == 200
    assert anonymous[0].status_code == 400  # the view requires a user


def test_a_dead_store_answers_by_the_failure_mode(
    project: Callable[..., str], http: httpx.Client
) -> None:
    policies = {**POLICIES, "login": {"limit": 5, "window": 60, "failure_mode": "closed"}}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    url = project({"policies": policies, "store": dead, "routes": [PLAIN_ROUTE]})
    unavailable = posts(http, url + "/plain", 1, USER)[0]
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    assert json.loads(unavailable.content)["type"].endswith("#temporary-reduced-capacity")
    # "profile" fails by raising, which over HTTP lets the request pass.
    assert [r.status_code for r in posts(http, url + "/users/1", 3)] == [200, 200, 200]


def test_without_routes_the_middleware_steps_aside(
    project: Callable[..., str], http: httpx.Client
) -> None:
    url = project({"policies": POLICIES})
    assert [r.status_code for r in posts(http, url + "/plain", 7, USER)] == [200] * 7
    assert [r.status_code for r in posts(http, url + "/login", 6, USER)] == [200] * 5 + [429]


def test_settings_mistakes_are_improperly_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    cases: list[tuple[object, str]] = [
        ({"policies": {"login": {"limit": 0, "window": 60}}}, "policies.login.limit"),
        ({"policies": POLICIES, "stor": "memory://"}, "unknown setting 'stor'"),
        ({"policies": POLICIES, "routes": [{"match": "/x", "policies": ["nope"]}]}, "nope"),
        ({"config": "limits.yaml", "policies": POLICIES}, "'policies' cannot be set"),
        ({"store": "memory://"}, "needs 'policies'"),
        ({"policies": POLICIES, "legacy_headers": "yes"}, "legacy_headers"),
        (["login"], "must be a dict"),
        ({"policies": {"other": {"limit": 1, "window": 1}}}, "unknown policy 'login'"),
    ]
    for value, message in cases:
        with override_settings(RATEWALL=value), pytest.raises(ImproperlyConfigured, match=message):
            RateLimitMiddleware(plain)
    with override_settings(RATEWALL=None), pytest.raises(ImproperlyConfigured, match="is not set"):
        get_limiter()

    monkeypatch.setattr(integration, "_declared", list(integration._declared))
    typo = rate_limit("logn")(plain)
    with override_settings(RATEWALL={"policies": POLICIES}):
        with pytest.raises(ImproperlyConfigured, match="unknown policy 'logn'"):
            RateLimitMiddleware(plain)
        with pytest.raises(ImproperlyConfigured, match="unknown policy 'logn'"):
            typo(HttpRequest())


def test_async_and_sync_views_share_the_limiter_under_wsgi_and_asgi(
    any_project: Callable[..., str], http: httpx.Client
) -> None:
    clock = FakeClock()
    url = any_project({"policies": POLICIES, "routes": [PLAIN_ROUTE], "clock": clock})
    # The async view and the sync one spend the same "login" quota of the settings' limiter.
    first = posts(http, url + "/async/login", 3, USER)
    assert [r.status_code for r in first] == [200] * 3
    assert first[0].json() == {"ok": True, "async": True}
    assert [ratelimit_members(r.headers)["login"]["r"] for r in first] == [4, 3, 2]
    assert [r.status_code for r in posts(http, url + "/login", 3, USER)] == [200, 200, 429]
    refused = posts(http, url + "/async/login", 1, USER)[0]
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.headers["retry-after"] == "60"
    # The route middleware in front of an async view: both limits apply, headers combine.
    assert [r.status_code for r in posts(http, url + "/plain", 1, {"X-User-ID": "u9"})] == [200]
    profiles = [http.get(f"{url}/async/users/{n}") for n in (7, 7, 7, 8)]
    assert [r.status_code for r in profiles] == [200, 200, 429, 200]
    assert profiles[0].text == "async user 7"
    clock.advance(60)
    assert http.get(f"{url}/async/users/7").status_code == 200
    assert posts(http, url + "/async/login", 1, USER)[0].status_code == 200


@pytest.mark.redis
def test_async_view_and_middleware_on_redis_under_asgi(redis_url: str, http: httpx.Client) -> None:
    user = {"X-User-ID": f"django-async-{free_port()}"}
    async_route = {**PLAIN_ROUTE, "match": "POST /async/plain"}
    with (
        override_settings(
            RATEWALL={
                "policies": POLICIES,
                "store": redis_url,
                "routes": [async_route],
                "timeout": STORE_TIMEOUT,
            },
            MIDDLEWARE=[MIDDLEWARE],
        ),
        serve_asgi(ASGIHandler()) as url,
    ):
        codes = [r.status_code for r in posts(http, url + "/async/plain", 6, user)]
        views = [r.status_code for r in posts(http, url + "/async/login", 2, user)]
    assert codes == [200] * 5 + [429]
    assert views == [429, 429]  # the view's "login" is the route's, spent in Redis


def test_async_view_on_a_dead_store_answers_by_the_failure_mode(
    any_project: Callable[..., str], http: httpx.Client
) -> None:
    policies = {**POLICIES, "login": {"limit": 5, "window": 60, "failure_mode": "closed"}}
    dead = f"redis://127.0.0.1:{free_port()}/0"
    url = any_project({"policies": policies, "store": dead}, ())
    unavailable = posts(http, url + "/async/login", 1, USER)[0]
    assert unavailable.status_code == 503
    assert unavailable.headers["retry-after"] == "1"
    # "profile" fails by raising, which over HTTP lets the request pass.
    assert [http.get(url + "/async/users/1").status_code for _ in range(3)] == [200] * 3


def test_the_middleware_and_decorator_keep_the_kind_of_what_they_wrap() -> None:
    async def asynchronous(request: Any) -> Any:
        return HttpResponse("ok")

    with override_settings(RATEWALL={"policies": POLICIES, "routes": [PLAIN_ROUTE]}):
        assert iscoroutinefunction(RateLimitMiddleware(asynchronous))
        assert not iscoroutinefunction(RateLimitMiddleware(plain))
    assert iscoroutinefunction(login_async)
    assert not iscoroutinefunction(login)


def test_client_ip_from_settings_applies_to_ip_identities(
    project: Callable[..., str], http: httpx.Client
) -> None:
    trusting = ClientIP(trusted_proxies=["127.0.0.1"])
    route = {"match": "POST /plain", "identity": "ip", "policies": ["login_ip"]}
    url = project({"policies": POLICIES, "routes": [route], "client_ip": trusting})
    statuses = [
        http.post(url + "/plain", headers={"X-Forwarded-For": f"203.0.113.{n % 2}"})
        for n in range(8)
    ]
    assert [r.status_code for r in statuses] == [200] * 6 + [429] * 2
