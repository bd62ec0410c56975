"""The request view: from ASGI scopes and WSGI environs, immutable, lazily decoded."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from ratewall.http import Header, HttpRequest


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
    request = HttpRequest.from_asgi_scope(scope)
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
    assert HttpRequest.from_asgi_scope(scope).user == expected


def test_request_from_minimal_asgi_scope() -> None:
    request = HttpRequest.from_asgi_scope({"type": "http", "path": "/x"})
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
    request = HttpRequest.from_wsgi_environ(environ)
    assert request.method == "POST"
    assert request.path == "/users/jürgen"
    assert request.header("X-User-ID") == "user_123"
    assert request.header("content-type") == "application/json"
    assert request.client == "203.0.113.7"
    assert request.user == "alice"


def test_request_is_immutable() -> None:
    headers = {"X-User-ID": ["a"]}
    request = HttpRequest("GET", "/", headers)
    headers["X-User-ID"].append("b")
    assert request.header_values("x-user-id") == ("a",)
    with pytest.raises(TypeError):
        request.headers["x"] = ("y",)  # type: ignore[index]


def test_long_identities_are_used_whole() -> None:
    """Two 10 kB identities that differ only at the end must not share a quota."""
    source = Header("X-User-ID")
    first = HttpRequest.from_asgi_scope(
        {"type": "http", "headers": [(b"x-user-id", b"a" * 10_000 + b"1")]}
    )
    second = HttpRequest.from_asgi_scope(
        {"type": "http", "headers": [(b"x-user-id", b"a" * 10_000 + b"2")]}
    )
    assert source(first) != source(second)
    assert source(first) == "a" * 10_000 + "1"


def test_asgi_headers_are_a_read_only_snapshot() -> None:
    raw = [(b"X-User-ID", b"a"), (b"x-user-id", b"b"), (b"Accept", b"*/*")]
    request = HttpRequest.from_asgi_scope({"type": "http", "headers": raw})
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
