"""Helpers shared by the HTTP tests: a structured-field parser and tiny ASGI/WSGI apps."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from http_sfv.list import List

from ratewall import Decision
from ratewall.http import HttpEngine, HttpRequest
from ratewall.http.steps import AskLimiter

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


def parse_sf_list(value: str) -> list[tuple[object, dict[str, object]]]:
    """An RFC 9651 List as (item value, parameters) pairs; fails on any syntax error."""
    parsed = List()
    parsed.parse(value.encode("ascii"))
    return [(member.value, dict(member.params)) for member in parsed]


def ratelimit_members(headers: Any) -> dict[str, dict[str, object]]:
    """``RateLimit`` members by policy name, checked against ``RateLimit-Policy``."""
    policy = {str(name): params for name, params in parse_sf_list(headers["RateLimit-Policy"])}
    state = {str(name): params for name, params in parse_sf_list(headers["RateLimit"])}
    assert policy.keys() == state.keys()
    return {name: {**policy[name], **state[name]} for name in policy}


class Calls:
    """Counts the requests an app actually served."""

    def __init__(self) -> None:
        self.count = 0


def asgi_app(calls: Calls | None = None, status: int = 200) -> Any:
    """A raw ASGI app answering ``status`` with body ``ok`` (and lifespan/websocket aware)."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        if calls is not None:
            calls.count += 1
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"x-app", b"yes")],
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def wsgi_app(calls: Calls | None = None) -> Any:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if calls is not None:
            calls.count += 1
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-App", "yes")])
        return [b"ok"]

    return app


class BrokenHeaders(HttpEngine):
    """An engine subclass whose RateLimit fields cannot be built."""

    def response_headers(
        self, check: AskLimiter, decisions: Sequence[Decision]
    ) -> list[tuple[str, str]]:
        raise RuntimeError("header bug")


class BrokenStart(HttpEngine):
    """An engine subclass that cannot look at a request."""

    def start(self, request: HttpRequest) -> Any:
        raise RuntimeError("start bug")
