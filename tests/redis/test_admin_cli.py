"""The admin commands (inspect, reset, top) on real servers, called in-process."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from ratewall import RateLimiter
from ratewall.admin import AdminStore
from ratewall.algorithms import FUNCTIONS, rule_for
from ratewall.cli import main
from ratewall.config import load_config
from ratewall.embedded import LocalServer

from .._timing import STORE_TIMEOUT

ALGORITHMS = ("fixed_window", "sliding_window", "sliding_log", "token_bucket", "gcra")
Run = Callable[..., tuple[int, str, str]]


def _config(tmp_path: Path, store: str | None = None, prefix: str = "ratelimit") -> Path:
    policies = {
        "fw": {"limit": 5, "window": 60},
        "sw": {"limit": 5, "window": 60, "algorithm": "sliding_window"},
        "sl": {"limit": 5, "window": 60, "algorithm": "sliding_log"},
        "tb": {"limit": 5, "window": 60, "algorithm": "token_bucket", "burst": 8},
        "gc": {"limit": 5, "window": 60, "algorithm": "gcra", "burst": 8},
    }
    data: dict[str, object] = {"policies": policies, "key_prefix": prefix}
    if store is not None:
        data["store"] = store
        data["timeout"] = STORE_TIMEOUT  # the limiters built from it count, they do not time
    path = tmp_path / ("limits.json" if store else "memory.json")
    path.write_text(json.dumps(data))
    return path


NAMES = dict(zip(ALGORITHMS, ("fw", "sw", "sl", "tb", "gc"), strict=True))


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Run:
    def run(*argv: str) -> tuple[int, str, str]:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return run


def _server_now(client: redis.Redis) -> int:
    seconds, micros = client.time()
    return int(seconds) * 1_000_000 + int(micros)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_inspect_decodes_the_state_real_checks_left(
    algorithm: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    """Checks at injected instants (near the server's clock, so TTLs stay real) leave a
    state that decodes to exactly what ratewall.algorithms computes for the same instants."""
    name = NAMES[algorithm]
    path = _config(tmp_path, redis_url)
    start = _server_now(redis_client)
    times = [start, start, start + 1_500_000, start + 2_000_001]
    at = iter(times)
    with RateLimiter.from_config(path, clock=lambda: next(at) / 1_000_000) as limiter:
        for _ in times:
            assert limiter.check("user_1", name).allowed
    rule = rule_for(load_config(path).policies[name])
    expected: tuple[int, ...] = ()
    for now in times:
        outcome = FUNCTIONS[rule.algorithm](expected, now, 1, rule)
        expected = outcome.state or expected
    key = f"ratelimit:{{user_1}}:{name}"
    with AdminStore(redis_url, timeout=2.0) as store:
        state = store.read(key, algorithm)
    assert state.state == expected
    assert state.note is None
    assert state.ttl is not None
    assert 0 < state.ttl <= 120

    status, out, err = run("inspect", "user_1", name, "--config", str(path), "--json")
    assert (status, err) == (0, "")
    shown = json.loads(out)
    assert {"policy", "identity", "key", "allowed", "remaining", "reset_after", "state"} <= set(
        shown
    )
    assert (shown["policy"], shown["identity"], shown["key"]) == (name, "user_1", key)
    assert shown["state"]["exists"] is True
    # The peek (through a real limiter) agrees with the pure function on the decoded state.
    with AdminStore(redis_url, timeout=2.0) as store:
        now_state = store.read(key, algorithm)
    outcome = FUNCTIONS[rule.algorithm](now_state.state, now_state.now, 1, rule)
    assert shown["allowed"] is outcome.allowed
    assert abs(shown["remaining"] - outcome.remaining) <= 1  # a token may refill in between
    assert redis_client.exists(key) == 1  # a peek consumes nothing, removes nothing


def test_inspect_fields_per_algorithm(redis_url: str, tmp_path: Path, run: Run) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        for name in NAMES.values():
            for _ in range(3):
                limiter.check("user_1", name)
    fields = {}
    for name in NAMES.values():
        status, out, _ = run("inspect", "user_1", name, "--config", str(path), "--json")
        assert status == 0
        fields[name] = json.loads(out)["state"]
    assert fields["fw"]["count"] == 3
    assert fields["fw"]["window_ends_in"] <= 60
    assert fields["sw"]["current_count"] == 3
    assert len(fields["sl"]["entries"]) <= 3
    assert fields["sl"]["counted_now"] == 3
    assert 5 <= fields["tb"]["tokens_now"] < 5.1
    assert 5 <= fields["gc"]["tokens_now"] < 5.1
    assert fields["gc"]["tat_ahead"] <= 36


def test_inspect_human_output(redis_url: str, tmp_path: Path, run: Run) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        for _ in range(5):
            limiter.check("user_1", "fw")
    status, out, _ = run("inspect", "user_1", "fw", "--config", str(path))
    assert status == 0
    assert "key:      ratelimit:{user_1}:fw" in out
    assert "count: 5" in out
    assert "would be REFUSED (0 of 5 left)" in out

    status, out, _ = run("inspect", "nobody", "gc", "--config", str(path))
    assert status == 0
    assert "no key: nothing stored, the quota is full" in out
    assert "would be ALLOWED, leaving 7 of 8" in out


def test_inspect_shows_a_digest_key_and_a_foreign_value(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        limiter.check("user with spaces", "fw")
    status, out, _ = run("inspect", "user with spaces", "fw", "--config", str(path))
    assert status == 0
    assert "{~" in out
    assert "cannot be read back" in out
    redis_client.set("ratelimit:{user_2}:fw", "something else", ex=60)
    status, out, _ = run("inspect", "user_2", "fw", "--config", str(path), "--json")
    state = json.loads(out)["state"]
    assert state["exists"] is True
    assert "no state" in state["note"]


def test_a_store_that_does_not_answer_exits_1_without_the_password(
    fresh_server: LocalServer, tmp_path: Path, run: Run
) -> None:
    url = fresh_server.url.replace("redis://", "redis://:hunter2@", 1)
    path = _config(tmp_path)
    fresh_server.stop()
    status, out, err = run("inspect", "user_1", "fw", "--config", str(path), "--store", url)
    assert status == 1
    assert out == ""
    assert "did not answer" in err
    assert "hunter2" not in err
    assert ":***@" in err


def test_bad_input_exits_2(redis_url: str, tmp_path: Path, run: Run) -> None:
    path = _config(tmp_path, redis_url)
    status, _, err = run("inspect", "user_1", "nope", "--config", str(path))
    assert status == 2
    assert "unknown policy 'nope'" in err
    assert "known policies: fw, sw, sl, tb, gc" in err

    status, _, err = run("inspect", "user_1", "fw", "--config", str(tmp_path / "missing.json"))
    assert status == 2
    assert "no such file" in err

    status, _, err = run("inspect", "user_1", "fw", "--config", str(_config(tmp_path)))
    assert status == 2
    assert "memory store" in err
    assert "--store" in err

    status, _, _ = run("inspect", "user_1", "fw", "--config", str(path), "--timeout", "0")
    assert status == 2


def test_reset_confirms_and_removes(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        for _ in range(5):
            limiter.check("user_1", "fw")
        limiter.check("user_2", "fw")
        assert not limiter.check("user_1", "fw").allowed
    status, out, err = run("reset", "user_1", "fw", "--config", str(path))
    assert (status, err) == (0, "")
    assert "removed ratelimit:{user_1}:fw (policy fw), which held:" in out
    assert "count: 5" in out
    assert "1 of 1 key removed" in out
    assert redis_client.exists("ratelimit:{user_1}:fw") == 0
    assert redis_client.exists("ratelimit:{user_2}:fw") == 1  # only that identity
    with RateLimiter.from_config(path) as limiter:
        assert limiter.check("user_1", "fw").remaining == 4

    status, out, _ = run("reset", "user_1", "sw", "--config", str(path))
    assert status == 0
    assert "nothing stored at ratelimit:{user_1}:sw (policy sw): nothing removed" in out


def test_reset_all_policies_json(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        for name in ("fw", "sl", "gc"):
            limiter.check("user_1", name)
        limiter.check("user_2", "sl")
    status, out, _ = run("reset", "user_1", "--all-policies", "--config", str(path), "--json")
    assert status == 0
    shown = json.loads(out)
    assert shown["identity"] == "user_1"
    removed = {entry["policy"]: entry["removed"] for entry in shown["keys"]}
    assert removed == {"fw": True, "sw": False, "sl": True, "tb": False, "gc": True}
    log = next(entry for entry in shown["keys"] if entry["policy"] == "sl")
    assert log["state"]["counted_now"] == 1
    assert list(redis_client.scan_iter("ratelimit:{user_1}:*")) == []
    assert redis_client.exists("ratelimit:{user_2}:sl") == 1


def test_reset_needs_one_policy_or_all(redis_url: str, tmp_path: Path, run: Run) -> None:
    path = _config(tmp_path, redis_url)
    status, _, err = run("reset", "user_1", "--config", str(path))
    assert status == 2
    assert "--all-policies" in err
    status, _, _ = run("reset", "user_1", "fw", "--all-policies", "--config", str(path))
    assert status == 2
    status, _, err = run("reset", "user_1", "nope", "--config", str(path))
    assert status == 2
    assert "known policies: fw, sw, sl, tb, gc" in err


def test_reset_on_a_stopped_store_exits_1(
    fresh_server: LocalServer, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, fresh_server.url)
    fresh_server.stop()
    status, _, err = run("reset", "user_1", "--all-policies", "--config", str(path))
    assert status == 1
    assert "did not answer" in err


def test_top_ranks_the_closest_to_the_limit_first(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        for identity, checks in (("light", 1), ("over", 7), ("heavy", 4), ("mid", 2)):
            for _ in range(checks):
                limiter.check(identity, "fw")
        for _ in range(3):
            limiter.check("not a plain identity", "fw")
        limiter.check("other_policy", "sw")
    redis_client.set("unrelated", "x", ex=60)
    status, out, err = run("top", "--policy", "fw", "--config", str(path), "--json")
    assert (status, err) == (0, "")
    shown = json.loads(out)
    rows = shown["entries"]
    assert [(r["identity"], r["available"], r["allowed"]) for r in rows] == [
        ("over", 0, False),
        ("heavy", 1, True),
        (None, 2, True),  # the digest one
        ("mid", 3, True),
        ("light", 4, True),
    ]
    digest = rows[2]
    assert digest["digest"] is True
    assert digest["key"].startswith("ratelimit:{~")
    scan = shown["scan"]
    assert scan["complete"] is True
    assert scan["keys_found"] == 5
    assert scan["calls"] >= 1
    assert scan["dbsize"] == 7
    assert "SCAN" in shown["cost"]

    status, out, _ = run("top", "--policy", "fw", "--config", str(path), "--limit", "2")
    assert status == 0
    lines = out.splitlines()
    assert lines[0].startswith("policy fw: 5 per 1m (fixed_window); store ")
    assert lines[1].startswith("cost: 1 SCAN call (MATCH ratelimit:{*}:fw COUNT 1000)")
    assert "the whole keyspace (7 keys) was walked" in lines[1]
    assert "0/5 refused" in lines[3]
    assert lines[3].endswith("over")
    assert lines[4].endswith("heavy")
    assert len(lines) == 5


def test_top_scan_is_bounded_and_says_so(
    redis_url: str, redis_client: redis.Redis, tmp_path: Path, run: Run
) -> None:
    path = _config(tmp_path, redis_url)
    with redis_client.pipeline(transaction=False) as pipe:
        for number in range(6000):
            pipe.set(f"filler:{number}", "x", ex=120)
        pipe.execute()
    with RateLimiter.from_config(path) as limiter:
        limiter.check("user_1", "gc")
    status, out, _ = run(
        "top", "--policy", "gc", "--config", str(path), "--scan-limit", "100", "--json"
    )
    assert status == 0
    scan = json.loads(out)["scan"]
    assert (scan["calls"], scan["count"], scan["complete"]) == (1, 100, False)
    status, out, _ = run("top", "--policy", "gc", "--config", str(path), "--scan-limit", "2500")
    assert status == 0
    assert "3 SCAN calls (MATCH ratelimit:{*}:gc COUNT 1000)" in out
    assert "stopped at --scan-limit 2500: about 3000 of 6001 keys examined" in out
    assert "raise --scan-limit" in out
    # With room enough, the whole keyspace is walked and the key is found.
    status, out, _ = run("top", "--policy", "gc", "--config", str(path), "--json")
    shown = json.loads(out)
    assert shown["scan"]["complete"] is True
    assert [row["identity"] for row in shown["entries"]] == ["user_1"]


def test_top_errors(fresh_server: LocalServer, tmp_path: Path, run: Run) -> None:
    path = _config(tmp_path, fresh_server.url)
    status, out, _ = run("top", "--policy", "fw", "--config", str(path))
    assert status == 0
    assert "no identity of this policy holds state" in out
    status, _, err = run("top", "--policy", "nope", "--config", str(path))
    assert status == 2
    assert "known policies" in err
    status, _, err = run("top", "--policy", "fw", "--config", str(_config(tmp_path)))
    assert status == 2
    assert "memory store" in err
    status, _, _ = run("top", "--policy", "fw", "--config", str(path), "--limit", "0")
    assert status == 2
    fresh_server.stop()
    status, _, err = run("top", "--policy", "fw", "--config", str(path))
    assert status == 1
    assert "did not answer" in err


@pytest.mark.parametrize(
    "url",
    [
        "redis://:hunter2@127.0.0.1:1/0",
        "redis+cluster://:hunter2@127.0.0.1:1",
        "redis+sentinel://:hunter2@127.0.0.1:1/mymaster",
    ],
)
def test_every_topology_unreachable_exits_1(url: str, tmp_path: Path, run: Run) -> None:
    """Nothing listens on port 1: a refused connection, reported in one line without the
    password or the client's repr, whatever kind of client the URL needs."""
    path = _config(tmp_path)
    status, out, err = run("top", "--policy", "fw", "--config", str(path), "--store", url)
    assert (status, out) == (1, "")
    assert err.startswith("ratewall: error: the store ")
    assert "did not answer within 2s" in err
    assert "hunter2" not in err
    assert "<redis" not in err
    assert len(err.splitlines()) == 1


def _variants_config(tmp_path: Path, store: str) -> Path:
    plans = {
        "limit": 5,
        "window": 60,
        "tiers": {"pro": {"limit": 50}},
        "overrides": {"partner": {"limit": 500}},
        "exempt": ["health"],
    }
    data = {
        "store": store,
        "key_prefix": f"variants-{uuid.uuid4().hex[:8]}",  # the server outlives each test
        "timeout": 2.0,
        "policies": {"plans": plans, "trial": {"limit": 1, "window": 60, "shadow": True}},
        "routes": [{"match": "POST /login", "identity": "header:X-User-ID", "policies": ["plans"]}],
    }
    path = tmp_path / "variants.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("identity", "tier", "variant", "limit"),
    [
        ("user_1", None, "policy", 5),
        ("user_1", "pro", "tier", 50),
        ("partner", None, "override", 500),
        ("partner", "pro", "override", 500),  # an override wins over a tier
        ("health", "pro", "exempt", 5),
    ],
)
def test_inspect_shows_which_limits_apply(
    redis_url: str,
    tmp_path: Path,
    run: Run,
    identity: str,
    tier: str | None,
    variant: str,
    limit: int,
) -> None:
    path = _variants_config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        limiter.check(identity, "plans", tier=tier)
    tier_args = ("--tier", tier) if tier else ()
    inspect = ("inspect", identity, "plans", "--config", str(path), *tier_args)
    status, out, err = run(*inspect, "--json")
    assert (status, err) == (0, "")
    shown = json.loads(out)
    assert (shown["variant"], shown["tier"], shown["limit"]) == (variant, tier, limit)
    assert shown["allowed"] is True
    # A peek answers as a check now would: one unit used, one more asked for.
    assert shown["remaining"] == (limit if variant == "exempt" else limit - 2)
    assert shown["state"]["exists"] is (variant != "exempt")

    status, out, _ = run(*inspect)
    assert status == 0
    applies = next(line for line in out.splitlines() if line.startswith("applies:"))
    expected = {
        "policy": "the policy's own limits: 5 per",
        "tier": "the tier 'pro': 50 per",
        "override": "the override for 'partner'",
        "exempt": "exempt: 'health' is always allowed",
    }[variant]
    assert expected in applies


