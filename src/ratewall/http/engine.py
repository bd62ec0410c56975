"""The HTTP layer's sans-IO core, shared by the ASGI and WSGI middleware.

It never does I/O: the adapters feed it a :class:`~ratewall.http.Request`, run the one limiter
call it asks for, and carry out the outcome it returns::

    step = engine.start(request)                  # no I/O: route, identities -> Check
    if isinstance(step, Check):
        try:
            decisions = limiter.check_many(step.items)   # the only I/O (awaited under ASGI)
        except Exception as error:
            step = engine.failed(step, error)
        else:
            step = engine.finish(step, decisions)
    # step is now Pass(headers to add to the app's response) or Respond(status, headers, body)

**Failure isolation.** The rate limiter must never turn into a 500 of the application. Every
method here catches what goes wrong inside it (a broken identity source, a header that cannot
be built, a limiter that returns nonsense), logs it on the ``ratewall.http`` logger (at most
once a minute per kind of failure, with a count of the ones suppressed) and lets the request
through, except where a policy says to fail closed:

- a decision refused because the store is down and the policy's ``failure_mode`` is
  ``"closed"`` (``degraded``) answers ``503 Service Unavailable`` with ``Retry-After``;
- a decision that fails open passes (and the degraded decision is logged);
- an exception from the limiter, including the :class:`~ratewall.StoreError` of policies
  whose failure mode is ``"raise"``, is logged and passes, unless some policy of the route
  fails closed, which then answers 503. ``"raise"`` is for code that calls the limiter
  itself; in front of an application the only choice is between passing and refusing;
- an identity source that raises disables its own limit for that request (logged); the
  route's other limits still apply.

Genuine refusals (the client is over a limit) answer 429 even when some other policy of the
route is degraded. A refused request consumes none of the route's policies (the limiter's
``check_many`` is all or nothing), so the RateLimit field of a 429 reports the quota left
*before* the request for the policies that would have allowed it.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType
from typing import Final, Protocol, TypeGuard

from ..decision import Decision
from ..errors import ConfigError, StoreError
from ..limiter import AsyncRateLimiter
from ..policy import Policy
from .client_ip import ClientIP
from .headers import (
    _SF_INTEGER_MAX,
    PROBLEM_CONTENT_TYPE,
    QUOTA_EXCEEDED,
    TEMPORARY_REDUCED_CAPACITY,
    _encoded_policy,
    problem_body,
    rate_limit_fields,
    rate_limit_headers,
    retry_after,
)
from .request import HttpRequest
from .routes import Route, RouteLimit, RouteTable, parse_routes

__all__ = [
    "NO_HEADERS",
    "PASS",
    "PLAIN_REFUSAL",
    "AsyncLimiter",
    "Check",
    "HttpLimiter",
    "Item",
    "LogThrottle",
    "Outcome",
    "Pass",
    "Respond",
    "Step",
    "SyncLimiter",
    "checks_singly",
    "encode_headers",
    "fallback_response",
    "routes_from_config",
]

logger = logging.getLogger("ratewall.http")

Headers = tuple[tuple[str, str], ...]
Item = tuple[str, str, int]
"""One ``check_many`` item: (identity, policy name, cost)."""


class SyncLimiter(Protocol):
    """What the WSGI middleware needs from a limiter (a :class:`~ratewall.RateLimiter`)."""

    @property
    def policies(self) -> Mapping[str, Policy]: ...

    def check_many(self, items: Sequence[Item], /) -> list[Decision]: ...


class AsyncLimiter(Protocol):
    """What the ASGI middleware needs from a limiter (an :class:`~ratewall.AsyncRateLimiter`)."""

    @property
    def policies(self) -> Mapping[str, Policy]: ...

    def check_many(self, items: Sequence[Item], /) -> Awaitable[list[Decision]]: ...


@dataclass(frozen=True, slots=True)
class Pass:
    """Let the request through; add ``headers`` to the application's response."""

    headers: Headers = ()
    # The same headers as encode_headers() gives them, when the engine built both at once
    # (the allowed request's hot path); None: encode ``headers``.
    encoded: list[tuple[bytes, bytes]] | None = field(
        default=None, init=False, repr=False, compare=False
    )


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer the request without calling the application."""

    status: int
    headers: Headers
    body: bytes

    @property
    def reason(self) -> str:
        """The status line's reason phrase, e.g. ``Too Many Requests``."""
        try:
            return HTTPStatus(self.status).phrase
        except ValueError:
            return "Unknown"


