"""What the framework integrations share. Imports no framework.

A decorator or dependency declares limits for one view; the framework has already routed the
request, so :class:`ViewLimits` compiles them into an :class:`~ratewall.http.HttpEngine` with
a single catch-all route. The engine then does everything exactly as under the middleware
(identities, fallbacks, headers, bodies, failure rules). :class:`EngineDriver` and
:class:`AsyncEngineDriver` drive it with the middleware's failure isolation: nothing the
limiter or the rate-limit layer does wrong escapes as an exception.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ..decision import Decision
from ..errors import ConfigError
from ..http.client_ip import ClientIP
from ..http.engine import HttpEngine
from ..http.identities import IdentitySource, PathParam, User
from ..http.middleware import exempt_hook
from ..http.request import HttpRequest
from ..http.routes import OnMissingIdentity, Route, RouteLimit
from ..http.steps import AskLimiter, AsyncLimiter, Pass, Respond, Step, SyncLimiter, Verdict
from ..http.wire import NO_HEADERS, PLAIN_REFUSAL, encode_headers, fallback_response
from ..limiter import AsyncRateLimiter, RateLimiter
from ..policy import Policy

__all__ = [
    "LIST_FIELDS",
    "AsyncEngineDriver",
    "EngineDriver",
    "ViewLimits",
    "apply_headers",
    "header_updates",
    "path_params",
    "uses_user",
]

LIST_FIELDS: Final = frozenset({"ratelimit", "ratelimit-policy"})
"""Fields that are Structured Field Lists: two field lines of one combine into one list, so
a response limited twice (a route and a view) can carry both. Other fields (the legacy
``X-RateLimit-*``) are set only if the response does not have them yet."""


@dataclass(frozen=True, slots=True)
class _ConfiguredClientIP:
    """Stands for "the client address, as the integration's ``client_ip`` finds it" until
    the engine is built and the integration's :class:`~ratewall.http.ClientIP` is known."""

    def __call__(self, request: HttpRequest) -> str | None:
        return None

    def describe(self) -> str:
        return "the client address"


@dataclass(frozen=True, slots=True)
class _ViewPathParam:
    """A path parameter captured by the framework's router (the view's URL pattern), rather
    than by a ratewall route pattern: :class:`~ratewall.http.Route` only accepts a
    :class:`~ratewall.http.PathParam` its own pattern captures."""

    param: PathParam

    def __call__(self, request: HttpRequest) -> str | None:
        return self.param(request)

    def describe(self) -> str:
        return self.param.describe()


_CONFIGURED_CLIENT_IP: Final = _ConfiguredClientIP()


class ViewLimits:
    """The limits one decorator or dependency declares: either one ``policy`` (with
    ``identity``, ``cost`` and ``on_missing_identity``) or several ``limits``, checked all or
    nothing. ``identity=None`` means the client address. Compared by identity: each
    declaration gets its own engine."""

    __slots__ = ("limits", "uses_user")

    def __init__(
        self,
        policy: str | None = None,
        identity: IdentitySource | None = None,
        *,
        cost: int = 1,
        on_missing_identity: OnMissingIdentity = "ip",
        limits: Iterable[RouteLimit] = (),
    ) -> None:
        declared = tuple(limits)
        if policy is not None and declared:
            raise TypeError("pass either a policy name or limits=[RouteLimit(...), ...], not both")
        if policy is None:
            if not declared:
                raise TypeError(
                    "name the policy to apply, as in limit('login', identity=Header('X-User-ID'))"
                )
            for limit in declared:
                if not isinstance(limit, RouteLimit):
                    raise TypeError(f"limits must hold RouteLimit objects, got {limit!r}")
        else:
            source = _CONFIGURED_CLIENT_IP if identity is None else identity
            declared = (RouteLimit(policy, source, cost, on_missing_identity),)
        # Route's own checks (one entry per policy) apply to a view's limits too.
        Route("*", tuple(_bind(limit, ClientIP()) for limit in declared))
        self.limits: tuple[RouteLimit, ...] = declared
        self.uses_user = any(isinstance(limit.identity, User) for limit in declared)

    def __repr__(self) -> str:
        return f"ViewLimits({', '.join(limit.policy for limit in self.limits)})"

    def engine(
        self,
        policies: Mapping[str, Policy],
        *,
        client_ip: ClientIP | None = None,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        where: str = "a view",
    ) -> HttpEngine:
        """The engine applying these limits to every request it sees. Raises
        :class:`~ratewall.ConfigError` for unknown policies and impossible costs."""
        for position, limit in enumerate(self.limits):
            field = f"limits[{position}]" if len(self.limits) > 1 else None
            policy = policies.get(limit.policy)
            if policy is None:
                known = ", ".join(policies) or "(none)"
                raise ConfigError(
                    f"unknown policy {limit.policy!r}; the limiter knows: {known}",
                    source=where,
                    field=field,
                )
            if limit.cost > policy.capacity:
                raise ConfigError(
                    f"cost {limit.cost} exceeds the capacity {policy.capacity} of policy "
                    f"{limit.policy!r}, so the request could never pass",
                    source=where,
                    field=field,
                )
        address = client_ip if client_ip is not None else ClientIP()
        return HttpEngine(
            [Route("*", tuple(_bind(limit, address) for limit in self.limits))],
            policies,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=address,
        )


