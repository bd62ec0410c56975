"""Running the service: one worker (an asyncio loop with the gRPC and HTTP servers), or N
worker processes sharing the ports (``SO_REUSEPORT``) and one store.

Signals: SIGTERM (or SIGINT) drains, finishing calls in flight within
:attr:`ServiceOptions.drain_seconds`, and exits 0; SIGHUP re-reads the config files and swaps
the compiled rules, keeping the old ones (and logging why) when a file is bad. With several
workers the parent forwards both signals to every worker and restarts a worker that died.

From code::

    from ratewall.service import ServiceOptions, serve
    serve(ServiceOptions(config="limits.yaml", store="redis://127.0.0.1:6379/0"))  # blocks
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import ipaddress
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any, Final

from ..config import Config, load_config
from ..descriptors import DomainTable, load_envoy_config, merge_tables
from ..errors import ConfigError
from ..limiter import AsyncRateLimiter
from ..policy import FAILURE_MODES, Policy
from ..stores.batching import AsyncRedisStore
from ..stores.redis import parse_store_url
from .engine import Engine, Rules

__all__ = [
    "ENV_ADMIN_TOKEN",
    "ServiceOptions",
    "load_rules",
    "parse_address",
    "run_worker",
    "serve",
]

_log = logging.getLogger("ratewall.service")

#: The environment variable holding the bearer token of admin endpoints (``/v1/reset``).
ENV_ADMIN_TOKEN: Final = "RATEWALL_ADMIN_TOKEN"  # noqa: S105 - a variable name, not a secret
_EXIT_OK: Final = 0
_EXIT_CANNOT_START: Final = 1
_RESTART_DELAY: Final = 1.0
_MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"
#: How long a store call waits for others to share its round trip when RPCs arrive one per
#: loop turn under load (see :class:`~ratewall.stores.batching.AsyncRedisStore`). Off by
#: default: on a saturated 2-core VM calls already share round trips (the store's calls in
#: flight are capped), and paired runs with 1 ms showed no gain beyond the noise.
DEFAULT_BATCH_WINDOW: Final = 0.0
#: The event loops ``ServiceOptions.loop`` (``--loop``) accepts.
LOOPS: Final = ("auto", "asyncio", "uvloop")


@dataclass(frozen=True, slots=True)
class ServiceOptions:
    """What ``ratewall serve`` takes on its command line.

    ``config`` is a ratewall config (policies, settings, a ``domains`` section);
    ``envoy_config`` envoyproxy/ratelimit YAML files, one domain each; at least one of the two
    is needed. ``store`` overrides the config's store URL (neither: ``memory://``, one
    worker). ``envoy_failure_mode`` is what the rules of envoy files do when the store fails
    (``raise``: a gRPC error, for Envoy's ``failure_mode_deny`` to decide, as with the Go
    service; ``local``: each worker process enforces ``ceil(limit / envoy_local_nodes)`` in
    memory, ``envoy_local_nodes`` defaulting to ``workers``). ``admin_token``: the bearer
    token ``/v1/reset`` requires; with ``None`` it is
    read from ``RATEWALL_ADMIN_TOKEN``, and required only when HTTP binds a non-loopback
    address (without one, admin endpoints are then disabled).
    """

    config: str | None = None
    envoy_config: tuple[str, ...] = ()
    store: str | None = None
    grpc: str = "127.0.0.1:8081"
    http: str = "127.0.0.1:8080"
    workers: int = 1
    admin_token: str | None = None
    envoy_failure_mode: str = "raise"
    envoy_local_nodes: int | None = None
    response_headers: bool = True
    drain_seconds: float = 10.0
    loop: str = "auto"
    batch_window: float = DEFAULT_BATCH_WINDOW


def parse_address(text: str, *, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) as a pair; ConfigError if malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535 or not host:
        raise ConfigError(f"expected HOST:PORT such as 127.0.0.1:8080, got {text!r}", source=what)
    return host.strip("[]"), int(port)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class _Loaded:
    config: Config | None
    table: DomainTable
    policies: Mapping[str, Policy]
    store: str


def _load(options: ServiceOptions) -> _Loaded:
    """Read and check every config file (raises ConfigError naming the file and field)."""
    if options.config is None and not options.envoy_config:
        raise ConfigError("nothing to serve: pass --config FILE and/or --envoy-config FILE")
    if options.envoy_failure_mode not in FAILURE_MODES:
        raise ConfigError(
            f"unknown failure mode {options.envoy_failure_mode!r}; "
            f"expected one of {', '.join(FAILURE_MODES)}",
            source="--envoy-failure-mode",
        )
    if options.loop not in LOOPS:
        raise ConfigError(
            f"unknown event loop {options.loop!r}; expected one of {', '.join(LOOPS)}",
            source="--loop",
        )
    if not 0.0 <= options.batch_window <= 1.0:
        raise ConfigError(
            f"must be 0 to 1 seconds, got {options.batch_window!r}", source="--batch-window"
        )
    config = load_config(options.config) if options.config is not None else None
    tables = [config.domains] if config is not None and config.domains is not None else []
    if options.envoy_local_nodes is not None and options.envoy_failure_mode != "local":
        raise ConfigError(
            "applies only with --envoy-failure-mode local", source="--envoy-local-nodes"
        )
    if options.envoy_config:
        envoy = load_envoy_config(options.envoy_config, failure_mode=options.envoy_failure_mode)
        if options.envoy_failure_mode == "local":
            # The processes sharing a limit while the store fails: this instance's workers
            # unless told (several instances behind one Envoy: all their workers).
            nodes = options.envoy_local_nodes or options.workers
            local = {n: replace(p, local_nodes=nodes) for n, p in envoy.policies.items()}
            envoy = replace(envoy, policies=MappingProxyType(local))
        tables.append(envoy)
    table = merge_tables(tables)
    policies = dict(config.policies) if config is not None else {}
    for name, policy in table.policies.items():
        if name in policies:
            raise ConfigError(
                f"policy {name!r} of {table.source} is also defined in {options.config}",
                source=options.config,
                field=f"policies.{name}",
            )
        policies[name] = policy
    if not policies:
        raise ConfigError(
            "defines no limits: add policies (or rate_limit rules to the envoy config)",
            source=table.source,
        )
    store = options.store or (config.store if config is not None else None) or "memory://"
    return _Loaded(config, table, policies, store)


def _metrics_backend(config: Config | None) -> str | None:
    """What the service's limiters count into: the config's ``metrics`` setting, else
    ``prometheus`` when prometheus-client is installed (``GET /metrics`` serves it)."""
    if config is not None and config.metrics is not None:
        return config.metrics
    return "prometheus" if _has_prometheus() else None


def _has_prometheus() -> bool:
    return importlib.util.find_spec("prometheus_client") is not None


def _scraper() -> Callable[[], bytes | None]:
    """What ``GET /metrics`` answers: prometheus-client's text of ratewall's counters and
    the per-rule stats, summed over the workers in multi-process mode; ``None`` (501)
    without prometheus-client."""
    if not _has_prometheus():
        return lambda: None
    from prometheus_client import generate_latest

    from ..metrics.prometheus import registry

    served = registry()

    def scrape() -> bytes:
        return generate_latest(served)

    return scrape


def load_rules(options: ServiceOptions, store: Any) -> Rules:
    """The compiled rules of ``options``' files on ``store`` (a store object or a URL)."""
    loaded = _load(options)
    config = loaded.config
    limiter = AsyncRateLimiter(
        loaded.policies,
        store,
        key_prefix=config.key_prefix if config is not None else "ratelimit",
        local_cache_size=config.local_cache_size if config is not None else 10_000,
        timeout=config.timeout if config is not None else 0.05,
        metrics=_metrics_backend(config),
    )
    source = ", ".join([*([options.config] if options.config else []), *options.envoy_config])
    return Rules(limiter, loaded.table, limiter.policies, source)


