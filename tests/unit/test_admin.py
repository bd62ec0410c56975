"""ratewall.admin without a server: decoding stored values as the scripts read them, the
decoded fields, key parsing, ranking and password redaction."""

from __future__ import annotations

import pytest

from ratewall.admin import (
    KeyState,
    decode_state,
    describe_state,
    identity_in_key,
    outcome_now,
    policy_pattern,
    rank,
    redacted,
)
from ratewall.algorithms import FUNCTIONS, rule_for
from ratewall.keys import KeyBuilder
from ratewall.policy import Policy
from ratewall.stores._values import encode_int, encode_value

NOW = 1_800_000_000_000_000  # µs
POLICIES = {
    "fixed_window": Policy(5, 60),
    "sliding_window": Policy(5, 60, "sliding_window"),
    "sliding_log": Policy(5, 60, "sliding_log"),
    "token_bucket": Policy(5, 60, "token_bucket", burst=8),
    "gcra": Policy(5, 60, "gcra", burst=8),
}
TAGS = {"fixed_window": "F", "sliding_window": "S", "token_bucket": "T", "gcra": "G"}


def _after(algorithm: str, times: list[int]) -> tuple[int, ...]:
    """The state the pure function leaves after a check of 1 at each of ``times``."""
    rule = rule_for(POLICIES[algorithm])
    state: tuple[int, ...] = ()
    for now in times:
        outcome = FUNCTIONS[rule.algorithm](state, now, 1, rule)
        if outcome.state is not None:
            state = outcome.state
    return state


def _log_entries(state: tuple[int, ...]) -> list[bytes]:
    total, entries = 0, []
    for at, cost in zip(state[::2], state[1::2], strict=True):
        total += cost
        entries.append(f"{encode_int(at)}:{encode_int(cost)}:{encode_int(total)}".encode())
    return entries


@pytest.mark.parametrize("algorithm", sorted(TAGS))
def test_string_values_decode_to_the_pure_functions_state(algorithm: str) -> None:
    state = _after(algorithm, [NOW, NOW + 1_500_000, NOW + 2_000_000])
    assert decode_state(algorithm, "string", encode_value(TAGS[algorithm], state)) == (state, None)


def test_a_sliding_logs_list_decodes_to_times_and_costs() -> None:
    state = _after("sliding_log", [NOW, NOW, NOW + 7])  # two admissions merged at NOW
    assert state == (NOW, 2, NOW + 7, 1)
    assert decode_state("sliding_log", "list", _log_entries(state)) == (state, None)


def test_no_key_is_no_state() -> None:
    assert decode_state("gcra", "none", None) == ((), None)


@pytest.mark.parametrize(
    ("algorithm", "kind", "value", "says"),
    [
        ("fixed_window", "string", encode_value("G", (NOW, 0)), "a gcra value"),
        ("gcra", "string", b"hello world", "a foreign value"),
        ("token_bucket", "string", b"T", "not in ratewall's format"),
        ("fixed_window", "list", None, "a Redis list"),
        ("sliding_log", "string", None, "not a sliding log's list"),
        ("sliding_log", "list", [b"garbage"], "not a sliding log's"),
        ("fixed_window", "hash", None, "a Redis hash"),
    ],
)
def test_values_the_scripts_ignore_are_no_state_with_a_reason(
    algorithm: str, kind: str, value: object, says: str
) -> None:
    state, note = decode_state(algorithm, kind, value)
    assert state == ()
    assert note is not None
    assert says in note


def _key_state(algorithm: str, state: tuple[int, ...], now: int) -> KeyState:
    return KeyState(
        "k", algorithm, now, "list" if algorithm == "sliding_log" else "string", 1.0, state
    )


def test_fixed_window_fields() -> None:
    state = _after("fixed_window", [NOW, NOW, NOW])
    fields = describe_state(
        _key_state("fixed_window", state, NOW + 20_000_000), rule_for(POLICIES["fixed_window"])
    )
    assert fields == {
        "exists": True,
        "type": "string",
        "ttl": 1.0,
        "count": 3,
        "window_end": (NOW + 60_000_000) / 1e6,
        "window_ends_in": 40.0,
        "counted_now": 3,
    }


