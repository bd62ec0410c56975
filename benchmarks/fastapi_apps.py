"""The FastAPI apps of ``fastapi_instructions.py``, as uvicorn factories.

Every app serves ``GET /`` with one ``async def`` endpoint returning ``{"ok": true}`` (FastAPI
serialises it), so the rows differ only by the rate limiting around it:

- ``bare``: no limiter;
- ``noop_dependency``: a dependency that does nothing but take the ``Request`` and the
  ``Response`` as ratewall's does: what FastAPI's own dependency machinery costs, before
  any limiter code runs;
- ``ratewall_middleware``: ratewall's :class:`~ratewall.http.RateLimitMiddleware` around
  the app, one catch-all route per client address, memory store;
- ``ratewall_dependency``: ratewall's :class:`~ratewall.integrations.fastapi.RateLimit` on
  the route, per client address, memory store;
- ``ratewall_dependency_header``: the same with the README's ``Header("X-User-ID")``
  identity, which every request of the load generator carries;
- ``ratewall_dependency_redis``: the same on the Redis store (``BENCH_REDIS_URL``);
- ``slowapi_decorator``: slowapi's ``@limiter.limit`` with ``headers_enabled=True`` (its
  README's FastAPI set-up: the endpoint takes ``request`` and ``response``), memory storage;
- ``slowapi_middleware``: slowapi's ``SlowAPIASGIMiddleware`` with a default limit, memory;
- ``fastapi_limiter_redis``: fastapi-limiter's ``RateLimiter`` dependency on a pyrate-limiter
  ``RedisBucket`` (``BENCH_REDIS_URL``), its README's set-up with a Redis bucket.

Every limit is 10⁹ per minute: every request is checked and allowed. The algorithm of
ratewall's rows comes from ``RATEWALL_BENCH_ALGORITHM`` (default ``fixed_window``).
"""

from __future__ import annotations

import os
from typing import Final

from fastapi import Depends, FastAPI, Request, Response

from ratewall import AsyncRateLimiter, Policy
from ratewall.http import ClientIP, Header, IdentitySource, RateLimitMiddleware, Route, RouteLimit
from ratewall.integrations.fastapi import RateLimit, install

LIMIT: Final = 10**9
WINDOW: Final = 60
POLICY: Final = "bench"
REDIS_VARIABLE: Final = "BENCH_REDIS_URL"
ALGORITHM_VARIABLE: Final = "RATEWALL_BENCH_ALGORITHM"


def _policy() -> Policy:
    return Policy(LIMIT, WINDOW, os.environ.get(ALGORITHM_VARIABLE, "fixed_window"))


async def ok() -> dict[str, bool]:
    return {"ok": True}


def bare() -> FastAPI:
    app = FastAPI()
    app.get("/")(ok)
    return app


async def _noop(request: Request, response: Response) -> None:
    return None


def noop_dependency() -> FastAPI:
    app = FastAPI()
    app.get("/", dependencies=[Depends(_noop)])(ok)
    return app


def ratewall_middleware() -> FastAPI:
    app = bare()
    limiter = AsyncRateLimiter({POLICY: _policy()})
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter, routes=[Route("*", [RouteLimit(POLICY, ClientIP())])]
    )
    return app


def _with_dependency(store: str, identity: IdentitySource | None = None) -> FastAPI:
    limiter = AsyncRateLimiter({POLICY: _policy()}, store=store)
    app = FastAPI()
    install(app)
    app.get("/", dependencies=[Depends(RateLimit(limiter, POLICY, identity))])(ok)
    return app


def ratewall_dependency() -> FastAPI:
    return _with_dependency("memory://")


def ratewall_dependency_header() -> FastAPI:
    # The README's identity, which the load generator sends (X-User-ID: bench-user).
    return _with_dependency("memory://", Header("X-User-ID"))


def ratewall_dependency_redis() -> FastAPI:
    return _with_dependency(os.environ[REDIS_VARIABLE])


def slowapi_decorator() -> FastAPI:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.util import get_remote_address

    limiter = Limiter(key_func=get_remote_address, headers_enabled=True)
    app = FastAPI()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)

    @app.get("/")
    @limiter.limit(f"{LIMIT}/minute")
    async def limited(request: Request, response: Response) -> dict[str, bool]:
        return {"ok": True}

    return app


def slowapi_middleware() -> FastAPI:
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware
    from slowapi.util import get_remote_address

    limiter = Limiter(
        key_func=get_remote_address, default_limits=[f"{LIMIT}/minute"], headers_enabled=True
    )
    app = bare()
    app.state.limiter = limiter
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)
    app.add_middleware(SlowAPIASGIMiddleware)
    return app


def fastapi_limiter_redis() -> FastAPI:
    from fastapi_limiter.depends import RateLimiter as FastAPILimiterDependency
    from pyrate_limiter import Duration, Limiter, Rate, RedisBucket
    from pyrate_limiter.buckets.redis_bucket import LuaScript
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis

    # RedisBucket.init() awaits the script's loading on an asyncio client; loading it with a
    # synchronous client first builds the same bucket here, in the factory.
    url = os.environ[REDIS_VARIABLE]
    with Redis.from_url(url) as loader:
        script_hash = loader.script_load(LuaScript.PUT_ITEM)
    bucket = RedisBucket(
        [Rate(LIMIT, Duration.MINUTE)], AsyncRedis.from_url(url), "bench", script_hash
    )
    dependency = FastAPILimiterDependency(limiter=Limiter(bucket))
    app = FastAPI()
    app.get("/", dependencies=[Depends(dependency)])(ok)
    return app
