"""The service's HTTP/JSON API, a plain ASGI application (``openapi.yaml`` documents it).

``POST /v1/check``  a batch of checks, answered in order; the items with a cost are decided
                    all or nothing (as ``check_many``), cost 0 peeks
``POST /v1/reset``  forget one identity's state for one policy (an admin endpoint)
``POST /json``      envoyproxy/ratelimit's JSON endpoint: a proto3-JSON RateLimitRequest,
                    answered 200 (OK) or 429 (OVER_LIMIT)
``GET /healthz``    200 while the process runs
``GET /readyz``     200 when the store answers, else 503
``GET /metrics``    Prometheus text: ratewall's metrics and the per-rule stats (501 without
                    prometheus-client)

A request the service cannot decide gets 400 with an RFC 9457 ``application/problem+json``
body naming the field (``invalid-params``) and consumes nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, Final

from ..errors import StoreError
from .engine import Engine

__all__ = ["MAX_BATCH", "MAX_BODY", "ServiceApp"]

_log = logging.getLogger("ratewall.service")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: At most this many checks in one ``/v1/check`` batch.
MAX_BATCH: Final = 1000
#: At most this many bytes of request body.
MAX_BODY: Final = 1 << 20
MAX_IDENTITY: Final = 4096
_JSON: Final = b"application/json"
_PROBLEM: Final = b"application/problem+json"
_CHECK_FIELDS: Final = frozenset({"policy", "identity", "cost"})


class _ProblemError(Exception):
    def __init__(self, status: int, title: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.field = field

    def body(self) -> bytes:
        document: dict[str, object] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.field is not None:
            document["invalid-params"] = [{"name": self.field, "reason": self.detail}]
        return json.dumps(document, separators=(",", ":")).encode()


_INTERNAL: Final = _ProblemError(500, "Internal Server Error", "see the service log")
_RETRY_AFTER: Final = ((b"retry-after", b"1"),)


def _bad(detail: str, field: str | None = None) -> _ProblemError:
    return _ProblemError(400, "Bad Request", detail, field)


class ServiceApp:
    """The ASGI application. ``admin_token``: the bearer token ``/v1/reset`` requires
    (``None``: none required; ``""``: admin endpoints disabled)."""

    def __init__(
        self,
        engine: Engine,
        *,
        admin_token: str | None = None,
        metrics: Callable[[], bytes | None] | None = None,
        response_headers: bool = True,
    ) -> None:
        self.engine = engine
        self.admin_token = admin_token
        self.draining = False
        self._metrics = metrics
        self._headers = response_headers
        self._routes: dict[tuple[str, str], Callable[[bytes, Scope], Awaitable[_Reply]]] = {
            ("POST", "/v1/check"): self._check,
            ("POST", "/v1/reset"): self._reset,
            ("POST", "/json"): self._json,
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics_text,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method, path = scope["method"], scope["path"]
        handler = self._routes.get((method, path))
        try:
            if handler is None:
                if any(route_path == path for _, route_path in self._routes):
                    raise _ProblemError(
                        405, "Method Not Allowed", f"{method} is not allowed on {path}"
                    )
                raise _ProblemError(404, "Not Found", f"no endpoint {path}")
            body = await _read_body(receive, scope)
            reply = await handler(body, scope)
        except _ProblemError as problem:
            # A 503 (the store failed, or the service drains) invites a retry, as the
            # middleware's does: after about the circuit breaker's cooldown.
            retry = _RETRY_AFTER if problem.status == 503 else ()
            reply = (problem.status, _PROBLEM, problem.body(), retry)
        except Exception:  # noqa: BLE001 - a bug answers 500 and leaves the worker serving
            _log.exception("%s %s failed", method, path)
            reply = (500, _PROBLEM, _INTERNAL.body(), ())
        status, content_type, payload, extra = reply
        headers = [(b"content-type", content_type), (b"content-length", b"%d" % len(payload))]
        headers.extend(extra)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    # -- endpoints ------------------------------------------------------------------------

    async def _check(self, body: bytes, scope: Scope) -> _Reply:
        document = _json_object(body)
        unknown = set(document) - {"checks"}
        if unknown:
            raise _bad(f"unknown field {sorted(unknown)[0]!r}", sorted(unknown)[0])
        checks = document.get("checks")
        if not isinstance(checks, list) or not checks:
            raise _bad("must be a non-empty list of {policy, identity, cost}", "checks")
        if len(checks) > MAX_BATCH:
            raise _bad(f"{len(checks)} checks in one batch; at most {MAX_BATCH}", "checks")
        policies = self.engine.rules.limiter.policies
        items = [_check_item(item, f"checks[{i}]", policies) for i, item in enumerate(checks)]
        try:
            decisions = await self.engine.check_batch(items)
        except StoreError as error:
            raise _ProblemError(503, "Service Unavailable", f"the store failed: {error}") from None
        payload = {
            "decisions": [
                {
                    "allowed": d.allowed,
                    "policy": d.policy,
                    "limit": d.limit,
                    "remaining": d.remaining,
                    "reset_after": d.reset_after,
                    "retry_after": d.retry_after,
                    "degraded": d.degraded,
                    "shadowed": d.shadowed,
                }
                for d in decisions
            ]
        }
        return 200, _JSON, _dump(payload), ()

    async def _reset(self, body: bytes, scope: Scope) -> _Reply:
        self._authorize(scope)
        document = _json_object(body)
        for name in document:
            if name not in ("policy", "identity"):
                raise _bad(f"unknown field {name!r}", name)
        policies = self.engine.rules.limiter.policies
        policy = _policy_name(document.get("policy"), "policy", policies)
        identity = _identity(document.get("identity"), "identity")
        try:
            await self.engine.rules.limiter.reset(identity, policy)
        except StoreError as error:
            raise _ProblemError(503, "Service Unavailable", f"the store failed: {error}") from None
        return 204, _JSON, b"", ()

    async def _json(self, body: bytes, scope: Scope) -> _Reply:
        from envoy.service.ratelimit.v3 import rls_pb2
        from google.protobuf import json_format
        from google.protobuf.message import DecodeError

        from ._json import parse_request, response_json
        from .rls import BadRequestError, decide

        try:
            request = parse_request(body.decode("utf-8", "replace") or "{}")
        except (json_format.ParseError, DecodeError, RecursionError) as error:
            raise _bad(f"not a RateLimitRequest in proto3 JSON: {error}") from None
        try:
            response = await decide(self.engine, request, headers=self._headers)
        except BadRequestError as error:
            raise _bad(str(error)) from None
        except StoreError as error:
            raise _ProblemError(503, "Service Unavailable", f"the store failed: {error}") from None
        payload = response_json(response)
        over = response.overall_code == rls_pb2.RateLimitResponse.Code.Value("OVER_LIMIT")
        return (429 if over else 200), _JSON, payload, ()

    async def _healthz(self, body: bytes, scope: Scope) -> _Reply:
        return 200, _JSON, b'{"status":"ok"}', ()

    async def _readyz(self, body: bytes, scope: Scope) -> _Reply:
        if self.draining:
            raise _ProblemError(503, "Service Unavailable", "the service is shutting down")
        try:
            seconds = await self.engine.rules.limiter.ping()
        except StoreError as error:
            raise _ProblemError(503, "Service Unavailable", str(error)) from None
        return 200, _JSON, _dump({"status": "ready", "store_seconds": seconds}), ()

    async def _metrics_text(self, body: bytes, scope: Scope) -> _Reply:
        text = self._metrics() if self._metrics is not None else None
        if text is None:
            raise _ProblemError(
                501,
                "Not Implemented",
                "metrics need prometheus-client: pip install 'ratewall[prometheus]'",
            )
        return 200, b"text/plain; version=0.0.4; charset=utf-8", text, ()

    def _authorize(self, scope: Scope) -> None:
        token = self.admin_token
        if token is None:
            return
        if token == "":
            raise _ProblemError(
                403,
                "Forbidden",
                "admin endpoints are disabled on a non-loopback address until a token is "
                "set (RATEWALL_ADMIN_TOKEN or --admin-token-file)",
            )
        sent = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                sent = value
        expected = b"Bearer " + token.encode()
        if not hmac.compare_digest(sent, expected):
            raise _ProblemError(
                401, "Unauthorized", "this endpoint needs Authorization: Bearer TOKEN"
            )


_Reply = tuple[int, bytes, bytes, tuple[tuple[bytes, bytes], ...]]


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive, scope: Scope) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ProblemError(400, "Bad Request", "the client went away")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _ProblemError(
                413, "Content Too Large", f"request bodies are at most {MAX_BODY} bytes"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        document = json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as error:
        raise _bad(f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise _bad("the body must be a JSON object")
    return document


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _check_item(item: object, at: str, policies: Mapping[str, Any]) -> tuple[str, str, int]:
    if not isinstance(item, dict):
        raise _bad("must be an object {policy, identity, cost}", at)
    for name in item:
        if name not in _CHECK_FIELDS:
            raise _bad(f"unknown field {name!r}", f"{at}.{name}")
    policy = _policy_name(item.get("policy"), f"{at}.policy", policies)
    identity = _identity(item.get("identity"), f"{at}.identity")
    cost = item.get("cost", 1)
    if type(cost) is not int or cost < 0:
        raise _bad(f"must be a whole number >= 0 (0 peeks), got {cost!r}", f"{at}.cost")
    capacity = policies[policy].capacity
    if cost > capacity:
        raise _bad(
            f"cost {cost} is above policy {policy!r}'s capacity {capacity}: it could never pass",
            f"{at}.cost",
        )
    return policy, identity, cost


def _policy_name(value: object, at: str, policies: Mapping[str, Any]) -> str:
    if not isinstance(value, str):
        raise _bad("must be a policy name (a string)", at)
    if value not in policies:
        raise _bad(f"unknown policy {value!r}", at)
    return value


def _identity(value: object, at: str) -> str:
    if not isinstance(value, str):
        raise _bad("must be a string", at)
    if len(value) > MAX_IDENTITY:
        raise _bad(f"identities are at most {MAX_IDENTITY} characters", at)
    return value


def _dump(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()