def _bind(limit: RouteLimit, address: ClientIP) -> RouteLimit:
    if isinstance(limit.identity, _ConfiguredClientIP):
        return dataclasses.replace(limit, identity=address)
    if isinstance(limit.identity, PathParam):
        return dataclasses.replace(limit, identity=_ViewPathParam(limit.identity))
    return limit


def uses_user(engine: HttpEngine) -> bool:
    """Whether any of ``engine``'s routes identifies clients by the authenticated user (then
    the integration must look the user up for each request)."""
    return any(
        isinstance(limit.identity, User) for route in engine.routes.routes for limit in route.limits
    )


def path_params(values: Mapping[str, object]) -> dict[str, str]:
    """A framework's captured path parameters as text (converters may have made ints,
    UUIDs...), whole: like every identity, never cut (a cut would merge quotas)."""
    return {str(name): str(value) for name, value in values.items()}


def _sendable(engine: HttpEngine, verdict: object) -> Verdict:
    """``verdict`` made safe to send: a refusal whose headers cannot go on the wire becomes
    a plain one, allowed-response headers that cannot are dropped (both logged)."""
    if isinstance(verdict, Respond):
        try:
            encode_headers(verdict.headers)
        except Exception as error:  # noqa: BLE001 - refuse anyway, plainly
            engine.internal_error("encode response", error, PLAIN_REFUSAL)
            return fallback_response(verdict)
        return verdict
    if isinstance(verdict, Pass):
        if verdict.headers:
            try:
                encode_headers(verdict.headers)
            except Exception as error:  # noqa: BLE001 - the response goes out without them
                engine.internal_error("encode headers", error, NO_HEADERS)
                return Pass()
        return verdict
    return engine.internal_error("outcome", TypeError(f"got {verdict!r:.100}"))


def _start(engine: HttpEngine, build_request: Callable[[], HttpRequest]) -> Step:
    """The engine's first step for the request ``build_request()`` describes; a request
    that cannot be described passes (logged)."""
    try:
        return engine.start(build_request())
    except Exception as error:  # noqa: BLE001 - never a 500 of the application
        return engine.internal_error("request", error)


def refuse_slots(engine: HttpEngine) -> None:
    """The framework integrations do not hold concurrency slots (yet): a route or view
    naming a concurrency policy is a ConfigError at startup, never a limit silently off."""
    for route in engine.routes.routes:
        for limit in route.limits:
            if limit.policy in engine.slot_policies:
                raise ConfigError(
                    f"policy {limit.policy!r} is a concurrency policy, and the framework "
                    "integrations do not hold slots; put these requests under ratewall's "
                    "ASGI or WSGI middleware (ratewall.http), or use limiter.slot() in the view",
                    source=f"route {route.method} {route.path}",
                    field="policy",
                )


