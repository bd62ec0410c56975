"""Store URLs are parsed once (``ratewall._urls.parse_url``) and never leak a password into
an error message. No server needed: these live here with the connection code they test."""

from __future__ import annotations

import pytest

from ratewall import ConfigError, Policy, RateLimiter
from ratewall._urls import parse_url, redacted, store_url_problem
from ratewall.stores._redispy import _sentinel_parts, parse_store_url
from ratewall.stores._resp import Endpoint

SECRET = "s3cr%40t-pw"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://user:pw@h", "redis://user:***@h"),
        ("redis://user@h", "redis://user@h"),
        (
            "rediss://u:p%40ss@[::1]:6380/1?ssl_cert_reqs=none",
            "rediss://u:***@[::1]:6380/1?ssl_cert_reqs=none",
        ),
        (
            "redis+sentinel://:pw@h1:26379,h2/m/1?sentinel_password=x&foo=1",
            "redis+sentinel://:***@h1:26379,h2/m/1?sentinel_password=***&foo=1",
        ),
        ("unix://:pw@/run/r.sock?db=2", "unix://:***@/run/r.sock?db=2"),
        ("memory://", "memory://"),
        ("not a url", "not a url"),
    ],
)
def test_redacted_hides_every_password(url: str, shown: str) -> None:
    assert redacted(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        f"redis://user:{SECRET}@h:notaport/0",
        f"redis://:{SECRET}@h:6379/abc",
        f"redis://:{SECRET}@h:6379/0?timeout=1",
        f"redis://:{SECRET}@h:6379/0?password={SECRET}",
        f"rediss://:{SECRET}@h/0?ssl_cert_reqs=maybe",
        f"redis+sentinel://:{SECRET}@h1/m/x?sentinel_password={SECRET}",
        f"redis+sentinel://:{SECRET}@h1?sentinel_password={SECRET}",
        f"redis+cluster://:{SECRET}@h1:7000?bogus=1",
        f"http://:{SECRET}@h1:7000",
        f"redis://:{SECRET}@[::1:6379/0",
    ],
)
def test_config_errors_never_carry_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_url(url)
    assert caught.value.field == "store"
    assert SECRET not in str(caught.value)
    assert "s3cr" not in str(caught.value)
    problem = store_url_problem(url)
    assert problem is None or "s3cr" not in problem
    with pytest.raises(ConfigError) as caught:
        RateLimiter({"p": Policy(1, 1)}, store=url)
    assert "s3cr" not in str(caught.value)


def test_every_consumer_reads_the_same_parts() -> None:
    url = "valkeys://alice:p%40ss@example.com:6380/3?ssl_cert_reqs=optional"
    parsed = parse_url(url)
    assert (parsed.kind, parsed.host, parsed.port, parsed.db) == ("redis", "example.com", 6380, 3)
    assert (parsed.username, parsed.password) == ("alice", "p@ss")
    assert parsed.tls is not None
    assert parsed.tls.cert_reqs == "optional"
    assert parsed.tls.check_hostname
    endpoint = Endpoint.from_url(url, 0.05)
    assert (endpoint.host, endpoint.port, endpoint.db, endpoint.password) == (
        "example.com",
        6380,
        3,
        "p@ss",
    )
    assert endpoint.tls
    assert endpoint.ssl_context is not None
    assert parse_store_url(url) == (
        "redis",
        "rediss://alice:p%40ss@example.com:6380/3?ssl_cert_reqs=optional",
    )
    assert "p@ss" not in repr(parsed)
    nodes, service, extra = _sentinel_parts(
        "redis+sentinel://:pw@h1:26380,[::1]/mymaster/2?sentinel_password=sp"
    )
    assert nodes == [("h1", 26380), ("::1", 26379)]
    assert service == "mymaster"
    assert extra == {"db": 2, "password": "pw", "sentinel_password": "sp"}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://h/0?ssl_ca_certs=ca.pem", "unknown parameter(s) ssl_ca_certs"),
        ("rediss://h/0?ssl_cert_reqs=sometimes", "expected none, optional or required"),
        ("rediss://h/0?ssl_check_hostname=maybe", "expected true or false"),
        ("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true", "needs a verified"),
        ("rediss://h/0?ssl_keyfile=k.pem", "ssl_keyfile without ssl_certfile"),
        ("rediss://h/0?ssl_ca_certs=a&ssl_ca_certs=b", "ssl_ca_certs= more than once"),
        ("rediss://h/0?ssl_ciphers=x", "unknown parameter(s) ssl_ciphers"),
        ("redis+cluster://h:7000?ssl_ca_certs=ca.pem", "unknown parameter(s) ssl_ca_certs"),
        ("redis+sentinel://h/m?ssl_ca_certs=ca.pem", "unknown parameter(s) ssl_ca_certs"),
    ],
)
def test_tls_parameters_are_checked(url: str, reason: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None
    assert reason in problem


@pytest.mark.parametrize(
    "url",
    [
        "rediss://h:6380/0?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem",
        "valkeys://h/0?ssl_cert_reqs=none",
        "rediss://h/0?ssl_cert_reqs=required&ssl_check_hostname=false",
        "rediss+cluster://h:7000?ssl_ca_certs=/ca.pem",
        "rediss+sentinel://:pw@h1,h2/m/0?sentinel_password=x&ssl_ca_certs=/ca.pem",
    ],
)
def test_tls_parameters_pass(url: str) -> None:
    assert store_url_problem(url) is None


def test_a_cluster_url_takes_several_seed_nodes() -> None:
    parsed = parse_url("rediss+cluster://u:pw@h1:7000,[::1]:7001,h3?ssl_cert_reqs=none")
    assert parsed.kind == "cluster"
    assert parsed.nodes == (("h1", 7000), ("::1", 7001), ("h3", 6379))
    assert (parsed.host, parsed.port, parsed.username, parsed.password) == ("h1", 7000, "u", "pw")
    assert redacted(parsed.url) == "rediss+cluster://u:***@h1:7000,[::1]:7001,h3?ssl_cert_reqs=none"


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://h1,h2:6379/0", "names several hosts"),
        ("rediss://h1:6379,h2/0", "names several hosts"),
        ("redis+cluster://h1:7000,h2:70000", "port '70000'"),
    ],
)
def test_several_hosts_only_where_they_mean_something(url: str, reason: str) -> None:
    problem = store_url_problem(url)
    assert problem is not None
    assert reason in problem
