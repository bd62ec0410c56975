"""Clients of ``ratewall serve``'s HTTP API with :class:`~ratewall.RateLimiter`'s names, so
an application moves from an in-process limiter to the service by changing one constructor::

    limiter = ServiceClient("http://127.0.0.1:8080")        # instead of RateLimiter(...)
    decision = limiter.check("user_123", "login")
    decisions = limiter.check_many([("user_123", "login"), ("user_123", "login_ip", 2)])

    async with AsyncServiceClient("http://127.0.0.1:8080") as limiter:
        decision = await limiter.check("user_123", "login")

Unknown policies raise :class:`KeyError` and bad costs :class:`ValueError`, as the library
does; the service failing or unreachable raises :class:`~ratewall.StoreError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import Any, Self

import httpx

from ..decision import Decision
from ..errors import StoreError

__all__ = ["AsyncServiceClient", "ServiceClient"]

Item = tuple[str, str] | tuple[str, str, int]


def _body(items: Sequence[Item], peek: bool = False) -> dict[str, Any]:
    checks = []
    for item in items:
        cost = item[2] if len(item) > 2 else 1
        checks.append({"policy": item[1], "identity": item[0], "cost": 0 if peek else cost})
    return {"checks": checks}


def _decisions(response: httpx.Response) -> list[Decision]:
    if response.status_code == 400:
        problem = response.json()
        field = (problem.get("invalid-params") or [{}])[0].get("name", "")
        if field.endswith(".policy"):
            raise KeyError(problem.get("detail"))
        raise ValueError(problem.get("detail", "bad request"))
    if response.status_code != 200:
        raise StoreError(f"the rate-limit service answered {response.status_code}: {response.text}")
    return [
        Decision(
            bool(d["allowed"]),
            str(d["policy"]),
            int(d["limit"]),
            int(d["remaining"]),
            float(d["reset_after"]),
            None if d["retry_after"] is None else float(d["retry_after"]),
            bool(d.get("degraded", False)),
            bool(d.get("shadowed", False)),
        )
        for d in response.json()["decisions"]
    ]


def _reset_done(response: httpx.Response) -> None:
    if response.status_code == 400:
        raise KeyError(response.json().get("detail"))
    if response.status_code != 204:
        raise StoreError(f"the rate-limit service answered {response.status_code}: {response.text}")


def _failed(url: str, error: Exception) -> StoreError:
    return StoreError(f"the rate-limit service at {url} did not answer: {error}")


class ServiceClient:
    """A synchronous client; thread-safe (one connection pool). ``token`` is the admin
    bearer token ``reset`` may need."""

    def __init__(self, url: str, *, timeout: float = 1.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, timeout=timeout, headers=headers)

    def _post(self, path: str, body: object) -> httpx.Response:
        try:
            return self._http.post(path, json=body)
        except httpx.HTTPError as error:
            raise _failed(self.url, error) from error

    def check(self, identity: str, policy: str, cost: int = 1) -> Decision:
        """Decide a request of ``cost`` units; consumes them only if allowed."""
        return self.check_many([(identity, policy, cost)])[0]

    def peek(self, identity: str, policy: str, cost: int = 1) -> Decision:
        """The decision :meth:`check` would give now, consuming nothing."""
        return _decisions(self._post("/v1/check", _body([(identity, policy, cost)], peek=True)))[0]

    def check_many(self, items: Sequence[Item]) -> list[Decision]:
        """All or nothing, as :meth:`ratewall.RateLimiter.check_many`, in one HTTP call."""
        return _decisions(self._post("/v1/check", _body(items)))

    def reset(self, identity: str, policy: str) -> None:
        _reset_done(self._post("/v1/reset", {"policy": policy, "identity": identity}))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncServiceClient:
    """The asyncio twin of :class:`ServiceClient`: the same names, awaitable."""

    def __init__(self, url: str, *, timeout: float = 1.0, token: str | None = None) -> None:
        self.url = url.rstrip("/")
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=self.url, timeout=timeout, headers=headers)

    async def _post(self, path: str, body: object) -> httpx.Response:
        try:
            return await self._http.post(path, json=body)
        except httpx.HTTPError as error:
            raise _failed(self.url, error) from error

    async def check(self, identity: str, policy: str, cost: int = 1) -> Decision:
        """Decide a request of ``cost`` units; consumes them only if allowed."""
        return (await self.check_many([(identity, policy, cost)]))[0]

    async def peek(self, identity: str, policy: str, cost: int = 1) -> Decision:
        """The decision :meth:`check` would give now, consuming nothing."""
        body = _body([(identity, policy, cost)], peek=True)
        return _decisions(await self._post("/v1/check", body))[0]

    async def check_many(self, items: Sequence[Item]) -> list[Decision]:
        """All or nothing, as :meth:`ratewall.AsyncRateLimiter.check_many`, in one call."""
        return _decisions(await self._post("/v1/check", _body(items)))

    async def reset(self, identity: str, policy: str) -> None:
        _reset_done(await self._post("/v1/reset", {"policy": policy, "identity": identity}))

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
