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
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol, runtime_checkable

from ..errors import ConfigError
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

_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an RFC 9110 token
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


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


def _check_header_name(name: str) -> str:
    if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


@dataclass(frozen=True, slots=True)
class Header:
    """The value of request header ``name`` (case-insensitive).

    A header sent several times with different values is ambiguous (a client may have added
    its own copy in front of a gateway's) and counts as missing. Only trust a header that
    your own gateway sets or overwrites: a client can put anything in it.
    """

    name: str

    def __post_init__(self) -> None:
        _check_header_name(self.name)

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
        _check_header_name(self.header)
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
        if not isinstance(self.name, str) or not _PARAM_NAME.fullmatch(self.name):
            raise ValueError(f"{self.name!r} is not a valid path parameter name")

    def __call__(self, request: HttpRequest) -> str | None:
        return _bounded(request.path_params.get(self.name))

    def describe(self) -> str:
        return f"the {{{self.name}}} path parameter"


_SOURCE_KINDS: Final = "'ip', 'user', 'header:<name>', 'api_key', 'api_key:<header>', 'path:<name>'"


def parse_identity_source(
    spec: object,
    *,
    source: str = "<routes>",
    field: str = "identity",
    client_ip: ClientIP | None = None,
) -> IdentitySource:
    """An identity source from its config-file form.

    ``"ip"`` (the client address: ``client_ip``, by default one that trusts no proxy),
    ``"user"``, ``"header:X-User-ID"``, ``"api_key"`` (header ``X-API-Key``),
    ``"api_key:X-Token"``, ``"path:user_id"``. Raises :class:`~ratewall.ConfigError` naming
    ``source`` and ``field`` otherwise.
    """
    if not isinstance(spec, str):
        raise ConfigError(
            f"an identity source must be a string ({_SOURCE_KINDS}), got {type(spec).__name__}",
            source=source,
            field=field,
        )
    kind, colon, argument = spec.strip().partition(":")
    kind = kind.strip().lower()
    argument = argument.strip()
    builders: dict[str, Callable[[], IdentitySource]] = {
        "ip": lambda: client_ip or ClientIP(),
        "user": User,
        "api_key": lambda: APIKey(argument) if colon else APIKey(),
        "header": lambda: Header(argument),
        "path": lambda: PathParam(argument),
    }
    builder = builders.get(kind)
    needs_argument = kind in ("header", "path")
    takes_argument = needs_argument or kind == "api_key"
    if builder is None:
        problem = f"unknown identity source {spec!r}"
    elif needs_argument and not argument:
        example = "header:X-User-ID" if kind == "header" else "path:user_id"
        problem = f"{kind!r} needs a name after the colon, as in {example!r}"
    elif colon and not takes_argument:
        problem = f"{kind!r} takes no argument, got {spec!r}"
    elif colon and not argument:
        problem = f"{spec!r} has an empty name after the colon"
    else:
        try:
            return builder()
        except ValueError as error:
            problem = str(error)
    raise ConfigError(f"{problem}; expected one of {_SOURCE_KINDS}", source=source, field=field)
