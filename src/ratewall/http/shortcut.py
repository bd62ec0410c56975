"""The ASGI middleware's short way for the usual request, kept apart from the general path.

Every speed trick of the HTTP layer lives here, each behind one named helper, so that the
engine stays plain: what this module cannot answer it leaves to the engine, which then
decides the request as it always does (``tests/http/test_shortcut.py`` holds them equal).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeGuard

from ..decision import Decision
from ..limiter import AsyncRateLimiter
from ..policy import Policy
from .client_ip import ClientIP
from .engine import HttpEngine
from .headers import _SF_INTEGER_MAX, _encoded_policy
from .identities import Header
from .request import asgi_target
from .routes import RouteTable
from .steps import Item

__all__ = [
    "UNCHECKED",
    "Shortcut",
    "checks_singly",
    "memory_store_check",
    "shortcut_for",
    "shortcut_item",
]


class _Unchecked:
    """Marks a request that no limit applies to (no route, or an exempt one)."""


UNCHECKED: Final = _Unchecked()
_Encoded = list[tuple[bytes, bytes]]


class Shortcut:
    """The usual request's short way through an engine whose verdicts are the default ones
    (see :func:`shortcut_for`); an adapter may take it before the general path.

    Most requests match a route with one limit on the client address trusting no proxy (or
    on one header), are allowed, and get the two RateLimit fields (or none, without
    ``headers_on_allowed``). Such a request needs nothing but its method, path and peer (or
    that header's raw value): :meth:`item` finds what to check
    without an :class:`HttpRequest` (no header snapshot), an :class:`AskLimiter` or a pass
    through :meth:`HttpEngine.start`, and :meth:`fields` gives the fields
    :meth:`HttpEngine.finish` would add, encoded, from the decision's two numbers. Whatever
    they cannot answer they leave (``None``) to the general path, which then decides the
    request as it always does: another identity source, a missing identity, a refusal, a
    degraded or unusual decision, an error. The verdicts are the same either way
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
        # costs more than the rest; this table keeps its routes alive): its one limit's source
        # (a ClientIP, or a Header's name as the raw lower-case bytes ASGI sends), policy and
        # cost.
        self._limits: dict[int, tuple[ClientIP | bytes, str, int]] = {}
        for route in routes.routes:
            if len(route.limits) == 1:
                limit = route.limits[0]
                source = limit.identity
                plain = limit.tier is None and not limit.exempt_networks
                if type(source) is ClientIP and source._trusts_nobody and plain:
                    self._limits[id(route)] = (source, limit.policy, limit.cost)
                elif type(source) is Header and plain:
                    name = source.name.lower().encode("latin-1")
                    self._limits[id(route)] = (name, limit.policy, limit.cost)
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

    def item(
        self,
        method: str,
        path: str,
        client: str | None,
        headers: tuple[tuple[bytes, bytes], ...] = (),
    ) -> Item | _Unchecked | None:
        """The one item to check for a request (as :meth:`HttpEngine.start` would find it),
        :data:`UNCHECKED` if no limit applies, or ``None``: ask the general path. ``headers``
        are the request's raw ASGI header fields."""
        limit = self._everything
        if limit is None:
            found = self._routes.match(method, path)
            if found is None or not found.route.limits:
                return UNCHECKED
            limit = self._limits.get(id(found.route))
            if limit is None:
                return None
        source, policy, cost = limit
        if isinstance(source, bytes):
            identity = _header_value(headers, source)
        else:
            identity = source._of_peer(client)
        if not identity:  # the route's missing-identity rule: the general path applies it
            return None
        return (identity, policy, cost)

    def fields(self, decision: Decision) -> _Encoded | None:
        """The encoded RateLimit fields :meth:`HttpEngine.finish` adds for the item's
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


def _header_value(headers: tuple[tuple[bytes, bytes], ...], name: bytes) -> str | None:
    """What :class:`Header` reads from a request with these raw fields: the value of field
    ``name`` sent once (or always alike), stripped; ``None`` when absent, ambiguous or
    blank (the general path then applies the route's missing-identity rule)."""
    found: bytes | None = None
    for raw_name, raw_value in headers:
        if raw_name == name or raw_name.lower() == name:
            if found is not None and raw_value != found:
                return None
            found = raw_value
    if found is None:
        return None
    return found.decode("latin-1").strip() or None


def shortcut_for(engine: HttpEngine) -> Shortcut | None:
    """The usual request's short way for ``engine``, when it gives the default verdicts for
    it (neither :meth:`~HttpEngine.start` nor :meth:`~HttpEngine.finish` overridden; with
    fields on allowed responses, the default ones: :meth:`~HttpEngine.response_headers` not
    overridden, no legacy headers) and some route qualifies."""
    kind = type(engine)
    if kind.start is not HttpEngine.start or kind.finish is not HttpEngine.finish:
        return None
    default_headers = kind.response_headers is HttpEngine.response_headers
    # Without fields on allowed responses, an allowed response gets no header at all.
    if engine.headers_on_allowed and (engine.legacy_headers or not default_headers):
        return None
    shortcut = Shortcut(engine.routes, engine.policies, fields=engine.headers_on_allowed)
    return shortcut if shortcut.useful() else None


def shortcut_item(shortcut: Shortcut, scope: Mapping[str, Any]) -> Item | _Unchecked | None:
    """What ``shortcut`` finds to check for ``scope``; ``None`` if it cannot tell, or fails
    (the general path then meets the failure again, and reports it)."""
    try:
        method, path, client = asgi_target(scope)
        return shortcut.item(method, path, client, tuple(scope.get("headers") or ()))
    except Exception:  # noqa: BLE001 - see above
        return None


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


def memory_store_check(limiter: AsyncRateLimiter) -> Callable[[str, str, int], Decision] | None:
    """The in-process store's own ``check``, when ``limiter`` decides on one: there
    ``AsyncRateLimiter.check`` only returns the store's decision (no I/O), and asking the
    store directly saves creating and running a coroutine per request. ``None`` otherwise."""
    store = limiter.local_store
    return store.check if store is not None else None


_ASYNC_CHECK_MANY: Final = AsyncRateLimiter.check_many
_ASYNC_CHECK: Final = AsyncRateLimiter.check
