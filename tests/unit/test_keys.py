"""Key names: SPEC §4."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ratewall.keys import KeyBuilder, encode_identity

SAFE = st.text(st.sampled_from("abcXYZ019._@-"), min_size=1, max_size=64)


def test_the_seed_identity_is_written_as_is() -> None:
    assert KeyBuilder().key("user_123", "login") == "ratelimit:{user_123}:login"
    assert KeyBuilder("rl:v2").key("a@b.c", "api") == "rl:v2:{a@b.c}:api"


def test_other_identities_get_a_digest_that_cannot_look_raw() -> None:
    for identity in ["", "a b", "{x}", "}", "é", "x" * 65, "a:b", "a\x00", "\U0001f600", "~"]:
        encoded = encode_identity(identity)
        assert encoded.startswith("~")
        assert len(encoded) == 65
        assert "{" not in encoded
        assert "}" not in encoded


@given(SAFE)
def test_safe_identities_are_kept(identity: str) -> None:
    assert encode_identity(identity) == identity


@settings(max_examples=500)
@given(st.text(max_size=200), st.text(max_size=200))
def test_encoding_is_injective(a: str, b: str) -> None:
    if a != b:
        assert encode_identity(a) != encode_identity(b)


def test_near_miss_identities_do_not_collide() -> None:
    near = ["user", "user ", " user", "User", "user\n", "x" * 64, "x" * 65, "x" * 66, "{user}"]
    near += ["a" * 10_000, "a" * 10_001, "ä", "a\u0308"]  # composed vs decomposed
    encodings = [encode_identity(identity) for identity in near]
    assert len(set(encodings)) == len(near)


def test_keys_are_bounded_and_hash_tagged() -> None:
    builder = KeyBuilder()
    for identity in ["u", "x" * 10_000, "{{}}", "é" * 500, "\udcff lone surrogate"]:
        key = builder.key(identity, "login")
        assert len(key) <= len("ratelimit::login") + 2 + 65
        tag = key[key.index("{") + 1 : key.index("}")]
        assert tag == encode_identity(identity)


def test_keys_are_remembered_per_policy_within_a_bound() -> None:
    builder = KeyBuilder()
    cache = builder.cache_for("login")
    assert builder.key("u", "login") == cache["u"] == "ratelimit:{u}:login"
    assert builder.key("u", "api") == "ratelimit:{u}:api"
    assert builder.cache_for("login") is cache
    assert "u" not in builder.cache_for("other")
    for i in range(20_000):
        builder.key(f"user{i}", "login")
    assert len(cache) <= 16_384
    assert builder.key("user0", "login") == "ratelimit:{user0}:login"
