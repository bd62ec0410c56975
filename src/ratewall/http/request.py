"""The rate limiter's view of an HTTP request, whatever the framework.

The adapters build one :class:`HttpRequest` per request (from an ASGI scope or a WSGI
environ); identity sources read it and nothing else, so a source works the same under every
server and framework. Building it is on every request's path, hence the slot setters below.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, TypeVar, overload

__all__ = ["HttpRequest"]

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})

_T = TypeVar("_T")


class _ASGIHeaders(Mapping[str, tuple[str, ...]]):
    """An ASGI scope's header fields as :attr:`HttpRequest.headers`, decoded on first use.

    Most routes never read a header (the client address is the default identity), and
    decoding every field of every request costs more than the rest of the rate-limit work.
    Read-only, like the ``MappingProxyType`` other requests have.
    """

    __slots__ = ("_decoded", "_raw")

    def __init__(self, raw: tuple[tuple[bytes, bytes], ...]) -> None:
        self._raw = raw
        self._decoded: dict[str, tuple[str, ...]] | None = None

    def _fields(self) -> dict[str, tuple[str, ...]]:
        decoded = self._decoded
        if decoded is None:
            decoded = {}
            for raw_name, raw_value in self._raw:
                name = raw_name.decode("latin-1").lower()
                decoded[name] = (*decoded.get(name, ()), raw_value.decode("latin-1"))
            self._decoded = decoded
        return decoded

    def __getitem__(self, name: str) -> tuple[str, ...]:
        return self._fields()[name]

    @overload
    def get(self, name: str, /) -> tuple[str, ...] | None: ...

    @overload
    def get(self, name: str, default: tuple[str, ...] | _T, /) -> tuple[str, ...] | _T: ...

    def get(self, name: str, default: object = None, /) -> object:
        return self._fields().get(name, default)

    def __contains__(self, name: object) -> bool:
        return name in self._fields()

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields())

    def __len__(self) -> int:
        return len(self._fields())

    def __repr__(self) -> str:
        return f"mappingproxy({self._fields()!r})"


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """What the rate limiter may look at in a request, whatever the framework.

    ``headers`` maps lowercase names to every value received for that name, in order (the
    constructor normalises names and accepts a single string as one value). ``client`` is the
    peer's address as the server reports it (``None`` for a unix socket or when unknown).
    ``path_params`` holds the route's captures; ``user`` the authenticated user's identity.

    Adapters build it with :meth:`from_asgi_scope` or :meth:`from_wsgi_environ`; tests and
    other integrations may build it directly::

        HttpRequest("POST", "/login", {"X-User-ID": "user_123"}, client="203.0.113.7")
    """

    method: str
    path: str
    headers: Mapping[str, Sequence[str]] = field(default_factory=lambda: _EMPTY)
    client: str | None = None
    path_params: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    user: str | None = None

    def __post_init__(self) -> None:
        headers: dict[str, tuple[str, ...]] = {}
        for name, values in self.headers.items():
            key = name.lower()
            added = (values,) if isinstance(values, str) else tuple(values)
            headers[key] = headers.get(key, ()) + added
        object.__setattr__(self, "headers", MappingProxyType(headers))
        if self.path_params is not _EMPTY:
            object.__setattr__(self, "path_params", MappingProxyType(dict(self.path_params)))

    def header(self, name: str) -> str | None:
        """The value of header ``name`` if it was sent exactly once (or always with the same
        value); ``None`` if absent or ambiguous (several different values)."""
        values = self.headers.get(name.lower())
        if not values:
            return None
        first = values[0]
        if any(value != first for value in values[1:]):
            return None
        return first

    def header_values(self, name: str) -> tuple[str, ...]:
        """Every value received for header ``name``, in order (empty if absent)."""
        return tuple(self.headers.get(name.lower(), ()))

    @classmethod
    def _normalised(
        cls,
        *,
        method: str,
        path: str,
        headers: Mapping[str, tuple[str, ...]],
        client: str | None,
        user: str | None,
        path_params: Mapping[str, str] = _EMPTY,
    ) -> HttpRequest:
        """A request from a read-only mapping of headers already in normal form (lowercase
        names, tuples of values): the adapters' fast path, skipping the constructor's
        normalisation."""
        request = object.__new__(cls)
        set_method, set_path, set_headers, set_client, set_params, set_user = _SETTERS
        set_method(request, method)
        set_path(request, path)
        set_headers(request, headers)
        set_client(request, client)
        set_params(request, path_params)
        set_user(request, user)
        return request

    def _with_path_params(self, path_params: Mapping[str, str]) -> HttpRequest:
        """This request with the route's captures: ``dataclasses.replace`` without
        normalising the (already normal, immutable) headers again."""
        return self._normalised(
            method=self.method,
            path=self.path,
            headers=self.headers,  # type: ignore[arg-type]  # normal form, see __post_init__
            client=self.client,
            user=self.user,
            path_params=MappingProxyType(dict(path_params)),
        )

    @classmethod
    def from_asgi_scope(cls, scope: Mapping[str, Any]) -> HttpRequest:
        """The view of an ASGI ``http`` scope.

        Header bytes are decoded as Latin-1 (like WSGI does), so both adapters see the same
        identity for the same bytes. ``path`` is the path the application routes on:
        ``scope["path"]`` without the ``root_path`` it is mounted at (Starlette's rule).
        ``user`` comes from ``scope["user"]`` (Starlette's ``AuthenticationMiddleware``):
        a string, or an object's ``identity``/``username``, unless it is unauthenticated.
        """
        # Built field by field rather than through _normalised(): this runs for every
        # request, and a call with keyword arguments costs as much as the rest.
        request = object.__new__(cls)
        set_method, set_path, set_headers, set_client, set_params, set_user = _SETTERS
        method, path, client = asgi_target(scope)
        set_method(request, method)
        set_path(request, path)
        # A snapshot: what the application later does to the scope cannot change it.
        set_headers(request, _ASGIHeaders(tuple(scope.get("headers") or ())))
        set_client(request, client)
        set_params(request, _EMPTY)
        user = scope.get("user")
        set_user(request, _user_identity(user) if user is not None else None)
        return request

    @classmethod
    def from_wsgi_environ(cls, environ: Mapping[str, Any]) -> HttpRequest:
        """The view of a WSGI environ: ``HTTP_*`` (and ``CONTENT_TYPE``/``CONTENT_LENGTH``)
        headers, ``PATH_INFO`` as the path (re-decoded as UTF-8, as the bytes were),
        ``REMOTE_ADDR`` as the client and ``REMOTE_USER`` as the user."""
        headers: dict[str, tuple[str, ...]] = {}
        for key, value in environ.items():
            if key.startswith("HTTP_"):
                name = key[5:].replace("_", "-").lower()
            elif key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                name = key.replace("_", "-").lower()
            else:
                continue
            if isinstance(value, str):
                headers[name] = (value,)  # the server has already joined repeated lines
        path = environ.get("PATH_INFO", "")
        if isinstance(path, str):
            # Not the WSGI bytes-in-str convention: keep what the server gave.
            with contextlib.suppress(UnicodeEncodeError, UnicodeDecodeError):
                path = path.encode("latin-1").decode("utf-8")
        remote = environ.get("REMOTE_ADDR")
        user = environ.get("REMOTE_USER")
        return cls._normalised(
            method=str(environ.get("REQUEST_METHOD", "GET")),
            path=str(path),
            headers=MappingProxyType(headers),
            client=remote if isinstance(remote, str) and remote else None,
            user=user if isinstance(user, str) and user else None,
        )


# Fill a frozen HttpRequest without its __init__, each field through its slot (the fastest way).
_SETTERS: Final = tuple(
    HttpRequest.__dict__[name].__set__
    for name in ("method", "path", "headers", "client", "path_params", "user")
)


def asgi_target(scope: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """The method, path and client of the request :meth:`HttpRequest.from_asgi_scope` builds
    for ``scope``; the ASGI middleware's shortcut reads these three alone, and must see them
    exactly as the request would."""
    path = str(scope.get("path", ""))
    root_path = scope.get("root_path")
    if root_path:
        path = _route_path(path, str(root_path))
    client = scope.get("client")
    host = client[0] if client else None
    return str(scope.get("method", "GET")), path, str(host) if host else None


def _route_path(path: str, root_path: str) -> str:
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest or rest.startswith("/"):
            return rest or "/"
    return path


def _user_identity(user: object) -> str | None:
    """A user's identity from whatever an authentication layer put in the scope."""
    if user is None:
        return None
    if isinstance(user, str):
        return user or None
    try:
        if getattr(user, "is_authenticated", True) is False:
            return None
        for attribute in ("identity", "username"):
            value = getattr(user, attribute, None)
            if isinstance(value, str) and value:
                return value
    except Exception:  # noqa: BLE001 - a half-implemented user class must not break requests
        return None
    return None
