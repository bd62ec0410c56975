"""The sans-IO engine on its own: requests to checks, decisions to outcomes, contained failures."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence

import pytest

from ratewall import ConfigError, Decision, Policy, RateLimiter, StoreError
from ratewall.http import ClientIP, Header, HttpEngine, HttpRequest, PathParam, Route, RouteLimit
from ratewall.http.log_throttle import LogThrottle
from ratewall.http.steps import PASS, AskLimiter, Pass, Respond
from ratewall.http.wire import encode_headers
from ratewall.testing import FakeClock

from ._support import BrokenHeaders, parse_sf_list, ratelimit_members

POLICIES = {
    "login": Policy(5, 60),
    "login_ip": Policy(20, 60),
    "closed": Policy(5, 60, failure_mode="closed"),
    "open": Policy(5, 60, failure_mode="open"),
}
LOGIN = Route(
    "/login",
    [RouteLimit("login", Header("X-User-ID")), RouteLimit("login_ip", ClientIP())],
    method="POST",
)


def login_request(user: str | None = "user_123", client: str | None = "203.0.113.7") -> HttpRequest:
    headers = {"x-user-id": user} if user is not None else {}
    return HttpRequest("POST", "/login", headers, client=client)


def engine(*routes: Route, **options: object) -> HttpEngine:
    return HttpEngine(routes or (LOGIN,), POLICIES, **options)  # type: ignore[arg-type]


def check_of(step: object) -> AskLimiter:
    assert isinstance(step, AskLimiter), step
    return step


def headers_of(outcome: object) -> dict[str, str]:
    assert isinstance(outcome, Pass | Respond), outcome
    return dict(outcome.headers)


def allowed(policy: str, remaining: int = 4) -> Decision:
    return Decision(True, policy, POLICIES[policy].capacity, remaining, 60.0, None)


def refused(policy: str, retry: float = 15.0) -> Decision:
    return Decision(False, policy, POLICIES[policy].capacity, 0, retry, retry)


def degraded(policy: str, allowed: bool) -> Decision:
    capacity = POLICIES[policy].capacity
    if allowed:
        return Decision(True, policy, capacity, capacity, 0.0, None, degraded=True)
    return Decision(False, policy, capacity, 0, 1.0, 1.0, degraded=True)


# -- start ---------------------------------------------------------------------------------


def test_a_matching_request_becomes_check_many_items() -> None:
    check = check_of(engine().start(login_request()))
    assert check.items == (("user_123", "login", 1), ("203.0.113.7", "login_ip", 1))
    assert check.limits == LOGIN.limits
    assert check.route is LOGIN


def test_unmatched_and_exempt_requests_pass_without_a_check() -> None:
    limiter = engine(Route("/health", []), LOGIN)
    assert limiter.start(HttpRequest("GET", "/login", client="1.2.3.4")) is PASS
    assert limiter.start(HttpRequest("GET", "/health", client="1.2.3.4")) is PASS


def test_path_params_reach_the_identity_source() -> None:
    route = Route("/users/{user_id}", [RouteLimit("login", PathParam("user_id"), cost=2)])
    check = check_of(engine(route).start(HttpRequest("GET", "/users/42")))
    assert check.items == (("42", "login", 2),)
    assert check.request.path_params == {"user_id": "42"}


def test_missing_identity_falls_back_to_the_client_ip() -> None:
    check = check_of(engine().start(login_request(user=None)))
    assert check.items == (("203.0.113.7", "login", 1), ("203.0.113.7", "login_ip", 1))


def test_the_fallback_uses_the_configured_client_ip() -> None:
    limiter = engine(client_ip=ClientIP(trusted_proxies=["10.0.0.0/8"]))
    request = HttpRequest("POST", "/login", {"x-forwarded-for": "198.51.100.9"}, client="10.0.0.1")
    assert check_of(limiter.start(request)).items[0] == ("198.51.100.9", "login", 1)


def test_missing_identity_can_be_rejected_with_400() -> None:
    route = Route(
        "/login", [RouteLimit("login", Header("X-User-ID"), on_missing_identity="reject")]
    )
    outcome = engine(route).start(login_request(user=None))
    assert isinstance(outcome, Respond)
    assert outcome.status == 400
    assert headers_of(outcome)["Content-Type"] == "application/problem+json"
    body = json.loads(outcome.body)
    assert body["status"] == 400
    assert body["detail"] == "This endpoint requires the X-User-ID header."


def test_missing_identity_can_skip_the_limit() -> None:
    route = Route(
        "/login",
        [
            RouteLimit("login", Header("X-User-ID"), on_missing_identity="skip"),
            RouteLimit("login_ip", ClientIP()),
        ],
    )
    check = check_of(engine(route).start(login_request(user=None)))
    assert check.items == (("203.0.113.7", "login_ip", 1),)
    only = Route("/login", [RouteLimit("login", Header("X-User-ID"), on_missing_identity="skip")])
    assert engine(only).start(login_request(user=None)) is PASS


def test_no_identity_and_no_address_skips_the_limit_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        outcome = engine().start(login_request(user=None, client=None))
    assert outcome is PASS
    assert "neither the X-User-ID header nor a client address" in caplog.text


class ExplodingSource:
    def __call__(self, request: HttpRequest) -> str | None:
        raise ZeroDivisionError("bug in an identity source")


class NotAString:
    def __call__(self, request: HttpRequest) -> str | None:
        return 42  # type: ignore[return-value]


@pytest.mark.parametrize("source", [ExplodingSource(), NotAString()])
def test_a_broken_identity_source_disables_only_its_own_limit(
    source: object, caplog: pytest.LogCaptureFixture
) -> None:
    route = Route(
        "/login",
        [RouteLimit("login", source), RouteLimit("login_ip", ClientIP())],  # type: ignore[arg-type]
    )
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        check = check_of(engine(route).start(login_request()))
    assert check.items == (("203.0.113.7", "login_ip", 1),)
    assert "policy 'login' failed" in caplog.text


def test_routes_naming_unknown_policies_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match="unknown policy 'nope'") as caught:
        engine(Route("/x", [RouteLimit("nope", ClientIP())]))
    assert caught.value.field == "routes[0].limits[0].policy"
    with pytest.raises(ConfigError, match="capacity 5"):
        engine(Route("/x", [RouteLimit("login", ClientIP(), cost=6)]))


# -- finish --------------------------------------------------------------------------------


def test_allowed_decisions_pass_with_ratelimit_fields() -> None:
    limiter = engine()
    check = check_of(limiter.start(login_request()))
    outcome = limiter.finish(check, [allowed("login", 4), allowed("login_ip", 19)])
    assert isinstance(outcome, Pass)
    members = ratelimit_members(headers_of(outcome))
    assert members == {
        "login": {"q": 5, "w": 60, "r": 4, "t": 60},
        "login_ip": {"q": 20, "w": 60, "r": 19, "t": 60},
    }


def test_headers_on_allowed_can_be_turned_off() -> None:
    limiter = engine(headers_on_allowed=False)
    check = check_of(limiter.start(login_request()))
    assert limiter.finish(check, [allowed("login"), allowed("login_ip")]) is PASS
    outcome = limiter.finish(check, [refused("login"), allowed("login_ip")])
    assert isinstance(outcome, Respond)
    assert "RateLimit" in headers_of(outcome)


def test_legacy_headers_when_asked() -> None:
    limiter = engine(legacy_headers=True)
    check = check_of(limiter.start(login_request()))
    headers = headers_of(limiter.finish(check, [allowed("login", 1), allowed("login_ip", 19)]))
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("5", "1")
    assert headers["X-RateLimit-Reset"] == "60"


def test_a_refusal_is_a_429_problem_and_reports_unconsumed_quota() -> None:
    limiter = engine()
    check = check_of(limiter.start(login_request()))
    # As check_many returns it: login_ip would have allowed (remaining 12 after consuming 1),
    # but the request was refused, so nothing was consumed: 13 remain.
    outcome = limiter.finish(check, [refused("login", 14.2), allowed("login_ip", 12)])
    assert isinstance(outcome, Respond)
    assert outcome.status == 429
    assert outcome.reason == "Too Many Requests"
    headers = headers_of(outcome)
    assert headers["Retry-After"] == "15"
    assert headers["Content-Type"] == "application/problem+json"
    assert headers["Content-Length"] == str(len(outcome.body))
    assert headers["Cache-Control"] == "no-store"
    members = ratelimit_members(headers)
    assert members["login"] == {"q": 5, "w": 60, "r": 0, "t": 15}
    assert members["login_ip"]["r"] == 13
    body = json.loads(outcome.body)
    assert body["type"] == "https://iana.org/assignments/http-problem-types#quota-exceeded"
    assert body["title"] == "Too Many Requests"
    assert body["status"] == 429
    assert body["violated-policies"] == ["login"]
    assert body["detail"] == "Too many requests for policy 'login'; retry in 15 seconds."


def test_degraded_refusals_are_503_not_429(caplog: pytest.LogCaptureFixture) -> None:
    route = Route("/x", [RouteLimit("closed", ClientIP())])
    limiter = engine(route)
    check = check_of(limiter.start(HttpRequest("GET", "/x", client="1.2.3.4")))
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        outcome = limiter.finish(check, [degraded("closed", allowed=False)])
    assert isinstance(outcome, Respond)
    assert outcome.status == 503
    headers = headers_of(outcome)
    assert headers["Retry-After"] == "1"
    assert "RateLimit" not in headers  # the numbers would be invented
    body = json.loads(outcome.body)
    assert body["type"].endswith("#temporary-reduced-capacity")
    assert body["status"] == 503
    assert "store unavailable" in caplog.text


def test_a_genuine_refusal_wins_over_a_degraded_one() -> None:
    route = Route("/x", [RouteLimit("login", ClientIP()), RouteLimit("closed", Header("A"))])
    limiter = engine(route)
    check = check_of(limiter.start(HttpRequest("GET", "/x", {"a": "b"}, client="1.2.3.4")))
    outcome = limiter.finish(check, [refused("login", 3.0), degraded("closed", allowed=False)])
    assert isinstance(outcome, Respond)
    assert outcome.status == 429
    assert json.loads(outcome.body)["violated-policies"] == ["login"]


def test_fail_open_decisions_pass_without_invented_numbers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = Route("/x", [RouteLimit("open", ClientIP()), RouteLimit("login", Header("A"))])
    limiter = engine(route)
    check = check_of(limiter.start(HttpRequest("GET", "/x", {"a": "b"}, client="1.2.3.4")))
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        outcome = limiter.finish(check, [degraded("open", allowed=True), allowed("login", 2)])
    assert isinstance(outcome, Pass)
    assert [name for name, _ in parse_sf_list(headers_of(outcome)["RateLimit"])] == ["login"]
    assert "open" in caplog.text


@pytest.mark.parametrize(
    "decisions",
    [[], [allowed("login")], None, ["allowed", "allowed"], [allowed("login"), 7]],
)
def test_nonsense_from_the_limiter_passes(
    decisions: object, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = engine()
    check = check_of(limiter.start(login_request()))
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        assert limiter.finish(check, decisions) is PASS  # type: ignore[arg-type]
    assert "request passes unchecked" in caplog.text


# -- failed ---------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [StoreError("down"), RuntimeError("bug"), KeyError("x")])
def test_limiter_errors_pass_when_nothing_fails_closed(
    error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = engine()
    check = check_of(limiter.start(login_request()))
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        verdict = limiter.failed(check, error)
    # The request passes, and the response says the store did not decide it.
    assert isinstance(verdict, Pass)
    assert verdict.headers == (("RateLimit-Degraded", '"login", "login_ip"'),)
    assert "letting requests pass" in caplog.text


def test_limiter_errors_fail_closed_when_a_policy_says_so() -> None:
    route = Route("/x", [RouteLimit("login", ClientIP()), RouteLimit("closed", Header("A"))])
    limiter = engine(route)
    check = check_of(limiter.start(HttpRequest("GET", "/x", {"a": "b"}, client="1.2.3.4")))
    outcome = limiter.failed(check, StoreError("down"))
    assert isinstance(outcome, Respond)
    assert outcome.status == 503
    assert headers_of(outcome)["Retry-After"] == "1"
    assert json.loads(outcome.body)["violated-policies"] == ["closed"]


# -- overridden responses that break ---------------------------------------------------------


class BrokenResponses(HttpEngine):
    def too_many_requests(self, check: AskLimiter, decisions: Sequence[Decision]) -> Respond:
        raise RuntimeError("429 bug")

    def unavailable(self, policies: Sequence[str], wait: int) -> Respond:
        return "not a response"  # type: ignore[return-value]

    def missing_identity(self, limit: RouteLimit) -> Respond:
        raise RuntimeError("400 bug")


def test_broken_header_building_drops_headers_but_keeps_decisions() -> None:
    limiter = BrokenHeaders([LOGIN], POLICIES)
    check = check_of(limiter.start(login_request()))
    assert limiter.finish(check, [allowed("login"), allowed("login_ip")]) is PASS
    outcome = limiter.finish(check, [refused("login", 7.5), allowed("login_ip")])
    assert isinstance(outcome, Respond)
    assert outcome.status == 429
    assert headers_of(outcome)["Retry-After"] == "8"


def test_broken_responses_fall_back_to_plain_ones(caplog: pytest.LogCaptureFixture) -> None:
    route = Route(
        "/x",
        [
            RouteLimit("login", Header("A"), on_missing_identity="reject"),
            RouteLimit("closed", ClientIP()),
        ],
    )
    limiter = BrokenResponses([route], POLICIES)
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        rejected = limiter.start(HttpRequest("GET", "/x", client="1.2.3.4"))
        check = check_of(limiter.start(HttpRequest("GET", "/x", {"a": "b"}, client="1.2.3.4")))
        over = limiter.finish(check, [refused("login", 2.5), allowed("closed")])
        down = limiter.finish(check, [allowed("login"), degraded("closed", allowed=False)])
    statuses = []
    for outcome in (rejected, over, down):
        assert isinstance(outcome, Respond)
        statuses.append(outcome.status)
        assert headers_of(outcome)["Content-Type"] == "text/plain; charset=utf-8"
    assert statuses == [400, 429, 503]
    assert isinstance(over, Respond)
    assert headers_of(over)["Retry-After"] == "3"
    assert "sending a plain one" in caplog.text


def test_failures_are_logged_at_most_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    route = Route(
        "/x", [RouteLimit("login", ExplodingSource()), RouteLimit("login_ip", ClientIP())]
    )
    limiter = HttpEngine([route], POLICIES, log=LogThrottle(interval=60.0, clock=clock))
    request = HttpRequest("GET", "/x", client="1.2.3.4")
    with caplog.at_level(logging.ERROR, logger="ratewall"):
        for _ in range(100):
            limiter.start(request)
        assert len(caplog.records) == 1
        clock.advance(61)
        limiter.start(request)
    assert len(caplog.records) == 2
    assert "99 similar messages suppressed" in caplog.records[1].getMessage()
    assert caplog.records[0].exc_info is not None


# -- against a real limiter ------------------------------------------------------------------


def test_engine_with_a_memory_limiter_follows_the_seed() -> None:
    clock = FakeClock()
    with RateLimiter(POLICIES, clock=clock) as limiter:
        http = HttpEngine([LOGIN], limiter.policies)
        statuses = []
        for step in [0, 10, 10, 5, 5, 15, 5, 11]:
            clock.advance(step)
            check = check_of(http.start(login_request()))
            outcome = http.finish(check, limiter.check_many(check.items))
            statuses.append(outcome.status if isinstance(outcome, Respond) else 200)
        assert statuses == [200, 200, 200, 200, 200, 429, 429, 200]


@pytest.mark.parametrize("route", [LOGIN, Route("/login", [RouteLimit("login", ClientIP())])])
def test_an_allowed_pass_carries_its_headers_encoded(route: Route) -> None:
    """The ASGI middleware sends ``Pass.encoded`` as it is: it must be the headers' encoding."""
    http = engine(route)
    check = check_of(http.start(login_request()))
    decisions = [allowed(limit.policy, 3) for limit in route.limits]
    outcome = http.finish(check, decisions)
    assert isinstance(outcome, Pass)
    assert list(outcome.headers) == http.response_headers(check, decisions)
    assert outcome.encoded == encode_headers(outcome.headers)


def test_overridden_response_headers_are_not_pre_encoded() -> None:
    class Custom(HttpEngine):
        def response_headers(
            self, check: AskLimiter, decisions: Sequence[Decision]
        ) -> list[tuple[str, str]]:
            return [("X-Quota", str(decisions[0].remaining))]

    http = Custom([LOGIN], POLICIES)
    check = check_of(http.start(login_request()))
    outcome = http.finish(check, [allowed("login", 2), allowed("login_ip", 7)])
    assert outcome == Pass((("X-Quota", "2"),))
    assert isinstance(outcome, Pass)
    assert outcome.encoded is None


def test_a_client_address_limit_without_an_address_says_it_has_none(
    caplog: pytest.LogCaptureFixture,
) -> None:
    route = Route("/login", [RouteLimit("login_ip", ClientIP())], method="POST")
    with caplog.at_level(logging.WARNING, logger="ratewall"):
        outcome = engine(route).start(login_request(user=None, client=None))
    assert outcome is PASS
    assert "has no client address; policy 'login_ip' is skipped" in caplog.text
