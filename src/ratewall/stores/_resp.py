"""RESP, as the limiter speaks it: endpoints (what a store URL names), commands packed
for hiredis, replies checked, the handshake, and :class:`Script` (how the limiter's one
script is called: ``FCALL``, or ``EVALSHA`` where the server has no functions).

redis-py spends ~200 Python calls per command (pool checkout with a health check, socket
blocking-mode toggles, fork checks, observability hooks). A limiter's round trip is its
whole cost, so standalone/TLS/unix connections use ratewall's own lean connections, built on
this module: :mod:`._connection` (sync: a pool of blocking sockets) and
:mod:`._aconnection` (asyncio: one pipelined connection).

Failure rules (the limiter's, not a cache's): every call has one deadline (the store
timeout); nothing is retried, except that a pooled connection found dead on first use (the
server restarted, or closed an idle connection) is replaced once. In that rare case the
script may have run before the connection died, so a request can be counted twice — the safe
direction for a limiter (never counted zero times, never over-admitted).
"""

from __future__ import annotations

import hashlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import hiredis

from .._urls import parse_url

__all__ = [
    "LOAD",
    "Endpoint",
    "ReplyError",
    "Script",
    "StoreConnectionError",
    "StoreProtocolError",
    "StoreTimeoutError",
    "bulk",
    "check_handshake",
    "checked",
    "pack",
    "wrong_server",
]

ReplyError = hiredis.ReplyError

# Replies that say "this server cannot serve you now": a replica (READONLY: a failover
# demoted the server this connection reached, behind an address that now leads to the new
# primary), a server loading its data set (LOADING), a replica cut from its primary
# (MASTERDOWN). The call fails (the policy's failure mode answers), and so that the next
# call does not meet the same server, the connection is dropped, as redis-py does.
_WRONG_SERVER: Final = ("READONLY", "LOADING", "MASTERDOWN")


def wrong_server(reply: Any) -> bool:
    """Whether ``reply`` is an error after which the connection must not be reused."""
    return isinstance(reply, ReplyError) and str(reply).startswith(_WRONG_SERVER)


class StoreTimeoutError(TimeoutError):
    """The store did not answer within the timeout."""


class StoreConnectionError(ConnectionError):
    """The connection to the store failed or closed mid-call."""


class StoreProtocolError(Exception):
    """The store answered something the limiter cannot read."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to connect: a ``redis://``, ``rediss://`` or ``unix://`` URL's parts
    (parsed by :func:`ratewall._urls.parse_url`) and the store timeout."""

    host: str | None
    port: int
    path: str | None  # unix socket
    tls: bool
    username: str | None
    password: str | None
    db: int
    timeout: float
    ssl_context: ssl.SSLContext | None = None  # built once, from the URL's TLS options

    @classmethod
    def from_url(cls, url: str, timeout: float) -> Endpoint:
        parsed = parse_url(url)
        if parsed.kind != "redis":
            raise ValueError(f"{parsed!r} is not a standalone server's URL")
        return cls(
            parsed.host,
            parsed.port,
            parsed.path,
            parsed.tls is not None,
            parsed.username,
            parsed.password,
            parsed.db,
            timeout,
            parsed.tls.context() if parsed.tls is not None else None,
        )

    def handshake(self) -> list[tuple[str | int, ...]]:
        commands: list[tuple[str | int, ...]] = []
        if self.password is not None:
            if self.username:
                commands.append(("AUTH", self.username, self.password))
            else:
                commands.append(("AUTH", self.password))
        if self.db:
            commands.append(("SELECT", self.db))
        commands.append(_SETNAME)
        return commands


def pack(command: Sequence[str | int]) -> bytes:
    """hiredis' RESP encoder (its type stub wrongly declares a 1-tuple parameter)."""
    packed: bytes = hiredis.pack_command(tuple(command))  # type: ignore[arg-type]
    return packed


def checked(reply: Any) -> Any:
    if isinstance(reply, ReplyError):
        raise reply
    return reply


_SETNAME: Final = ("CLIENT", "SETNAME", "ratewall")


def check_handshake(command: tuple[str | int, ...], reply: Any) -> None:
    """Raise a handshake command's error, except a refused ``CLIENT SETNAME``: the name only
    labels the connection in ``CLIENT LIST``, and a user whose ACL lacks ``client|setname``
    (the least a limiter needs has no reason to include it) must still connect."""
    if command == _SETNAME and isinstance(reply, ReplyError) and str(reply).startswith("NOPERM"):
        return
    checked(reply)


