"""FastAPI: a per-route dependency.

::

    from fastapi import Depends, FastAPI
    from ratewall import AsyncRateLimiter, Policy
    from ratewall.http import Header
    from ratewall.integrations.fastapi import RateLimit, install

    limiter = AsyncRateLimiter({"login": Policy(5, "1m")}, store="redis://127.0.0.1:6379/0")
    app = FastAPI()
    install(app)  # refusals answer with the middleware's application/problem+json body

    @app.post("/login", dependencies=[Depends(RateLimit(limiter, "login",
                                                        identity=Header("X-User-ID")))])
    async def login() -> dict[str, bool]:
        return {"ok": True}

A :class:`RateLimit` works wherever FastAPI takes a dependency: a route's ``dependencies``, a
parameter (``_: None = Depends(...)``), an ``APIRouter`` or the whole app. It refuses by
raising :class:`RateLimited`, an :class:`~fastapi.HTTPException`: 429 with ``Retry-After`` and
the RateLimit fields, 503 when the store is down and a policy fails closed, 400 when a limit
requires an identity the request lacks. :func:`install` registers the handler that sends the
engine's exact response (an ``application/problem+json`` body); without it FastAPI's own
handler sends the same status and headers with its ``{"detail": ...}`` JSON body. Allowed
responses get the RateLimit fields through FastAPI's ``Response`` parameter, so they are lost
if the endpoint returns a ``Response`` object itself (FastAPI's rule for dependency headers):
use the ASGI middleware for such endpoints.

The ASGI middleware works with FastAPI as with any ASGI app, for limits by path pattern
(including paths no endpoint serves)::

    from ratewall.http import RateLimitMiddleware, Route, RouteLimit

    app.add_middleware(RateLimitMiddleware, limiter=limiter, routes=[
        Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST"),
    ])
"""

# No `from __future__ import annotations` here: FastAPI reads the annotations of
# `RateLimit.__call__` at runtime to inject the request and the response, and older
# releases do not resolve string annotations of a callable instance.

import functools
from collections.abc import Callable, Iterable, Sequence

from fastapi import HTTPException
from fastapi import Request as FastAPIRequest
from fastapi import Response as FastAPIResponse
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response

from ..decision import Decision
from ..http.client_ip import ClientIP
from ..http.identities import IdentitySource
from ..http.routes import OnMissingIdentity, RouteLimit
from ..http.shortcut import (
    Shortcut,
    checks_singly,
    memory_store_check,
    shortcut_for,
    shortcut_item,
)
from ..http.steps import AsyncLimiter, Pass, Respond
from ..http.wire import encode_headers
from ._shared import AsyncEngineDriver, ViewLimits, apply_headers
from .starlette import ratewall_request as request_of
from .starlette import refusal_response

__all__ = ["RateLimit", "RateLimited", "install", "rate_limited_handler"]

# Set by the server from the body: a copy from the refusal would be wrong for another body.
_BODY_FIELDS = frozenset({"content-type", "content-length"})


class RateLimited(HTTPException):
    """A refusal of :class:`RateLimit`: ``response`` is the engine's answer (429, 503 or
    400), ``status_code`` and ``headers`` its status and headers (``headers`` without the
    body's ``Content-Type``/``Content-Length``, for handlers that send another body)."""

    def __init__(self, response: Respond) -> None:
        super().__init__(
            status_code=response.status,
            detail=response.reason,
            headers={
                name: value for name, value in response.headers if name.lower() not in _BODY_FIELDS
            },
        )
        self.response = response