class EngineDriver:
    """Runs ``engine`` for a synchronous limiter (a :class:`~ratewall.RateLimiter`)."""

    __slots__ = ("engine", "limiter")

    def __init__(self, engine: HttpEngine, limiter: SyncLimiter) -> None:
        given: object = limiter  # the types say it cannot be; callers without mypy may try
        if isinstance(given, AsyncRateLimiter):
            raise TypeError("this integration is synchronous: give it a RateLimiter")
        refuse_slots(engine)
        if engine.on_exempt is None:
            engine.on_exempt = exempt_hook(limiter)  # network exemptions count in metrics
        self.engine = engine
        self.limiter = limiter

    def verdict(self, build_request: Callable[[], HttpRequest]) -> Verdict:
        """What to do with the request ``build_request()`` describes. Never raises."""
        step = _start(self.engine, build_request)
        if not isinstance(step, AskLimiter):
            return _sendable(self.engine, step)
        answer: Sequence[Decision] | Exception
        try:
            answer = self.limiter.check_many(step.items)
        except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
            answer = error
        return _sendable(self.engine, self.engine.settle(step, answer))


class AsyncEngineDriver:
    """Runs ``engine`` for an asyncio limiter (an :class:`~ratewall.AsyncRateLimiter`)."""

    __slots__ = ("engine", "limiter")

    def __init__(self, engine: HttpEngine, limiter: AsyncLimiter) -> None:
        given: object = limiter  # the types say it cannot be; callers without mypy may try
        if isinstance(given, RateLimiter):
            raise TypeError("this integration runs on asyncio: give it an AsyncRateLimiter")
        refuse_slots(engine)
        if engine.on_exempt is None:
            engine.on_exempt = exempt_hook(limiter)  # network exemptions count in metrics
        self.engine = engine
        self.limiter = limiter

    async def verdict(self, build_request: Callable[[], HttpRequest]) -> Verdict:
        """What to do with the request ``build_request()`` describes. Never raises."""
        step = _start(self.engine, build_request)
        if not isinstance(step, AskLimiter):
            return _sendable(self.engine, step)
        answer: Sequence[Decision] | Exception
        try:
            answer = await self.limiter.check_many(step.items)
        except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
            answer = error
        return _sendable(self.engine, self.engine.settle(step, answer))

    def settled(
        self,
        build_request: Callable[[], HttpRequest],
        answer: Sequence[Decision] | Exception,
    ) -> Verdict:
        """What to do with the request when the limiter's ``answer`` for its one item is
        known already (the shortcut asked it and could not finish): the general path, the
        limiter not asked again. Never raises."""
        step = _start(self.engine, build_request)
        if not isinstance(step, AskLimiter):
            return _sendable(self.engine, step)
        return _sendable(self.engine, self.engine.settle(step, answer))


def header_updates(
    existing: Callable[[str], str | None], headers: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs to *set* on a response that has ``existing(name)`` (None
    when absent) for it to carry ``headers`` as well: list fields are combined with what is
    there, other fields are left alone if present."""
    updates: list[tuple[str, str]] = []
    for name, value in headers:
        current = existing(name)
        if current is None:
            updates.append((name, value))
        elif name.lower() in LIST_FIELDS:
            updates.append((name, f"{current}, {value}"))
    return updates


def apply_headers(
    engine: HttpEngine,
    get: Callable[[str], str | None],
    put: Callable[[str, str], object],
    headers: Sequence[tuple[str, str]],
) -> None:
    """Add the RateLimit ``headers`` of an allowed request to a framework's response, whose
    header mapping (case-insensitive, one value per name) reads with ``get`` and writes with
    ``put``. Failures are logged, never raised: the response goes out without them."""
    if not headers:
        return
    try:
        for name, value in header_updates(get, headers):
            put(name, value)
    except Exception as error:  # noqa: BLE001 - the response goes out without them
        engine.internal_error("add headers", error, NO_HEADERS)
