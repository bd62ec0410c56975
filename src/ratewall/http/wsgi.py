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

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..decision import Decision
from ..limiter import RateLimiter
from .middleware import Middleware, warn_if_store_unreachable_now
from .request import HttpRequest
from .steps import AskLimiter, Pass, Respond, SyncLimiter, Verdict
from .wire import NO_HEADERS, PLAIN_REFUSAL, encode_headers, fallback_response

if TYPE_CHECKING:
    # WSGIApplication is named in a base class, where it must be a string at runtime.
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401

__all__ = ["WSGIRateLimitMiddleware"]


class WSGIRateLimitMiddleware(Middleware["WSGIApplication", SyncLimiter]):
    """Rate-limits a WSGI application's requests by ``routes``.

    ``limiter`` is a :class:`~ratewall.RateLimiter` (anything with its ``policies`` and
    ``check_many``); the other arguments are those of
    :class:`~ratewall.http.RateLimitMiddleware`, with the same failure isolation: nothing the
    limiter or this middleware does wrong becomes an error response of the application.
    """

    @classmethod
    def limiter_from_config(
        cls, config: Config, store: str | None, clock: Callable[[], float] | None
    ) -> SyncLimiter:
        """A :class:`~ratewall.RateLimiter`: close it with ``middleware.limiter.close()``."""
        return RateLimiter.from_config(config, store, clock=clock)

    def _check_store_at_startup(self) -> None:
        warn_if_store_unreachable_now(self.limiter)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        verdict: object = self._verdict(environ)
        if not isinstance(verdict, Pass | Respond):
            verdict = self.engine.internal_error("outcome", TypeError(f"got {verdict!r:.100}"))
        if isinstance(verdict, Respond):
            return self._respond(start_response, verdict)
        extra: list[tuple[str, str]] = []
        if verdict.headers:
            try:
                encode_headers(verdict.headers)  # validates: nothing unsendable reaches the server
                extra = list(verdict.headers)
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

    def _verdict(self, environ: WSGIEnvironment) -> Verdict:
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

    def _respond(self, start_response: StartResponse, verdict: Respond) -> Iterable[bytes]:
        try:
            encode_headers(verdict.headers)
        except Exception as error:  # noqa: BLE001 - refuse anyway, plainly
            self.engine.internal_error("encode response", error, PLAIN_REFUSAL)
            verdict = fallback_response(verdict)
        start_response(f"{verdict.status} {verdict.reason}", list(verdict.headers))
        return [verdict.body]
