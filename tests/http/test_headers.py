"""The RateLimit fields, Retry-After and problem bodies, parsed back with http_sfv."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ratewall import Decision, Policy
from ratewall.http.headers import (
    QUOTA_EXCEEDED,
    most_restrictive,
    problem_body,
    rate_limit_fields,
    rate_limit_headers,
    ratelimit_field,
    ratelimit_policy_field,
    retry_after,
    sf_integer,
    sf_string,
    whole_seconds,
    window_seconds,
)
from ratewall.http.wire import encode_headers

from ._support import parse_sf_list

POLICIES = {
    "login": Policy(5, 60),
    "login_ip": Policy(20, "1m"),
    "api": Policy(10, 1, "gcra", burst=30),
    "fast": Policy(3, "500ms"),
    "odd": Policy(3, "1500ms"),
}


def allowed(policy: str, limit: int, remaining: int, reset_after: float) -> Decision:
    return Decision(True, policy, limit, remaining, reset_after, None)


def refused(policy: str, limit: int, retry: float, reset_after: float | None = None) -> Decision:
    return Decision(False, policy, limit, 0, retry if reset_after is None else reset_after, retry)


def test_the_seed_429_fields_parse_as_structured_field_lists() -> None:
    decisions = [refused("login", 5, 15.0)]
    headers = dict(rate_limit_headers(decisions, POLICIES))
    assert headers["RateLimit-Policy"] == '"login";q=5;w=60'
    assert headers["RateLimit"] == '"login";r=0;t=15'
    assert parse_sf_list(headers["RateLimit-Policy"]) == [("login", {"q": 5, "w": 60})]
    assert parse_sf_list(headers["RateLimit"]) == [("login", {"r": 0, "t": 15})]


def test_several_policies_are_list_members_in_order() -> None:
    decisions = [allowed("login", 5, 4, 60.0), allowed("login_ip", 20, 17, 42.3)]
    policy = parse_sf_list(ratelimit_policy_field(decisions, POLICIES))
    state = parse_sf_list(ratelimit_field(decisions))
    assert policy == [("login", {"q": 5, "w": 60}), ("login_ip", {"q": 20, "w": 60})]
    assert state == [("login", {"r": 4, "t": 60}), ("login_ip", {"r": 17, "t": 43})]


def test_q_is_the_burst_of_bucket_algorithms() -> None:
    decision = allowed("api", 30, 29, 0.1)
    assert parse_sf_list(ratelimit_policy_field([decision], POLICIES)) == [
        ("api", {"q": 30, "w": 1})
    ]


@pytest.mark.parametrize(("policy", "w"), [("login", 60), ("fast", 1), ("odd", 2), ("api", 1)])
def test_w_is_the_window_in_whole_seconds_rounded_up(policy: str, w: int) -> None:
    assert window_seconds(POLICIES[policy]) == w


@pytest.mark.parametrize(
    ("decision", "t"),
    [
        (refused("login", 5, 15.0), 15),
        (refused("login", 5, 14.000001, 40.0), 15),  # t follows retry_after when refused
        (allowed("login", 5, 3, 59.2), 60),
        (allowed("login", 5, 5, 0.0), 0),
        (refused("login", 5, 0.0004), 1),
    ],
)
def test_t_is_whole_seconds_until_more_quota(decision: Decision, t: int) -> None:
    [(_, params)] = parse_sf_list(ratelimit_field([decision]))
    assert params["t"] == t
    assert isinstance(params["t"], int)


def test_r_is_never_negative() -> None:
    decision = Decision(True, "login", 5, -3, 1.0, None)
    [(_, params)] = parse_sf_list(ratelimit_field([decision]))
    assert params["r"] == 0


@pytest.mark.parametrize(
    ("decisions", "expected"),
    [
        ([refused("login", 5, 15.0)], 15),
        ([refused("login", 5, 0.2)], 1),  # at least 1
        ([refused("login", 5, 0.0)], 1),
        ([refused("login", 5, 14.5), refused("login_ip", 20, 30.01)], 31),  # the longest wins
        ([allowed("login_ip", 20, 0, 500.0), refused("login", 5, 2.0)], 2),  # allowed ignored
        ([allowed("login", 5, 1, 3.0)], 1),
    ],
)
def test_retry_after_is_a_whole_number_of_seconds_at_least_one(
    decisions: list[Decision], expected: int
) -> None:
    value = retry_after(decisions)
    assert value == expected
    assert isinstance(value, int)


def test_retry_after_never_points_earlier_than_any_refused_t() -> None:
    decisions = [refused("login", 5, 9.3), refused("login_ip", 20, 4.7)]
    wait = retry_after(decisions)
    for _, params in parse_sf_list(ratelimit_field(decisions)):
        assert isinstance(params["t"], int)
        assert wait >= params["t"]


def test_policy_names_are_escaped_as_sf_strings() -> None:
    name = 'we"ird\\name'
    decision = allowed(name, 5, 1, 1.0)
    assert parse_sf_list(ratelimit_field([decision])) == [(name, {"r": 1, "t": 1})]
    assert sf_string(name) == '"we\\"ird\\\\name"'


@pytest.mark.parametrize("name", ["naïve", "tab\there", "new\nline"])
def test_sf_string_refuses_what_it_cannot_represent(name: str) -> None:
    with pytest.raises(ValueError, match="structured-field string"):
        sf_string(name)


def test_huge_and_non_finite_numbers_stay_valid_integers() -> None:
    assert sf_integer(10**20) == "999999999999999"
    assert sf_integer(-(10**20)) == "-999999999999999"
    assert whole_seconds(math.inf) == 999_999_999_999_999
    assert whole_seconds(math.nan) == 0
    assert whole_seconds(-5.0) == 0
    decision = Decision(False, "login", 5, 0, math.inf, math.inf)
    [(_, params)] = parse_sf_list(ratelimit_field([decision]))
    assert params["t"] == 999_999_999_999_999


def test_no_decisions_means_no_fields() -> None:
    assert rate_limit_headers([], POLICIES) == []


def test_legacy_fields_describe_the_most_restrictive_policy() -> None:
    decisions = [allowed("login_ip", 20, 2, 30.0), allowed("login", 5, 4, 50.0)]
    headers = dict(rate_limit_headers(decisions, POLICIES, legacy=True))
    assert headers["X-RateLimit-Limit"] == "20"
    assert headers["X-RateLimit-Remaining"] == "2"
    assert headers["X-RateLimit-Reset"] == "30"
    assert "X-RateLimit-Limit" not in dict(rate_limit_headers(decisions, POLICIES))


def test_most_restrictive_prefers_the_longest_refusal() -> None:
    decisions = [
        allowed("login_ip", 20, 0, 99.0),
        refused("login", 5, 3.0),
        refused("api", 30, 8.0),
    ]
    assert most_restrictive(decisions).policy == "api"
    with pytest.raises(ValueError, match="at least one"):
        most_restrictive([])


def test_problem_body_is_a_quota_exceeded_problem() -> None:
    body = problem_body(
        status=429,
        title="Too Many Requests",
        detail="Too many requests.",
        problem_type=QUOTA_EXCEEDED,
        violated_policies=["login"],
    )
    assert json.loads(body) == {
        "type": "https://iana.org/assignments/http-problem-types#quota-exceeded",
        "title": "Too Many Requests",
        "status": 429,
        "detail": "Too many requests.",
        "violated-policies": ["login"],
    }
    assert "violated-policies" not in json.loads(
        problem_body(status=400, title="Bad Request", detail="x")
    )


names = st.sampled_from(sorted(POLICIES))
seconds = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=10**6),
    st.just(0.0),
    st.integers(min_value=-5, max_value=10**16),
)


@st.composite
def decisions(draw: st.DrawFn) -> Decision:
    name = draw(names)
    allowed = draw(st.booleans())
    return Decision(
        allowed,
        name,
        draw(st.integers(min_value=1, max_value=10**16)),
        draw(st.one_of(st.integers(min_value=-(10**16), max_value=10**16), st.just(0))),
        draw(seconds),
        None if allowed else draw(st.one_of(st.none(), seconds)),
    )


@given(st.lists(decisions(), min_size=1, max_size=3, unique_by=lambda d: d.policy))
def test_rate_limit_fields_are_the_encoded_rate_limit_headers(
    chosen: list[Decision],
) -> None:
    """The hot path's fields, text and bytes, are exactly the general path's."""
    headers, encoded = rate_limit_fields(chosen, POLICIES)
    assert list(headers) == rate_limit_headers(chosen, POLICIES)
    assert encoded == encode_headers(headers)


def test_rate_limit_fields_of_no_decisions_are_none() -> None:
    assert rate_limit_fields([], POLICIES) == ((), [])
