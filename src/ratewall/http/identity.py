"""Who is asking: a framework-neutral view of a request, and the identity sources that read it.

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
=====================  ==============================================================

Config files name them with :func:`parse_identity_source`: ``"header:X-User-ID"``,
``"user"``, ``"api_key"``, ``"api_key:X-Token"``, ``"path:user_id"``, ``"ip"``.

Identities are used whole, however long (the limiter stores any identity that is not a short
safe token as a digest, and the HTTP server already bounds header sizes): two identities
that differ anywhere never share a quota. Parsing work on forwarded headers is bounded by
:data:`MAX_VALUE_LENGTH`.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, Protocol, TypeVar, overload, runtime_checkable

from ..errors import ConfigError

__all__ = [
    "MAX_VALUE_LENGTH",
    "APIKey",
    "ClientIP",
    "Header",
    "IdentitySource",
    "PathParam",
    "Request",
    "User",
    "parse_identity_source",
]

MAX_VALUE_LENGTH: Final = 4096
"""How many characters of forwarded-address headers (and of the peer address) are parsed."""

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")  # an RFC 9110 token
_PARAM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_T = TypeVar("_T")


class _ASGIHeaders(Mapping[str, tuple[str, ...]]):
    """An ASGI scope's header fields as :attr:`Request.headers`, decoded on first use.

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
class Request:
    """What the rate limiter may look at in a request, whatever the framework.

    ``headers`` maps lowercase names to every value received for that name, in order (the
    constructor normalises names and accepts a single string as one value). ``client`` is the
    peer's address as the server reports it (``None`` for a unix socket or when unknown).
    ``path_params`` holds the route's captures; ``user`` the authenticated user's identity.

    Adapters build it with :meth:`from_asgi_scope` or :meth:`from_wsgi_environ`; tests and
    other integrations may build it directly::

        Request("POST", "/login", {"X-User-ID": "user_123"}, client="203.0.113.7")
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
    ) -> Request:
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

    def _with_path_params(self, path_params: Mapping[str, str]) -> Request:
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
    def from_asgi_scope(cls, scope: Mapping[str, Any]) -> Request:
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
        method, path, client = _asgi_target(scope)
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
    def from_wsgi_environ(cls, environ: Mapping[str, Any]) -> Request:
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


# Fill a frozen Request without its __init__, each field through its slot (the fastest way).
_SETTERS: Final = tuple(
    Request.__dict__[name].__set__
    for name in ("method", "path", "headers", "client", "path_params", "user")
)


def _asgi_target(scope: Mapping[str, Any]) -> tuple[str, str, str | None]:
    """The :attr:`~Request.method`, :attr:`~Request.path` and :attr:`~Request.client` of the
    request :meth:`Request.from_asgi_scope` builds for ``scope``; the ASGI middleware's
    shortcut reads these three alone, and must see them exactly as the request would."""
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


@runtime_checkable
class IdentitySource(Protocol):
    """Anything that names the client a limit applies to, or ``None`` if it cannot."""

    def __call__(self, request: Request) -> str | None: ...


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

    def __call__(self, request: Request) -> str | None:
        return _bounded(request.header(self.name))

    def describe(self) -> str:
        return f"the {self.name} header"


@dataclass(frozen=True, slots=True)
class User:
    """The authenticated user: :attr:`Request.user` (``scope["user"]`` under ASGI, set by an
    authentication middleware that runs *before* the rate-limit middleware; ``REMOTE_USER``
    under WSGI). Anonymous requests have none."""

    def __call__(self, request: Request) -> str | None:
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

    def __call__(self, request: Request) -> str | None:
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

    def __call__(self, request: Request) -> str | None:
        return _bounded(request.path_params.get(self.name))

    def describe(self) -> str:
        return f"the {{{self.name}}} path parameter"


# --- client IP -----------------------------------------------------------------------------

_MAX_ADDRESS_TEXT: Final = 64  # "[" + 45-character IPv6 + "]:" + port, with room to spare
MAX_PROXY_HOPS: Final = 32
"""How many forwarded hops :class:`ClientIP` walks at most before it stops trusting."""

ForwardedHeader = Literal["x-forwarded-for", "forwarded"]


@functools.lru_cache(maxsize=4096)
def _parse_address(text: str) -> IPAddress | None:
    """An address from an X-Forwarded-For entry or a Forwarded ``for=`` value, else ``None``.

    Accepts ``192.0.2.1``, ``192.0.2.1:8080``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:8080``; drops IPv6 zone ids; normalises IPv4-mapped IPv6 to IPv4.
    Anything else (``unknown``, ``_hidden``, host names, garbage) is ``None``.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_TEXT:
        return None
    try:
        if text.startswith("["):
            end = text.find("]")
            rest = text[end + 1 :]
            if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
                return None
            address: IPAddress = ipaddress.IPv6Address(text[1:end].partition("%")[0])
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
            if not port.isdigit():
                return None
            address = ipaddress.IPv4Address(host)
        else:
            address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_elements(line: str) -> list[str | None]:
    """The ``for=`` values of one RFC 7239 ``Forwarded`` field line, left to right.

    An element without ``for`` is ``None`` (unknown hop). A syntax error ends the line with
    one ``None``: everything from the broken element on is untrustworthy.
    """
    elements: list[str | None] = []
    position, length = 0, len(line)
    current: str | None = None
    while True:
        # One pair: token "=" (token / quoted-string).
        while position < length and line[position] in " \t":
            position += 1
        start = position
        while position < length and line[position] not in '=;, \t"':
            position += 1
        name = line[start:position].lower()
        if not name or position >= length or line[position] != "=":
            elements.append(None)
            return elements
        position += 1
        if position < length and line[position] == '"':
            position += 1
            chars: list[str] = []
            while position < length and line[position] != '"':
                if line[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(line[position])
                position += 1
            if position >= length:  # unterminated quoted string
                elements.append(None)
                return elements
            position += 1
            value = "".join(chars)
        else:
            start = position
            while position < length and line[position] not in ';, \t"':
                position += 1
            value = line[start:position]
            if not value:
                elements.append(None)
                return elements
        if name == "for":
            current = value
        while position < length and line[position] in " \t":
            position += 1
        if position >= length:
            elements.append(current)
            return elements
        separator = line[position]
        position += 1
        if separator == ",":
            elements.append(current)
            current = None
            # Empty list members ("a, , b") are allowed by the list syntax.
            while position < length and line[position] in " \t,":
                position += 1
            if position >= length:
                return elements
        elif separator != ";":
            elements.append(None)
            return elements


def _forwarded_chain(lines: Iterable[str], header: ForwardedHeader) -> list[str | None]:
    """Every hop of the forwarded header, left (client side) to right (nearest proxy)."""
    chain: list[str | None] = []
    for line in lines:
        if header == "forwarded":
            chain.extend(_forwarded_elements(line))
        else:
            entries = [entry.strip() for entry in line.split(",")]
            if entries == [""]:
                continue
            chain.extend(entry or None for entry in entries)
    return chain


def _tail(lines: tuple[str, ...], budget: int) -> list[str]:
    """The last ``budget`` characters' worth of field lines, each line cut at its left on an
    element boundary: a proxy chain is read from the right, so the left is what may go."""
    kept: list[str] = []
    for line in reversed(lines):
        if budget <= 0:
            break
        if len(line) > budget:
            kept.append(line[-budget:].partition(",")[2])
            budget = 0
        else:
            kept.append(line)
            budget -= len(line)
    kept.reverse()
    return kept


# Parsing and grouping addresses with ipaddress costs microseconds; the same peers and clients
# come back again and again. Bounded caches: an attacker can churn them, never grow them.
@functools.lru_cache(maxsize=4096)
def _grouped(address: IPAddress, prefix: int) -> str:
    if prefix == address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network((address, prefix), strict=False))


