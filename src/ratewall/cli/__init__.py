"""The ``ratewall`` command line. Each command lives in a module of its own, which
registers its parser here (:data:`COMMANDS`). The admin commands (``inspect``, ``reset``,
``explain``, ``top``) share their options and error handling in ``_admin`` and read the store
through :mod:`ratewall.admin`.

Exit status: 0 on success, 1 when the store fails (or the demo cannot start: its port is
taken), 2 for a bad command line or an invalid config (with the error on stderr and no
traceback), 130 when interrupted, 141 when the reader of the output went away (``ratewall
top ... | head``: quietly, as a command that SIGPIPE ends).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from ..errors import ConfigError
from . import _check_config, _demo, _explain, _inspect, _reset, _serve, _simulate, _top
from ._check_config import describe_config
from ._common import EXIT_BROKEN_PIPE, EXIT_INTERRUPTED, EXIT_USAGE, Handler

__all__ = ["COMMANDS", "build_parser", "describe_config", "main"]

#: Each command's ``register(subparsers)``, in the order ``--help`` lists them.
COMMANDS: tuple[Callable[[Any], None], ...] = (
    _check_config.register,
    _demo.register,
    _inspect.register,
    _reset.register,
    _explain.register,
    _top.register,
    _serve.register,
    _simulate.register,
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    try:
        status = _run(argv)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's final flush
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    return status


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors: argparse already printed
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Handler = args.handler
    try:
        return handler(args)
    except ConfigError as exc:
        print(f"ratewall: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _silence_stdout() -> None:
    """Point stdout at the null device, so that what is still buffered goes nowhere instead
    of failing again, with a traceback, when the interpreter flushes it at exit (the
    handling the Python docs give in their note on SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (replaced by a test): nothing to silence
        return


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratewall",
        description="An exact distributed rate limiter: validate configs, run the demo or "
        "the rate-limit service, look at and fix what the store holds.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS:
        register(commands)
    return parser


def _version() -> str:
    try:
        return version("ratewall")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
