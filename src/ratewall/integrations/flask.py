"""Flask: an extension with app-wide routes, and a decorator for per-view limits.

::

    from flask import Flask
    from ratewall import Policy, RateLimiter
    from ratewall.http import Header
    from ratewall.integrations.flask import FlaskRateLimit

    limiter = RateLimiter({"login": Policy(5, "1m")}, store="redis://127.0.0.1:6379/0")
    limits = FlaskRateLimit(limiter=limiter)
    app = Flask(__name__)
    limits.init_app(app)

    @app.post("/login")
    @limits.limit("login", identity=Header("X-User-ID"))
    def login() -> dict[str, bool]:
        return {"ok": True}

Both forms run the sans-IO engine of the WSGI middleware with a :class:`~ratewall.RateLimiter`,
so responses, headers and failure rules are identical to it: 429 with ``Retry-After``, the
RateLimit fields and a problem+json body, the RateLimit fields on allowed responses, 503 when
the store is down and a policy fails closed, and never a 500 caused by the limiter.

``routes=`` (or the ``routes`` section of the config file) limits requests by method and
path pattern before Flask dispatches them, like the WSGI middleware; the decorator limits one
view, whose URL variables (``<int:user_id>``) are what :class:`~ratewall.http.PathParam` reads.
Place ``@limits.limit`` *below* ``@app.route`` (the route must register the limited view).

Without ``limiter=``, :meth:`FlaskRateLimit.init_app` builds one from the app's config:
``RATEWALL_CONFIG`` (a config file: policies, store, routes, client address) and optionally
``RATEWALL_STORE`` (overrides the file's store URL). One extension can serve several apps
(the application-factory pattern); each app keeps its state in ``app.extensions["ratewall"]``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final, TypeVar, cast

from flask import Flask, current_app, g
from flask import request as flask_request

from ..config import load_config
from ..errors import ConfigError
from ..http.client_ip import ClientIP, client_ip_from_config
from ..http.engine import HttpEngine
from ..http.identities import IdentitySource
from ..http.request import HttpRequest
from ..http.routes import OnMissingIdentity, Route, RouteLimit, RouteTable, routes_from_config
from ..http.steps import Pass, Respond, SyncLimiter
from ..limiter import RateLimiter
from ._shared import EngineDriver, ViewLimits, apply_headers, path_params, uses_user

if TYPE_CHECKING:
    from flask.wrappers import Response

__all__ = ["EXTENSION", "FlaskRateLimit"]

EXTENSION: Final = "ratewall"
"""The key of an app's state in ``app.extensions``."""

View = TypeVar("View", bound=Callable[..., Any])

_G_HEADERS: Final = "_ratewall_headers"


class FlaskRateLimit:
    """Rate limiting for Flask apps: ``init_app(app)``, and :meth:`limit` for views.

    ``limiter``: a :class:`~ratewall.RateLimiter` (anything with its ``policies`` and
    ``check_many``); without it, each app's ``RATEWALL_CONFIG`` builds one. ``routes``: a
    :class:`~ratewall.http.RouteTable` or routes limiting requests app-wide by path pattern.
    ``legacy_headers``, ``headers_on_allowed`` and ``client_ip`` as in
    :class:`~ratewall.http.WSGIRateLimitMiddleware`. ``user``: returns the current user's
    identity for :class:`~ratewall.http.User` limits (called in the request context, e.g.
    ``lambda: current_user.get_id()`` with Flask-Login); by default the WSGI ``REMOTE_USER``.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        limiter: SyncLimiter | None = None,
        routes: RouteTable | Iterable[Route] | None = None,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
        user: Callable[[], object] | None = None,
    ) -> None:
        self.limiter = limiter
        self.routes = (
            routes if routes is None or isinstance(routes, RouteTable) else RouteTable(routes)
        )
        self.legacy_headers = legacy_headers
        self.headers_on_allowed = headers_on_allowed
        self.client_ip = client_ip
        self.user = user
        self._declared: list[tuple[ViewLimits, str]] = []
        self._states: list[_AppState] = []
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Set the extension up for ``app``: its limiter, its routes (if any) as request
        hooks, and a check of every limit declared so far against the limiter's policies
        (unknown policies raise :class:`~ratewall.ConfigError` now, not per request)."""
        if EXTENSION in app.extensions:
            raise RuntimeError(f"ratewall is already set up for app {app.name!r}")
        state = self._state_for(app)
        for declared, where in self._declared:
            state.driver(declared, where)
        app.extensions[EXTENSION] = state
        self._states.append(state)
        if state.routes is not None:
            app.before_request(state.before_request)
            app.after_request(state.after_request)

    def limiter_for(self, app: Flask | None = None) -> SyncLimiter:
        """The limiter serving ``app`` (default: the current app), e.g. to close it."""
        return _state(app if app is not None else current_app).limiter

    def limit(
        self,
        policy: str | None = None,
        identity: IdentitySource | None = None,
        *,
        cost: int = 1,
        on_missing_identity: OnMissingIdentity = "ip",
        limits: Iterable[RouteLimit] = (),
    ) -> Callable[[View], View]:
        """A decorator rate-limiting a view.

        Apply one ``policy`` to the client ``identity`` names (default: the client address,
        found by ``client_ip``), spending ``cost`` units per request; or pass
        ``limits=[RouteLimit(...), ...]`` for several policies, checked all or nothing.
        ``on_missing_identity`` as in :class:`~ratewall.http.RouteLimit`.
        """
        declared = ViewLimits(
            policy, identity, cost=cost, on_missing_identity=on_missing_identity, limits=limits
        )

        def decorate(view: View) -> View:
            where = f"@limit on view {getattr(view, '__qualname__', view)!r}"
            self._declared.append((declared, where))
            for state in self._states:
                state.driver(declared, where)

            @functools.wraps(view)
            def limited(*args: Any, **kwargs: Any) -> Response:
                app = current_app
                state = _state(app)
                driver = state.driver(declared, where)
                verdict = driver.verdict(
                    lambda: state.request(flask_request.view_args, declared.uses_user)
                )
                if isinstance(verdict, Respond):
                    return _refusal(app, verdict)
                response = app.make_response(app.ensure_sync(view)(*args, **kwargs))
                _add_headers(driver.engine, response, verdict)
                return response

            return cast(View, limited)

        return decorate

    def _state_for(self, app: Flask) -> _AppState:
        limiter = self.limiter
        routes = self.routes
        client_ip = self.client_ip
        if limiter is None:
            path = app.config.get("RATEWALL_CONFIG")
            if not path:
                raise ConfigError(
                    "FlaskRateLimit has no limiter: pass limiter=RateLimiter(...) or set "
                    "app.config['RATEWALL_CONFIG'] to a config file",
                    source=f"Flask app {app.name!r}",
                    field="RATEWALL_CONFIG",
                )
            config = load_config(path)
            if routes is not None or config.routes is not None:
                routes = routes_from_config(config, routes, client_ip)
            if client_ip is None:
                client_ip = client_ip_from_config(config)
            limiter = RateLimiter.from_config(config, app.config.get("RATEWALL_STORE"))
        return _AppState(self, limiter, routes, client_ip)


