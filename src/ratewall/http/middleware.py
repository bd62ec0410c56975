"""What the ASGI and WSGI middlewares share: building their engine, and building themselves
from a config file. They differ only in how they talk to the server and the limiter."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import Any, ClassVar, Generic, Self, TypeVar

from ..config import Config, load_config
from ..errors import ConfigError
from .client_ip import ClientIP, client_ip_from_config
from .engine import HttpEngine
from .routes import Route, RouteTable, routes_from_config
from .steps import AsyncLimiter, SyncLimiter

__all__ = [
    "Middleware",
    "exempt_hook",
    "needs_slots",
    "warn_if_store_unreachable",
    "warn_if_store_unreachable_now",
]

_log = logging.getLogger("ratewall")

App = TypeVar("App")
Limiter = TypeVar("Limiter", SyncLimiter, AsyncLimiter)


class Middleware(Generic[App, Limiter]):
    """An application, the limiter in front of it, and the engine deciding between them.

    Subclasses can set ``engine_class`` to an :class:`~ratewall.http.HttpEngine` subclass to
    change how responses are built, and say in :meth:`limiter_from_config` which limiter a
    config file gives them.
    """

    engine_class: ClassVar[type[HttpEngine]] = HttpEngine
    #: The other kind of ratewall limiter, which this middleware cannot drive, and what to
    #: give it instead (a TypeError at construction: otherwise every request would pass).
    wrong_limiter: ClassVar[tuple[type[Any], str] | None] = None

    def __init__(
        self,
        app: App,
        limiter: Limiter,
        routes: RouteTable | Iterable[Route],
        *,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
    ) -> None:
        given: object = limiter  # the types say it cannot be; callers without mypy may try
        if self.wrong_limiter is not None and isinstance(given, self.wrong_limiter[0]):
            raise TypeError(
                f"{type(self).__name__} cannot use a {type(given).__name__}: "
                f"{self.wrong_limiter[1]}"
            )
        self.app = app
        self.limiter: Limiter = limiter
        self.engine = self.engine_class(
            routes,
            limiter.policies,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=client_ip,
            on_exempt=exempt_hook(limiter),
        )
        self._check_store_at_startup()

    def _check_store_at_startup(self) -> None:
        """Warn once, at startup, if the store does not answer (the ASGI middleware does it
        when the server's lifespan starts, the WSGI one when it is made)."""

    @classmethod
    def from_config(
        cls,
        app: App,
        path: str | os.PathLike[str],
        *,
        store: str | None = None,
        routes: RouteTable | Iterable[Route] | None = None,
        legacy_headers: bool = False,
        headers_on_allowed: bool = True,
        client_ip: ClientIP | None = None,
        clock: Callable[[], float] | None = None,
    ) -> Self:
        """The middleware for a config file: its policies and settings build the limiter
        (``store`` overrides the file's), its ``routes`` section the routes (or pass
        ``routes=`` in code), its ``client_ip`` section how the client address is found
        (unless ``client_ip`` is given). The limiter is ``middleware.limiter``; close it when
        done."""
        config = load_config(path)
        table = routes_from_config(config, routes, client_ip)
        return cls(
            app,
            cls.limiter_from_config(config, store, clock),
            table,
            legacy_headers=legacy_headers,
            headers_on_allowed=headers_on_allowed,
            client_ip=client_ip if client_ip is not None else client_ip_from_config(config),
        )

    @classmethod
    def limiter_from_config(
        cls, config: Config, store: str | None, clock: Callable[[], float] | None
    ) -> Limiter:
        """The limiter :meth:`from_config` puts in front of the application."""
        raise NotImplementedError(f"{cls.__name__} does not say which limiter it uses")


def exempt_hook(limiter: object) -> Callable[[str], object] | None:
    """What the engine calls for a request exempt from a policy by its client network:
    ``limiter.exempt`` (ratewall's limiters count it in metrics as ``exempt``), or nothing
    for a limiter object of the application's own that has none."""
    hook = getattr(limiter, "exempt", None)
    return hook if callable(hook) else None


def _unreachable(limiter: object, error: Exception) -> None:
    _log.warning(
        "ratewall: the rate-limit store does not answer (%s); until it does, each policy "
        "answers by its failure_mode, and responses that were not decided by the store carry "
        "a RateLimit-Degraded header",
        error,
    )


async def warn_if_store_unreachable(limiter: Any) -> None:
    """Ping ``limiter``'s store (an async limiter's ``ping``) and log one warning if it does
    not answer. Never raises: the application starts either way."""
    ping = getattr(limiter, "ping", None)
    if ping is None:
        return
    try:
        await ping()
    except Exception as error:  # noqa: BLE001 - a warning, never a failed startup
        _unreachable(limiter, error)


def warn_if_store_unreachable_now(limiter: Any) -> None:
    """The same for a synchronous limiter."""
    ping = getattr(limiter, "ping", None)
    if ping is None:
        return
    try:
        ping()
    except Exception as error:  # noqa: BLE001 - a warning, never a failed startup
        _unreachable(limiter, error)


def needs_slots(limiter: object, engine: HttpEngine) -> None:
    """Routes name concurrency policies: the limiter must hold slots (a ratewall limiter's
    ``acquire_slot``), or the middleware could never enforce them."""
    if not callable(getattr(limiter, "acquire_slot", None)):
        names = ", ".join(sorted(engine.slot_policies))
        raise ConfigError(
            f"policies {names} are concurrency policies, and {type(limiter).__name__} cannot "
            "hold slots (it has no acquire_slot); use a ratewall RateLimiter/AsyncRateLimiter",
            source="<routes>",
            field="limiter",
        )
