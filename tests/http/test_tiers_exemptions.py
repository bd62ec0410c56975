"""Routes that pick a policy tier per request (from a header, with an allow-list and a
default) and exempt client networks (found behind trusted proxies), through the ASGI and
the WSGI middleware, from a config file and in code; on the memory store and on Redis."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from werkzeug.test import Client

from ratewall import AsyncRateLimiter, Decision, Policy, RateLimiter
from ratewall.config import parse_config
from ratewall.errors import ConfigError
from ratewall.http import (
    ClientIP,
    Header,
    HttpRequest,
    RateLimitMiddleware,
    Route,
    RouteLimit,
    TierHeader,
    WSGIRateLimitMiddleware,
)
from ratewall.metrics import FanOut, Metrics
from ratewall.testing import DecisionCapture, FakeClock

from .._timing import STORE_TIMEOUT
from ._support import asgi_app, ratelimit_members, wsgi_app

PROXY = "10.0.0.5"  # the trusted proxy every request of the config's routes comes through
CONFIG = {
    "policies": {
        "api": {"limit": 2, "window": 60, "tiers": {"pro": {"limit": 5}, "free": {"limit": 1}}},
        "login": {"limit": 2, "window": 60},
    },
    "client_ip": {"trusted_proxies": ["10.0.0.0/8"]},
    "routes": [
        {
            "match": "GET /api",
            "identity": "header:X-User-ID",
            "tier": {"header": "X-Plan", "allowed": ["free", "pro"]},
            "exempt_networks": ["192.0.2.0/24"],
            "policies": ["api"],
        },
        {
            "match": "GET /free",
            "identity": "header:X-User-ID",
            "policies": [
                {
                    "policy": "api",
                    "tier": {"header": "X-Plan", "allowed": ["free", "pro"], "default": "free"},
                }
            ],
        },
        {
            "match": "POST /login",
            "policies": [
                {"policy": "login", "identity": "ip", "exempt_networks": ["2001:db8::/32"]}
            ],
        },
    ],
}


def write_config(tmp_path: Path, **changes: object) -> Path:
    path = tmp_path / "limits.json"
    path.write_text(json.dumps({**CONFIG, **changes}))
    return path


def dashed(headers: dict[str, str]) -> dict[str, str]:
    """Header keyword arguments (``X_Plan``) as header names (``X-Plan``)."""
    return {name.replace("_", "-"): value for name, value in headers.items()}


def admitted(statuses: list[int]) -> int:
    assert set(statuses) <= {200, 429}, statuses
    return statuses.count(200)


# --- ASGI -----------------------------------------------------------------------------------


async def asgi_statuses(
    app: Any, count: int, path: str, client: str, method: str = "GET", **headers: str
) -> list[int]:
    transport = httpx.ASGITransport(app=app, client=(PROXY, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        headers = {"X-User-ID": "user_1", "X-Forwarded-For": client, **dashed(headers)}
        return [
            (await http.request(method, path, headers=headers)).status_code for _ in range(count)
        ]


async def test_asgi_the_header_picks_the_tier(tmp_path: Path) -> None:
    app = RateLimitMiddleware.from_config(asgi_app(), write_config(tmp_path), clock=FakeClock())
    assert admitted(await asgi_statuses(app, 8, "/api", "198.51.100.1", X_Plan="pro")) == 5


async def test_asgi_an_unknown_or_missing_tier_is_the_policys_own_limit_never_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = RateLimitMiddleware.from_config(asgi_app(), write_config(tmp_path), clock=FakeClock())
    with caplog.at_level(logging.WARNING):
        # "enterprise" is not allowed: the policy's own limit (2), shared with no header.
        assert admitted(await asgi_statuses(app, 2, "/api", "198.51.100.1", X_Plan="x")) == 2
        assert admitted(await asgi_statuses(app, 3, "/api", "198.51.100.1")) == 0
    assert caplog.records == []


async def test_asgi_the_default_tier_applies_without_an_allowed_header(tmp_path: Path) -> None:
    app = RateLimitMiddleware.from_config(asgi_app(), write_config(tmp_path), clock=FakeClock())
    assert admitted(await asgi_statuses(app, 3, "/free", "198.51.100.1")) == 1
    response_fields: dict[str, Any] = {}
    transport = httpx.ASGITransport(app=app, client=(PROXY, 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/free", headers={"X-User-ID": "user_2"})
        response_fields = ratelimit_members(response.headers)
    assert response_fields["api"]["q"] == 1  # the free tier's limit is what the client sees


async def test_asgi_exempt_networks_use_the_client_behind_trusted_proxies(
    tmp_path: Path,
) -> None:
    app = RateLimitMiddleware.from_config(asgi_app(), write_config(tmp_path), clock=FakeClock())
    # A client in 192.0.2.0/24, as the trusted proxy reports it: never limited.
    assert admitted(await asgi_statuses(app, 10, "/api", "192.0.2.44")) == 10
    # Any other client on the same route is limited (the policy's own limit: 2).
    assert admitted(await asgi_statuses(app, 4, "/api", "198.51.100.1")) == 2
    # IPv6 exemption of a policy entry: the /login route limits by client address.
    assert admitted(await asgi_statuses(app, 5, "/login", "2001:db8::7", "POST")) == 5
    assert admitted(await asgi_statuses(app, 5, "/login", "2001:db9::7", "POST")) == 2


async def test_asgi_an_untrusted_peer_cannot_claim_an_exempt_address(tmp_path: Path) -> None:
    app = RateLimitMiddleware.from_config(asgi_app(), write_config(tmp_path), clock=FakeClock())
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 1234))  # not a proxy
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        headers = {"X-User-ID": "user_1", "X-Forwarded-For": "192.0.2.44"}
        statuses = [(await http.get("/api", headers=headers)).status_code for _ in range(4)]
    assert admitted(statuses) == 2


async def test_asgi_tiers_on_redis(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, timeout=STORE_TIMEOUT)
    app = RateLimitMiddleware.from_config(asgi_app(), config, store=redis_url)
    try:
        pro = await asgi_statuses(app, 7, "/api", "198.51.100.1", X_Plan="pro")
        free = await asgi_statuses(app, 3, "/api", "198.51.100.1", X_User_ID="u2", X_Plan="free")
        assert (admitted(pro), admitted(free)) == (5, 1)
    finally:
        await app.limiter.aclose()  # type: ignore[attr-defined]


# --- WSGI -----------------------------------------------------------------------------------


def wsgi_statuses(
    app: Any, count: int, path: str, client: str, method: str = "GET", **headers: str
) -> list[int]:
    http = Client(app)
    headers = {"X-User-ID": "user_1", "X-Forwarded-For": client, **dashed(headers)}
    return [
        http.open(
            path, method=method, headers=headers, environ_base={"REMOTE_ADDR": PROXY}
        ).status_code
        for _ in range(count)
    ]


def test_wsgi_tiers_and_exemptions(tmp_path: Path) -> None:
    app = WSGIRateLimitMiddleware.from_config(wsgi_app(), write_config(tmp_path), clock=FakeClock())
    assert admitted(wsgi_statuses(app, 8, "/api", "198.51.100.1", X_Plan="pro")) == 5
    assert admitted(wsgi_statuses(app, 3, "/api", "198.51.100.2", X_User_ID="u2")) == 2
    assert admitted(wsgi_statuses(app, 3, "/free", "198.51.100.3", X_User_ID="u3")) == 1
    assert admitted(wsgi_statuses(app, 10, "/api", "192.0.2.1")) == 10
    assert admitted(wsgi_statuses(app, 5, "/login", "2001:db8::1", "POST")) == 5
    assert admitted(wsgi_statuses(app, 5, "/login", "198.51.100.4", "POST")) == 2


def test_wsgi_tiers_on_redis(tmp_path: Path, redis_url: str) -> None:
    config = write_config(tmp_path, timeout=STORE_TIMEOUT)
    app = WSGIRateLimitMiddleware.from_config(wsgi_app(), config, store=redis_url)
    try:
        assert admitted(wsgi_statuses(app, 7, "/api", "198.51.100.1", X_Plan="pro")) == 5
        assert admitted(wsgi_statuses(app, 3, "/free", "198.51.100.1", X_User_ID="u2")) == 1
    finally:
        cast("RateLimiter", app.limiter).close()


# --- in code --------------------------------------------------------------------------------


def test_a_tier_source_that_raises_or_answers_nonsense_is_contained(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(request: HttpRequest) -> str | None:
        raise RuntimeError("tier lookup failed")

    def nonsense(request: HttpRequest) -> str | None:
        return 42  # type: ignore[return-value]

    policies = {"api": Policy(2, 60, tiers={"pro": {"limit": 5}})}
    for source in (broken, nonsense):
        limiter = RateLimiter(policies, clock=FakeClock())
        routes = [Route("/api", [RouteLimit("api", Header("X-User-ID"), tier=source)])]
        app = WSGIRateLimitMiddleware(wsgi_app(), limiter, routes)
        with caplog.at_level(logging.ERROR, logger="ratewall.http"):
            assert admitted(wsgi_statuses(app, 4, "/api", "198.51.100.1")) == 2
    assert "tier lookup failed" in caplog.text


def test_tier_header_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="not a valid HTTP header name"):
        TierHeader("X Plan", ["pro"])
    with pytest.raises(ValueError, match="at least one tier name"):
        TierHeader("X-Plan", [])
    with pytest.raises(TypeError, match="list of tier names"):
        TierHeader("X-Plan", "pro")
    with pytest.raises(ValueError, match="default tier 'gold' is not one of allowed"):
        TierHeader("X-Plan", ["pro"], default="gold")
    with pytest.raises(ValueError, match="not an IP address or CIDR network"):
        RouteLimit("api", ClientIP(), exempt_networks=["10.0.0.0/33"])
    with pytest.raises(TypeError, match="list of networks"):
        RouteLimit("api", ClientIP(), exempt_networks="10.0.0.0/8")


def test_check_many_takes_a_tier_on_the_memory_store() -> None:
    limiter = AsyncRateLimiter(
        {"api": Policy(2, 60, tiers={"pro": {"limit": 5}}), "b": Policy(9, 60)}
    )
    store = limiter.local_store
    assert store is not None
    decisions = store.check_many([("u", "api", 1, "pro"), ("u", "b", 1, None)])
    assert [decision.limit for decision in decisions] == [5, 9]
    with pytest.raises(KeyError, match="unknown tier 'gold'"):
        store.check_many([("u", "api", 1, "gold"), ("u", "b", 1)])


# --- config errors --------------------------------------------------------------------------

TIERS = {"pro": {"limit": 5}, "free": {"limit": 1}}


@pytest.mark.parametrize(
    ("route", "field", "reason"),
    [
        (
            {"tier": {"header": "X-Plan", "allowed": ["gold"]}},
            "routes[0].tier.allowed[0]",
            "'gold' is not a tier of this policy; defined tiers: free, pro",
        ),
        (
            {"tier": {"header": "X-Plan", "allowed": ["pros"]}},
            "routes[0].tier.allowed[0]",
            "(did you mean 'pro'?)",
        ),
        (
            {"tier": {"header": "X-Plan", "allowed": ["pro"], "default": "free"}},
            "routes[0].tier.default",
            "'free' is not one of the allowed tiers (pro)",
        ),
        ({"tier": {"allowed": ["pro"]}}, "routes[0].tier.header", "is required"),
        ({"tier": {"header": "X Plan", "allowed": ["pro"]}}, "routes[0].tier.header", "valid"),
        ({"tier": {"header": "X-Plan", "allowed": []}}, "routes[0].tier.allowed", "non-empty"),
        ({"tier": "X-Plan"}, "routes[0].tier", "must be a mapping such as {header: X-Plan"),
        ({"tier": {"header": "X-Plan", "alowed": ["pro"]}}, "routes[0].tier.alowed", "allowed"),
        (
            {"exempt_networks": ["10.0.0.0/8", "10.0.0.0/33"]},
            "routes[0].exempt_networks[1]",
            "'10.0.0.0/33' is not an IP address or CIDR network",
        ),
        ({"exempt_networks": "10.0.0.0/8"}, "routes[0].exempt_networks", "must be a list"),
        ({"exempt_networks": [8]}, "routes[0].exempt_networks[0]", "is not a string"),
    ],
)
def test_bad_tier_and_exemption_settings_are_named(
    route: dict[str, object], field: str, reason: str
) -> None:
    data = {
        "policies": {"api": {"limit": 2, "window": 60, "tiers": TIERS}},
        "routes": [{"match": "/api", "policies": ["api"], **route}],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="limits.json")
    found = {each.field: each.reason for each in caught.value.errors}
    assert field in found, found
    assert reason in found[field]


def test_a_route_tier_must_name_a_tier_of_one_of_its_policies() -> None:
    data = {
        "policies": {
            "a": {"limit": 2, "window": 60, "tiers": {"pro": {"limit": 5}}},
            "b": {"limit": 2, "window": 60, "tiers": {"team": {"limit": 5}}},
        },
        "routes": [
            {
                "match": "/x",
                "policies": ["a", "b"],
                "tier": {"header": "X-Plan", "allowed": ["pro", "team", "solo"]},
            }
        ],
    }
    with pytest.raises(ConfigError) as caught:
        parse_config(data, source="x")
    assert [(each.field, each.reason.split(";")[0]) for each in caught.value.errors] == [
        ("routes[0].tier.allowed[2]", "'solo' is not a tier of any policy of this route")
    ]


def test_check_config_shows_the_tier_and_the_exemptions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ratewall.cli import main

    assert main(["check-config", str(write_config(tmp_path))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "route GET /api -> api (tier from X-Plan: free, pro; exempt 192.0.2.0/24)" in lines


def test_explain_shows_the_tier_and_an_exempt_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ratewall.cli import main

    path = str(write_config(tmp_path))
    user = ["-H", "X-User-ID: user_1"]
    pro = ["explain", "GET", "/api", *user, "-H", "X-Plan: pro", "--client-ip", "198.51.100.1"]
    assert main([*pro, "--config", path, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["policies"][0]
    assert (entry["tier"], entry["derived"]) == ("pro", "source")
    assert main([*pro, "--config", path]) == 0
    assert "policy    api (cost 1, tier pro)" in capsys.readouterr().out
    # Forwarded by the trusted proxy for a client in 192.0.2.0/24: the policy is exempt.
    exempt = ["-H", "X-Forwarded-For: 192.0.2.44", "--client-ip", PROXY]
    assert main(["explain", "GET", "/api", *user, *exempt, "--config", path, "--json"]) == 0
    entry = json.loads(capsys.readouterr().out)["policies"][0]
    assert (entry["identity"], entry["derived"]) == (None, "exempt_network")


# --- metrics --------------------------------------------------------------------------------

EXEMPT_POLICIES = {"api": Policy(2, 60), "burst": Policy(5, 1)}


def exempt_routes() -> list[Route]:
    """/both meets two policies, both exempting 192.0.2.0/24; /one exempts it from one
    policy only (the other, "burst", still limits it)."""
    office = ["192.0.2.0/24"]
    return [
        Route(
            "/both",
            [
                RouteLimit("api", Header("X-User-ID"), exempt_networks=office),
                RouteLimit("burst", ClientIP(["10.0.0.0/8"]), exempt_networks=office),
            ],
        ),
        Route(
            "/one",
            [
                RouteLimit("api", Header("X-User-ID"), exempt_networks=office),
                RouteLimit("burst", ClientIP(["10.0.0.0/8"])),
            ],
        ),
    ]


def exempt_counts(metrics: Metrics) -> dict[str, dict[str, int]]:
    return {
        policy: {outcome: n for outcome, n in outcomes.items() if n}
        for policy, outcomes in metrics.snapshot().decisions.items()
    }


async def test_asgi_a_network_exemption_counts_as_exempt_for_each_policy_it_skips() -> None:
    metrics = Metrics()
    capture = DecisionCapture()
    limiter = AsyncRateLimiter(
        EXEMPT_POLICIES, observer=FanOut((metrics, capture)), clock=FakeClock()
    )
    app = RateLimitMiddleware(
        asgi_app(), limiter, exempt_routes(), client_ip=ClientIP(["10.0.0.0/8"])
    )
    assert admitted(await asgi_statuses(app, 3, "/both", "192.0.2.44")) == 3
    assert admitted(await asgi_statuses(app, 3, "/one", "192.0.2.44")) == 3
    assert admitted(await asgi_statuses(app, 3, "/one", "198.51.100.1")) == 2
    assert exempt_counts(metrics) == {
        # /both: 3 requests x 2 policies exempt; /one: 3 exempt from api, 3 allowed by burst;
        # the other client: api allows 2 and limits 1, burst allows all 3 it meets.
        "api": {"exempt": 6, "allowed": 2, "limited": 1},
        "burst": {"exempt": 3, "allowed": 6},
    }
    exempt = [d for d in capture.decisions if d.source == "exempt"]
    assert len(exempt) == 9
    assert all(d.allowed and d.remaining == d.limit for d in exempt)


def test_wsgi_a_network_exemption_counts_as_exempt() -> None:
    metrics = Metrics()
    limiter = RateLimiter(EXEMPT_POLICIES, observer=metrics, clock=FakeClock())
    app = WSGIRateLimitMiddleware(
        wsgi_app(), limiter, exempt_routes(), client_ip=ClientIP(["10.0.0.0/8"])
    )
    assert admitted(wsgi_statuses(app, 4, "/both", "192.0.2.9")) == 4
    assert exempt_counts(metrics) == {"api": {"exempt": 4}, "burst": {"exempt": 4}}


def test_a_limiter_exempt_decision_is_allowed_and_stores_nothing() -> None:
    metrics = Metrics()
    limiter = RateLimiter({"api": Policy(1, 60)}, observer=metrics)
    decision = limiter.exempt("api")
    assert decision == Decision(True, "api", 1, 1, 0.0, None)
    assert decision.source == "exempt"
    assert limiter.check("u", "api").allowed  # nothing was consumed
    assert exempt_counts(metrics) == {"api": {"exempt": 1, "allowed": 1}}
    with pytest.raises(KeyError, match="unknown policy 'nope'"):
        limiter.exempt("nope")
