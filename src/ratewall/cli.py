"""The ``ratewall`` command line: ``check-config`` and ``demo``.

Exit status: 0 on success, 1 when the demo cannot start (its port is taken), 2 for a bad
command line or an invalid config (with the error on stderr and no traceback), 130 when
interrupted.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version

from .config import Config, load_config, validate_store_url
from .errors import ConfigError

__all__ = ["build_parser", "describe_config", "main"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: _Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"ratewall: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratewall",
        description="An exact distributed rate limiter: validate configs, run the demo.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the policies it defines",
        description="Validate a config file (.json, .yaml/.yml or .toml) and print its "
        "policies and settings. Exit status 2 if it is invalid.",
    )
    check.add_argument("file", metavar="FILE", help="the config file to check")
    check.set_defaults(handler=_check_config)

    demo = commands.add_parser(
        "demo",
        help="run the demo API server (POST /login, identity from X-User-ID)",
        description="Start the demo API server: POST /login, limited per X-User-ID header, "
        "with its worker processes sharing one store.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    demo.add_argument(
        "--port", type=_port, default=8000, help="port to listen on (default %(default)s)"
    )
    demo.add_argument(
        "--workers",
        type=_worker_count,
        default=2,
        help="worker processes sharing the store (default %(default)s)",
    )
    demo.add_argument(
        "--store",
        type=_store_url,
        default=None,
        metavar="URL",
        help="store URL such as redis://127.0.0.1:6379/0 "
        "(default: start an embedded Valkey/Redis server)",
    )
    demo.add_argument(
        "--config", default=None, metavar="FILE", help="config file with the demo's policies"
    )
    demo.add_argument(
        "--walkthrough",
        action="store_true",
        help="play the scripted walkthrough of the request flow and print each answer",
    )
    demo.set_defaults(handler=_demo)
    return parser


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    for line in describe_config(config):
        print(line)
    return EXIT_OK


def describe_config(config: Config) -> list[str]:
    """The lines ``check-config`` prints: a summary, one per policy, then the settings.

    Policy lines read ``name: description``; settings read ``setting = value``, so a policy
    named like a setting cannot be mistaken for it.
    """
    count = len(config.policies)
    lines = [f"OK: {config.source} defines {count} {'policy' if count == 1 else 'policies'}"]
    lines.extend(f"{name}: {policy.describe()}" for name, policy in config.policies.items())
    lines.extend(
        [
            f"store = {config.store or '(not set: the program chooses, memory:// by default)'}",
            f"key_prefix = {config.key_prefix}",
            f"local_cache_size = {config.local_cache_size}",
            f"timeout = {config.timeout * 1000:g}ms",
        ]
    )
    for route in config.routes or ():
        names = [p if isinstance(p, str) else p.get("policy") for p in route.get("policies", ())]
        lines.append(f"route {route.get('match')} -> {', '.join(map(str, names)) or '(exempt)'}")
    return lines


def _demo(args: argparse.Namespace) -> int:
    # Imported here so that check-config does not pay for the server stack.
    from .demo import run_demo

    return run_demo(args)


def _port(text: str) -> int:
    number = _integer(text)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {number}")
    return number


def _worker_count(text: str) -> int:
    number = _integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 worker, got {number}")
    return number


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _store_url(text: str) -> str:
    try:
        return validate_store_url(text, source="--store", field="")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None


def _version() -> str:
    try:
        return version("ratewall")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
