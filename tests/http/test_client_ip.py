"""The client address: table-driven spoofing attempts, grouping, the per-peer cache."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ratewall.http import ClientIP, HttpRequest
from ratewall.http.client_ip import MAX_PROXY_HOPS

PROXIES = ("10.0.0.0/8", "2001:db8:ffff::/48")
XFF = "x-forwarded-for"
FWD = "forwarded"


@dataclass(frozen=True)
class Case:
    name: str
    peer: str | None
    headers: dict[str, list[str]]
    expected: str | None
    trusted: tuple[str, ...] = PROXIES
    header: str = XFF
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32


CASES = [
    # -- nobody trusted: forwarded headers are ignored, whatever they say ------------------
    Case("untrusted peer, no header", "203.0.113.7", {}, "203.0.113.7"),
    Case("untrusted peer sends XFF", "203.0.113.7", {XFF: ["1.1.1.1"]}, "203.0.113.7"),
    Case(
        "untrusted peer sends Forwarded",
        "203.0.113.7",
        {FWD: ["for=1.1.1.1"]},
        "203.0.113.7",
        header=FWD,
    ),
    Case("X-Real-IP is never read", "10.0.0.1", {"x-real-ip": ["1.1.1.1"]}, "10.0.0.1"),
    Case("default trusts nobody", "10.0.0.1", {XFF: ["1.1.1.1"]}, "10.0.0.1", trusted=()),
    # -- behind trusted proxies: right to left, first untrusted hop -------------------------
    Case("trusted proxy, one hop", "10.0.0.1", {XFF: ["203.0.113.7"]}, "203.0.113.7"),
    Case(
        "client prepends a fake hop",
        "10.0.0.1",
        {XFF: ["6.6.6.6, 203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "two trusted proxies",
        "10.0.0.2",
        {XFF: ["203.0.113.7, 10.0.0.1"]},
        "203.0.113.7",
    ),
    Case(
        "two proxies, client fakes a trusted-looking hop",
        "10.0.0.2",
        {XFF: ["10.9.9.9, 203.0.113.7, 10.0.0.1"]},
        "203.0.113.7",
    ),
    Case("trusted proxy, no header", "10.0.0.1", {}, "10.0.0.1"),
    Case("trusted proxy, empty header", "10.0.0.1", {XFF: [""]}, "10.0.0.1"),
    Case("every hop trusted: leftmost", "10.0.0.2", {XFF: ["10.0.0.5, 10.0.0.1"]}, "10.0.0.5"),
    Case("port after IPv4", "10.0.0.1", {XFF: ["203.0.113.7:5555"]}, "203.0.113.7"),
    Case(
        "bracketed IPv6 with port",
        "10.0.0.1",
        {XFF: ["[2001:db8:cafe::17]:4711"]},
        "2001:db8:cafe::/64",
    ),
    # -- garbage stops the walk at the last trusted hop ------------------------------------
    Case("garbage nearest the proxy", "10.0.0.1", {XFF: ["203.0.113.7, nonsense"]}, "10.0.0.1"),
    Case("garbage left of the client", "10.0.0.1", {XFF: ["nonsense, 203.0.113.7"]}, "203.0.113.7"),
    Case("unknown", "10.0.0.1", {XFF: ["unknown"]}, "10.0.0.1"),
    Case("host name", "10.0.0.1", {XFF: ["evil.example"]}, "10.0.0.1"),
    Case("leading zeros are not an address", "10.0.0.1", {XFF: ["010.0.0.1"]}, "10.0.0.1"),
    Case("empty element", "10.0.0.2", {XFF: ["203.0.113.7,,10.0.0.1"]}, "10.0.0.1"),
    Case("bad port", "10.0.0.1", {XFF: ["203.0.113.7:http"]}, "10.0.0.1"),
    Case("unclosed bracket", "10.0.0.1", {XFF: ["[2001:db8::1"]}, "10.0.0.1"),
    Case("IPv6 zone id dropped", "10.0.0.1", {XFF: ["fe80::1%eth0"]}, "fe80::/64"),
    # -- several header lines combine in order ---------------------------------------------
    Case(
        "client's own XFF line, proxy's line",
        "10.0.0.1",
        {XFF: ["6.6.6.6", "203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "proxy lines after the client",
        "10.0.0.2",
        {XFF: ["203.0.113.7", "10.0.0.1"]},
        "203.0.113.7",
    ),
    # -- RFC 7239 Forwarded ------------------------------------------------------------------
    Case(
        "Forwarded, several parameters",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60;proto=http;by=203.0.113.43"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, quoted IPv6 with port",
        "10.0.0.1",
        {FWD: ['for="[2001:db8:cafe::17]:4711"']},
        "2001:db8:cafe::/64",
        header=FWD,
    ),
    Case(
        "Forwarded, quoted IPv4 with port",
        "10.0.0.1",
        {FWD: ['for="192.0.2.43:47011"']},
        "192.0.2.43",
        header=FWD,
    ),
    Case(
        "Forwarded, case-insensitive parameter name",
        "10.0.0.1",
        {FWD: ["For=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, client fakes a first element",
        "10.0.0.1",
        {FWD: ["for=6.6.6.6, for=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, obfuscated hop",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60, for=_hidden"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case("Forwarded, unknown", "10.0.0.1", {FWD: ["for=unknown"]}, "10.0.0.1", header=FWD),
    Case(
        "Forwarded, element without for",
        "10.0.0.1",
        {FWD: ["proto=https"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded, through a trusted proxy that says by=",
        "10.0.0.2",
        {FWD: ['for=192.0.2.60, for="10.0.0.1";by=10.0.0.2']},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, unterminated quote swallowing the proxy's element",
        "10.0.0.1",
        {FWD: ['for="6.6.6.6, for=192.0.2.60']},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded, unterminated quote in the client's own line",
        "10.0.0.1",
        {FWD: ['for="6.6.6.6', "for=192.0.2.60"]},
        "192.0.2.60",
        header=FWD,
    ),
    Case(
        "Forwarded, trailing garbage",
        "10.0.0.1",
        {FWD: ["for=192.0.2.60 junk"]},
        "10.0.0.1",
        header=FWD,
    ),
    Case(
        "Forwarded ignored when proxies maintain XFF",
        "10.0.0.1",
        {FWD: ["for=6.6.6.6"]},
        "10.0.0.1",
    ),
    Case(
        "XFF ignored when proxies maintain Forwarded",
        "10.0.0.1",
        {XFF: ["6.6.6.6"]},
        "10.0.0.1",
        header=FWD,
    ),
    # -- address normalisation and grouping -------------------------------------------------
    Case("IPv6 grouped by /64", "2001:db8:1:2:aaaa::1", {}, "2001:db8:1:2::/64"),
    Case("IPv6 /56", "2001:db8:1:2ff::1", {}, "2001:db8:1:200::/56", ipv6_prefix=56),
    Case("IPv6 /128", "2001:db8::1", {}, "2001:db8::1", ipv6_prefix=128),
    Case("IPv4 /24 when asked", "203.0.113.7", {}, "203.0.113.0/24", ipv4_prefix=24),
    Case("IPv4-mapped peer", "::ffff:203.0.113.7", {}, "203.0.113.7"),
    Case(
        "IPv4-mapped proxy is trusted as IPv4",
        "::ffff:10.0.0.1",
        {XFF: ["::ffff:203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "trusted IPv6 proxy",
        "2001:db8:ffff::1",
        {XFF: ["2001:db8:1:2::99"]},
        "2001:db8:1:2::/64",
    ),
    # -- sizes and odd peers -------------------------------------------------------------------
    Case(
        "huge header: the proxy's end is what counts",
        "10.0.0.1",
        {XFF: ["1.1.1.1, " * 20_000 + "203.0.113.7"]},
        "203.0.113.7",
    ),
    Case("huge single garbage entry", "10.0.0.1", {XFF: ["x" * 100_000]}, "10.0.0.1"),
    Case(
        "many header lines",
        "10.0.0.1",
        {XFF: ["6.6.6.6"] * 5_000 + ["203.0.113.7"]},
        "203.0.113.7",
    ),
    Case(
        "more trusted hops than walked",
        "10.0.0.1",
        {XFF: [", ".join(f"10.0.{i // 250}.{i % 250 + 1}" for i in range(MAX_PROXY_HOPS + 5))]},
        "10.0.0.6",
    ),
    Case(
        "unix socket peer, trusted", None, {XFF: ["203.0.113.7"]}, "203.0.113.7", trusted=("unix",)
    ),
    Case("unix socket peer, not trusted", None, {XFF: ["203.0.113.7"]}, None),
    Case("non-IP peer is its own identity", "testclient", {XFF: ["1.1.1.1"]}, "testclient"),
    Case(
        "unix socket path, trusted",
        "/run/app.sock",
        {XFF: ["203.0.113.7"]},
        "203.0.113.7",
        trusted=("unix",),
    ),
    Case(
        "unix socket path, trusted, no header",
        "/run/app.sock",
        {},
        "/run/app.sock",
        trusted=("unix",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_client_ip(case: Case) -> None:
    source = ClientIP(
        trusted_proxies=case.trusted,
        header=case.header,  # type: ignore[arg-type]
        ipv6_prefix=case.ipv6_prefix,
        ipv4_prefix=case.ipv4_prefix,
    )
    request = HttpRequest("GET", "/", case.headers, client=case.peer)
    assert source(request) == case.expected


def test_there_are_enough_spoofing_cases() -> None:
    assert len(CASES) >= 20


def test_an_ipv6_subscriber_cannot_rotate_inside_its_block() -> None:
    source = ClientIP()
    seen = {source(HttpRequest("GET", "/", client=f"2001:db8:1:2::{n:x}")) for n in range(1, 300)}
    assert seen == {"2001:db8:1:2::/64"}
    assert source(HttpRequest("GET", "/", client="2001:db8:1:3::1")) != "2001:db8:1:2::/64"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, ValueError),
        ({"trusted_proxies": ["proxy.internal"]}, ValueError),
        ({"trusted_proxies": "10.0.0.0/8"}, TypeError),
        ({"ipv6_prefix": 0}, ValueError),
        ({"ipv6_prefix": 129}, ValueError),
        ({"ipv4_prefix": 33}, ValueError),
        ({"header": "x-real-ip"}, ValueError),
    ],
)
def test_client_ip_rejects_bad_settings(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        ClientIP(**kwargs)  # type: ignore[arg-type]


# -- the other sources -----------------------------------------------------------------------


PEERS = [
    "203.0.113.7",
    " 203.0.113.7 ",
    "2001:db8:1:2:3:4:5:6",
    "::ffff:192.0.2.1",
    "[2001:db8::1]:8080",
    "192.0.2.1:5000",
    "unix:/run/app.sock",
    "testclient",
    "",
    None,
]


@pytest.mark.parametrize("peer", PEERS)
def test_client_ip_trusting_nobody_answers_as_the_full_walk_does(peer: str | None) -> None:
    """Trusting no proxy, the identity is cached per peer; a ClientIP that trusts only a
    network no peer here belongs to takes the full walk, and must agree."""
    forwarded = {"x-forwarded-for": "198.51.100.1"}
    cached = ClientIP(ipv6_prefix=48)
    walked = ClientIP(trusted_proxies=["192.0.2.255/32"], ipv6_prefix=48)
    for _ in range(2):  # the first call fills the cache, the second reads it
        request = HttpRequest("GET", "/", forwarded, client=peer)
        assert cached(request) == walked(request)


def test_client_ip_cache_stays_bounded() -> None:
    source = ClientIP()
    for index in range(5000):
        assert source(HttpRequest("GET", "/", client=f"10.0.{index // 256}.{index % 256}")) == (
            f"10.0.{index // 256}.{index % 256}"
        )
    assert len(source._peers) <= 4096