# The steps of one script call. It starts with FCALL (or EVALSHA once the server is known
# to lack functions) and takes at most three more round trips to recover: FCALL, FUNCTION
# LOAD, FCALL again; or EVALSHA, EVAL; or, when FUNCTION LOAD is refused, EVALSHA and EVAL
# after it. Every step is sent on the same connection, under the call's one deadline.
FCALL, LOAD, FCALL_AGAIN, EVALSHA, EVAL = range(5)


class Script:
    """A script's text, its SHA1, and the commands that run it.

    On servers with functions (Redis 7+, Valkey) the script is a function library: FUNCTION
    LOAD runs its definitions once, and each FCALL runs only ``run``. As a plain script
    (EVALSHA, re-sent as EVAL on NOSCRIPT) every call redefines all of it first: a one-key
    decision then costs the server three times the instructions (255,000 against 86,000 for
    a fixed window on Redis 7.0 here, counted by callgrind). The library
    and the function are named after the script's hash, so that two ratewall versions
    sharing a server during a rolling deploy never replace each other's code; each version
    loads its library once per server (a library is a few kB; ``FUNCTION DELETE
    ratewall_<hash>`` removes an old one).

    The server tells which way works, and the first call finds out (:meth:`next_step`):
    "Function not found" (a new server, FUNCTION FLUSH, a restart without persistence, a
    failover) loads the library and calls again; a server without functions (Redis 6) or a
    user whose ACL denies FCALL or FUNCTION LOAD switches this script to EVALSHA for good.

    A command is built around a *body*: the RESP bulk strings of numkeys, the keys and the
    arguments (``argc`` of them), already encoded by the caller, so that the same body serves
    every step."""

    __slots__ = (
        "_eval_head",
        "_evalsha_head",
        "_fcall_head",
        "_load",
        "functions",
        "library",
        "sha",
        "text",
    )

    def __init__(self, text: str, *, functions: bool = True) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()
        self._evalsha_head = b"$7\r\nEVALSHA\r\n" + bulk(self.sha)
        self._eval_head = b"$4\r\nEVAL\r\n" + bulk(text)
        self.library = f"ratewall_{self.sha[:16]}"
        self._fcall_head = b"$5\r\nFCALL\r\n" + bulk(self.library)
        self._load = pack(("FUNCTION", "LOAD", _library_code(text, self.library)))
        # Cleared when the server turns out to lack functions (or to deny them to this user).
        self.functions = functions

    def first_step(self) -> int:
        return FCALL if self.functions else EVALSHA

    def command(self, step: int, argc: int, body: bytes) -> bytes:
        """The packed command of ``step`` for ``body``."""
        if step in (FCALL, FCALL_AGAIN):
            return b"*%d\r\n%b%b" % (argc + 2, self._fcall_head, body)
        if step == EVALSHA:
            return b"*%d\r\n%b%b" % (argc + 2, self._evalsha_head, body)
        if step == EVAL:
            return b"*%d\r\n%b%b" % (argc + 2, self._eval_head, body)
        return self._load

    def next_step(self, step: int, reply: Any) -> int | None:
        """What to send after ``step`` answered ``reply``, or ``None``: the call's reply is
        ``reply``. Only the answers that mean "not loaded here" or "not available here" lead
        on; an error of the script itself is the call's reply."""
        if step == LOAD:
            if not isinstance(reply, ReplyError) or "already exists" in str(reply):
                return FCALL_AGAIN  # loaded now, or by another client meanwhile
            if wrong_server(reply):
                return None  # a replica refusing writes says nothing about functions
            self.functions = False  # refused (ACL, out of memory, ...): plain scripts then
            return EVALSHA
        if not isinstance(reply, ReplyError):
            return None
        message = str(reply)
        if step == FCALL:
            if message.startswith("ERR Function not found"):
                return LOAD
            lowered = message.lower()
            if message.startswith("ERR unknown command") or (
                message.startswith("NOPERM") and "fcall" in lowered
            ):
                self.functions = False
                return EVALSHA
        elif step == EVALSHA and message.startswith("NOSCRIPT"):
            return EVAL
        return None


_RUN_CALL: Final = "return run(KEYS, ARGV)"


def _library_code(text: str, library: str) -> str:
    """The script as a function library: its definitions, then ``run`` registered under the
    library's name instead of called (the script's last statement, ``return run(KEYS, ARGV)``)."""
    definitions, found, rest = text.rpartition(_RUN_CALL)
    if not found or rest.strip():
        raise ValueError(f"the script must end with {_RUN_CALL!r}")
    return f"#!lua name={library}\n{definitions}redis.register_function('{library}', run)\n"


def bulk(value: str | int) -> bytes:
    """One RESP bulk string (what the server sees as one argument)."""
    encoded = value.encode() if isinstance(value, str) else b"%d" % value
    return b"$%d\r\n%b\r\n" % (len(encoded), encoded)
