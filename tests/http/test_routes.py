"""Route patterns, the route table, and the strict config form."""

from __future__ import annotations

from typing import Any

import pytest

from ratewall import ConfigError, Policy
from ratewall.config import parse_config
from ratewall.http import APIKey, ClientIP, Header, PathParam, Route, RouteLimit, RouteTable, User
from ratewall.http.routes import parse_routes, routes_from_config

POLICIES = {
    "login": Policy(5, 60),
    "login_ip": Policy(20, 60),
    "api": Policy(100, 60),
    "small": Policy(3, 60),
}


def limit(policy: str = "login") -> RouteLimit:
    return RouteLimit(policy, Header("X-User-ID"))


@pytest.mark.parametrize(
    ("pattern", "path", "params"),
    [
        ("/login", "/login", {}),
        ("/login", "/login/", None),
        ("/login", "/logins", None),
        ("/login", "/LOGIN", None),
        ("/users/{user_id}", "/users/42", {"user_id": "42"}),
        ("/users/{user_id}", "/users/", None),
        ("/users/{user_id}", "/users/42/posts", None),
        ("/users/{user_id}/posts/{post}", "/users/a/posts/b", {"user_id": "a", "post": "b"}),
        ("/api/*", "/api", {}),
        ("/api/*", "/api/", {}),
        ("/api/*", "/api/v1/things", {}),
        ("/api/*", "/apiary", None),
        ("/users/{id}/*", "/users/7/anything/else", {"id": "7"}),
        ("*", "/whatever/at/all", {}),
        ("/*", "/", {}),
        ("/a.b", "/aXb", None),  # literal parts are literal, not regular expressions
        ("/files/{name}", "/files/a\nb", {"name": "a\nb"}),
    ],
)
def test_path_patterns(pattern: str, path: str, params: dict[str, str] | None) -> None:
    found = RouteTable([Route(pattern, [limit()])]).match("GET", path)
    if params is None:
        assert found is None
    else:
        assert found is not None
        assert dict(found.path_params) == params


@pytest.mark.parametrize(
    ("route_method", "method", "matches"),
    [
        ("POST", "POST", True),
        ("POST", "post", True),  # frameworks such as werkzeug upper-case methods themselves
        ("POST", "GET", False),
        ("GET", "HEAD", True),  # HEAD runs the GET handler: no escaping the limit that way
        ("HEAD", "GET", False),
        ("*", "DELETE", True),
        ("post", "POST", True),
    ],
)
def test_methods(route_method: str, method: str, matches: bool) -> None:
    table = RouteTable([Route("/login", [limit()], method=route_method)])
    assert (table.match(method, "/login") is not None) is matches


