"""Django: a middleware configured by ``settings.RATEWALL``, and a view decorator.

::

    # settings.py
    RATEWALL = {
        "policies": {"login": {"limit": 5, "window": "1m"}},
        "store": "redis://127.0.0.1:6379/0",
        "routes": [{"match": "POST /api/*", "identity": "ip", "policies": ["api"]}],  # optional
    }
    MIDDLEWARE = [..., "ratewall.integrations.django.RateLimitMiddleware"]  # for "routes"

    # views.py
    from ratewall.http import Header
    from ratewall.integrations.django import rate_limit

    @rate_limit("login", identity=Header("X-User-ID"))
    def login(request): ...

``settings.RATEWALL`` is a dict, in one of two forms:

- ``{"config": "limits.yaml"}``: a config file (JSON, YAML or TOML) holds the policies and
  settings; ``"store"`` next to it overrides the file's store URL;
- inline: the config file's long form as a dict (``"policies"`` and any of ``store``,
  ``key_prefix``, ``local_cache_size``, ``timeout``, ``failure_mode``, ``routes``,
  ``client_ip``), validated exactly like a file. ``routes`` may also be a list of
  :class:`~ratewall.http.Route` objects, ``client_ip`` a :class:`~ratewall.http.ClientIP`.

Either form also takes ``"legacy_headers"`` and ``"headers_on_allowed"`` (as in
:class:`~ratewall.http.WSGIRateLimitMiddleware`), and, for tests, ``"clock"`` (a
:class:`ratewall.testing.FakeClock`: time then moves only when the test says so).
Mistakes raise ``ImproperlyConfigured`` naming the field, when the middleware loads or a
decorated view first runs.

Each process builds one :class:`~ratewall.RateLimiter` from the settings (on first use),
shared by the middleware and every decorated view: :func:`get_limiter` returns it. The
middleware limits requests by method and path pattern (``request.path_info``) before URL
resolution, like the WSGI middleware; place it after ``AuthenticationMiddleware`` if a limit
uses :class:`~ratewall.http.User`, which reads ``request.user`` (its primary key) for
authenticated users, else ``REMOTE_USER``. The decorator limits one view; the view's URL
keyword arguments (``<int:user_id>``) are what :class:`~ratewall.http.PathParam` reads.

Responses, headers and failure rules are the engine's, identical to the WSGI middleware's.

Both work with ``def`` and ``async def`` views, under WSGI and ASGI. The middleware is sync
and async capable (Django's ``sync_capable``/``async_capable``): in an async stack (ASGI,
every middleware async capable) it runs as a coroutine, and Django adds no thread hop for
it. The decorator keeps the kind of the view it wraps: an ``async def`` view stays a
coroutine function. In async code, a check on the memory store runs inline (it does no
I/O); a check on Redis runs in a worker thread (``sync_to_async(thread_sensitive=False)``),
so the event loop never waits on the network and checks of concurrent requests do not
queue behind one another.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final, TypeVar, cast

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.core.exceptions import (
    ImproperlyConfigured,
    MiddlewareNotUsed,
)
from django.core.signals import setting_changed
from django.http import HttpResponse

from ..config import Config, load_config, parse_config, validate_store_url
from ..errors import ConfigError
from ..http.client_ip import ClientIP, client_ip_from_config
from ..http.engine import HttpEngine
from ..http.identities import IdentitySource
from ..http.request import HttpRequest
from ..http.routes import OnMissingIdentity, Route, RouteLimit, RouteTable, routes_from_config
from ..http.steps import Pass, Respond, Verdict
from ..limiter import RateLimiter
from ._shared import EngineDriver, ViewLimits, apply_headers, path_params, uses_user

__all__ = ["SETTING", "RateLimitMiddleware", "get_limiter", "rate_limit"]

SETTING: Final = "RATEWALL"
_SOURCE: Final = f"settings.{SETTING}"

View = TypeVar("View", bound=Callable[..., Any])


class _Setup:
    """What ``settings.RATEWALL`` builds: the limiter, the route engine, per-view engines."""

    def __init__(self, raw: object) -> None:
        try:
            self._build(raw)
        except ConfigError as error:
            raise ImproperlyConfigured(str(error)) from error

    def _build(self, raw: object) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(
                "must be a dict: {'config': 'limits.yaml'} or "
                "{'policies': {'login': {'limit': 5, 'window': 60}}, 'store': 'redis://...'}",
                source=_SOURCE,
            )
        options = dict(raw)
        self.legacy_headers = _flag(options.pop("legacy_headers", False), "legacy_headers")
        self.headers_on_allowed = _flag(
            options.pop("headers_on_allowed", True), "headers_on_allowed"
        )
        code_routes = options.pop("routes") if _routes_in_code(options.get("routes")) else None
        clock = options.pop("clock", None)
        if clock is not None and not callable(clock):
            raise ConfigError(
                f"must be a clock such as ratewall.testing.FakeClock(), got {clock!r}",
                source=_SOURCE,
                field="clock",
            )
        code_client_ip = (
            options.pop("client_ip") if isinstance(options.get("client_ip"), ClientIP) else None
        )

        config: Config
        if "config" in options:
            path = options.pop("config")
            store = options.pop("store", None)
            if store is not None:
                store = validate_store_url(store, source=_SOURCE, field="store")
            if options:
                raise ConfigError(
                    f"{', '.join(map(repr, options))} cannot be set next to 'config'; move "
                    "them into the config file (only 'store' and 'clock' may go with it)",
                    source=_SOURCE,
                )
            if not isinstance(path, str | os.PathLike) or not os.fspath(path):
                raise ConfigError(
                    "must be the path of a config file", source=_SOURCE, field="config"
                )
            config = load_config(path)
            self.limiter = RateLimiter.from_config(config, store, clock=clock)
        else:
            if "policies" not in options:
                raise ConfigError(
                    "needs 'policies' (or 'config', the path of a config file)", source=_SOURCE
                )
            config = parse_config(options, source=_SOURCE)
            self.limiter = RateLimiter.from_config(config, clock=clock)
        self.client_ip: ClientIP | None = code_client_ip or client_ip_from_config(config)
        self.routes: EngineDriver | None = None
        self.routes_use_user = False
        if code_routes is not None or config.routes is not None:
            engine = HttpEngine(
                routes_from_config(config, code_routes, self.client_ip),
                self.limiter.policies,
                legacy_headers=self.legacy_headers,
                headers_on_allowed=self.headers_on_allowed,
                client_ip=self.client_ip,
            )
            self.routes = EngineDriver(engine, self.limiter)
            self.routes_use_user = uses_user(engine)
        self._views: dict[ViewLimits, EngineDriver] = {}

    def driver(self, declared: ViewLimits, where: str) -> EngineDriver:
        driver = self._views.get(declared)
        if driver is None:
            try:
                engine = declared.engine(
                    self.limiter.policies,
                    client_ip=self.client_ip,
                    legacy_headers=self.legacy_headers,
                    headers_on_allowed=self.headers_on_allowed,
                    where=where,
                )
            except ConfigError as error:
                raise ImproperlyConfigured(str(error)) from error
            # Two threads may build one at once; either engine is as good as the other.
            driver = self._views.setdefault(declared, EngineDriver(engine, self.limiter))
        return driver


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be True or False, got {value!r}", source=_SOURCE, field=name)
    return value


def _routes_in_code(value: object) -> bool:
    if isinstance(value, RouteTable):
        return True
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(route, Route) for route in value)
    )


_lock = threading.Lock()
_setup: _Setup | None = None
# Every decorated view's limits, checked when the middleware loads (so that a typo in a
# policy name fails at startup when the middleware is installed) and at the view's first use.
_declared: list[tuple[ViewLimits, str]] = []


def _current() -> _Setup:
    global _setup  # noqa: PLW0603 - one limiter per process, built on first use
    setup = _setup
    if setup is None:
        with _lock:
            setup = _setup
            if setup is None:
                raw = getattr(settings, SETTING, None)
                if raw is None:
                    raise ImproperlyConfigured(
                        f"{_SOURCE} is not set: set it to {{'config': 'limits.yaml'}} or "
                        "{'policies': {'login': {'limit': 5, 'window': 60}}, 'store': '...'}"
                    )
                setup = _setup = _Setup(raw)
    return setup


def get_limiter() -> RateLimiter:
    """This process's limiter, built from ``settings.RATEWALL`` on first use."""
    return _current().limiter


