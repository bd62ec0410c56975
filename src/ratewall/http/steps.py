"""The engine's vocabulary: the steps it hands an adapter, and what it asks of a limiter.

A request goes through at most three steps: :meth:`HttpEngine.start` gives an
:class:`AskLimiter` (or already a verdict), the adapter runs the one limiter call it names,
and :meth:`HttpEngine.settle` turns the answer into a :data:`Verdict`, :class:`Pass` or
:class:`Respond`. Plain data, so that the sync and async adapters share every decision and
differ only by one ``await``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Final, Protocol

from ..decision import Decision
from ..policy import Policy
from .request import HttpRequest
from .routes import Route, RouteLimit

__all__ = [
    "PASS",
    "AskLimiter",
    "AsyncLimiter",
    "Headers",
    "Item",
    "Pass",
    "Respond",
    "Step",
    "SyncLimiter",
    "Verdict",
    "ask_limiter",
    "encoded_pass",
    "tier_of",
]

Headers = tuple[tuple[str, str], ...]
Item = tuple[str, str, int] | tuple[str, str, int, str]
"""One ``check_many`` item: (identity, policy name, cost), and the tier when the route
picked one."""


def tier_of(item: Item) -> str | None:
    """The tier a route picked for ``item`` (its fourth element), else ``None``."""
    return item[3] if len(item) > 3 else None


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
class AskLimiter:
    """Ask the limiter: ``limiter.check_many(check.items)``, then call
    :meth:`HttpEngine.finish` (or :meth:`HttpEngine.failed` if it raised).

    ``limits`` are the route's limits that apply to this request, in the order of ``items``
    (a limit whose identity is missing and that is skipped is in neither).
    """

    request: HttpRequest
    route: Route
    limits: tuple[RouteLimit, ...]
    items: tuple[Item, ...]


Verdict = Pass | Respond
Step = AskLimiter | Pass | Respond

PASS: Final = Pass()

# Frozen dataclasses built per request without their __init__ (each field through its slot,
# as ratewall.decision.make_decision does): a third of the cost. Equal in every way.
_ASK_SETTERS: Final = tuple(
    AskLimiter.__dict__[name].__set__ for name in ("request", "route", "limits", "items")
)
_PASS_HEADERS: Final = Pass.__dict__["headers"].__set__
_PASS_ENCODED: Final = Pass.__dict__["encoded"].__set__


def ask_limiter(
    request: HttpRequest, route: Route, limits: tuple[RouteLimit, ...], items: tuple[Item, ...]
) -> AskLimiter:
    check = object.__new__(AskLimiter)
    set_request, set_route, set_limits, set_items = _ASK_SETTERS
    set_request(check, request)
    set_route(check, route)
    set_limits(check, limits)
    set_items(check, items)
    return check


def encoded_pass(headers: Headers, encoded: list[tuple[bytes, bytes]]) -> Pass:
    verdict = object.__new__(Pass)
    _PASS_HEADERS(verdict, headers)
    _PASS_ENCODED(verdict, encoded)
    return verdict
