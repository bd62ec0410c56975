"""The store URL schemes ratewall understands, and the check of a URL's parts (one place for
the config, the command line and the stores)."""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qs, urlsplit

__all__ = ["STORE_SCHEMES", "store_url_problem"]

STORE_SCHEMES: Final = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "valkey",
    "valkeys",
    "redis+cluster",
    "redis+sentinel",
)

# Standalone servers are reached through ratewall's own connection, which reads no other
# query parameter: an ignored ``?ssl_ca_certs=`` or ``?timeout=`` must not pass silently.
_STANDALONE: Final = ("redis", "rediss", "valkey", "valkeys", "unix")
_STANDALONE_QUERY: Final = ("db",)
_SENTINEL_QUERY: Final = ("sentinel_password",)


def store_url_problem(url: str) -> str | None:
    """What makes ``url`` (whose scheme is one of :data:`STORE_SCHEMES`) unusable, or
    ``None``: a port that is not a number in 1-65535, a database that is not a whole number
    (or is given twice, differently), a relative Unix socket path, an unknown parameter of
    a standalone server's URL. The server itself is not contacted."""
    scheme = url.partition("://")[0].lower()
    if scheme == "memory":
        return None
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError as error:  # e.g. an unbalanced IPv6 bracket
        return f"store URL {url!r} is malformed: {error}"
    if scheme == "redis+sentinel":
        return _sentinel_problem(url, parts.netloc, parts.path, query)
    if scheme in _STANDALONE:
        unknown = sorted(set(query) - set(_STANDALONE_QUERY))
        if unknown:
            return (
                f"store URL {url!r} has unknown parameter(s) {', '.join(unknown)}; "
                "a server's URL takes only ?db=N (TLS for rediss:// uses the system's trust "
                "store, or the file that SSL_CERT_FILE names)"
            )
    if len(query.get("db", ())) > 1:
        return f"store URL {url!r} gives ?db= more than once"
    db = query["db"][0] if "db" in query else None
    if scheme == "unix":
        if not parts.path.startswith("/"):
            return f"store URL {url!r} needs an absolute socket path: unix:///path/to/redis.sock"
        return _db_problem(url, db)
    port_problem = _port_problem(url, parts.netloc.rpartition("@")[2])
    if port_problem:
        return port_problem
    path = parts.path.strip("/")
    if path and db is not None and path != db:
        return f"store URL {url!r} names database {path} in its path and {db} in ?db="
    return _db_problem(url, path or db)


def _sentinel_problem(url: str, netloc: str, path: str, query: dict[str, list[str]]) -> str | None:
    for node in netloc.rpartition("@")[2].split(","):
        problem = _port_problem(url, node)
        if problem:
            return problem
    unknown = sorted(set(query) - set(_SENTINEL_QUERY))
    if unknown:
        return f"store URL {url!r} has unknown parameter(s) {', '.join(unknown)}"
    names = [segment for segment in path.split("/") if segment]
    if len(names) > 2:
        return f"store URL {url!r}: expected .../service[/db] after the sentinels"
    return _db_problem(url, names[1] if len(names) > 1 else None)


def _port_problem(url: str, host_port: str) -> str | None:
    """A problem with the port of ``host[:port]`` (``[v6][:port]``; none: the default), or
    ``None``."""
    if host_port.endswith("]") or ":" not in host_port:
        return None
    port = host_port.rpartition(":")[2]
    if port == "":
        return None
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        return f"store URL {url!r} has port {port!r}; a port is a number from 1 to 65535"
    return None


def _db_problem(url: str, db: str | None) -> str | None:
    if db is None or (db.isascii() and db.isdigit()):
        return None
    return f"store URL {url!r} has database {db!r}; a database is a whole number such as 0"
