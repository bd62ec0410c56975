"""Identity sources and their config-file names."""

from __future__ import annotations

import pytest

from ratewall import ConfigError
from ratewall.http import (
    APIKey,
    ClientIP,
    Header,
    HttpRequest,
    IdentitySource,
    PathParam,
    User,
    parse_identity_source,
)


def test_header_source() -> None:
    source = Header("X-User-ID")
    assert source(HttpRequest("GET", "/", {"x-user-id": "user_123"})) == "user_123"
    assert source(HttpRequest("GET", "/", {"X-USER-ID": "  user_123 "})) == "user_123"
    assert source(HttpRequest("GET", "/")) is None
    assert source(HttpRequest("GET", "/", {"x-user-id": ""})) is None
    assert source(HttpRequest("GET", "/", {"x-user-id": "   "})) is None
    # The same value twice is fine; two different values are ambiguous: missing.
    assert source(HttpRequest("GET", "/", {"x-user-id": ["a", "a"]})) == "a"
    assert source(HttpRequest("GET", "/", {"x-user-id": ["attacker", "a"]})) is None


def test_header_values_are_never_cut() -> None:
    # A cut would make identities that share a prefix share a quota; the limiter digests
    # long identities, and the HTTP server bounds header sizes.
    value = Header("X-User-ID")(HttpRequest("GET", "/", {"x-user-id": "u" * 1_000_000}))
    assert value == "u" * 1_000_000


def test_header_name_must_be_a_token() -> None:
    with pytest.raises(ValueError, match="header name"):
        Header("X User")


def test_api_key_is_digested_never_raw() -> None:
    source = APIKey()
    identity = source(HttpRequest("GET", "/", {"x-api-key": "sk_live_secret"}))
    assert identity is not None
    assert identity.startswith("apikey.")
    assert len(identity) == len("apikey.") + 32
    assert "secret" not in identity
    assert source(HttpRequest("GET", "/", {"x-api-key": "sk_live_secret"})) == identity
    assert source(HttpRequest("GET", "/", {"x-api-key": "sk_live_other"})) != identity
    assert APIKey(secret=b"pepper")(HttpRequest("GET", "/", {"x-api-key": "sk_live_secret"})) != (
        identity
    )
    assert source(HttpRequest("GET", "/")) is None


def test_api_key_with_an_authorization_scheme() -> None:
    source = APIKey("Authorization", scheme="Bearer")
    bearer = source(HttpRequest("GET", "/", {"authorization": "Bearer abc"}))
    assert bearer == APIKey("X-Token")(HttpRequest("GET", "/", {"x-token": "abc"}))
    assert source(HttpRequest("GET", "/", {"authorization": "bearer abc"})) == bearer
    assert source(HttpRequest("GET", "/", {"authorization": "Basic abc"})) is None
    assert source(HttpRequest("GET", "/", {"authorization": "Bearer "})) is None


def test_user_and_path_param_sources() -> None:
    request = HttpRequest("GET", "/u/42", path_params={"user_id": "42"}, user="alice")
    assert User()(request) == "alice"
    assert PathParam("user_id")(request) == "42"
    assert PathParam("other")(request) is None
    assert User()(HttpRequest("GET", "/")) is None
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
