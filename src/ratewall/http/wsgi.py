"""WSGI middleware over the same sans-IO engine as the ASGI one.

::

    from ratewall import RateLimiter, Policy
    from ratewall.http import Header, Route, RouteLimit, WSGIRateLimitMiddleware

    limiter = RateLimiter({"login": Policy(5, 60)}, store="redis://127.0.0.1:6379/0")
    app.wsgi_app = WSGIRateLimitMiddleware(app.wsgi_app, limiter, [
        Route("/login", [RouteLimit("login", Header("X-User-ID"))], method="POST"),
    ])

Allowed responses get the RateLimit fields through a wrapped ``start_response``; refusals
(429, 503, 400) are answered without calling the application. Routes match ``PATH_INFO``, the
path below the application's mount point (``SCRIPT_NAME``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..config import Config
from ..decision import Decision
from ..limiter import AsyncRateLimiter, RateLimiter
from .middleware import Middleware, needs_slots, warn_if_store_unreachable_now
from .request import HttpRequest
from .steps import AskLimiter, Pass, Respond, SyncLimiter, Verdict, tier_of
from .wire import NO_HEADERS, PLAIN_REFUSAL, encode_headers, fallback_response

if TYPE_CHECKING:
    # WSGIApplication is named in a base class, where it must be a string at runtime.
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment  # noqa: F401

__all__ = ["WSGIRateLimitMiddleware"]


class WSGIRateLimitMiddleware(Middleware["WSGIApplication", SyncLimiter]):
    """Rate-limits a WSGI application's requests by ``routes``.

    ``limiter`` is a :class:`~ratewall.RateLimiter` (anything with its ``policies`` and
    ``check_many``); the other arguments are those of
    :class:`~ratewall.http.RateLimitMiddleware`, with the same failure isolation: nothing the
    limiter or this middleware does wrong becomes an error response of the application.
    """

    wrong_limiter = (
        AsyncRateLimiter,
        "a WSGI application is synchronous; give it a RateLimiter (the same arguments), or "
        "use RateLimitMiddleware for an ASGI application",
    )

    @classmethod
    def limiter_from_config(
        cls, config: Config, store: str | None, clock: Callable[[], float] | None
    ) -> SyncLimiter:
        """A :class:`~ratewall.RateLimiter`: close it with ``middleware.limiter.close()``."""
        return RateLimiter.from_config(config, store, clock=clock)

    def _check_store_at_startup(self) -> None:
        if self.engine.slot_policies:
            needs_slots(self.limiter, self.engine)
        warn_if_store_unreachable_now(self.limiter)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        held: list[Any] = []
        verdict: object = self._verdict(environ, held)
        if not isinstance(verdict, Pass | Respond):
            verdict = self.engine.internal_error("outcome", TypeError(f"got {verdict!r:.100}"))
        if isinstance(verdict, Respond):
            _release(held)
            return self._respond(start_response, verdict)
        if held:
            # Concurrency slots: held until the server closes the response's iterable
            # (PEP 3333: after the last chunk, or when the client went away), or the
            # application raises.
            try:
                return _Releasing(self._call_app(environ, start_response, verdict), held)
            except BaseException:
                _release(held)
                raise
        return self._call_app(environ, start_response, verdict)

    def _call_app(
        self, environ: WSGIEnvironment, start_response: StartResponse, verdict: Pass
    ) -> Iterable[bytes]:
        extra: list[tuple[str, str]] = []
        if verdict.headers:
            try:
                encode_headers(verdict.headers)  # validates: nothing unsendable reaches the server
                extra = list(verdict.headers)
            except Exception as error:  # noqa: BLE001 - the response goes out without them
                self.engine.internal_error("encode headers", error, NO_HEADERS)
        if not extra:
            return self.app(environ, start_response)

        def start_with_headers(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], object]:
            try:
                headers = [*headers, *extra]
            except Exception as error:  # noqa: BLE001 - send the app's headers as they are
                self.engine.internal_error("add headers", error, NO_HEADERS)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        return self.app(environ, start_with_headers)

    def _verdict(self, environ: WSGIEnvironment, held: list[Any]) -> Verdict:
        engine = self.engine
        try:
            step = engine.start(HttpRequest.from_wsgi_environ(environ))
        except Exception as error:  # noqa: BLE001 - never a 500 of the application
            return engine.internal_error("request", error)
        if not isinstance(step, AskLimiter):
            return step
        answer: Sequence[Decision] | Exception
        try:
            if engine.slot_policies and engine.holds_slots(step):
                answer = self._decide_with_slots(step, held)
            else:
                answer = self.limiter.check_many(step.items)
        except Exception as error:  # noqa: BLE001 - the engine applies the failure policy
            _release(held)
            answer = error
        return engine.settle(step, answer)

    def _decide_with_slots(self, step: AskLimiter, held: list[Any]) -> list[Decision]:
        """As the ASGI middleware's: slots first, then the rate policies only if every slot
        was granted; a refusal releases the slots and peeks the items not asked."""
        limiter: Any = self.limiter
        slots = self.engine.slot_policies
        items = step.items
        decisions: list[Decision | None] = [None] * len(items)
        refused = False
        for index, item in enumerate(items):
            if item[1] in slots:
                slot = limiter.acquire_slot(item[0], item[1], tier=tier_of(item))
                if slot.held:
                    held.append(slot)
                decisions[index] = slot.decision
                if not slot.decision.allowed:
                    refused = True
                    break
        rate = [index for index, item in enumerate(items) if item[1] not in slots]
        if not refused and rate:
            checked = limiter.check_many([items[index] for index in rate])
            for index, decision in zip(rate, checked, strict=True):
                decisions[index] = decision
            refused = not all(decision.allowed for decision in checked)
        if refused:
            _release(held)
            for index, decision in enumerate(decisions):
                if decision is None:
                    item = items[index]
                    decisions[index] = limiter.peek(*item[:3], tier=tier_of(item))
        return [decision for decision in decisions if decision is not None]

    def _respond(self, start_response: StartResponse, verdict: Respond) -> Iterable[bytes]:
        try:
            encode_headers(verdict.headers)
        except Exception as error:  # noqa: BLE001 - refuse anyway, plainly
            self.engine.internal_error("encode response", error, PLAIN_REFUSAL)
            verdict = fallback_response(verdict)
        start_response(f"{verdict.status} {verdict.reason}", list(verdict.headers))
        return [verdict.body]


def _release(held: list[Any]) -> None:
    while held:
        held.pop().release()


class _Releasing:
    """The application's response iterable, releasing the request's slots when the server
    closes it (after closing the application's own iterable)."""

    def __init__(self, iterable: Iterable[bytes], held: list[Any]) -> None:
        self._iterable = iterable
        self._held = held

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._iterable)

    def close(self) -> None:
        try:
            close = getattr(self._iterable, "close", None)
            if close is not None:
                close()
        finally:
            _release(self._held)
