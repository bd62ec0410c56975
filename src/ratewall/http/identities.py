"""Identity sources: who a limit counts a request against.

An identity source is any callable ``source(request) -> str | None``; ``None`` means "this
request carries no such identity" (the route then decides: fall back to the client IP,
reject with 400, or skip the limit, see :class:`~ratewall.http.RouteLimit`). The sources
here are small immutable classes:

=====================  ==============================================================
``Header(name)``       the value of a request header, such as ``X-User-ID``
``User()``             the authenticated user (ASGI ``scope["user"]``, WSGI ``REMOTE_USER``)
``APIKey(header)``     a digest of an API key header; the secret never reaches the store
``PathParam(name)``    a ``{name}`` captured by the route's path pattern
``ClientIP(...)``      the client address, behind trusted proxies only if told so
                       (:mod:`ratewall.http.client_ip`)
=====================  ==============================================================

Config files name them with :func:`parse_identity_source`: ``"header:X-User-ID"``,
``"user"``, ``"api_key"``, ``"api_key:X-Token"``, ``"path:user_id"``, ``"ip"``.

Identities are used whole, however long (the limiter stores any identity that is not a short
safe token as a digest, and the HTTP server already bounds header sizes): two identities
that differ anywhere never share a quota.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from ..config import check_header_name, check_param_name, parse_identity_spec
from .client_ip import ClientIP
from .request import HttpRequest

__all__ = [
    "APIKey",
    "Header",
    "IdentitySource",
    "PathParam",
    "User",
    "parse_identity_source",
]


@runtime_checkable
class IdentitySource(Protocol):
    """Anything that names the client a limit applies to, or ``None`` if it cannot."""

    def __call__(self, request: HttpRequest) -> str | None: ...


def _bounded(value: str | None) -> str | None:
    """An identity value, stripped and capped; ``None`` when absent or blank."""
    if value is None:
        return None
    value = value.strip()
    return value or None


@dataclass(frozen=True, slots=True)
class Header:
    """The value of request header ``name`` (case-insensitive).

    A header sent several times with different values is ambiguous (a client may have added
    its own copy in front of a gateway's) and counts as missing. Only trust a header that
    your own gateway sets or overwrites: a client can put anything in it.
    """

    name: str

    def __post_init__(self) -> None:
        check_header_name(self.name)

    def __call__(self, request: HttpRequest) -> str | None:
        return _bounded(request.header(self.name))

    def describe(self) -> str:
        return f"the {self.name} header"


@dataclass(frozen=True, slots=True)
class User:
    """The authenticated user: :attr:`HttpRequest.user` (``scope["user"]`` under ASGI, set by an
    authentication middleware that runs *before* the rate-limit middleware; ``REMOTE_USER``
    under WSGI). Anonymous requests have none."""

    def __call__(self, request: HttpRequest) -> str | None:
        return _bounded(request.user)

    def describe(self) -> str:
        return "an authenticated user"


@dataclass(frozen=True, slots=True)
class APIKey:
    """An API key from header ``header``, identified by a digest so that neither the store
    nor the logs ever see the secret.

    ``scheme`` strips an authorization scheme: ``APIKey("Authorization", scheme="Bearer")``
    reads ``Authorization: Bearer <key>`` (a value with another scheme counts as missing).
    ``secret`` keys the digest (BLAKE2b), so that the stored digests cannot be tested against
    guessed keys; without it the digest is plain BLAKE2b-128, fine for high-entropy keys.
    The identity is ``apikey.<32 hex digits>``.
    """

    header: str = "X-API-Key"
    scheme: str | None = None
    secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        check_header_name(self.header)
        if self.secret is not None and not 1 <= len(self.secret) <= 64:
            raise ValueError("an APIKey secret must be 1 to 64 bytes")

    def __call__(self, request: HttpRequest) -> str | None:
        value = _bounded(request.header(self.header))
        if value is None:
            return None
        if self.scheme is not None:
            scheme, _, rest = value.partition(" ")
            if scheme.lower() != self.scheme.lower():
                return None
            value = rest.strip()
            if not value:
                return None
        digest = hashlib.blake2b(
            value.encode("utf-8", "surrogatepass"),
            digest_size=16,
            key=self.secret or b"",
            person=b"ratewall-apikey",
        )
        return "apikey." + digest.hexdigest()

    def describe(self) -> str:
        return f"an API key in the {self.header} header"


@dataclass(frozen=True, slots=True)
class PathParam:
    """The path parameter ``name`` captured by the route (``/users/{user_id}``)."""

    name: str

    def __post_init__(self) -> None:
        check_param_name(self.name)

    def __call__(self, request: HttpRequest) -> str | None:
        return _bounded(request.path_params.get(self.name))

    def describe(self) -> str:
        return f"the {{{self.name}}} path parameter"


def parse_identity_source(
    spec: object,
    *,
    source: str = "<routes>",
    field: str = "identity",
    client_ip: ClientIP | None = None,
) -> IdentitySource:
    """An identity source from its config-file form (:func:`ratewall.config.parse_identity_spec`
    says which forms there are, and raises :class:`~ratewall.ConfigError` naming ``source``
    and ``field`` for any other). ``"ip"`` is ``client_ip``, by default trusting no proxy."""
    kind, argument = parse_identity_spec(spec, source=source, field=field)
    if kind == "ip":
        return client_ip or ClientIP()
    if kind == "user":
        return User()
    if kind == "api_key":
        return APIKey(argument) if argument is not None else APIKey()
    if kind == "header":
        return Header(argument or "")
    return PathParam(argument or "")