def test_first_match_wins_and_empty_routes_exempt() -> None:
    health = Route("/health", [])
    login = Route("/login", [limit()], method="POST")
    everything = Route("/*", [RouteLimit("api", ClientIP())])
    table = RouteTable([health, login, everything])
    assert table.match("GET", "/health") == (health, {})
    found = table.match("POST", "/login")
    assert found is not None
    assert found.route is login
    found = table.match("GET", "/login")
    assert found is not None
    assert found.route is everything
    assert table.policy_names() == {"login", "api"}
    assert len(table) == 3
    assert "POST /login" in repr(table)


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("login", "must start with '/'"),
        ("/users/{id", "whole segment"),
        ("/users/x{id}", "whole segment"),
        ("/api/*/more", "whole segment"),
        ("/api*", "whole segment"),
        ("/a/{id}/b/{id}", "twice"),
        ("/users/{1id}", "whole segment"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Route(pattern, [limit()])


def test_route_validation() -> None:
    with pytest.raises(ValueError, match="twice"):
        Route("/login", [limit("login"), RouteLimit("login", ClientIP())])
    with pytest.raises(ValueError, match="no \\{user_id\\}"):
        Route("/login", [RouteLimit("login", PathParam("user_id"))])
    with pytest.raises(ValueError, match="HTTP method"):
        Route("/login", [limit()], method="GET POST")
    with pytest.raises(TypeError, match="RouteLimit"):
        Route("/login", ["login"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="Route objects"):
        RouteTable(["/login"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="cost"):
        RouteLimit("login", ClientIP(), cost=0)
    with pytest.raises(ValueError, match="on_missing_identity"):
        RouteLimit("login", ClientIP(), on_missing_identity="allow")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="identity source"):
        RouteLimit("login", "header:X-User-ID")  # type: ignore[arg-type]


def test_routes_are_immutable() -> None:
    limits = [limit()]
    route = Route("/login", limits)
    limits.append(limit("api"))
    assert len(route.limits) == 1
    assert isinstance(route.limits, tuple)


# -- the config form -------------------------------------------------------------------------


def test_parse_routes_full_example() -> None:
    trusted = ClientIP(trusted_proxies=["10.0.0.0/8"])
    table = parse_routes(
        [
            {
                "match": "POST /login",
                "identity": "header:X-User-ID",
                "policies": ["login", {"policy": "login_ip", "identity": "ip"}],
            },
            {"match": "GET /health", "policies": []},
            {
                "match": "* /users/{user_id}/*",
                "policies": [
                    {"policy": "api", "identity": "path:user_id", "cost": 2},
                    {"policy": "small", "identity": "user", "on_missing_identity": "skip"},
                ],
            },
            {
                "match": "/keys",
                "on_missing_identity": "reject",
                "identity": "api_key:X-Token",
                "policies": ["api"],
            },
        ],
        source="limits.yaml",
        policies=POLICIES,
        client_ip=trusted,
    )
    login, health, users, keys = table.routes
    assert (login.method, login.path) == ("POST", "/login")
    assert login.limits == (
        RouteLimit("login", Header("X-User-ID")),
        RouteLimit("login_ip", trusted),
    )
    assert login.limits[1].identity is trusted
    assert health.limits == ()
    assert users.method == "*"
    assert users.limits == (
        RouteLimit("api", PathParam("user_id"), cost=2),
        RouteLimit("small", User(), on_missing_identity="skip"),
    )
    assert keys.limits == (RouteLimit("api", APIKey("X-Token"), on_missing_identity="reject"),)


def test_parse_routes_default_identity_is_the_client_ip() -> None:
    table = parse_routes([{"match": "/x", "policies": ["api"]}], policies=POLICIES)
    assert table.routes[0].limits == (RouteLimit("api", ClientIP()),)


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"match": "/x"}, "routes", "must be a list"),
        (["POST /login"], "routes[0]", "must be a mapping"),
        ([{"policies": ["login"]}], "routes[0].match", "is required"),
        ([{"match": "/x"}], "routes[0].policies", "is required"),
        ([{"match": "/x", "policies": "login"}], "routes[0].policies", "must be a list"),
        ([{"match": "/x", "policies": [], "limit": 5}], "routes[0].limit", "unknown field"),
        ([{"match": "", "policies": []}], "routes[0].match", "must be a string"),
        ([{"match": 42, "policies": []}], "routes[0].match", "must be a string"),
        ([{"match": "POST /a b", "policies": []}], "routes[0].match", "no spaces"),
        ([{"match": "P0ST /a", "policies": []}], "routes[0].match", "not an HTTP method"),
        ([{"match": "POST login", "policies": []}], "routes[0].match", "start with '/'"),
        ([{"match": "/a/*/b", "policies": []}], "routes[0].match", "whole segment"),
        ([{"match": "/x", "policies": ["nope"]}], "routes[0].policies[0]", "unknown policy"),
        (
            [{"match": "/x", "policies": ["login", {"policy": "nope"}]}],
            "routes[0].policies[1].policy",
            "unknown policy 'nope'; known policies: login, login_ip, api, small",
        ),
        (
            [{"match": "/x", "policies": ["login", {"policy": "login_ip", "identity": "mac"}]}],
            "routes[0].policies[1].identity",
            "unknown identity source",
        ),
        (
            [{"match": "/x", "policies": [{"identity": "ip"}]}],
            "routes[0].policies[0].policy",
            "is required",
        ),
        (
            [{"match": "/x", "policies": [{"policy": "login", "costs": 2}]}],
            "routes[0].policies[0].costs",
            "unknown field",
        ),
        (
            [{"match": "/x", "policies": [{"policy": "small", "cost": 4}]}],
            "routes[0].policies[0].cost",
            "from 1 to 3",
        ),
        (
            [{"match": "/x", "policies": [{"policy": "small", "cost": True}]}],
            "routes[0].policies[0].cost",
            "from 1 to 3",
        ),
        (
            [{"match": "/x", "policies": [{"policy": "small", "cost": "1"}]}],
            "routes[0].policies[0].cost",
            "from 1 to 3",
        ),
        ([{"match": "/x", "policies": [3]}], "routes[0].policies[0]", "policy name or a mapping"),
        (
            [{"match": "/x", "policies": ["login", "login"]}],
            "routes[0].policies[1]",
            "listed twice",
        ),
        (
            [{"match": "/x", "policies": [], "identity": "header"}],
            "routes[0].identity",
            "needs a name",
        ),
        (
            [{"match": "/x", "policies": [], "on_missing_identity": "allow"}],
            "routes[0].on_missing_identity",
            "must be one of ip, reject, skip",
        ),
        (
            [
                {"match": "/ok", "policies": []},
                {
                    "match": "/x",
                    "policies": [{"policy": "login", "on_missing_identity": None}],
                },
            ],
            "routes[1].policies[0].on_missing_identity",
            "must be one of",
        ),
        (
            [{"match": "/x", "identity": "path:user_id", "policies": ["login"]}],
            "routes[0].match",
            "no \\{user_id\\}",
        ),
    ],
)
def test_parse_routes_errors(data: Any, field: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_routes(data, source="limits.yaml", policies=POLICIES)
    assert caught.value.source == "limits.yaml"
    assert caught.value.field == field
    assert str(caught.value).startswith(f"limits.yaml: {field}: ")


def test_a_patterned_route_before_an_exact_one_still_wins() -> None:
    """Exact paths are found by a dict lookup; the table order must still decide."""
    below = Route("/api/*", [])
    exact = Route("/api/login", [limit()])
    exact_again = Route("/api/login", [limit("api")])
    table = RouteTable([below, exact, exact_again, Route("*", [limit("small")])])
    found = table.match("POST", "/api/login")
    assert found is not None
    assert found.route is below


def test_an_exact_route_of_another_method_falls_through_to_the_next_candidate() -> None:
    post = Route("/login", [limit()], method="POST")
    get = Route("/login", [limit("api")], method="GET")
    anything = Route("*", [limit("small")])
    table = RouteTable([post, get, anything])
    for method, expected in (("POST", post), ("GET", get), ("HEAD", get), ("PUT", anything)):
        found = table.match(method, "/login")
        assert found is not None
        assert found.route is expected, method
    found = table.match("POST", "/other")
    assert found is not None
    assert found.route is anything
    assert RouteTable([post]).match("POST", "/other") is None


def test_routes_from_config() -> None:
    """A config's routes section compiles with its client_ip section; routes in code replace
    a config without one; both, or neither, is an error naming the file."""
    login = Route("/login", [limit()], method="POST")
    config = parse_config(
        {
            "policies": {"login": {"limit": 5, "window": 60}},
            "client_ip": {"trusted_proxies": ["10.0.0.0/8"]},
            "routes": [{"match": "POST /login", "policies": ["login"]}],
        },
        source="limits.yaml",
    )
    no_routes = parse_config({"login": {"limit": 5, "window": 60}}, source="limits.yaml")
    table = routes_from_config(config)
    assert table.routes[0].path == "/login"
    assert table.routes[0].limits[0].identity == ClientIP(trusted_proxies=["10.0.0.0/8"])
    assert routes_from_config(no_routes, [login]).routes == (login,)
    with pytest.raises(ConfigError, match="routes= was given too") as caught:
        routes_from_config(config, [login])
    assert caught.value.source == "limits.yaml"
    with pytest.raises(ConfigError, match="has no routes"):
        routes_from_config(no_routes)
