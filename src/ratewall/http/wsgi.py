"""WSGI middleware over the same sans-IO engine as the ASGI one.

::

    from ratewall import RateLimiter, Policy
    from ratewall.http import Header, Route, RouteLimit, WSGIRateLimitMiddleware

    limiter = RateLimiter({"login": Policy(5, 60)}, store="redis://127.0.0.1:6379/0")
    app.wsgi_app = WSGIRateLimitMiddleware(app.wsgi_app, limiter, [
        Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST"),
    ])

Allowed responses get the RateLimit fields through a wrapped ``start_response``; refusals
(429, 503, 400) are answered without calling the application. Routes match ``PATH_INFO``, the
path below the application's mount point (``SCRIPT_NAME``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Self

from ..decision import Decision
from ..limiter import RateLimiter
from .client_ip import ClientIP
from .engine import HttpEngine
from .request import HttpRequest
from .routes import Route, RouteTable, routes_from_config
from .steps import AskLimiter, Pass, Respond, SyncLimiter, Verdict
from .wire import NO_HEADERS, PLAIN_REFUSAL, encode_headers, fallback_response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WSGIRateLimitMiddleware"]


class WSGIRateLimitMiddleware:
    """Rate-limits a WSGI application's requests by ``routes``.

    ``limiter`` is a :class:`~ratewall.RateLimiter` (anything with its ``policies`` and
    ``check_many``); the other arguments are those of
    :class:`~ratewall.http.RateLimitMiddleware`, with the same failure isolation: nothing the
    limiter or this middleware does wrong becomes an error response of the application.
    """

    engine_class: ClassVar[type[HttpEngine]] = HttpEngine

    def __init__(
        self,
        app: WSGIApplication,
        limiter: SyncLimiter,
        routes: RouteTable | Iterable[Route],
        *,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
    ) -> None:
        self.app = app
        self.limiter = limiter
        self.engine = self.engine_class(
            routes,
            limiter.policies,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=client_ip,
        )

    @classmethod
    def from_config(
        cls,
        app: WSGIApplication,
        path: str | os.PathLike[str],
        *,
        store: str | None = None,
        routes: RouteTable | Iterable[Route] | None = None,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Self:
        """As :meth:`RateLimitMiddleware.from_config`, with a :class:`~ratewall.RateLimiter`
        (close it with ``middleware.limiter.close()``)."""
        from ..config import load_config

        config = load_config(path)
        table = routes_from_config(config, routes, client_ip)
        limiter = RateLimiter.from_config(config, store, clock=clock)
        return cls(
            app,
            limiter,
            table,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=client_ip if client_ip is not None else config.client_ip,
        )

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        outcome: object = self._outcome(environ)
        if not isinstance(outcome, Pass | Respond):
            outcome = self.engine.internal_error("outcome", TypeError(f"got {outcome!r:.100}"))
        if isinstance(outcome, Respond):
            return self._respond(start_response, outcome)
        extra: list[tuple[str, str]] = []
        if outcome.headers:
            try:
                encode_headers(outcome.headers)  # validates: nothing unsendable reaches the server
                extra = list(outcome.headers)
            except Exception as error:  # noqa: BLE001 - the response goes out without them
                self.engine.internal_error("encode headers", error, NO_HEADERS)
        if not extra:
            return self.app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            try:
                headers = [*headers, *extra]
            except Exception as error:  # noqa: BLE001 - send the app's headers as they are
                self.engine.internal_error("add headers", error, NO_HEADERS)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_headers)

    def _outcome(self, environ: WSGIEnvironment) -> Verdict:
        engine = self.engine
        try:
            step = engine.start(HttpRequest.from_wsgi_environ(environ))
        except Exception as error:  # noqa: BLE001 - never a 500 of the application
            return engine.internal_error("request", error)
        if not isinstance(step, AskLimiter):
            return step
        answer: Sequence[Decision] | Exception
        try:
            answer = self.limiter.check_many(step.items)
        except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
            answer = error
        return engine.settle(step, answer)

    def _respond(self, start_response: StartResponse, outcome: Respond) -> Iterable[bytes]:
        try:
            encode_headers(outcome.headers)
        except Exception as error:  # noqa: BLE001 - refuse anyway, plainly
            self.engine.internal_error("encode response", error, PLAIN_REFUSAL)
            outcome = fallback_response(outcome)
        start_response(f"{outcome.status} {outcome.reason}", list(outcome.headers))
        return [outcome.body]