@dataclass(frozen=True, slots=True)
class Check:
    """Ask the limiter: ``limiter.check_many(check.items)``, then call
    :meth:`HttpLimiter.finish` (or :meth:`HttpLimiter.failed` if it raised).

    ``limits`` are the route's limits that apply to this request, in the order of ``items``
    (a limit whose identity is missing and that is skipped is in neither).
    """

    request: HttpRequest
    route: Route
    limits: tuple[RouteLimit, ...]
    items: tuple[Item, ...]


Outcome = Pass | Respond
Step = Check | Pass | Respond

PASS: Final = Pass()

# Frozen dataclasses built per request without their __init__ (each field through its slot,
# as ratewall.decision.make_decision does): a third of the cost. Equal in every way.
_CHECK_SETTERS: Final = tuple(
    Check.__dict__[name].__set__ for name in ("request", "route", "limits", "items")
)
_PASS_HEADERS: Final = Pass.__dict__["headers"].__set__
_PASS_ENCODED: Final = Pass.__dict__["encoded"].__set__


def _check(
    request: HttpRequest, route: Route, limits: tuple[RouteLimit, ...], items: tuple[Item, ...]
) -> Check:
    check = object.__new__(Check)
    set_request, set_route, set_limits, set_items = _CHECK_SETTERS
    set_request(check, request)
    set_route(check, route)
    set_limits(check, limits)
    set_items(check, items)
    return check


def _encoded_pass(headers: Headers, encoded: list[tuple[bytes, bytes]]) -> Pass:
    outcome = object.__new__(Pass)
    _PASS_HEADERS(outcome, headers)
    _PASS_ENCODED(outcome, encoded)
    return outcome


NO_HEADERS: Final = "the response goes out without rate-limit headers"
PLAIN_REFUSAL: Final = "a plain refusal is sent"