def test_sliding_window_weighs_the_previous_window() -> None:
    rule = rule_for(POLICIES["sliding_window"])
    state = _after("sliding_window", [NOW, NOW, NOW, NOW, NOW + 60_000_000])
    assert state == (4, 1, NOW + 60_000_000)
    fields = describe_state(_key_state("sliding_window", state, NOW + 75_000_000), rule)
    assert fields["previous_count"] == 4
    assert fields["current_count"] == 1
    assert fields["weighted_count_now"] == 4 * 0.75 + 1  # a quarter of the window has passed
    # Two windows on, nothing counts any more.
    later = describe_state(_key_state("sliding_window", state, NOW + 200_000_000), rule)
    assert later["weighted_count_now"] == 0


def test_sliding_log_entries_and_what_still_counts() -> None:
    rule = rule_for(POLICIES["sliding_log"])
    state = _after("sliding_log", [NOW, NOW + 30_000_000])
    fields = describe_state(_key_state("sliding_log", state, NOW + 70_000_000), rule)
    assert fields["entries"] == [
        {"at": NOW / 1e6, "cost": 1, "live": False},
        {"at": (NOW + 30_000_000) / 1e6, "cost": 1, "live": True},
    ]
    assert fields["counted_now"] == 1


@pytest.mark.parametrize("algorithm", ["token_bucket", "gcra"])
def test_buckets_show_the_tokens_a_check_would_find(algorithm: str) -> None:
    """Both bucket algorithms are one bucket: after the same checks, the same tokens now,
    and the pure function's ``remaining`` is those tokens less the one it takes."""
    rule = rule_for(POLICIES[algorithm])
    state = _after(algorithm, [NOW] * 6)  # 8 - 6 = 2 tokens left
    later = NOW + 6_000_000  # 6 s refill half a token at 5 per minute
    fields = describe_state(_key_state(algorithm, state, later), rule)
    assert fields["tokens_now"] == 2.5
    assert outcome_now(_key_state(algorithm, state, later), rule).remaining == 1


def test_gcra_tat_is_the_theoretical_arrival_time() -> None:
    rule = rule_for(POLICIES["gcra"])
    state = _after("gcra", [NOW] * 3)  # 3 emission intervals of 12 s ahead
    fields = describe_state(_key_state("gcra", state, NOW), rule)
    assert fields["tat"] == (NOW + 36_000_000) / 1e6
    assert fields["tat_ahead"] == 36.0


def test_a_missing_key_describes_itself() -> None:
    fields = describe_state(KeyState("k", "gcra", NOW, "none", None), rule_for(POLICIES["gcra"]))
    assert fields == {"exists": False, "type": "none", "ttl": None}


def test_identity_in_key_reads_raw_identities_and_flags_digests() -> None:
    keys = KeyBuilder("app:v1")
    assert identity_in_key(keys.key("user_1", "login"), "app:v1", "login") == ("user_1", False)
    written, digest = identity_in_key(keys.key("a b", "login"), "app:v1", "login") or ("", False)
    assert digest
    assert written.startswith("~")
    assert identity_in_key(keys.key("user_1", "login"), "app:v1", "api") is None
    assert identity_in_key("app:v1:{}:login", "app:v1", "login") is None
    assert policy_pattern("app:v1", "login") == "app:v1:{*}:login"


def test_rank_puts_refused_and_fullest_first() -> None:
    rule = rule_for(POLICIES["fixed_window"])
    states = [
        _key_state("fixed_window", _after("fixed_window", [NOW] * count), NOW)
        for count in (1, 5, 3, 4)
    ]
    ranked = [outcome for _, outcome in rank(states, rule)]
    assert [(o.allowed, o.remaining) for o in ranked] == [
        (False, 0),
        (True, 0),
        (True, 1),
        (True, 3),
    ]


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380", "rediss://user:***@host:6380"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("unix:///tmp/redis.sock?db=1", "unix:///tmp/redis.sock?db=1"),
        ("unix://:pw@/tmp/redis.sock", "unix://:***@/tmp/redis.sock"),
        (
            "redis+sentinel://:pw@h1:26379,h2:26379/mymaster?sentinel_password=pw2",
            "redis+sentinel://:***@h1:26379,h2:26379/mymaster?sentinel_password=***",
        ),
    ],
)
def test_redacted_hides_passwords(url: str, shown: str) -> None:
    assert redacted(url) == shown
