"""What every command shares: exit statuses and argument types."""

from __future__ import annotations

import argparse
import ipaddress
from collections.abc import Callable

from ..config import validate_store_url
from ..errors import ConfigError

__all__ = [
    "EXIT_BROKEN_PIPE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_STORE",
    "EXIT_USAGE",
    "Handler",
    "integer",
    "ip_address",
    "port",
    "store_url",
]

EXIT_OK = 0
EXIT_STORE = 1  # the store failed (or, for the demo, its port is taken)
EXIT_USAGE = 2  # a bad command line or config
EXIT_INTERRUPTED = 130
# The reader of our output went away (`ratewall top ... | head`): what a shell reports for a
# process that SIGPIPE ended, 128 + 13.
EXIT_BROKEN_PIPE = 141

Handler = Callable[[argparse.Namespace], int]


def port(text: str) -> int:
    number = integer(text)
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {number}")
    return number


def integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def ip_address(text: str) -> str:
    """An IPv4 or IPv6 address, as the server's socket would give it."""
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text!r}") from None


def store_url(text: str) -> str:
    try:
        return validate_store_url(text, source="--store", field="")
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.reason) from None