class RateLimit:
    """A FastAPI dependency that rate-limits the requests of the routes it is attached to.

    ``limiter`` is an :class:`~ratewall.AsyncRateLimiter`. Apply one ``policy`` to the client
    ``identity`` names (default: the client address, found by ``client_ip``), spending
    ``cost`` units per request; or pass ``limits=[RouteLimit(...), ...]`` for several
    policies, checked all or nothing (a refused request consumes none). Several
    ``RateLimit`` dependencies on one route are checked one after the other, each consuming
    its own quota: use ``limits=`` when a refusal by one must not spend the others.
    ``on_missing_identity`` as in :class:`~ratewall.http.RouteLimit`; ``legacy_headers``
    and ``headers_on_allowed`` as in :class:`~ratewall.http.RateLimitMiddleware`.

    Unknown policies and impossible costs raise :class:`~ratewall.ConfigError` here, at
    import time. No failure of the limiter becomes a 500: see :mod:`ratewall.http.engine`.
    """

    def __init__(
        self,
        limiter: AsyncLimiter,
        policy: str | None = None,
        identity: IdentitySource | None = None,
        *,
        cost: int = 1,
        on_missing_identity: OnMissingIdentity = "ip",
        limits: Iterable[RouteLimit] = (),
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
    ) -> None:
        declared = ViewLimits(
            policy, identity, cost=cost, on_missing_identity=on_missing_identity, limits=limits
        )
        self.limits = declared.limits
        self.engine = declared.engine(
            limiter.policies,
            client_ip=client_ip,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            where=f"RateLimit({', '.join(limit.policy for limit in declared.limits)})",
        )
        self._driver = AsyncEngineDriver(self.engine, limiter)
        # The ASGI middleware's short way for the usual request (ratewall.http.shortcut):
        # a limit on the client address, allowed. Chosen once, as the middleware does.
        self._limiter = limiter
        self._shortcut: Shortcut | None = None
        self._check_now: Callable[[str, str, int], Decision] | None = None
        if checks_singly(limiter):
            self._shortcut = shortcut_for(self.engine)
            if self._shortcut is not None:
                self._check_now = memory_store_check(limiter)

    def __repr__(self) -> str:
        return f"RateLimit({', '.join(repr(limit.policy) for limit in self.limits)})"

    async def __call__(self, request: FastAPIRequest, response: FastAPIResponse) -> None:
        shortcut = self._shortcut
        if shortcut is not None:
            item = shortcut_item(shortcut, request.scope)
            if isinstance(item, tuple):
                answer: list[Decision] | Exception
                check_now = self._check_now
                try:
                    if check_now is not None:
                        decision = check_now(*item)
                    else:
                        # checks_singly() made sure it is an AsyncRateLimiter's own check.
                        decision = await self._limiter.check(*item)  # type: ignore[attr-defined]
                except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
                    answer = error
                else:
                    extra = shortcut.fields(decision)
                    if extra is not None:  # allowed (empty: no field to add)
                        if extra:
                            _add_encoded(self, response, extra)
                        return
                    answer = [decision]
                self._finish(
                    self._driver.settled(functools.partial(request_of, request), answer), response
                )
                return
        self._finish(await self._driver.verdict(functools.partial(request_of, request)), response)

    def _finish(self, verdict: object, response: FastAPIResponse) -> None:
        if isinstance(verdict, Respond):
            raise RateLimited(verdict)
        if not isinstance(verdict, Pass) or not verdict.headers:
            return
        encoded = verdict.encoded
        if encoded is None:
            try:
                encoded = encode_headers(verdict.headers)
            except Exception:  # noqa: BLE001 - apply_headers reports it, the response goes on
                headers: Sequence[tuple[str, str]] = verdict.headers
                apply_headers(
                    self.engine, response.headers.get, response.headers.__setitem__, headers
                )
                return
        _add_encoded(self, response, encoded)


def _add_encoded(
    limit: RateLimit, response: FastAPIResponse, extra: list[tuple[bytes, bytes]]
) -> None:
    """Add the shortcut's encoded fields to the dependency's response: appended as they are
    when the response has no header yet (FastAPI's response for dependencies starts empty),
    else merged by name like every other integration does."""
    raw = getattr(response, "raw_headers", None)
    if type(raw) is list and not raw:
        raw.extend(extra)
        return
    decoded = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in extra]
    apply_headers(limit.engine, response.headers.get, response.headers.__setitem__, decoded)


async def rate_limited_handler(request: StarletteRequest, exc: Exception) -> Response:
    """The exception handler for :class:`RateLimited`: the engine's response as it is."""
    if not isinstance(exc, RateLimited):  # registered for another exception class by mistake
        raise exc
    return refusal_response(exc.response)


def install(app: Starlette) -> None:
    """Make ``app`` answer :class:`RateLimited` with the engine's exact response, the
    ``application/problem+json`` body of the ASGI middleware included."""
    app.add_exception_handler(RateLimited, rate_limited_handler)
