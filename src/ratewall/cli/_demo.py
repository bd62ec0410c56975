"""``ratewall demo``: the API server of the README's request flow, with worker processes
sharing one store."""

from __future__ import annotations

import argparse
from typing import Any

from ._common import integer, port, store_url

__all__ = ["register"]


def register(commands: Any) -> None:
    demo = commands.add_parser(
        "demo",
        help="run the demo API server (POST /login, identity from X-User-ID)",
        description="Start the demo API server: POST /login, limited per X-User-ID header, "
        "with its worker processes sharing one store.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    demo.add_argument(
        "--port", type=port, default=8000, help="port to listen on (default %(default)s)"
    )
    demo.add_argument(
        "--workers",
        type=_worker_count,
        default=2,
        help="worker processes sharing the store (default %(default)s)",
    )
    demo.add_argument(
        "--store",
        type=store_url,
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


def _demo(args: argparse.Namespace) -> int:
    # Imported here so that other commands do not pay for the server stack.
    from ..demo import run_demo

    return run_demo(args)


def _worker_count(text: str) -> int:
    number = integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"need at least 1 worker, got {number}")
    return number
