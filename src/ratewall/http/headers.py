"""Response header fields and problem bodies for rate-limited HTTP responses. Pure functions.

ratewall speaks draft-ietf-httpapi-ratelimit-headers-10, whose two fields are Structured
Field Lists (RFC 9651) with one member per policy::

    RateLimit-Policy: "login";q=5;w=60, "login_ip";q=20;w=60
    RateLimit: "login";r=0;t=15, "login_ip";r=17;t=42

``q`` is the policy's quota (:attr:`Decision.limit <ratewall.Decision.limit>`: the burst of
bucket algorithms), ``w`` its window in whole seconds (rounded up, at least 1), ``r`` the
units remaining and ``t`` the whole seconds until more quota is available: the retry time
(rounded up) of a refused policy, else the time until its state is full again.

``Retry-After`` (RFC 9110 §10.2.3) is a whole number of seconds, at least 1: the longest retry
time among the refused policies, rounded up, so it never points earlier than any ``t``.

Optionally, the legacy fields many clients still read: ``X-RateLimit-Limit``,
``X-RateLimit-Remaining`` and ``X-RateLimit-Reset`` (seconds from now, not a timestamp),
describing the most restrictive policy only.

Refusals carry an RFC 9457 ``application/problem+json`` body using the problem types the draft
registers (``quota-exceeded`` for 429, ``temporary-reduced-capacity`` for 503), with the names
of the ``violated-policies``. Bodies never contain keys, identities or store errors.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Final

from ..decision import Decision
from ..policy import Policy

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "QUOTA_EXCEEDED",
    "TEMPORARY_REDUCED_CAPACITY",
    "most_restrictive",
    "problem_body",
    "rate_limit_fields",
    "rate_limit_headers",
    "ratelimit_field",
    "ratelimit_policy_field",
    "retry_after",
    "sf_integer",
    "sf_string",
    "whole_seconds",
    "window_seconds",
]

PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
QUOTA_EXCEEDED: Final = "https://iana.org/assignments/http-problem-types#quota-exceeded"
TEMPORARY_REDUCED_CAPACITY: Final = (
    "https://iana.org/assignments/http-problem-types#temporary-reduced-capacity"
)

# RFC 9651 §3.3.3: a String holds printable ASCII only.
_SF_STRING_CHARS: Final = re.compile(r"[\x20-\x7e]*")
# RFC 9651 §3.3.1: an Integer has at most 15 decimal digits.
_SF_INTEGER_MAX: Final = 999_999_999_999_999


def sf_string(value: str) -> str:
    """``value`` serialized as an RFC 9651 String: quoted, with ``\\`` and ``"`` escaped.

    Raises :class:`ValueError` for characters a String cannot hold (outside printable ASCII).
    """
    if not _SF_STRING_CHARS.fullmatch(value):
        raise ValueError(f"{value!r} cannot be a structured-field string (printable ASCII only)")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sf_integer(value: int) -> str:
    """``value`` serialized as an RFC 9651 Integer, clamped to the range the syntax allows."""
    return str(max(-_SF_INTEGER_MAX, min(_SF_INTEGER_MAX, value)))


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up to a whole number, at least 0 (NaN counts as 0)."""
    if math.isnan(seconds) or seconds <= 0:
        return 0
    if math.isinf(seconds):
        return _SF_INTEGER_MAX
    return min(_SF_INTEGER_MAX, math.ceil(seconds))