def _forget(*, setting: str, **_: object) -> None:
    """``override_settings(RATEWALL=...)`` in tests: build from the new settings next time."""
    global _setup
    if setting != SETTING:
        return
    with _lock:
        old, _setup = _setup, None
    if old is not None:
        old.limiter.close()


setting_changed.connect(_forget, dispatch_uid="ratewall.integrations.django")


def _user(request: Any) -> str | None:
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.pk)
    remote: object = request.META.get("REMOTE_USER")
    return remote if isinstance(remote, str) and remote else None


def _request(request: Any, kwargs: Mapping[str, object] | None, uses_user: bool) -> HttpRequest:
    """The limiter's view of a Django request."""
    remote: object = request.META.get("REMOTE_ADDR")
    return HttpRequest(
        str(request.method or "GET"),
        str(request.path_info),
        dict(request.headers.items()),
        client=remote if isinstance(remote, str) and remote else None,
        path_params=path_params(kwargs) if kwargs else {},
        user=_user(request) if uses_user else None,
    )


def _refusal(verdict: Respond) -> Any:
    response = HttpResponse(verdict.body, status=verdict.status)
    for name, value in verdict.headers:
        response[name] = value
    return response


def _add_headers(engine: HttpEngine, response: Any, verdict: Pass) -> None:
    apply_headers(engine, response.get, response.__setitem__, verdict.headers)