# --- one worker ------------------------------------------------------------------------------


def _engine(options: ServiceOptions, loaded: _Loaded, store: Any, timeout: float) -> Engine:
    """The worker's engine on ``store``, counting into the metrics ``/metrics`` serves."""
    backend = _metrics_backend(loaded.config)

    def make_limiter(policies: Mapping[str, Policy]) -> AsyncRateLimiter:
        return AsyncRateLimiter(policies, store, timeout=timeout, metrics=backend)

    engine = Engine(load_rules(options, store), make_limiter=make_limiter)
    if _has_prometheus():
        from .stats import RuleStats

        engine.on_outcomes = RuleStats().count
    return engine


async def run_worker(options: ServiceOptions, *, http_socket: socket.socket | None = None) -> int:
    """Serve until SIGTERM/SIGINT (then drain) in the running loop; return the exit status."""
    import grpc
    import uvicorn

    from .api import ServiceApp
    from .rls import add_to_server

    loaded = _load(options)
    store: Any = loaded.store
    shared: AsyncRedisStore | None = None
    timeout = loaded.config.timeout if loaded.config is not None else 0.05
    if parse_store_url(loaded.store)[0] != "memory":
        # One store object (one connection pool, one batch scheduler) for every limiter of
        # this worker: the rules' and each descriptor limit override's, across reloads.
        shared = store = AsyncRedisStore(
            loaded.store, timeout=timeout, batch_window=options.batch_window
        )

    engine = _engine(options, loaded, store, timeout)
    grpc_host, grpc_port = parse_address(options.grpc, what="--grpc")
    http_host, http_port = parse_address(options.http, what="--http")
    token = _admin_token(options, http_host)
    app = ServiceApp(
        engine,
        admin_token=token,
        metrics=_scraper(),
        response_headers=options.response_headers,
    )

    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    add_to_server(server, engine, headers=options.response_headers)
    try:
        bound_grpc = server.add_insecure_port(f"{_bracketed(grpc_host)}:{grpc_port}")
    except RuntimeError as error:
        _say(f"ratewall serve: cannot listen on {options.grpc}: {error}")
        return _EXIT_CANNOT_START
    try:
        sock = http_socket or _listen(http_host, http_port)
    except OSError as error:
        _say(f"ratewall serve: cannot listen on {options.http}: {error}")
        return _EXIT_CANNOT_START
    await server.start()
    http_server = _QuietServer(
        uvicorn.Config(app, lifespan="off", access_log=False, log_level="warning")
    )
    http_task = asyncio.create_task(http_server.serve(sockets=[sock]))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: _reload(engine, options, store))
    http_bound = sock.getsockname()[1]
    _say(
        f"ratewall serve: worker {os.getpid()} ready: grpc {grpc_host}:{bound_grpc} "
        f"http {http_host}:{http_bound} store {_safe_url(loaded.store)} "
        f"rules from {engine.rules.source}",
    )
    try:
        await stop.wait()
    finally:
        app.draining = True
        await server.stop(options.drain_seconds)
        http_server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(http_task, options.drain_seconds + 1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        if shared is not None:
            await shared.aclose()
    _say(f"ratewall serve: worker {os.getpid()} stopped")
    return _EXIT_OK


def _reload(engine: Engine, options: ServiceOptions, store: Any) -> None:
    try:
        rules = load_rules(options, store)
    except ConfigError as error:
        if engine.rules.limiter.metrics is not None:
            engine.rules.limiter.metrics.record_reload(False)
        _log.error("ratewall serve: reload failed, keeping the rules in force: %s", error)
        _say(f"ratewall serve: reload failed, keeping the old rules: {error}")
        return
    engine.swap(rules)
    if rules.limiter.metrics is not None:
        rules.limiter.metrics.record_reload(True)
    _say(f"ratewall serve: worker {os.getpid()} reloaded {rules.source}")


def _admin_token(options: ServiceOptions, http_host: str) -> str | None:
    token = options.admin_token
    if token is None:
        token = os.environ.get(ENV_ADMIN_TOKEN) or None
    if token is None and not _loopback(http_host):
        _log.warning(
            "HTTP binds %s, not loopback, and no admin token is set: /v1/reset is disabled "
            "(set %s)",
            http_host,
            ENV_ADMIN_TOKEN,
        )
        return ""
    return token


class _QuietServer:
    """uvicorn's server without its signal handling: this worker owns the signals."""

    def __init__(self, config: Any) -> None:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                yield

        self._server = Server(config)

    @property
    def should_exit(self) -> bool:
        return bool(self._server.should_exit)

    @should_exit.setter
    def should_exit(self, value: bool) -> None:
        self._server.should_exit = value

    async def serve(self, sockets: list[socket.socket]) -> None:
        await self._server.serve(sockets=sockets)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # without it every response on a kept-alive connection (headers and body are two
    # writes) waits about 40 ms for the client's delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _safe_url(url: str) -> str:
    """``url`` without a password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, location = rest.rpartition("@")
    if not at:
        return url
    user = credentials.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{location}" if user else f"{scheme}{sep}***@{location}"


# --- the command: one worker in this process, or a supervisor of N ----------------------------


def serve(options: ServiceOptions) -> int:
    """Run the service until SIGTERM or SIGINT; return the exit status (0 after draining).

    Raises :class:`~ratewall.ConfigError` for a bad config before anything listens.
    """
    loaded = _load(options)  # fail fast, once, before any worker starts
    workers = options.workers
    if parse_store_url(loaded.store)[0] == "memory" and workers > 1:
        _say(
            "ratewall serve: the memory store is per process; using 1 worker "
            "(pass --store redis://... to share limits among workers)",
        )
        workers = 1
    if workers <= 1:
        return _run(run_worker(options), options.loop)
    grpc_host, grpc_port = parse_address(options.grpc, what="--grpc")
    http_host, http_port = parse_address(options.http, what="--http")
    # Port 0 means one port the system picks, shared by every worker: pick it here.
    if grpc_port == 0:
        options = replace(options, grpc=f"{_bracketed(grpc_host)}:{_free_port(grpc_host)}")
    if http_port == 0:
        options = replace(options, http=f"{_bracketed(http_host)}:{_free_port(http_host)}")
    return _supervise_with_shared_metrics(options, workers)


def _supervise_with_shared_metrics(options: ServiceOptions, workers: int) -> int:
    """Run the workers with ``PROMETHEUS_MULTIPROC_DIR`` set, so that a scrape of any of
    them sums every worker's counters: the variable's own directory if it is set (empty it
    before starting, as prometheus-client asks), else a fresh one removed at exit."""
    if os.environ.get(_MULTIPROC_DIR) or not _has_prometheus():
        return _supervise(options, workers)
    with tempfile.TemporaryDirectory(prefix="ratewall-metrics-") as where:
        os.environ[_MULTIPROC_DIR] = where
        try:
            return _supervise(options, workers)
        finally:
            del os.environ[_MULTIPROC_DIR]


def _run(main: Coroutine[Any, Any, int], loop: str) -> int:
    """Run ``main`` on the event loop ``loop`` names: ``uvloop``, ``asyncio``, or ``auto``
    (uvloop when it is installed: it cuts grpc.aio's and the store's per-call loop work)."""
    factory = _loop_factory(loop)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if loop == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if loop == "uvloop":
            raise ConfigError(
                "--loop uvloop needs the uvloop package: pip install uvloop"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _worker_main(options: ServiceOptions) -> None:
    sys.exit(_run(run_worker(options), options.loop))


def _supervise(options: ServiceOptions, count: int) -> int:
    context = multiprocessing.get_context("spawn")
    stopping = False
    reloads = 0

    def on_stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_reload(signum: int, frame: object) -> None:
        nonlocal reloads
        reloads += 1

    previous = {
        signal.SIGTERM: signal.signal(signal.SIGTERM, on_stop),
        signal.SIGINT: signal.signal(signal.SIGINT, on_stop),
        signal.SIGHUP: signal.signal(signal.SIGHUP, on_reload),
    }
    processes = [_spawn(context, options) for _ in range(count)]
    handled_reloads = 0
    try:
        while not stopping:
            time.sleep(0.1)
            if reloads != handled_reloads:
                handled_reloads = reloads
                for process in processes:
                    if process.pid is not None and process.is_alive():
                        os.kill(process.pid, signal.SIGHUP)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    _say(
                        f"ratewall serve: worker {process.pid} exited ({process.exitcode}); "
                        "starting another",
                    )
                    if process.exitcode == _EXIT_CANNOT_START:
                        stopping = True
                        break
                    time.sleep(_RESTART_DELAY)
                    processes[index] = _spawn(context, options)
    finally:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + options.drain_seconds + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    failed = [p.exitcode for p in processes if p.exitcode not in (0, None)]
    return _EXIT_CANNOT_START if failed else _EXIT_OK


def _spawn(context: Any, options: ServiceOptions) -> Any:
    process = context.Process(target=_worker_main, args=(options,), daemon=False)
    process.start()
    return process


def _say(line: str) -> None:
    """Write ``line`` to stderr in one system call. Workers share their parent's stderr,
    and a line written in pieces (``print`` writes the text, then the newline, when
    stderr is unbuffered) can interleave with another worker's."""
    os.write(2, f"{line}\n".encode(errors="replace"))