class _AppState:
    """One app's limiter, route engine and per-view engines."""

    def __init__(
        self,
        extension: FlaskRateLimit,
        limiter: SyncLimiter,
        routes: RouteTable | None,
        client_ip: ClientIP | None,
    ) -> None:
        self.extension = extension
        self.limiter = limiter
        self.client_ip = client_ip
        self.routes: EngineDriver | None = None
        self._routes_use_user = False
        if routes is not None:
            engine = HttpEngine(
                routes,
                limiter.policies,
                legacy_headers=extension.legacy_headers,
                headers_on_allowed=extension.headers_on_allowed,
                client_ip=client_ip,
            )
            self.routes = EngineDriver(engine, limiter)
            self._routes_use_user = uses_user(engine)
        self._views: dict[ViewLimits, EngineDriver] = {}

    def driver(self, declared: ViewLimits, where: str) -> EngineDriver:
        driver = self._views.get(declared)
        if driver is None:
            engine = declared.engine(
                self.limiter.policies,
                client_ip=self.client_ip,
                legacy_headers=self.extension.legacy_headers,
                headers_on_allowed=self.extension.headers_on_allowed,
                where=where,
            )
            # Two threads may build one at once; either engine is as good as the other.
            driver = self._views.setdefault(declared, EngineDriver(engine, self.limiter))
        return driver

    def request(self, view_args: Mapping[str, object] | None, uses_user: bool) -> HttpRequest:
        """The limiter's view of the current Flask request."""
        request = HttpRequest.from_wsgi_environ(flask_request.environ)
        user = request.user
        if uses_user and self.extension.user is not None:
            found = self.extension.user()
            user = None if found is None else str(found)
        if not view_args and user == request.user:
            return request
        return dataclasses.replace(request, path_params=path_params(view_args or {}), user=user)

    def before_request(self) -> Response | None:
        if self.routes is None:
            return None
        verdict = self.routes.verdict(lambda: self.request(None, self._routes_use_user))
        if isinstance(verdict, Respond):
            return _refusal(current_app, verdict)
        if verdict.headers:
            setattr(g, _G_HEADERS, verdict)
        return None

    def after_request(self, response: Response) -> Response:
        verdict = g.pop(_G_HEADERS, None)
        if self.routes is not None and isinstance(verdict, Pass):
            _add_headers(self.routes.engine, response, verdict)
        return response


def _state(app: Flask) -> _AppState:
    state = app.extensions.get(EXTENSION)
    if not isinstance(state, _AppState):
        raise RuntimeError(
            f"ratewall is not set up for app {app.name!r}: call FlaskRateLimit.init_app(app)"
        )
    return state


def _refusal(app: Flask, verdict: Respond) -> Response:
    return app.response_class(verdict.body, status=verdict.status, headers=list(verdict.headers))


def _add_headers(engine: HttpEngine, response: Response, verdict: Pass) -> None:
    apply_headers(engine, response.headers.get, response.headers.__setitem__, verdict.headers)