async def _verdict_async(driver: EngineDriver, build: Callable[[], HttpRequest]) -> Verdict:
    """``driver.verdict(build)`` from async code: inline on the memory store (no I/O), else
    in a worker thread, so that the event loop never blocks on the store."""
    limiter = driver.limiter
    if isinstance(limiter, RateLimiter) and limiter.local_store is not None:
        return driver.verdict(build)
    # thread_sensitive=False: the limiter is thread-safe, and Django's one thread for
    # thread-sensitive calls would make every request's check wait for the others'.
    return await sync_to_async(driver.verdict, thread_sensitive=False)(build)


class RateLimitMiddleware:
    """Limits requests by the ``routes`` of ``settings.RATEWALL`` (``MiddlewareNotUsed``
    when there are none: the decorator works without this middleware). Sync and async
    capable: Django calls it the way the rest of its middleware stack runs."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        setup = _current()
        for declared, where in tuple(_declared):
            setup.driver(declared, where)
        if setup.routes is None:
            raise MiddlewareNotUsed(f"{_SOURCE} defines no routes")
        self.get_response = get_response
        self.driver = setup.routes
        self.uses_user = setup.routes_use_user
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            # Django's convention: the instance tells it is a coroutine function this way.
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._is_async:
            return self._acall(request)
        verdict = self.driver.verdict(lambda: _request(request, None, self.uses_user))
        if isinstance(verdict, Respond):
            return _refusal(verdict)
        response = self.get_response(request)
        _add_headers(self.driver.engine, response, verdict)
        return response

    async def _acall(self, request: Any) -> Any:
        verdict = await _verdict_async(self.driver, lambda: _request(request, None, self.uses_user))
        if isinstance(verdict, Respond):
            return _refusal(verdict)
        response = await self.get_response(request)
        _add_headers(self.driver.engine, response, verdict)
        return response


def rate_limit(
    policy: str | None = None,
    identity: IdentitySource | None = None,
    *,
    cost: int = 1,
    on_missing_identity: OnMissingIdentity = "ip",
    limits: Iterable[RouteLimit] = (),
) -> Callable[[View], View]:
    """A decorator rate-limiting a Django view (``def`` or ``async def``) with the settings'
    limiter.

    Apply one ``policy`` to the client ``identity`` names (default: the client address, as
    the settings' ``client_ip`` finds it), spending ``cost`` units per request; or pass
    ``limits=[RouteLimit(...), ...]`` for several policies, checked all or nothing.
    ``on_missing_identity`` as in :class:`~ratewall.http.RouteLimit`.
    """
    declared = ViewLimits(
        policy, identity, cost=cost, on_missing_identity=on_missing_identity, limits=limits
    )

    def decorate(view: View) -> View:
        name = getattr(view, "__qualname__", repr(view))
        where = f"@rate_limit on view {name!r}"
        _declared.append((declared, where))

        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def limited_async(request: Any, *args: Any, **kwargs: Any) -> Any:
                driver = _current().driver(declared, where)
                verdict = await _verdict_async(
                    driver, lambda: _request(request, kwargs, declared.uses_user)
                )
                if isinstance(verdict, Respond):
                    return _refusal(verdict)
                response = await view(request, *args, **kwargs)
                _add_headers(driver.engine, response, verdict)
                return response

            return cast(View, limited_async)

        @functools.wraps(view)
        def limited(request: Any, *args: Any, **kwargs: Any) -> Any:
            driver = _current().driver(declared, where)
            verdict = driver.verdict(lambda: _request(request, kwargs, declared.uses_user))
            if isinstance(verdict, Respond):
                return _refusal(verdict)
            response = view(request, *args, **kwargs)
            _add_headers(driver.engine, response, verdict)
            return response

        return cast(View, limited)

    return decorate
