"""ASGI middleware: a plain ``(scope, receive, send)`` callable over the sans-IO engine.

::

    from ratewall import AsyncRateLimiter, Policy
    from ratewall.http import ClientIP, Header, RateLimitMiddleware, Route, RouteLimit

    limiter = AsyncRateLimiter({"login": Policy(5, 60), "login_ip": Policy(20, 60)},
                               store="redis://127.0.0.1:6379/0")
    app = RateLimitMiddleware(app, limiter, [
        Route("/login", [RouteLimit("login", Header("X-User-ID")),
                         RouteLimit("login_ip", ClientIP())], method="POST"),
    ])

Works under any ASGI framework (Starlette/FastAPI: ``app.add_middleware(RateLimitMiddleware,
limiter=..., routes=...)``). Only ``http`` scopes are limited; ``lifespan`` and
``websocket`` scopes pass straight through, untouched. Allowed responses get the RateLimit
fields added to their ``http.response.start`` message; refusals (429, 503, 400) are answered
by the middleware without calling the application. Place it *inside* an authentication
middleware if a limit uses :class:`~ratewall.http.User`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..config import Config
from ..decision import Decision
from ..limiter import AsyncRateLimiter, RateLimiter
from .client_ip import ClientIP
from .middleware import Middleware, needs_slots, warn_if_store_unreachable
from .request import HttpRequest
from .routes import Route, RouteTable
from .shortcut import (
    UNCHECKED,
    Shortcut,
    checks_singly,
    memory_store_check,
    shortcut_for,
    shortcut_item,
)
from .steps import AskLimiter, AsyncLimiter, Pass, Respond, tier_of
from .wire import NO_HEADERS, PLAIN_REFUSAL, encode_headers, fallback_response

__all__ = ["ASGIApp", "RateLimitMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class RateLimitMiddleware(Middleware[ASGIApp, AsyncLimiter]):
    """Rate-limits an ASGI application's HTTP requests by ``routes``.

    ``limiter`` is an :class:`~ratewall.AsyncRateLimiter` (anything with its ``policies`` and
    awaitable ``check_many``). ``routes`` is a :class:`~ratewall.http.RouteTable` or a
    sequence of :class:`~ratewall.http.Route`; requests no route matches pass unchecked.
    Options as :class:`~ratewall.http.HttpEngine`: ``legacy_headers``,
    ``headers_on_allowed``, ``client_ip`` (the client address for identity fallbacks).

    No failure of the limiter or of this middleware becomes an error response of the
    application: see :mod:`ratewall.http.engine` for what happens instead. Exceptions of the
    application itself propagate unchanged.

    Subclasses can set ``engine_class`` to a :class:`~ratewall.http.HttpEngine` subclass
    to change how responses are built.
    """

    wrong_limiter = (
        RateLimiter,
        "an ASGI application runs on asyncio; give it an AsyncRateLimiter (the same "
        "arguments), or use WSGIRateLimitMiddleware for a WSGI application",
    )

    def __init__(
        self,
        app: ASGIApp,
        limiter: AsyncLimiter,
        routes: RouteTable | Iterable[Route],
        *,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
    ) -> None:
        super().__init__(
            app,
            limiter,
            routes,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=client_ip,
        )
        # Chosen once: the shortcut needs a ratewall limiter (asked through ``check``) and
        # an engine giving the default verdicts.
        self._shortcut: Shortcut | None = None
        self._check_now: Callable[[str, str, int], Decision] | None = None
        if self.engine.slot_policies:
            needs_slots(limiter, self.engine)
        elif checks_singly(limiter):
            self._shortcut = shortcut_for(self.engine)
            if self._shortcut is not None:
                self._check_now = memory_store_check(limiter)

    async def _not_http(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Any other scope passes straight through; the lifespan one checks the store."""
        if scope.get("type") == "lifespan":
            receive = self._checking_store_at_startup(receive)
        await self.app(scope, receive, send)

    def _checking_store_at_startup(self, receive: Receive) -> Receive:
        """``receive`` for the lifespan scope, pinging the store when the server starts: an
        unreachable store is one clear warning at startup, not a silent failure mode at the
        first request. The application starts either way."""

        async def receive_and_check() -> MutableMapping[str, Any]:
            message = await receive()
            if message.get("type") == "lifespan.startup":
                await warn_if_store_unreachable(self.limiter)
            return message

        return receive_and_check

    @classmethod
    def limiter_from_config(
        cls, config: Config, store: str | None, clock: Callable[[], float] | None
    ) -> AsyncLimiter:
        """An :class:`~ratewall.AsyncRateLimiter`: close it with
        ``await middleware.limiter.aclose()``."""
        return AsyncRateLimiter.from_config(config, store, clock=clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:  # noqa: PLR0915 - one coroutine per request, on purpose (see below)
        if scope.get("type") != "http":
            await self._not_http(scope, receive, send)
            return
        # The limiter's answer, once asked: its decisions, or the exception it raised.
        answer: list[Decision] | Exception | None = None
        shortcut = self._shortcut
        if shortcut is not None:
            # The usual request's short way (ratewall.http.shortcut): no HttpRequest, no step.
            # What it cannot answer, the general path below decides, with the limiter's
            # answer if it already has one, exactly as it would have without the shortcut.
            item = shortcut_item(shortcut, scope)
            if item is UNCHECKED:
                await self.app(scope, receive, send)
                return
            if isinstance(item, tuple):
                check_now = self._check_now
                try:
                    if check_now is not None:
                        decision = check_now(*item)
                    else:
                        # checks_singly() made sure it is an AsyncRateLimiter's own check.
                        decision = await self.limiter.check(*item)  # type: ignore[attr-defined]
                except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
                    answer = error
                else:
                    extra = shortcut.fields(decision)
                    if extra is not None:  # allowed (empty: no field to add)
                        await self.app(scope, receive, self._adding(send, extra) if extra else send)
                        return
                    answer = [decision]
        # The whole exchange with the engine and the limiter happens in this one coroutine:
        # a helper coroutine per request would cost more than some of the steps themselves.
        engine = self.engine
        try:
            step = engine.start(HttpRequest.from_asgi_scope(scope))
        except Exception as error:  # noqa: BLE001 - never a 500 of the application
            step = engine.internal_error("request", error)
        verdict: object = step
        if isinstance(step, AskLimiter) and engine.slot_policies and engine.holds_slots(step):
            await self._call_holding_slots(scope, receive, send, step)
            return
        if isinstance(step, AskLimiter):
            if answer is None:
                limiter = self.limiter
                items = step.items
                try:
                    if len(items) == 1 and len(items[0]) == 3 and checks_singly(limiter):
                        answer = [await limiter.check(*items[0])]  # no tier: (id, policy, cost)
                    else:
                        answer = await limiter.check_many(items)
                except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
                    answer = error
            verdict = engine.settle(step, answer)
        if not isinstance(verdict, (Pass, Respond)):  # a tuple: faster than a union
            verdict = engine.internal_error("outcome", TypeError(f"got {verdict!r:.100}"))
        if isinstance(verdict, Respond):
            await self._respond(send, verdict)
            return
        extra = verdict.encoded
        if extra is None and verdict.headers:
            extra = self._encoded(verdict)
        if not extra:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, self._adding(send, extra))

    async def _call_holding_slots(
        self, scope: Scope, receive: Receive, send: Send, step: AskLimiter
    ) -> None:
        """A request whose route names concurrency policies: its slots are held from before
        the application is called until the response's last body message is sent, the
        application returns (a client that disconnected included) or raises."""
        engine = self.engine
        held: list[Any] = []
        answer: list[Decision] | Exception
        try:
            answer = await self._decide_with_slots(step, held)
        except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
            answer = error

        async def release() -> None:
            while held:
                await held.pop().release()

        verdict: object = engine.settle(step, answer)
        if not isinstance(verdict, (Pass, Respond)):
            verdict = engine.internal_error("outcome", TypeError(f"got {verdict!r:.100}"))
        if isinstance(verdict, Respond):
            await release()
            await self._respond(send, verdict)
            return
        extra = verdict.encoded
        if extra is None and verdict.headers:
            extra = self._encoded(verdict)
        forward = self._adding(send, extra) if extra else send

        async def send_then_release(message: Message) -> None:
            await forward(message)
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                await release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            await release()

    async def _decide_with_slots(self, step: AskLimiter, held: list[Any]) -> list[Decision]:
        """Every item's decision: the slots first (adding those held to ``held``), then
        the rate policies in one ``check_many``, only if every slot was granted; a refusal
        anywhere releases the slots, and the items not asked are peeked (nothing consumed)."""
        limiter: Any = self.limiter
        slots = self.engine.slot_policies
        items = step.items
        decisions: list[Decision | None] = [None] * len(items)
        refused = False
        for index, item in enumerate(items):
            if item[1] in slots:
                slot = await limiter.acquire_slot(item[0], item[1], tier=tier_of(item))
                if slot.held:
                    held.append(slot)
                decisions[index] = slot.decision
                if not slot.decision.allowed:
                    refused = True
                    break
        rate = [index for index, item in enumerate(items) if item[1] not in slots]
        if not refused and rate:
            checked = await limiter.check_many([items[index] for index in rate])
            for index, decision in zip(rate, checked, strict=True):
                decisions[index] = decision
            refused = not all(decision.allowed for decision in checked)
        if refused:
            while held:
                await held.pop().release()
            for index, decision in enumerate(decisions):
                if decision is None:
                    item = items[index]
                    decisions[index] = await limiter.peek(*item[:3], tier=tier_of(item))
        return [decision for decision in decisions if decision is not None]

    def _encoded(self, verdict: Pass) -> list[tuple[bytes, bytes]] | None:
        """``verdict``'s headers encoded; ``None`` (logged) if they cannot be sent."""
        try:
            return encode_headers(verdict.headers)
        except Exception as error:  # noqa: BLE001 - the response goes out without them
            self.engine.internal_error("encode headers", error, NO_HEADERS)
            return None

    def _adding(self, send: Send, extra: list[tuple[bytes, bytes]]) -> Send:
        """``send`` that adds ``extra`` to the response start. A plain function returning
        ``send``'s awaitable, not a coroutine of its own: one frame less per message."""
        started = False

        def send_with_headers(message: Message) -> Awaitable[None]:
            nonlocal started
            if not started and message.get("type") == "http.response.start":
                started = True
                try:
                    # A copy: the application may keep or reuse its message.
                    copy = dict(message)
                    copy["headers"] = [*copy.get("headers", ()), *extra]
                    message = copy
                except Exception as error:  # noqa: BLE001 - send the app's message as it is
                    self.engine.internal_error("add headers", error, NO_HEADERS)
            return send(message)

        return send_with_headers

    async def _respond(self, send: Send, verdict: Respond) -> None:
        try:
            headers = encode_headers(verdict.headers)
        except Exception as error:  # noqa: BLE001 - refuse anyway, plainly
            self.engine.internal_error("encode response", error, PLAIN_REFUSAL)
            verdict = fallback_response(verdict)
            headers = encode_headers(verdict.headers)
        await send({"type": "http.response.start", "status": verdict.status, "headers": headers})
        await send({"type": "http.response.body", "body": verdict.body})
