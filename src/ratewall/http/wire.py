"""What may go on the wire: header encoding with its safety checks, and the plain responses
that stand in when a refusal's own headers cannot be sent.

An adapter encodes every header the engine (or a subclass of it) built before sending it, so
nothing unsendable (CR, LF, NUL, non-Latin-1 text) ever reaches the server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus
from typing import Final

from .headers import PROBLEM_CONTENT_TYPE
from .steps import Headers, Respond

__all__ = [
    "NO_HEADERS",
    "PLAIN_REFUSAL",
    "encode_headers",
    "fallback_response",
    "plain_response",
    "problem_headers",
]

NO_HEADERS: Final = "the response goes out without rate-limit headers"
PLAIN_REFUSAL: Final = "a plain refusal is sent"


def problem_headers(body: bytes) -> Headers:
    return (
        ("Content-Type", PROBLEM_CONTENT_TYPE),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    )


def plain_response(status: int, title: str, wait: int = 1) -> Respond:
    """A minimal response that cannot fail to build: the last resort for a refusal."""
    body = f"{status} {title}\n".encode("ascii")
    headers: list[tuple[str, str]] = [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
    ]
    if status in (429, 503):
        headers.append(("Retry-After", str(max(1, wait))))
    return Respond(status, tuple(headers), body)


def fallback_response(verdict: Respond) -> Respond:
    """The plain response adapters send when ``verdict``'s headers cannot be encoded: the
    same status, and its ``Retry-After`` if that is a valid number of seconds."""
    try:
        status, title = verdict.status, HTTPStatus(verdict.status).phrase
    except ValueError:
        status, title = 429, "Too Many Requests"
    wait = 1
    try:
        for name, value in verdict.headers:
            if name.lower() == "retry-after" and value.isascii() and value.isdigit():
                wait = int(value[:15])
    except Exception:  # noqa: BLE001 - no usable Retry-After: the plain one says 1 second
        wait = 1
    return plain_response(status, title, wait)


# Names that were encoded and checked before: the same few come back on every response.
_ENCODED_NAMES: dict[str, bytes] = {}
_MAX_ENCODED_NAMES: Final = 256
_UNSAFE_NAME: Final = re.compile("[\r\n\0 :]")
_UNSAFE_VALUE: Final = re.compile("[\r\n\0]")


def _encode_name(name: str) -> bytes:
    raw_name = name.lower().encode("latin-1")
    if not raw_name or _UNSAFE_NAME.search(name):
        raise ValueError(f"header {name!r} cannot be sent as is")
    if len(_ENCODED_NAMES) < _MAX_ENCODED_NAMES:
        _ENCODED_NAMES[name] = raw_name
    return raw_name


def encode_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as lowercase Latin-1 bytes; :class:`ValueError` for anything that could
    not go on the wire safely (non-Latin-1 text, CR, LF or NUL, an empty name)."""
    encoded: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        raw_name = _ENCODED_NAMES.get(name) if type(name) is str else None
        if raw_name is None:
            raw_name = _encode_name(name)
        raw_value = value.encode("latin-1")
        if _UNSAFE_VALUE.search(value):
            raise ValueError(f"header {name!r} cannot be sent as is")
        encoded.append((raw_name, raw_value))
    return encoded