def test_inspect_shows_shadow_mode_and_rejects_an_unknown_tier(
    redis_url: str, tmp_path: Path, run: Run
) -> None:
    path = _variants_config(tmp_path, redis_url)
    with RateLimiter.from_config(path) as limiter:
        assert limiter.check("user_1", "trial").allowed
        assert limiter.check("user_1", "trial").shadowed
    status, out, err = run("inspect", "user_1", "trial", "--config", str(path), "--json")
    assert (status, err) == (0, "")
    shown = json.loads(out)
    assert (shown["shadow"], shown["shadowed"], shown["allowed"], shown["remaining"]) == (
        True,
        True,
        True,
        0,
    )
    status, out, _ = run("inspect", "user_1", "trial", "--config", str(path))
    assert "shadow mode: the request passes" in out

    status, out, err = run("inspect", "user_1", "plans", "--config", str(path), "--tier", "gold")
    assert (status, out) == (2, "")
    assert "unknown tier 'gold' for policy 'plans'; its tiers: pro" in err


def test_explain_shows_the_variant_of_each_policy(redis_url: str, tmp_path: Path, run: Run) -> None:
    path = _variants_config(tmp_path, redis_url)
    request = ("explain", "POST", "/login", "--config", str(path))
    status, out, err = run(*request, "-H", "X-User-ID: partner", "--tier", "pro", "--json")
    assert (status, err) == (0, "")
    entry = json.loads(out)["policies"][0]
    assert (entry["variant"], entry["tier"], entry["limit"], entry["allowed"]) == (
        "override",
        "pro",
        500,
        True,
    )
    status, out, err = run(*request, "-H", "X-User-ID: health")
    assert status == 0
    assert "applies   exempt: 'health' is always allowed" in out
    assert "the identity is exempt" in out
    status, out, err = run(*request, "-H", "X-User-ID: user_1", "--tier", "gold", "--json")
    assert status == 0
    report = json.loads(out)
    assert report["policies"][0]["variant"] == "policy"
    assert "policy 'plans' defines no tier 'gold': shown with its own limits" in report["notes"]