class LogThrottle:
    """Logs each kind of message at most once per ``interval`` seconds; the next message of
    that kind says how many were suppressed meanwhile. Thread-safe; never raises."""

    _MAX_KINDS: Final = 1024

    def __init__(
        self,
        log: logging.Logger = logger,
        interval: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = log
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[Hashable, tuple[float, int]] = {}

    def log(
        self,
        level: int,
        kind: Hashable,
        message: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> bool:
        """Log ``message % args`` unless a message of ``kind`` was logged within the
        interval; returns whether it was logged."""
        try:
            now = self._clock()
            with self._lock:
                last = self._seen.get(kind)
                if last is not None and now - last[0] < self.interval:
                    self._seen[kind] = (last[0], last[1] + 1)
                    return False
                if len(self._seen) >= self._MAX_KINDS:
                    self._seen.clear()
                self._seen[kind] = (now, 0)
            suppressed = last[1] if last is not None else 0
            if suppressed:
                message += " (%d similar messages suppressed in the last %.0f s)"
                args = (*args, suppressed, self.interval)
            self.logger.log(level, message, *args, exc_info=exc_info)
        except Exception:  # noqa: BLE001 - logging must never be what breaks a request
            return False
        return True


class _Reject:
    """Marks a limit whose identity is missing and whose route says to answer 400."""


_REJECT: Final = _Reject()


def _describe(limit: RouteLimit) -> str:
    describe = getattr(limit.identity, "describe", None)
    if callable(describe):
        try:
            text = describe()
        except Exception:  # noqa: BLE001 - only a message depends on it
            return "a client identity"
        if isinstance(text, str):
            return text
    return "a client identity"


class _Unchecked:
    """Marks a request that no limit applies to (no route, or an exempt one)."""


UNCHECKED: Final = _Unchecked()
_Encoded = list[tuple[bytes, bytes]]


class _Shortcut:
    """The usual request's short way through an engine whose outcomes are the default ones
    (see :meth:`HttpLimiter._shortcut`); an adapter may take it before the general path.

    Most requests match a route with one limit on the client address trusting no proxy, are
    allowed, and get the two RateLimit fields (or none, without ``headers_on_allowed``). Such
    a request needs nothing but its method, path and peer: :meth:`item` finds what to check
    without a :class:`HttpRequest` (no header snapshot), a :class:`Check` or a pass through
    :meth:`HttpLimiter.start`, and :meth:`fields` gives the fields
    :meth:`HttpLimiter.finish` would add, encoded, from the decision's two numbers. Whatever
    they cannot answer they leave (``None``) to the general path, which then decides the
    request as it always does: another identity source, a missing identity, a refusal, a
    degraded or unusual decision, an error. The outcomes are the same either way
    (``tests/http/test_shortcut.py``).

    Built from the engine's routes, policies and options as they are when it is made.
    """

    __slots__ = ("_encoded", "_everything", "_fields", "_limits", "_policies", "_routes")

    def __init__(
        self, routes: RouteTable, policies: Mapping[str, Policy], *, fields: bool = True
    ) -> None:
        self._routes = routes
        self._policies = policies
        self._fields = fields  # whether allowed responses get the RateLimit fields
        # Per route that qualifies, keyed by id() (a Route hashes and compares by value, which
        # costs more than the rest; this table keeps its routes alive): its one limit's source,
        # policy and cost.
        self._limits: dict[int, tuple[ClientIP, str, int]] = {}
        for route in routes.routes:
            if len(route.limits) == 1:
                limit = route.limits[0]
                source = limit.identity
                if type(source) is ClientIP and source._trusts_nobody:
                    self._limits[id(route)] = (source, limit.policy, limit.cost)
        # A first route that takes every method and path decides every request, unmatched.
        first = routes.routes[0] if routes.routes else None
        self._everything = (
            self._limits.get(id(first))
            if first is not None and first._any_path and first._methods is None
            else None
        )
        # Per policy: the limit its decisions report, its RateLimit-Policy field and its name
        # item, encoded (one entry per policy).
        self._encoded: dict[str, tuple[int, tuple[bytes, bytes], bytes]] = {}

    def useful(self) -> bool:
        """Whether some route can take the shortcut."""
        return bool(self._limits)

    def item(self, method: str, path: str, client: str | None) -> Item | _Unchecked | None:
        """The one item to check for a request (as :meth:`HttpLimiter.start` would find it),
        :data:`UNCHECKED` if no limit applies, or ``None``: ask the general path."""
        limit = self._everything
        if limit is None:
            found = self._routes.match(method, path)
            if found is None or not found.route.limits:
                return UNCHECKED
            limit = self._limits.get(id(found.route))
            if limit is None:
                return None
        source, policy, cost = limit
        identity = source._of_peer(client)
        if not identity:  # the route's missing-identity rule: the general path applies it
            return None
        return (identity, policy, cost)

    def fields(self, decision: Decision) -> _Encoded | None:
        """The encoded RateLimit fields :meth:`HttpLimiter.finish` adds for the item's
        ``decision``, if it is allowed (empty without fields on allowed responses); else
        ``None``, also for nonsense in the decision (which the general path then reports)."""
        if type(decision) is not Decision or not decision.allowed or decision.degraded:
            return None
        if not self._fields:
            return []
        known = self._encoded.get(decision.policy)
        try:
            if known is None or known[0] != decision.limit:
                known = self._learn(decision)
            # headers._state_member's fast case (the general path does the others), as bytes.
            remaining = decision.remaining
            wait = decision.reset_after
            if (
                type(remaining) is not int
                or not 0 <= remaining <= _SF_INTEGER_MAX
                or not 0 < wait <= _SF_INTEGER_MAX
            ):
                return None
            state = b"%s;r=%d;t=%d" % (known[2], remaining, math.ceil(wait))
        except Exception:  # noqa: BLE001 - see above
            return None
        return [known[1], (b"ratelimit", state)]

    def _learn(self, decision: Decision) -> tuple[int, tuple[bytes, bytes], bytes]:
        policy = decision.policy
        member, item = _encoded_policy(policy, decision.limit, self._policies[policy].window_us)
        known = (decision.limit, (b"ratelimit-policy", member), item)
        self._encoded[policy] = known
        return known


class HttpLimiter:
    """Maps HTTP requests to limiter checks and decisions to HTTP outcomes. No I/O.

    ``routes`` (a :class:`~ratewall.http.RouteTable` or routes in order) must only name
    ``policies`` (the limiter's); costs must fit the policies' capacities. Options:

    ``legacy_headers``
        Also send ``X-RateLimit-Limit``/``-Remaining``/``-Reset`` (default off).
    ``headers_on_allowed``
        Add ``RateLimit-Policy``/``RateLimit`` to allowed responses too (default on; 429s
        always carry them).
    ``client_ip``
        The :class:`~ratewall.http.ClientIP` used when a limit's identity is missing and its
        route falls back to the client address (default: trusting no proxy).

    Subclasses may override :meth:`response_headers`, :meth:`too_many_requests`,
    :meth:`unavailable` and :meth:`missing_identity` to shape responses; whatever they
    raise is contained like any other failure.
    """

    def __init__(
        self,
        routes: RouteTable | Iterable[Route],
        policies: Mapping[str, Policy],
        *,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
        log: LogThrottle | None = None,
    ) -> None:
        self.routes = routes if isinstance(routes, RouteTable) else RouteTable(routes)
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))
        self.legacy_headers = legacy_headers
        self.headers_on_allowed = headers_on_allowed
        self.client_ip = client_ip if client_ip is not None else ClientIP()
        self.log = log if log is not None else LogThrottle()
        # What response_headers() gives for allowed requests is then known: finish() builds
        # it, and its encoded form, directly.
        self._default_headers = type(self).response_headers is HttpLimiter.response_headers
        self._validate()

    def _shortcut(self) -> _Shortcut | None:
        """The usual request's short way (see :class:`_Shortcut`), when this engine gives
        the default outcomes for it (neither :meth:`start` nor :meth:`finish` overridden;
        with fields on allowed responses, the default ones: :meth:`response_headers` not
        overridden, no legacy headers) and some route qualifies."""
        kind = type(self)
        if kind.start is not HttpLimiter.start or kind.finish is not HttpLimiter.finish:
            return None
        # Without fields on allowed responses, an allowed response gets no header at all.
        if self.headers_on_allowed and (self.legacy_headers or not self._default_headers):
            return None
        shortcut = _Shortcut(self.routes, self.policies, fields=self.headers_on_allowed)
        return shortcut if shortcut.useful() else None

    def _validate(self) -> None:
        """Unknown policies and impossible costs fail at startup, not on every request."""
        for index, route in enumerate(self.routes.routes):
            for position, limit in enumerate(route.limits):
                at = f"routes[{index}].limits[{position}]"
                policy = self.policies.get(limit.policy)
                if policy is None:
                    known = ", ".join(self.policies) or "(none)"
                    raise ConfigError(
                        f"route {route.method} {route.path} names unknown policy "
                        f"{limit.policy!r}; the limiter knows: {known}",
                        source="<routes>",
                        field=f"{at}.policy",
                    )
                if limit.cost > policy.capacity:
                    raise ConfigError(
                        f"cost {limit.cost} exceeds the capacity {policy.capacity} of policy "
                        f"{limit.policy!r}, so the request could never pass",
                        source="<routes>",
                        field=f"{at}.cost",
                    )

    # -- the steps ------------------------------------------------------------------------

    def start(self, request: HttpRequest) -> Step:
        """The check to run for ``request``, or an outcome when there is nothing to check
        (no route, an exempt route, skipped identities: :data:`PASS`) or it must be
        answered now (a missing identity the route rejects: 400)."""
        try:
            found = self.routes.match(request.method, request.path)
            if found is None or not found.route.limits:
                return PASS
            route, params = found
            if params:
                request = (
                    request._with_path_params(params)
                    if type(request) is HttpRequest
                    else dataclasses.replace(request, path_params=params)
                )
            items: list[Item] = []
            skipped = False
            for limit in route.limits:
                # The source is called here, not in a helper: this runs for every limit of
                # every request, and usually simply finds the client.
                try:
                    value = limit.identity(request)
                except Exception as error:  # noqa: BLE001 - logged; the limit is skipped
                    self._broken_identity(limit, error)
                    identity = None
                else:
                    identity = (
                        value
                        if type(value) is str and value
                        else self._resolve_identity(limit, request, value)
                    )
                if identity is None:
                    skipped = True
                elif isinstance(identity, _Reject):
                    return self._contained(
                        functools.partial(self.missing_identity, limit),
                        "missing_identity",
                        fallback=_plain(400, "Bad Request"),
                    )
                else:
                    items.append((identity, limit.policy, limit.cost))
            if not items:
                return PASS
            limits = route.limits  # a tuple (see Route)
            if skipped:
                policies = {policy for _, policy, _ in items}
                limits = tuple(limit for limit in limits if limit.policy in policies)
            return _check(request, route, limits, tuple(items))  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - never a 500 of the application
            return self.internal_error("start", error)

    def finish(self, check: Check, decisions: Sequence[Decision]) -> Outcome:
        """The outcome of the limiter's ``decisions`` for ``check`` (one per item)."""
        if (
            type(decisions) is list
            and len(decisions) == 1 == len(check.items)
            and self._default_headers
            and self.headers_on_allowed
            and not self.legacy_headers
        ):
            # Most requests: one limit, allowed. The same Pass as below, built directly.
            decision = decisions[0]
            if type(decision) is Decision and decision.allowed and not decision.degraded:
                try:
                    headers, encoded = rate_limit_fields(decisions, self.policies)
                    return _encoded_pass(headers, encoded)
                except Exception:  # noqa: BLE001, S110 - the general path below reports it
                    pass
        try:
            # Typed as what a buggy or foreign limiter may really return.
            answers: list[object] = list(decisions)
            refused: list[Decision] = []
            degraded: list[str] = []
            # One pass: check the decisions and sort out the refused and degraded ones.
            valid = len(answers) == len(check.items)
            for decision in answers:
                if not isinstance(decision, Decision):
                    valid = False
                    break
                if not decision.allowed:
                    refused.append(decision)
                if decision.degraded:
                    degraded.append(decision.policy)
            if not valid:
                raise TypeError(
                    f"the limiter returned {answers!r:.200} for {len(check.items)} items"
                )
            decisions = answers  # type: ignore[assignment]  # every one a Decision
        except Exception as error:  # noqa: BLE001 - nonsense from the limiter: fail open
            return self.internal_error("decisions", error)
        if degraded:
            self.log.log(
                logging.WARNING,
                ("degraded", tuple(degraded)),
                "rate-limit store unavailable; policies %s answered by their failure mode "
                "(route %s %s)",
                ", ".join(degraded),
                check.route.method,
                check.route.path,
            )
        if not refused:
            if not self.headers_on_allowed:
                return PASS
            if not degraded and not self.legacy_headers and self._default_headers:
                try:
                    headers, encoded = rate_limit_fields(decisions, self.policies)
                    return _encoded_pass(headers, encoded)
                except Exception:  # noqa: BLE001, S110 - the general path below reports it
                    pass
            try:
                return Pass(tuple(self.response_headers(check, decisions)))
            except Exception as error:  # noqa: BLE001 - the response goes out without them
                return self.internal_error("headers", error, NO_HEADERS)
        if any(not decision.degraded for decision in refused):
            return self._contained(
                lambda: self.too_many_requests(check, decisions),
                "too_many_requests",
                fallback=_plain(429, "Too Many Requests", _safe_retry_after(refused)),
            )
        return self._contained(
            lambda: self.unavailable([d.policy for d in refused], retry_after(refused)),
            "unavailable",
            fallback=_plain(503, "Service Unavailable", _safe_retry_after(refused)),
        )

    def failed(self, check: Check, error: Exception) -> Outcome:
        """The outcome when the limiter raised ``error`` for ``check``: 503 if a policy of
        the request fails closed, else pass. Logged either way."""
        try:
            closed = [
                limit.policy
                for limit in check.limits
                if self.policies[limit.policy].failure_mode == "closed"
            ]
            store = isinstance(error, StoreError)
            self.log.log(
                logging.WARNING if store else logging.ERROR,
                ("limiter", type(error).__name__),
                "rate limiter %s on route %s %s; %s",
                "store failed" if store else f"raised {type(error).__name__}",
                check.route.method,
                check.route.path,
                f"failing closed for {', '.join(closed)}" if closed else "letting requests pass",
                exc_info=error,
            )
        except Exception as inner:  # noqa: BLE001 - never a 500 of the application
            return self.internal_error("failed", inner)
        if not closed:
            return PASS
        return self._contained(
            lambda: self.unavailable(closed, 1),
            "unavailable",
            fallback=_plain(503, "Service Unavailable"),
        )

    def _settle(self, check: Check, answer: Sequence[Decision] | Exception) -> Outcome:
        """The outcome of the limiter's ``answer`` to ``check``: its decisions through
        :meth:`finish`, or the exception it raised through :meth:`failed`. A subclass's hook
        that raises is contained; what a hook returns is the adapter's to check."""
        if isinstance(answer, Exception):
            try:
                return self.failed(check, answer)
            except Exception as inner:  # noqa: BLE001 - a subclass's bug: never a 500
                return self.internal_error("failed", inner)
        try:
            return self.finish(check, answer)
        except Exception as error:  # noqa: BLE001 - a subclass's bug: never a 500
            return self.internal_error("finish", error)

    def internal_error(
        self,
        where: str,
        error: BaseException,
        consequence: str = "the request passes unchecked",
    ) -> Pass:
        """Log a failure of the rate-limit layer itself (saying what happens instead) and
        return :data:`PASS`."""
        self.log.log(
            logging.ERROR,
            ("internal", where, type(error).__name__),
            "ratewall HTTP layer failed in %s (%s); %s",
            where,
            type(error).__name__,
            consequence,
            exc_info=error,
        )
        return PASS

    # -- responses (overridable) ----------------------------------------------------------

    def response_headers(
        self, check: Check, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        """The RateLimit fields for ``decisions`` (degraded ones are left out: their numbers
        are not the store's). On a refused request nothing was consumed, so the policies
        that would have allowed it report their quota before the request."""
        refused = False
        degraded = False
        for decision in decisions:
            refused = refused or not decision.allowed
            degraded = degraded or decision.degraded
        if not refused and not degraded and len(decisions) == len(check.items):
            # The usual case: every decision is shown as it is.
            return rate_limit_headers(decisions, self.policies, legacy=self.legacy_headers)
        shown: list[Decision] = []
        for decision, (_, _, cost) in zip(decisions, check.items, strict=True):
            if decision.degraded:
                continue
            if refused and decision.allowed:
                unconsumed = min(decision.limit, decision.remaining + cost)
                shown.append(dataclasses.replace(decision, remaining=unconsumed))
            else:
                shown.append(decision)
        return rate_limit_headers(shown, self.policies, legacy=self.legacy_headers)

    def too_many_requests(self, check: Check, decisions: Sequence[Decision]) -> Respond:
        """429 with ``Retry-After``, the RateLimit fields and a ``quota-exceeded`` problem."""
        refused = [decision for decision in decisions if not decision.allowed]
        wait = retry_after(refused)
        names = list(dict.fromkeys(d.policy for d in refused if not d.degraded))
        body = problem_body(
            status=429,
            title="Too Many Requests",
            detail=f"Too many requests for {_policies_text(names)}; retry in {_seconds(wait)}.",
            problem_type=QUOTA_EXCEEDED,
            violated_policies=names,
        )
        headers = [
            *_problem_headers(body),
            ("Retry-After", str(wait)),
            *self.response_headers(check, decisions),
        ]
        return Respond(429, tuple(headers), body)

    def unavailable(self, policies: Sequence[str], wait: int) -> Respond:
        """503 with ``Retry-After`` and a ``temporary-reduced-capacity`` problem: the store
        is down and ``policies`` fail closed. It says nothing about the store's error."""
        wait = max(1, wait)
        names = list(dict.fromkeys(policies))
        body = problem_body(
            status=503,
            title="Service Unavailable",
            detail=f"Rate limiting is temporarily unavailable; retry in {_seconds(wait)}.",
            problem_type=TEMPORARY_REDUCED_CAPACITY,
            violated_policies=names,
        )
        return Respond(503, (*_problem_headers(body), ("Retry-After", str(wait))), body)

    def missing_identity(self, limit: RouteLimit) -> Respond:
        """400 for a request without the identity a ``reject`` limit requires."""
        body = problem_body(
            status=400,
            title="Bad Request",
            detail=f"This endpoint requires {_describe(limit)}.",
        )
        return Respond(400, _problem_headers(body), body)

    # -- internals ------------------------------------------------------------------------

    def _broken_identity(self, limit: RouteLimit, error: Exception) -> None:
        """Log that ``limit``'s identity source failed; the limit is skipped."""
        self.log.log(
            logging.ERROR,
            ("identity", limit.policy, type(error).__name__),
            "identity source %r of policy %r failed (%s); the limit is skipped",
            limit.identity,
            limit.policy,
            type(error).__name__,
            exc_info=error,
        )

    def _resolve_identity(
        self, limit: RouteLimit, request: HttpRequest, value: object
    ) -> str | _Reject | None:
        """The identity for what ``limit``'s source returned, when that is not simply a
        non-empty string: none (the route's missing-identity rule applies) or nonsense."""
        if value is not None and not isinstance(value, str):
            try:
                raise TypeError(f"identity source returned {type(value).__name__}, not str or None")
            except TypeError as error:  # raised, so that the log shows where
                self._broken_identity(limit, error)
                return None
        if value:
            return value
        if limit.on_missing_identity == "skip":
            return None
        if limit.on_missing_identity == "reject":
            return _REJECT
        try:
            fallback = self.client_ip(request)
        except Exception as error:
            self.log.log(
                logging.ERROR,
                ("fallback", type(error).__name__),
                "client address lookup failed (%s); policy %r is skipped",
                type(error).__name__,
                limit.policy,
                exc_info=error,
            )
            return None
        if not fallback:
            self.log.log(
                logging.WARNING,
                ("no-identity", limit.policy),
                "request to %s %s has neither %s nor a client address; policy %r is skipped",
                request.method,
                request.path[:200],
                _describe(limit),
                limit.policy,
            )
            return None
        return fallback

    def _contained(self, build: Callable[[], Respond], where: str, *, fallback: Respond) -> Respond:
        """``build()``, or ``fallback`` (logged) if building the response failed: a refusal
        stays a refusal even when its decorations break."""
        try:
            response = build()
            if not isinstance(response, Respond):
                raise TypeError(f"{where} returned {type(response).__name__}, not Respond")
        except Exception as error:
            self.log.log(
                logging.ERROR,
                ("respond", where, type(error).__name__),
                "building the %s response failed (%s); sending a plain one",
                where,
                type(error).__name__,
                exc_info=error,
            )
            return fallback
        return response


def _policies_text(names: Sequence[str]) -> str:
    quoted = ", ".join(repr(name) for name in names)
    return f"policy {quoted}" if len(names) == 1 else f"policies {quoted}"


def _seconds(count: int) -> str:
    return "1 second" if count == 1 else f"{count} seconds"


def _problem_headers(body: bytes) -> Headers:
    return (
        ("Content-Type", PROBLEM_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    )


def _plain(status: int, title: str, wait: int = 1) -> Respond:
    """A minimal response that cannot fail to build: the last resort for a refusal."""
    body = f"{status} {title}\n".encode("ascii")
    headers: list[tuple[str, str]] = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if status in (429, 503):
        headers.append(("Retry-After", str(max(1, wait))))
    return Respond(status, tuple(headers), body)


def _safe_retry_after(refused: Sequence[Decision]) -> int:
    try:
        return retry_after(refused)
    except Exception:  # noqa: BLE001 - a bogus decision must not prevent the refusal
        return 1


def fallback_response(outcome: Respond) -> Respond:
    """The plain response adapters send when ``outcome``'s headers cannot be encoded: the
    same status, and its ``Retry-After`` if that is a valid number of seconds."""
    try:
        status, title = outcome.status, HTTPStatus(outcome.status).phrase
    except ValueError:
        status, title = 429, "Too Many Requests"
    wait = 1
    try:
        for name, value in outcome.headers:
            if name.lower() == "retry-after" and value.isascii() and value.isdigit():
                wait = int(value[:15])
    except Exception:  # noqa: BLE001 - no usable Retry-After: the plain one says 1 second
        wait = 1
    return _plain(status, title, wait)


# Names that were encoded and checked before: the same few come back on every response.
_ENCODED_NAMES: dict[str, bytes] = {}
_MAX_ENCODED_NAMES: Final = 256
_UNSAFE_NAME: Final = re.compile("[\r\n\0 :]")
_UNSAFE_VALUE: Final = re.compile("[\r\n\0]")


def _encode_name(name: str) -> bytes:
    raw_name = name.lower().encode("latin-1")
    if not raw_name or _UNSAFE_NAME.search(name):
        raise ValueError(f"header {name!r} cannot be sent as is")
    if len(_ENCODED_NAMES) < _MAX_ENCODED_NAMES:
        _ENCODED_NAMES[name] = raw_name
    return raw_name


def checks_singly(limiter: object) -> TypeGuard[AsyncRateLimiter]:
    """Whether a one-item request may be decided by ``await limiter.check(*item)`` instead
    of ``check_many``: for a ratewall limiter whose two methods are its own, the decision is
    the same (for one item, all or nothing is the item itself) and the single-key path
    shorter. Most routes apply one limit; any other limiter is always asked ``check_many``."""
    kind = type(limiter)
    return (
        isinstance(limiter, AsyncRateLimiter)
        and kind.check_many is _ASYNC_CHECK_MANY  # type: ignore[attr-defined]
        and kind.check is _ASYNC_CHECK  # type: ignore[attr-defined]
    )


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as lowercase Latin-1 bytes; :class:`ValueError` for anything that could
    not go on the wire safely (non-Latin-1 text, CR, LF or NUL, an empty name)."""
    encoded: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        raw_name = _ENCODED_NAMES.get(name) if type(name) is str else None
        if raw_name is None:
            raw_name = _encode_name(name)
        raw_value = value.encode("latin-1")
        if _UNSAFE_VALUE.search(value):
            raise ValueError(f"header {name!r} cannot be sent as is")
        encoded.append((raw_name, raw_value))
    return encoded


def routes_from_config(
    config: object,
    routes: RouteTable | Iterable[Route] | None,
    client_ip: ClientIP | None,
) -> RouteTable:
    """The route table for a :class:`~ratewall.config.Config`: ``routes`` given in code, or
    the file's ``routes`` section (exposed by the config as ``config.routes``)."""
    source = str(getattr(config, "source", "<config>"))
    raw = getattr(config, "routes", None)
    if routes is not None:
        if raw is not None:
            raise ConfigError(
                "defines routes, and routes= was given too; keep one of them",
                source=source,
                field="routes",
            )
        return routes if isinstance(routes, RouteTable) else RouteTable(routes)
    if raw is None:
        raise ConfigError(
            "has no routes; add a 'routes' section or pass routes= in code",
            source=source,
            field="routes",
        )
    policies: Mapping[str, Policy] = getattr(config, "policies", {})
    if client_ip is None:
        client_ip = getattr(config, "client_ip", None)
    return parse_routes(raw, source=source, policies=policies, client_ip=client_ip)


_ASYNC_CHECK_MANY: Final = AsyncRateLimiter.check_many
_ASYNC_CHECK: Final = AsyncRateLimiter.check