def window_seconds(policy: Policy) -> int:
    """The ``w`` of a policy: its window in whole seconds, rounded up, at least 1."""
    return max(1, -(-policy.window_us // 1_000_000))


def _reset_seconds(decision: Decision) -> int:
    """``t``: when refused, the retry time; else the time until the state is full again."""
    if not decision.allowed and decision.retry_after is not None:
        return whole_seconds(decision.retry_after)
    return whole_seconds(decision.reset_after)


# The members that repeat on every response of a policy are built once (bounded caches:
# policy names and limits are few; exceptions are not cached, so bad names still raise).
@functools.lru_cache(maxsize=1024)
def _policy_member(name: str, limit: int, window_us: int) -> str:
    window = max(1, -(-window_us // 1_000_000))  # window_seconds() of the policy
    return f"{sf_string(name)};q={sf_integer(limit)};w={sf_integer(window)}"


@functools.lru_cache(maxsize=1024)
def _name_item(name: str) -> str:
    return sf_string(name)


def ratelimit_policy_field(decisions: Sequence[Decision], policies: Mapping[str, Policy]) -> str:
    """The ``RateLimit-Policy`` value: one ``"name";q=..;w=..`` member per decision.

    ``policies`` maps each decision's policy name to its :class:`~ratewall.Policy` (for ``w``).
    """
    return ", ".join(
        [_policy_member(d.policy, d.limit, policies[d.policy].window_us) for d in decisions]
    )


def _ratelimit_member(decision: Decision) -> str:
    remaining: int | str = decision.remaining
    if not 0 <= decision.remaining <= _SF_INTEGER_MAX:
        remaining = sf_integer(max(0, decision.remaining))
    # _reset_seconds() inlined for the common case: a finite positive time in range.
    wait = decision.reset_after
    if not decision.allowed and decision.retry_after is not None:
        wait = decision.retry_after
    reset = math.ceil(wait) if 0 < wait <= _SF_INTEGER_MAX else whole_seconds(wait)
    return f"{_name_item(decision.policy)};r={remaining};t={reset}"


def ratelimit_field(decisions: Sequence[Decision]) -> str:
    """The ``RateLimit`` value: one ``"name";r=..;t=..`` member per decision."""
    return ", ".join([_ratelimit_member(d) for d in decisions])


def retry_after(decisions: Sequence[Decision]) -> int:
    """``Retry-After`` in whole seconds (at least 1) for the refused ones among ``decisions``.

    The longest retry time wins: the request can pass only when every policy allows it.
    With no refused decision (or none with a retry time) the answer is 1.
    """
    longest = 0
    for decision in decisions:
        if not decision.allowed:
            wait = decision.retry_after
            longest = max(longest, whole_seconds(decision.reset_after if wait is None else wait))
    return max(1, longest)


def most_restrictive(decisions: Sequence[Decision]) -> Decision:
    """The decision that binds: a refused one with the longest wait, else the one with the
    fewest remaining units (ties: the one that takes longest to recover)."""
    if not decisions:
        raise ValueError("most_restrictive needs at least one decision")
    return min(
        decisions,
        key=lambda d: (
            d.allowed,
            -_reset_seconds(d) if not d.allowed else d.remaining,
            -d.reset_after,
        ),
    )


def rate_limit_headers(
    decisions: Sequence[Decision],
    policies: Mapping[str, Policy],
    *,
    legacy: bool = False,
) -> list[tuple[str, str]]:
    """``RateLimit-Policy`` and ``RateLimit`` for ``decisions`` (and the legacy
    ``X-RateLimit-*`` fields for the most restrictive one when ``legacy`` is true).

    Returns an empty list for no decisions. ``Retry-After`` is not included: it belongs to
    refusals only (see :func:`retry_after`).
    """
    if not decisions:
        return []
    headers = [
        ("RateLimit-Policy", ratelimit_policy_field(decisions, policies)),
        ("RateLimit", ratelimit_field(decisions)),
    ]
    if legacy:
        binding = most_restrictive(decisions)
        headers += [
            ("X-RateLimit-Limit", str(binding.limit)),
            ("X-RateLimit-Remaining", str(max(0, binding.remaining))),
            ("X-RateLimit-Reset", str(_reset_seconds(binding))),
        ]
    return headers


_UNSAFE_VALUE: Final = re.compile("[\r\n\0]")  # what no field value may carry


# Per (policy, q, window): its RateLimit-Policy member as text and bytes, and its name as an
# sf-string, all checked once; bounded, as policies are few (a nonsensical limiter could vary q).
_Members = tuple[str, bytes, str]
_MEMBERS: dict[tuple[str, int, int], _Members] = {}
_MAX_MEMBERS: Final = 1024


def _members(key: tuple[str, int, int]) -> _Members:
    member = _policy_member(*key)
    if _UNSAFE_VALUE.search(member):  # only a nonsensical limit could put these there
        raise ValueError(f"RateLimit-Policy member {member!r} cannot be sent as is")
    members = (member, member.encode("latin-1"), _name_item(key[0]))
    if len(_MEMBERS) >= _MAX_MEMBERS:
        _MEMBERS.clear()
    _MEMBERS[key] = members
    return members


def _encoded_policy(name: str, limit: int, window_us: int) -> tuple[bytes, bytes]:
    """A policy's ``RateLimit-Policy`` member and its name as an sf-string, both encoded
    and checked: what every allowed response of that policy repeats. Raises as
    :func:`rate_limit_fields` would."""
    key = (name, limit, window_us)
    _, raw, item = _MEMBERS.get(key) or _members(key)
    return raw, item.encode("latin-1")


def _state_member(decision: Decision, item: str) -> str:
    """:func:`_ratelimit_member` for a decision whose name item is known; its fast case,
    an int ``r`` and a finite positive ``t`` in range, is digits only."""
    remaining = decision.remaining
    wait = decision.reset_after
    if not decision.allowed and decision.retry_after is not None:
        wait = decision.retry_after
    if type(remaining) is int and 0 <= remaining <= _SF_INTEGER_MAX and 0 < wait <= _SF_INTEGER_MAX:
        return f"{item};r={remaining};t={math.ceil(wait)}"
    member = _ratelimit_member(decision)
    if _UNSAFE_VALUE.search(member):
        raise ValueError(f"RateLimit member {member!r} cannot be sent as is")
    return member


def rate_limit_fields(
    decisions: Sequence[Decision], policies: Mapping[str, Policy]
) -> tuple[tuple[tuple[str, str], ...], list[tuple[bytes, bytes]]]:
    """``rate_limit_headers(decisions, policies)`` (without the legacy fields), and the same
    fields encoded as ``encode_headers`` of :mod:`ratewall.http.wire` would encode them.

    The hot path of every allowed request builds both at once, from members computed once
    per policy. Raises :class:`ValueError` (or whatever nonsense in the decisions causes)
    when a value could not be sent; the caller then takes the general path, which reports it.
    """
    if len(decisions) == 1:
        decision = decisions[0]
        key = (decision.policy, decision.limit, policies[decision.policy].window_us)
        policy_value, policy_raw, item = _MEMBERS.get(key) or _members(key)
        state_value = _state_member(decision, item)
    elif decisions:
        policy_members: list[str] = []
        raw_members: list[bytes] = []
        state_members: list[str] = []
        for decision in decisions:
            key = (decision.policy, decision.limit, policies[decision.policy].window_us)
            member, raw, item = _MEMBERS.get(key) or _members(key)
            policy_members.append(member)
            raw_members.append(raw)
            state_members.append(_state_member(decision, item))
        policy_value = ", ".join(policy_members)
        policy_raw = b", ".join(raw_members)
        state_value = ", ".join(state_members)
    else:
        return (), []
    return (
        (("RateLimit-Policy", policy_value), ("RateLimit", state_value)),
        [(b"ratelimit-policy", policy_raw), (b"ratelimit", state_value.encode("latin-1"))],
    )


def problem_body(
    *,
    status: int,
    title: str,
    detail: str,
    problem_type: str = "about:blank",
    violated_policies: Sequence[str] | None = None,
) -> bytes:
    """An RFC 9457 problem document as compact UTF-8 JSON.

    ``violated_policies``, when given, becomes the draft's ``violated-policies`` member.
    """
    document: dict[str, object] = {
        "type": problem_type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    if violated_policies is not None:
        document["violated-policies"] = list(violated_policies)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=True).encode("ascii")
