"""Which of a policy's tiers a request is decided in: :class:`TierHeader`, or any callable.

A policy may define tiers, named sets of limits (``tiers: {pro: {limit: 1000}}``); a
:class:`~ratewall.http.RouteLimit` with a ``tier`` source picks one per request, so one route
limits each plan differently. A tier source is a callable ``(HttpRequest) -> str | None``:
``None`` means the policy's own limits. Whatever it answers, the engine applies a tier only
if the policy defines it (else the policy's own limits), and a source that raises is logged
and ignored: a client's header never becomes an error of the application.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeAlias

from ..config import check_header_name
from .request import HttpRequest

__all__ = ["TierHeader", "TierSource"]

TierSource: TypeAlias = Callable[[HttpRequest], str | None]


@dataclass(frozen=True, slots=True)
class TierHeader:
    """The tier a request header names (``X-Plan: pro``), if it is one of ``allowed``;
    otherwise (absent, sent twice with different values, or any other value) ``default``
    (``None``: the policy's own limits).

    The header is client-controlled: put it behind something that sets it (a gateway that
    authenticates the client), or list in ``allowed`` only tiers a client may choose.
    Values compare exactly, after stripping surrounding whitespace.
    """

    header: str
    allowed: Iterable[str]  # a frozenset once made
    default: str | None = None

    def __post_init__(self) -> None:
        check_header_name(self.header)
        names = self.allowed
        if isinstance(names, str) or not isinstance(names, Iterable):
            raise TypeError(f"allowed must be a list of tier names, got {names!r}")
        allowed = frozenset(names)
        if not allowed or not all(isinstance(name, str) and name for name in allowed):
            raise ValueError(f"allowed must list at least one tier name, got {names!r}")
        if self.default is not None and self.default not in allowed:
            raise ValueError(f"default tier {self.default!r} is not one of allowed")
        object.__setattr__(self, "allowed", allowed)

    def __call__(self, request: HttpRequest) -> str | None:
        value = request.header(self.header)
        if value is not None:
            value = value.strip()
            if value in self.allowed:
                return value
        return self.default

    def describe(self) -> str:
        return f"the {self.header} header"
