"""The HTTP layer's sans-IO core, shared by the ASGI and WSGI middleware.

It never does I/O, and knows limiters only through the :class:`~ratewall.http.steps.SyncLimiter`
and :class:`~ratewall.http.steps.AsyncLimiter` protocols: the adapters feed it an
:class:`~ratewall.http.request.HttpRequest`, run the one limiter call it asks for, and carry
out the verdict it returns (the steps are :mod:`ratewall.http.steps`)::

    step = engine.start(request)             # no I/O: route, identities -> AskLimiter
    if isinstance(step, AskLimiter):
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
*before* the request for the policies that would have allowed it. (On a Redis Cluster, a
route's limits on different identities are decided each on its own shard: there the other
identity's allowed limit was consumed, and the field shows it one request high.)
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Final

from ..config import IPNetwork
from ..decision import Decision
from ..errors import ConfigError, StoreError
from ..policy import CONCURRENCY, Policy
from .client_ip import ClientIP
from .headers import (
    QUOTA_EXCEEDED,
    TEMPORARY_REDUCED_CAPACITY,
    problem_body,
    rate_limit_fields,
    rate_limit_headers,
    retry_after,
)
from .log_throttle import LogThrottle
from .request import HttpRequest
from .routes import Route, RouteLimit, RouteTable
from .steps import (
    PASS,
    AskLimiter,
    Item,
    Pass,
    Respond,
    Step,
    Verdict,
    ask_limiter,
    encoded_pass,
)
from .wire import NO_HEADERS, plain_response, problem_headers

__all__ = ["HttpEngine"]


class _Reject:
    """Marks a limit whose identity is missing and whose route says to answer 400."""


_REJECT: Final = _Reject()
_UNRESOLVED: Final = object()  # the client address, before a limit with exemptions needs it


def _in_networks(address: object, networks: Sequence[IPNetwork]) -> bool:
    """Whether ``address`` (an address, or ``None``) is in one of ``networks``."""
    if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
        return False
    return any(address in network for network in networks if network.version == address.version)


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


class HttpEngine:
    """Maps HTTP requests to limiter checks and decisions to HTTP verdicts. No I/O.

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
    ``on_exempt``
        Called with the policy's name when a request is exempt from it by its client
        address (a limit's ``exempt_networks``); the middlewares and integrations pass the
        limiter's ``exempt``, which counts the exemption in metrics. Default: nothing.

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
        on_exempt: Callable[[str], object] | None = None,
    ) -> None:
        self.routes = routes if isinstance(routes, RouteTable) else RouteTable(routes)
        #: Called with each policy a request is exempt from because its client address is in
        #: the limit's ``exempt_networks`` (the middlewares pass the limiter's
        #: :meth:`~ratewall.RateLimiter.exempt`, so that metrics count it as ``exempt``).
        self.on_exempt = on_exempt
        self.policies: Mapping[str, Policy] = MappingProxyType(dict(policies))
        self.legacy_headers = legacy_headers
        self.headers_on_allowed = headers_on_allowed
        self.client_ip = client_ip if client_ip is not None else ClientIP()
        self.log = log if log is not None else LogThrottle()
        #: The concurrency policies: a request holds one slot of each its route names for as
        #: long as the application takes to respond (see :meth:`holds_slots`).
        self.slot_policies: frozenset[str] = frozenset(
            name for name, policy in self.policies.items() if policy.algorithm == CONCURRENCY
        )
        # What response_headers() gives for allowed requests is then known: finish() builds
        # it, and its encoded form, directly.
        self._default_headers = type(self).response_headers is HttpEngine.response_headers
        self._validate()

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
                if policy.algorithm == CONCURRENCY and limit.cost != 1:
                    raise ConfigError(
                        f"policy {limit.policy!r} is a concurrency policy: a request holds "
                        f"one slot of it, so its cost must be 1, not {limit.cost}",
                        source="<routes>",
                        field=f"{at}.cost",
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
        """The check to run for ``request``, or a verdict when there is nothing to check
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
            address: object = _UNRESOLVED
            for limit in route.limits:
                if limit.exempt_networks:
                    if address is _UNRESOLVED:
                        address = self._client_address(request)
                    if _in_networks(address, limit.exempt_networks):  # type: ignore[arg-type]
                        skipped = True
                        if self.on_exempt is not None:
                            self._exempted(limit.policy)
                        continue
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
                        fallback=plain_response(400, "Bad Request"),
                    )
                elif limit.tier is not None:
                    tier = self._tier(limit, request)
                    items.append(
                        (identity, limit.policy, limit.cost, tier)
                        if tier is not None
                        else (identity, limit.policy, limit.cost)
                    )
                else:
                    items.append((identity, limit.policy, limit.cost))
            if not items:
                return PASS
            limits = route.limits  # a tuple (see Route)
            if skipped:
                policies = {item[1] for item in items}
                limits = tuple(limit for limit in limits if limit.policy in policies)
            return ask_limiter(request, route, limits, tuple(items))  # type: ignore[arg-type]
        except Exception as error:  # noqa: BLE001 - never a 500 of the application
            return self.internal_error("start", error)

    def _exempted(self, policy: str) -> None:
        """Tell :attr:`on_exempt` about an exemption by network; what it raises is logged
        (throttled), never raised: the request stays exempt."""
        try:
            self.on_exempt(policy)  # type: ignore[misc]  # the caller checked it is set
        except Exception as error:
            self.log.log(
                logging.ERROR,
                ("on_exempt", policy, type(error).__name__),
                "recording the network exemption of policy %s raised %s",
                policy,
                type(error).__name__,
                exc_info=error,
            )

    def _client_address(self, request: HttpRequest) -> object:
        """The client address :attr:`client_ip` finds (behind trusted proxies), for
        ``exempt_networks``; ``None`` if it finds none or fails (logged): not exempt."""
        try:
            return self.client_ip.address(request)
        except Exception as error:
            self.log.log(
                logging.ERROR,
                ("client_address", type(error).__name__),
                "finding the client address for exempt_networks raised %s; limiting the request",
                type(error).__name__,
                exc_info=error,
            )
            return None

    def _tier(self, limit: RouteLimit, request: HttpRequest) -> str | None:
        """The tier ``limit``'s source picks for ``request``, if the policy defines it; else
        ``None`` (the policy's own limits). A source that raises is logged, never raised."""
        try:
            tier = limit.tier(request)  # type: ignore[misc]  # the caller checked it is set
        except Exception as error:
            self.log.log(
                logging.ERROR,
                ("tier", limit.policy, type(error).__name__),
                "tier source of policy %s raised %s; deciding with the policy's own limits",
                limit.policy,
                type(error).__name__,
                exc_info=error,
            )
            return None
        if tier is None:
            return None
        policy = self.policies.get(limit.policy)
        if type(tier) is not str or policy is None or tier not in policy.tiers:
            return None  # a value the policy has no tier for: its own limits
        return tier

    def holds_slots(self, check: AskLimiter) -> bool:
        """Whether ``check`` names a concurrency policy: the adapter then acquires its slots
        (before the rate policies are checked, so that a refusal consumes nothing),
        holds them until the response ends, and hands :meth:`settle` every decision in
        the order of ``check.items`` as usual."""
        slots = self.slot_policies
        return bool(slots) and any(item[1] in slots for item in check.items)

    def finish(self, check: AskLimiter, decisions: Sequence[Decision]) -> Verdict:
        """The verdict on the limiter's ``decisions`` for ``check`` (one per item)."""
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
                verdict = self._fields_pass(decisions)
                if verdict is not None:
                    return verdict
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
            if degraded:
                # Answered by a failure mode, not the store: the response says so.
                try:
                    headers = (
                        self.response_headers(check, decisions) if self.headers_on_allowed else []
                    )
                except Exception as error:  # noqa: BLE001 - the response goes out without them
                    self.internal_error("headers", error, NO_HEADERS)
                    headers = []
                return Pass((*headers, degraded_header(degraded)))
            if not self.headers_on_allowed:
                return PASS
            if not self.legacy_headers and self._default_headers:
                verdict = self._fields_pass(decisions)
                if verdict is not None:
                    return verdict
            try:
                return Pass(tuple(self.response_headers(check, decisions)))
            except Exception as error:  # noqa: BLE001 - the response goes out without them
                return self.internal_error("headers", error, NO_HEADERS)
        # A refusal of the store, or of this process's share while the store fails (the
        # client is over that share: a 429, not a 503), else only failure modes refused.
        if any(not decision.degraded or decision.source == "local" for decision in refused):
            return self._contained(
                lambda: self.too_many_requests(check, decisions),
                "too_many_requests",
                fallback=plain_response(429, "Too Many Requests", _safe_retry_after(refused)),
            )
        return self._contained(
            lambda: self.unavailable([d.policy for d in refused], retry_after(refused)),
            "unavailable",
            fallback=plain_response(503, "Service Unavailable", _safe_retry_after(refused)),
        )

    def failed(self, check: AskLimiter, error: Exception) -> Verdict:
        """The verdict when the limiter raised ``error`` for ``check``: 503 if a policy of
        the request fails closed, else pass. Logged either way."""
        try:
            closed = [
                limit.policy
                for limit in check.limits
                if self.policies[limit.policy].failure_mode == "closed"
                and not self.policies[limit.policy].shadow  # a shadow policy never refuses
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
            # The store failed and the request passes unlimited: the response says so.
            return Pass((degraded_header([limit.policy for limit in check.limits]),))
        return self._contained(
            lambda: self.unavailable(closed, 1),
            "unavailable",
            fallback=plain_response(503, "Service Unavailable"),
        )

    def settle(self, check: AskLimiter, answer: Sequence[Decision] | Exception) -> Verdict:
        """The verdict on the limiter's ``answer`` to ``check``: its decisions through
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
        self, check: AskLimiter, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        """The RateLimit fields for ``decisions`` (degraded ones are left out: their numbers
        are not the store's). On a refused request nothing was consumed, so the policies
        that would have allowed it report their quota before the request."""
        refused = False
        degraded = False
        slots = self.slot_policies
        for decision in decisions:
            refused = refused or not decision.allowed
            degraded = degraded or decision.degraded or decision.policy in slots
        if not refused and not degraded and len(decisions) == len(check.items):
            # The usual case: every decision is shown as it is.
            return rate_limit_headers(decisions, self.policies, legacy=self.legacy_headers)
        shown: list[Decision] = []
        for decision, item in zip(decisions, check.items, strict=True):
            cost = item[2]
            if decision.degraded or decision.policy in slots:
                # A concurrency policy has no window to state a quota over: the RateLimit
                # fields leave it out (its 429 still has Retry-After and the problem body).
                continue
            if refused and decision.allowed:
                unconsumed = min(decision.limit, decision.remaining + cost)
                shown.append(dataclasses.replace(decision, remaining=unconsumed))
            else:
                shown.append(decision)
        return rate_limit_headers(shown, self.policies, legacy=self.legacy_headers)

    def too_many_requests(self, check: AskLimiter, decisions: Sequence[Decision]) -> Respond:
        """429 with ``Retry-After``, the RateLimit fields and a ``quota-exceeded`` problem."""
        refused = [decision for decision in decisions if not decision.allowed]
        wait = retry_after(refused)
        names = list(
            dict.fromkeys(d.policy for d in refused if not d.degraded or d.source == "local")
        )
        body = problem_body(
            status=429,
            title="Too Many Requests",
            detail=f"Too many requests for {_policies_text(names)}; retry in {_seconds(wait)}.",
            problem_type=QUOTA_EXCEEDED,
            violated_policies=names,
        )
        headers = [
            *problem_headers(body),
            ("Retry-After", str(wait)),
            *self.response_headers(check, decisions),
        ]
        degraded = [d.policy for d in decisions if d.degraded]
        if degraded:
            headers.append(degraded_header(degraded))
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
        return Respond(
            503,
            (*problem_headers(body), ("Retry-After", str(wait)), degraded_header(names)),
            body,
        )

    def missing_identity(self, limit: RouteLimit) -> Respond:
        """400 for a request without the identity a ``reject`` limit requires."""
        body = problem_body(
            status=400,
            title="Bad Request",
            detail=f"This endpoint requires {_describe(limit)}.",
        )
        return Respond(400, problem_headers(body), body)

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
            wanted = _describe(limit)
            self.log.log(
                logging.WARNING,
                ("no-identity", limit.policy),
                "request to %s %s has %s; policy %r is skipped",
                request.method,
                request.path[:200],
                "no client address"
                if isinstance(limit.identity, ClientIP)
                else f"neither {wanted} nor a client address",
                limit.policy,
            )
            return None
        return fallback

    def _fields_pass(self, decisions: Sequence[Decision]) -> Pass | None:
        """The Pass of allowed ``decisions`` with the default RateLimit fields, built with
        their wire encoding at once (the adapters then send ``encoded`` as it is); ``None``
        if they cannot be built, for the general path to build and report."""
        if self.slot_policies:
            decisions = [d for d in decisions if d.policy not in self.slot_policies]
        try:
            headers, encoded = rate_limit_fields(decisions, self.policies)
        except Exception:  # noqa: BLE001 - see above
            return None
        return encoded_pass(headers, encoded)

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


def _safe_retry_after(refused: Sequence[Decision]) -> int:
    try:
        return retry_after(refused)
    except Exception:  # noqa: BLE001 - a bogus decision must not prevent the refusal
        return 1


#: The response header that marks a response the rate limiter could not decide normally:
#: the store failed and the listed policies answered by their failure mode (a request
#: passed unlimited, or a 503 of a policy that fails closed).
DEGRADED_HEADER = "RateLimit-Degraded"


def degraded_header(policies: Sequence[str]) -> tuple[str, str]:
    """``RateLimit-Degraded: "login", "api"``: a structured-field list of the policies."""
    names = ", ".join(f'"{name}"' for name in dict.fromkeys(policies))
    return (DEGRADED_HEADER, names)
