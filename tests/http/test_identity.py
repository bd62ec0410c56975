"""Identity sources, above all the client address: table-driven spoofing attempts."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

import pytest

from ratewall import ConfigError
from ratewall.http import (
    APIKey,
    ClientIP,
    Header,
    IdentitySource,
    PathParam,
    Request,
    User,
    parse_identity_source,
)
from ratewall.http.identity import MAX_PROXY_HOPS

PROXIES = ("10.0.0.0/8", "2001:db8:ffff::/48")
XFF = "x-forwarded-for"
FWD = "forwarded"


@dataclass(frozen=True)
class Case:
    name: str
    peer: str | None
    headers: dict[str, list[str]]
    expected: str | None
    trusted: tuple[str, ...] = PROXIES
    header: str = XFF
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32


CASES = [
    # -- nobody trusted: forwarded headers are ignored, whatever they say ------------------
    Case("untrusted peer, no header", "203.0.113.7", {}, "203.0.113.7"),
    Case("untrusted peer sends XFF", "203.0.113.7", {XFF: ["1.1.1.1"]}, "203.0.113.7"),
    Case(
        "untrusted peer sends Forwarded",
        "203.0.113.7",
        {FWD: ["for=1.1.1.1"]},
        "203.0.113.7",
        header=FWD,
    ),
    Case("X-Real-IP is never read", "10.0.0.1", {"x-real-ip": ["1.1.1.1"]}, "10.0.0.1"),
    Case("default trusts nobody", "10.0.0.1", {XFF: ["1.1.1.1"]}, "10.0.0.1", trusted=()),
    # -- behind trusted proxies: right to left, first untrusted hop -------------------------
    Case("trusted proxy, one hop", "10.0.0.1", {XFF: ["203.0.113.7"]}, "203.0.113.7"),
    Case(
        "client prepends a fake hop",
        "10.0.0.1",
        {XFF: ["6.6.6.6, 203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "two trusted proxies",
        "10.0.0.2",
        {XFF: ["203.0.113.7, 10.0.0.1"]},
        "203.0.113.7",
    ),
    Case(
        "two proxies, client fakes a trusted-looking hop",
        "10.0.0.2",
        {XFF: ["10.9.9.9, 203.0.113.7, 10.0.0.1"]},
        "203.0.113.7",
    ),
    Case("trusted proxy, no header", "10.0.0.1", {}, "10.0.0.1"),
    Case("trusted proxy, empty header", "10.0.0.1", {XFF: [""]}, "10.0.0.1"),
    Case("every hop trusted: leftmost", "10.0.0.2", {XFF: ["10.0.0.5, 10.0.0.1"]}, "10.0.0.5"),
    Case("port after IPv4", "10.0.0.1", {XFF: ["203.0.113.7:5555"]}, "203.0.113.7"),
    Case(
        "bracketed IPv6 with port",
        "10.0.0.1",
        {XFF: ["[2001:db8:cafe::17]:4711"]},
        "2001:db8:cafe::/64",
    ),
    # -- garbage stops the walk at the last trusted hop ------------------------------------
    Case("garbage nearest the proxy", "10.0.0.1", {XFF: ["203.0.113.7, nonsense"]}, "10.0.0.1"),
    Case("garbage left of the client", "10.0.0.1", {XFF: ["nonsense, 203.0.113.7"]}, "203.0.113.7"),
    Case("unknown", "10.0.0.1", {XFF: ["unknown"]}, "10.0.0.1"),
    Case("host name", "10.0.0.1", {XFF: ["evil.example"]}, "10.0.0.1"),
    Case("leading zeros are not an address", "10.0.0.1", {XFF: ["010.0.0.1"]}, "10.0.0.1"),
    Case("empty element", "10.0.0.2", {XFF: ["203.0.113.7,,10.0.0.1"]}, "10.0.0.1"),
    Case("bad port", "10.0.0.1", {XFF: ["203.0.113.7:http"]}, "10.0.0.1"),
    Case("unclosed bracket", "10.0.0.1", {XFF: ["[2001:db8::1"]}, "10.0.0.1"),
    Case("IPv6 zone id dropped", "10.0.0.1", {XFF: ["fe80::1%eth0"]}, "fe80::/64"),
    # -- several header lines combine in order ---------------------------------------------
    Case(
        "client's own XFF line, proxy's line",
        "10.0.0.1",
        {XFF: ["6.6.6.6", "203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "proxy lines after the client",
        "10.0.0.2",
        {XFF: ["203.0.113.7", "10.0.0.1"]},
        "203.0.113.7",
    ),
    # -- RFC 7239 Forwarded ------------------------------------------------------------------
    Case(
        "Forwarded, several parameters",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60;proto=http;by=203.0.113.43"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, quoted IPv6 with port",
        "10.0.0.1",
        {FWD: ['for="[2001:db8:cafe::17]:4711"']},
        "2001:db8:cafe::/64",
        header=FWD,
    ),
    Case(
        "Forwarded, quoted IPv4 with port",
        "10.0.0.1",
        {FWD: ['for="192.0.2.43:47011"']},
        "192.0.2.43",
        header=FWD,
    ),
    Case(
        "Forwarded, case-insensitive parameter name",
        "10.0.0.1",
        {FWD: ["For=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, client fakes a first element",
        "10.0.0.1",
        {FWD: ["for=6.6.6.6, for=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, obfuscated hop",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60, for=_hidden"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case("Forwarded, unknown", "10.0.0.1", {FWD: ["for=unknown"]}, "10.0.0.1", header=FWD),
    Case(
        "Forwarded, element without for",
        "10.0.0.1",
        {FWD: ["proto=https"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded, through a trusted proxy that says by=",
        "10.0.0.2",
        {FWD: ['for=192.0.2.60, for="10.0.0.1";by=10.0.0.2']},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, unterminated quote swallowing the proxy's element",
        "10.0.0.1",
        {FWD: ['for="6.6.6.6, for=192.0.2.60']},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded, unterminated quote in the client's own line",
        "10.0.0.1",
        {FWD: ['for="6.6.6.6', "for=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, trailing garbage",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60 junk"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded ignored when proxies maintain XFF",
        "10.0.0.1",
        {FWD: ["for=6.6.6.6"]},
        "10.0.0.1",
    ),
    Case(
        "XFF ignored when proxies maintain Forwarded",
        "10.0.0.1",
        {XFF: ["6.6.6.6"]},
        "10.0.0.1",
        header=FWD,
    ),
    # -- address normalisation and grouping -------------------------------------------------
    Case("IPv6 grouped by /64", "2001:db8:1:2:aaaa::1", {}, "2001:db8:1:2::/64"),
    Case("IPv6 /56", "2001:db8:1:2ff::1", {}, "2001:db8:1:200::/56", ipv6_prefix=56),
    Case("IPv6 /128", "2001:db8::1", {}, "2001:db8::1", ipv6_prefix=128),
    Case("IPv4 /24 when asked", "203.0.113.7", {}, "203.0.113.0/24", ipv4_prefix=24),
    Case("IPv4-mapped peer", "::ffff:203.0.113.7", {}, "203.0.113.7"),
    Case(
        "IPv4-mapped proxy is trusted as IPv4",
        "::ffff:10.0.0.1",
        {XFF: ["::ffff:203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "trusted IPv6 proxy",
        "2001:db8:ffff::1",
        {XFF: ["2001:db8:1:2::99"]},
        "2001:db8:1:2::/64",
    ),
    # -- sizes and odd peers -------------------------------------------------------------------
    Case(
        "huge header: the proxy's end is what counts",
        "10.0.0.1",
        {XFF: ["1.1.1.1, " * 20_000 + "203.0.113.7"]},
        "203.0.113.7",
    ),
    Case("huge single garbage entry", "10.0.0.1", {XFF: ["x" * 100_000]}, "10.0.0.1"),
    Case(
        "many header lines",
        "10.0.0.1",
        {XFF: ["6.6.6.6"] * 5_000 + ["203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "more trusted hops than walked",
        "10.0.0.1",
        {XFF: [", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_PROXY_HOPS + 5))]},
        "10.0.0.6",
    ),
    Case(
        "unix socket peer, trusted", None, {XFF: ["203.0.113.7"]}, "203.0.113.7", trusted=("unix",)
    ),
    Case("unix socket peer, not trusted", None, {XFF: ["203.0.113.7"]}, None),
    Case("non-IP peer is its own identity", "testclient", {XFF: ["1.1.1.1"]}, "testclient"),
    Case(
        "unix socket path, trusted",
        "/run/app.sock",
        {XFF: ["203.0.113.7"]},
        "203.0.113.7",
        trusted=("unix",),
    ),
    Case(
        "unix socket path, trusted, no header",
        "/run/app.sock",
        {},
        "/run/app.sock",
        trusted=("unix",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_client_ip(case: Case) -> None:
    source = ClientIP(
        trusted_proxies=case.trusted,
        header=case.header,  # type: ignore[arg-type]
        ipv6_prefix=case.ipv6_prefix,
        ipv4_prefix=case.ipv4_prefix,
    )
    request = Request("GET", "/", case.headers, client=case.peer)
    assert source(request) == case.expected


def test_there_are_enough_spoofing_cases() -> None:
    assert len(CASES) >= 20


def test_an_ipv6_subscriber_cannot_rotate_inside_its_block() -> None:
    source = ClientIP()
    seen = {source(Request("GET", "/", client=f"2001:db8:1:2::{n:x}")) for n in range(1, 300)}
    assert seen == {"2001:db8:1:2::/64"}
    assert source(Request("GET", "/", client="2001:db8:1:3::1")) != "2001:db8:1:2::/64"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, ValueError),
        ({"trusted_proxies": ["proxy.internal"]}, ValueError),
        ({"trusted_proxies": "10.0.0.0/8"}, TypeError),
        ({"ipv6_prefix": 0}, ValueError),
        ({"ipv6_prefix": 129}, ValueError),
        ({"ipv4_prefix": 33}, ValueError),
        ({"header": "x-real-ip"}, ValueError),
    ],
)
def test_client_ip_rejects_bad_settings(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ClientIP(**kwargs)  # type: ignore[arg-type]


# -- the other sources -----------------------------------------------------------------------


def test_header_source() -> None:
    source = Header("X-User-ID")
    assert source(Request("GET", "/", {"x-user-id": "user_123"})) == "user_123"
    assert source(Request("GET", "/", {"X-USER-ID": "  user_123 "})) == "user_123"
    assert source(Request("GET", "/")) is None
    assert source(Request("GET", "/", {"x-user-id": ""})) is None
    assert source(Request("GET", "/", {"x-user-id": "   "})) is None
    # The same value twice is fine; two different values are ambiguous: missing.
    assert source(Request("GET", "/", {"x-user-id": ["a", "a"]})) == "a"
    assert source(Request("GET", "/", {"x-user-id": ["attacker", "a"]})) is None


def test_header_values_are_never_cut() -> None:
    # A cut would make identities that share a prefix share a quota; the limiter digests
    # long identities, and the HTTP server bounds header sizes.
    value = Header("X-User-ID")(Request("GET", "/", {"x-user-id": "u" * 1_000_000}))
    assert value == "u" * 1_000_000


def test_header_name_must_be_a_token() -> None:
    with pytest.raises(ValueError, match="header name"):
        Header("X User")


def test_api_key_is_digested_never_raw() -> None:
    source = APIKey()
    identity = source(Request("GET", "/", {"x-api-key": "sk_live_secret"}))
    assert identity is not None
    assert identity.startswith("apikey.")
    assert len(identity) == len("apikey.") + 32
    assert "secret" not in identity
    assert source(Request("GET", "/", {"x-api-key": "sk_live_secret"})) == identity
    assert source(Request("GET", "/", {"x-api-key": "sk_live_other"})) != identity
    assert APIKey(secret=b"pepper")(Request("GET", "/", {"x-api-key": "sk_live_secret"})) != (
        identity
    )
    assert source(Request("GET", "/")) is None


def test_api_key_with_an_authorization_scheme() -> None:
    source = APIKey("Authorization", scheme="Bearer")
    bearer = source(Request("GET", "/", {"authorization": "Bearer abc"}))
    assert bearer == APIKey("X-Token")(Request("GET", "/", {"x-token": "abc"}))
    assert source(Request("GET", "/", {"authorization": "bearer abc"})) == bearer
    assert source(Request("GET", "/", {"authorization": "Basic abc"})) is None
    assert source(Request("GET", "/", {"authorization": "Bearer "})) is None


def test_user_and_path_param_sources() -> None:
    request = Request("GET", "/u/42", path_params={"user_id": "42"}, user="alice")
    assert User()(request) == "alice"
    assert PathParam("user_id")(request) == "42"
    assert PathParam("other")(request) is None
    assert User()(Request("GET", "/")) is None
    with pytest.raises(ValueError, match="path parameter"):
        PathParam("not-valid")


def test_sources_are_identity_sources() -> None:
    for source in (Header("a"), User(), APIKey(), PathParam("p"), ClientIP()):
        assert isinstance(source, IdentitySource)


# -- config form ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("ip", ClientIP()),
        ("user", User()),
        ("header:X-User-ID", Header("X-User-ID")),
        (" header : X-User-ID ", Header("X-User-ID")),
        ("api_key", APIKey()),
        ("api_key:X-Token", APIKey("X-Token")),
        ("path:user_id", PathParam("user_id")),
        ("IP", ClientIP()),
    ],
)
def test_parse_identity_source(spec: str, expected: IdentitySource) -> None:
    assert parse_identity_source(spec) == expected


def test_parse_identity_source_uses_the_configured_client_ip() -> None:
    client_ip = ClientIP(trusted_proxies=["10.0.0.0/8"])
    assert parse_identity_source("ip", client_ip=client_ip) is client_ip


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("cookie:session", "unknown identity source"),
        ("header", "needs a name"),
        ("header:", "needs a name"),
        ("path:", "needs a name"),
        ("ip:X-Real-IP", "takes no argument"),
        ("user:alice", "takes no argument"),
        ("api_key:", "empty name"),
        ("header:X User", "not a valid HTTP header name"),
        ("path:user-id", "not a valid path parameter"),
        (42, "must be a string"),
        (None, "must be a string"),
    ],
)
def test_parse_identity_source_errors(spec: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_identity_source(spec, source="limits.yaml", field="routes[0].identity")
    assert caught.value.source == "limits.yaml"
    assert caught.value.field == "routes[0].identity"


# -- building the request view -------------------------------------------------------------


class _StarletteLikeUser:
    def __init__(self, name: str, authenticated: bool = True) -> None:
        self.identity = name
        self.is_authenticated = authenticated


class _BrokenUser:
    @property
    def is_authenticated(self) -> bool:
        raise NotImplementedError


def test_request_from_asgi_scope() -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/app/login",
        "root_path": "/app",
        "headers": [
            (b"X-User-ID", b"user_123"),
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-for", b"2.2.2.2"),
            (b"x-name", "naïve".encode()),
        ],
        "client": ("203.0.113.7", 51000),
        "user": _StarletteLikeUser("alice"),
    }
    request = Request.from_asgi_scope(scope)
    assert request.method == "POST"
    assert request.path == "/login"
    assert request.header("x-user-id") == "user_123"
    assert request.header_values("X-Forwarded-For") == ("1.1.1.1", "2.2.2.2")
    assert request.header("x-name") == "naïve".encode().decode("latin-1")
    assert request.client == "203.0.113.7"
    assert request.user == "alice"


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        (None, None),
        ("bob", "bob"),
        ("", None),
        (_StarletteLikeUser("carol", authenticated=False), None),
        (_BrokenUser(), None),
        (object(), None),
    ],
)
def test_asgi_user(user: object, expected: str | None) -> None:
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "user": user}
    assert Request.from_asgi_scope(scope).user == expected


def test_request_from_minimal_asgi_scope() -> None:
    request = Request.from_asgi_scope({"type": "http", "path": "/x"})
    assert (request.method, request.path, request.client, dict(request.headers)) == (
        "GET",
        "/x",
        None,
        {},
    )


def test_request_from_wsgi_environ() -> None:
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/users/jürgen".encode().decode("latin-1"),
        "SCRIPT_NAME": "/app",
        "HTTP_X_USER_ID": "user_123",
        "CONTENT_TYPE": "application/json",
        "REMOTE_ADDR": "203.0.113.7",
        "REMOTE_USER": "alice",
        "wsgi.input": object(),
    }
    request = Request.from_wsgi_environ(environ)
    assert request.method == "POST"
    assert request.path == "/users/jürgen"
    assert request.header("X-User-ID") == "user_123"
    assert request.header("content-type") == "application/json"
    assert request.client == "203.0.113.7"
    assert request.user == "alice"


def test_request_is_immutable() -> None:
    headers = {"X-User-ID": ["a"]}
    request = Request("GET", "/", headers)
    headers["X-User-ID"].append("b")
    assert request.header_values("x-user-id") == ("a",)
    with pytest.raises(TypeError):
        request.headers["x"] = ("y",)  # type: ignore[index]


def test_long_identities_are_used_whole() -> None:
    """Two 10 kB identities that differ only at the end must not share a quota."""
    source = Header("X-User-ID")
    first = Request.from_asgi_scope(
        {"type": "http", "headers": [(b"x-user-id", b"a" * 10_000 + b"1")]}
    )
    second = Request.from_asgi_scope(
        {"type": "http", "headers": [(b"x-user-id", b"a" * 10_000 + b"2")]}
    )
    assert source(first) != source(second)
    assert source(first) == "a" * 10_000 + "1"


def test_asgi_headers_are_a_read_only_snapshot() -> None:
    raw = [(b"X-User-ID", b"a"), (b"x-user-id", b"b"), (b"Accept", b"*/*")]
    request = Request.from_asgi_scope({"type": "http", "headers": raw})
    raw.append((b"x-late", b"added by the app afterwards"))
    assert request.headers == {"x-user-id": ("a", "b"), "accept": ("*/*",)}
    assert dict(request.headers) == {"x-user-id": ("a", "b"), "accept": ("*/*",)}
    assert len(request.headers) == 2
    assert "x-late" not in request.headers
    assert request.headers.get("x-late") is None
    assert request.headers.get("x-late", ("default",)) == ("default",)
    assert request.header_values("X-User-ID") == ("a", "b")
    assert repr(request.headers) == repr(MappingProxyType(dict(request.headers)))
    with pytest.raises(TypeError):
        request.headers["x"] = ("y",)  # type: ignore[index]


PEERS = [
    "203.0.113.7",
    " 203.0.113.7 ",
    "2001:db8:1:2:3:4:5:6",
    "::ffff:192.0.2.1",
    "[2001:db8::1]:8080",
    "192.0.2.1:5000",
    "unix:/run/app.sock",
    "testclient",
    "",
    None,
]


@pytest.mark.parametrize("peer", PEERS)
def test_client_ip_trusting_nobody_answers_as_the_full_walk_does(peer: str | None) -> None:
    """Trusting no proxy, the identity is cached per peer; a ClientIP that trusts only a
    network no peer here belongs to takes the full walk, and must agree."""
    forwarded = {"x-forwarded-for": "198.51.100.1"}
    cached = ClientIP(ipv6_prefix=48)
    walked = ClientIP(trusted_proxies=["192.0.2.255/32"], ipv6_prefix=48)
    for _ in range(2):  # the first call fills the cache, the second reads it
        request = Request("GET", "/", forwarded, client=peer)
        assert cached(request) == walked(request)


def test_client_ip_cache_stays_bounded() -> None:
    source = ClientIP()
    for index in range(5000):
        assert source(Request("GET", "/", client=f"10.0.{index // 256}.{index % 256}")) == (
            f"10.0.{index // 256}.{index % 256}"
        )
    assert len(source._peers) <= 4096
