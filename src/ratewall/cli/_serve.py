"""``ratewall serve``: the standalone rate-limit service (Envoy RLS v3 over gRPC, HTTP/JSON)."""

from __future__ import annotations

import argparse
from typing import Any

from ..errors import ConfigError
from ._common import EXIT_USAGE, integer, store_url

__all__ = ["register"]


def register(commands: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the rate-limit service (Envoy's gRPC protocol and an HTTP/JSON API)",
        description="Run ratewall as a service: Envoy's rate-limit service protocol "
        "(envoy.service.ratelimit.v3) on the gRPC port, the HTTP/JSON API (/v1/check, "
        "/v1/reset, /json, /healthz, /readyz) on the HTTP port. SIGTERM drains and exits 0; "
        "SIGHUP reloads the config files. Needs the service extra: "
        "pip install 'ratewall[service]'.",
    )
    serve.add_argument(
        "--config", metavar="FILE", help="ratewall config: policies, settings, domains"
    )
    serve.add_argument(
        "--envoy-config",
        action="append",
        default=[],
        metavar="FILE",
        help="an envoyproxy/ratelimit YAML config, read unchanged (repeatable: one per domain)",
    )
    serve.add_argument(
        "--store",
        type=store_url,
        metavar="URL",
        help="store URL such as redis://127.0.0.1:6379/0 (default: the config's, else memory://)",
    )
    serve.add_argument(
        "--grpc",
        default="127.0.0.1:8081",
        metavar="HOST:PORT",
        help="gRPC address (default %(default)s)",
    )
    serve.add_argument(
        "--http",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="HTTP address (default %(default)s)",
    )
    serve.add_argument(
        "--workers",
        type=_worker_count,
        default=1,
        help="worker processes sharing the ports and the store (default %(default)s)",
    )
    serve.add_argument(
        "--envoy-failure-mode",
        choices=("raise", "open", "closed", "local"),
        default="raise",
        help="what the envoy config's rules do when the store fails: raise (a gRPC error: "
        "Envoy's failure_mode_deny decides, as with envoyproxy/ratelimit), open, closed, or "
        "local (each worker process enforces its share of each limit in memory) "
        "(default %(default)s)",
    )
    serve.add_argument(
        "--envoy-local-nodes",
        type=_process_count,
        default=None,
        metavar="N",
        help="with --envoy-failure-mode local: how many processes share each limit, each "
        "enforcing ceil(limit / N) while the store fails (default: --workers; with several "
        "service instances, all their workers)",
    )
    serve.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="file holding the bearer token /v1/reset requires (default: $RATEWALL_ADMIN_TOKEN;"
        " required when --http is not a loopback address)",
    )
    serve.add_argument(
        "--no-response-headers",
        action="store_true",
        help="do not send RateLimit/RateLimit-Policy/Retry-After headers for Envoy to add",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the event loop: uvloop (faster; pip install uvloop), asyncio, or auto (uvloop "
        "when installed; default %(default)s)",
    )
    serve.add_argument(
        "--batch-window",
        metavar="MS",
        type=_milliseconds,
        default=None,
        help="under load, how long a store call waits for other calls to share its round "
        "trip, in milliseconds (0 to 1000; default 0: each call leaves at once unless two "
        "are in flight)",
    )
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        from ..service.runner import ServiceOptions, serve
    except ImportError as error:
        print(
            f"ratewall serve: {error}; install the service extra: pip install 'ratewall[service]'"
        )
        return EXIT_USAGE
    token = None
    if args.admin_token_file:
        try:
            with open(args.admin_token_file, encoding="utf-8") as file:
                token = file.read().strip()
        except OSError as error:
            raise ConfigError(f"cannot read: {error}", source=args.admin_token_file) from None
        if not token:
            raise ConfigError("is empty", source=args.admin_token_file)
    options = ServiceOptions(
        config=args.config,
        envoy_config=tuple(args.envoy_config),
        store=args.store,
        grpc=args.grpc,
        http=args.http,
        workers=args.workers,
        admin_token=token,
        envoy_failure_mode=args.envoy_failure_mode,
        envoy_local_nodes=args.envoy_local_nodes,
        response_headers=not args.no_response_headers,
        loop=args.loop,
        **({} if args.batch_window is None else {"batch_window": args.batch_window}),
    )
    return serve(options)


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected milliseconds, got {text!r}") from None
    if not 0.0 <= value <= 1000.0:
        raise argparse.ArgumentTypeError(f"need 0 to 1000 milliseconds, got {text}")
    return value / 1000.0


def _process_count(text: str) -> int:
    number = integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 process, got {number}")
    return number


def _worker_count(text: str) -> int:
    number = integer(text)
    if not 1 <= number <= 256:
        raise argparse.ArgumentTypeError(f"need 1 to 256 workers, got {number}")
    return number