_UNSEEN: Final = object()
_MAX_PEERS: Final = 4096


def _peer_identity(client: str | None, ipv4_prefix: int, ipv6_prefix: int) -> str | None:
    """What :class:`ClientIP` trusting no proxy answers for a peer: its address grouped by
    prefix; a peer that is not an IP address is its own identity; no peer is ``None``."""
    peer_text = (client or "").strip()[:MAX_VALUE_LENGTH]
    peer = _parse_address(peer_text) if peer_text else None
    if peer is None:
        return peer_text or None
    return _grouped(peer, ipv6_prefix if peer.version == 6 else ipv4_prefix)


def _network(spec: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(spec.strip(), strict=False)
    except ValueError:
        raise ValueError(
            f"trusted proxy {spec!r} is not an IP address or CIDR network "
            "(write '10.0.0.0/8', '192.0.2.7', '2001:db8::/32' or 'unix')"
        ) from None


@dataclass(frozen=True, slots=True)
class ClientIP:
    """The client's IP address, grouped into a network for IPv6 (and optionally IPv4).

    By default only the socket peer counts: forwarded headers are ignored, because any client
    can send them. Behind reverse proxies, list them in ``trusted_proxies`` (addresses or CIDR
    networks; ``"unix"`` trusts a peer on a unix socket, which has no address). Only when the
    peer is trusted is the forwarded header read, right to left: each hop that is a trusted
    proxy is skipped, and the first untrusted address is the client. A hop that is not a
    valid address (``unknown``, an obfuscated ``_hidden`` name, garbage) stops the walk: the
    client is then the last trusted hop, never a value nobody trustworthy vouched for. If every
    hop is trusted, the leftmost is the client.

    ``header`` names the one forwarded header your proxies maintain: ``"x-forwarded-for"``
    (default) or RFC 7239 ``"forwarded"``. Only that one is read: reading a header the proxies
    pass through untouched would let clients choose their address.

    IPv6 clients are grouped by ``ipv6_prefix`` (default /64, the block one subscriber
    usually gets, so rotating addresses inside it gains nothing); ``ipv4_prefix`` (default
    32) can group IPv4 too. IPv4-mapped IPv6 (``::ffff:192.0.2.1``) is treated as IPv4. The
    identity is the address (``192.0.2.1``) or the network (``2001:db8:1:2::/64``).

    A peer that is not an IP address (a unix socket path, a test client's name) is trusted
    only as ``"unix"`` and is its own identity unless a trusted header names the client; no
    peer at all gives ``None``.
    """

    trusted_proxies: Sequence[str] = ()
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32
    header: ForwardedHeader = "x-forwarded-for"
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _trust_unix: bool = field(init=False, repr=False, compare=False)
    _trusts_nobody: bool = field(init=False, repr=False, compare=False)
    # Trusting no proxy, the identity depends on the peer alone: the recent peers' identities.
    _peers: dict[str | None, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.trusted_proxies, str):
            raise TypeError("trusted_proxies must be a list of addresses or networks, not a str")
        specs = tuple(self.trusted_proxies)
        networks = tuple(_network(spec) for spec in specs if spec.strip().lower() != "unix")
        object.__setattr__(self, "trusted_proxies", specs)
        object.__setattr__(self, "_networks", networks)
        object.__setattr__(self, "_trust_unix", len(networks) != len(specs))
        object.__setattr__(self, "_trusts_nobody", not specs)
        object.__setattr__(self, "_peers", {})
        for name, value, top in (
            ("ipv6_prefix", self.ipv6_prefix, 128),
            ("ipv4_prefix", self.ipv4_prefix, 32),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
                raise ValueError(f"{name} must be an integer from 1 to {top}, got {value!r}")
        if self.header not in ("x-forwarded-for", "forwarded"):
            raise ValueError(
                f"header must be 'x-forwarded-for' or 'forwarded', got {self.header!r}"
            )

    def __call__(self, request: Request) -> str | None:
        if self._trusts_nobody:
            return self._of_peer(request.client)
        # A peer that is not an IP address (none, a unix socket path, a test client's name)
        # is trusted only as "unix", and is its own identity when nothing better is known.
        peer_text = (request.client or "").strip()[:MAX_VALUE_LENGTH]
        peer = _parse_address(peer_text) if peer_text else None
        trusted = self._is_trusted(peer) if peer is not None else self._trust_unix
        client = peer
        if trusted:
            lines = _tail(request.header_values(self.header), MAX_VALUE_LENGTH)
            hops = _forwarded_chain(lines, self.header)
            for hop in reversed(hops[-MAX_PROXY_HOPS:]):
                address = _parse_address(hop) if hop is not None else None
                if address is None:
                    break  # unknown / obfuscated / garbage: stop at the last trusted hop
                client = address
                if not self._is_trusted(address):
                    break
        if client is None:
            return peer_text or None
        return self._group(client)

    def _of_peer(self, client: str | None) -> str | None:
        """The identity of a request whose :attr:`~Request.client` is ``client``, when no
        proxy is trusted (``_trusts_nobody``): it depends on the peer alone."""
        identity = self._peers.get(client, _UNSEEN)
        if identity is _UNSEEN:
            identity = _peer_identity(client, self.ipv4_prefix, self.ipv6_prefix)
            if len(self._peers) >= _MAX_PEERS:  # bounded: peers can churn, never grow it
                self._peers.clear()
            self._peers[client] = identity
        return identity  # type: ignore[return-value]

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(
            address in network for network in self._networks if network.version == address.version
        )

    def _group(self, address: IPAddress) -> str:
        prefix = self.ipv6_prefix if address.version == 6 else self.ipv4_prefix
        return _grouped(address, prefix)

    def describe(self) -> str:
        return "the client address"


# --- config ----------------------------------------------------------------------------------

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
