"""Store URLs, parsed in one place: the schemes ratewall understands, the check of a URL's
parts, and the typed description (:class:`StoreURL`) that config validation, ratewall's own
connection (:class:`~ratewall.stores._resp.Endpoint`) and the redis-py clients of Cluster
and Sentinel are all built from.

Forms::

    memory://
    redis://[[user]:password@]host[:port][/db][?db=N]      (valkey:// is the same)
    rediss://...   valkeys://...                            TLS, same parts
    unix://[[user]:password@]/path/to/redis.sock[?db=N]
    redis+cluster://[[user]:password@]host[:port][,host[:port]...]
                                                            seed nodes, asked in turn for
                                                            the slot map; rediss+cluster: TLS
    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...]                            rediss+sentinel: TLS to the
                                                            sentinels and to the master

TLS URLs take redis-py's parameters ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs`` (``none``, ``optional``, ``required``: the default) and
``ssl_check_hostname`` (``true``, the default unless ``ssl_cert_reqs=none``, or ``false``).
Without ``ssl_ca_certs`` the system's trust store is used (or the file SSL_CERT_FILE names).
Any other parameter is an error: an ignored ``?timeout=`` must not pass silently.

Messages never carry a password: URLs in them go through :func:`redacted`.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass
from typing import Any, Final, Literal, NoReturn
from urllib.parse import parse_qs, unquote, urlsplit

from .errors import ConfigError

__all__ = [
    "STORE_SCHEMES",
    "StoreURL",
    "TLSOptions",
    "parse_url",
    "redacted",
    "store_url_problem",
]

STORE_SCHEMES: Final = (
    "memory",
    "redis",
    "rediss",
    "unix",
    "valkey",
    "valkeys",
    "redis+cluster",
    "rediss+cluster",
    "redis+sentinel",
    "rediss+sentinel",
)

Kind = Literal["memory", "redis", "cluster", "sentinel"]
CertReqs = Literal["none", "optional", "required"]

_STANDALONE: Final = ("redis", "rediss", "valkey", "valkeys", "unix")
_TLS_SCHEMES: Final = ("rediss", "valkeys", "rediss+cluster", "rediss+sentinel")
_TLS_QUERY: Final = (
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)
_CERT_REQS: Final = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
_BOOLEANS: Final = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_DEFAULT_PORT: Final = 6379
_DEFAULT_SENTINEL_PORT: Final = 26379


@dataclass(frozen=True, slots=True)
class TLSOptions:
    """How to verify the server (and, with a certificate file, present ourselves)."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: CertReqs = "required"
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """An SSL context for ratewall's own connection (built once per store)."""
        context = ssl.create_default_context(cafile=self.ca_certs)
        context.check_hostname = self.check_hostname
        context.verify_mode = _CERT_REQS[self.cert_reqs]
        if self.certfile is not None:
            context.load_cert_chain(self.certfile, self.keyfile)
        return context

    def redis_py(self) -> dict[str, Any]:
        """The same options as redis-py's connection keyword arguments."""
        return {
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_check_hostname": self.check_hostname,
        }


@dataclass(frozen=True, slots=True)
class StoreURL:
    """A store URL's parts. ``nodes`` are the hosts named (one for a server, a cluster's
    seed nodes, the sentinels for Sentinel); ``host``/``port`` the first of them; ``path`` a
    unix socket; ``service`` a Sentinel service; ``tls`` set on TLS schemes."""

    url: str
    kind: Kind
    nodes: tuple[tuple[str, int], ...] = ()
    path: str | None = None
    service: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0
    sentinel_password: str | None = None
    tls: TLSOptions | None = None

    @property
    def host(self) -> str | None:
        return self.nodes[0][0] if self.nodes else None

    @property
    def port(self) -> int:
        return self.nodes[0][1] if self.nodes else 0

    def __repr__(self) -> str:
        return f"StoreURL({redacted(self.url)!r}, kind={self.kind!r})"


def redacted(url: str) -> str:
    """``url`` with its password (and any ``*password*`` parameter) replaced by ``***``."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    netloc, tail = rest[:end], rest[end:]
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}:***@{hosts}" if colon else netloc
    tail = re.sub(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", r"\1***", tail, flags=re.IGNORECASE)
    return f"{scheme}://{netloc}{tail}"


def store_url_problem(url: str) -> str | None:
    """What makes ``url`` (whose scheme is one of :data:`STORE_SCHEMES`) unusable, or
    ``None``: a port that is not a number in 1-65535, a database that is not a whole number
    (or is given twice, differently), a relative Unix socket path, an unknown or malformed
    parameter. The server itself is not contacted."""
    try:
        parse_url(url)
    except ConfigError as error:
        return error.reason
    return None


def parse_url(url: str) -> StoreURL:
    """``url``'s parts, or ConfigError (field ``store``) saying what is wrong with it."""
    shown = redacted(url)
    scheme, separator, _ = url.partition("://")
    scheme = scheme.lower()
    if not separator or scheme not in STORE_SCHEMES:
        _fail(
            f"unsupported store URL {shown!r}; expected one of "
            + ", ".join(f"{s}://" for s in STORE_SCHEMES)
        )
    if scheme == "memory":
        return StoreURL(url, "memory")
    try:
        parts = urlsplit(url)
        query = parse_qs(parts.query, keep_blank_values=True)
    except ValueError as error:  # e.g. an unbalanced IPv6 bracket
        _fail(f"store URL {shown!r} is malformed: {error}")
    netloc = parts.netloc
    userinfo, _, hosts = netloc.rpartition("@")
    username, password = _credentials(userinfo)
    tls = _tls_options(shown, scheme, query)
    if scheme.endswith("+sentinel"):
        return _sentinel(url, shown, scheme, hosts, parts.path, query, username, password, tls)
    _only(shown, query, ("db",), scheme)
    if len(query.get("db", ())) > 1:
        _fail(f"store URL {shown!r} gives ?db= more than once")
    db = query["db"][0] if "db" in query else None
    if scheme == "unix":
        if not parts.path.startswith("/"):
            _fail(f"store URL {shown!r} needs an absolute socket path: unix:///path/to/redis.sock")
        return StoreURL(
            url, "redis", path=parts.path, username=username, password=password, db=_db(shown, db)
        )
    cluster = scheme.endswith("+cluster")
    if "," in hosts and not cluster:
        _fail(
            f"store URL {shown!r} names several hosts; a server's URL names one (list seed "
            "nodes in redis+cluster://h1:port,h2:port, sentinels in redis+sentinel://)"
        )
    nodes = tuple(_node(shown, item, _DEFAULT_PORT) for item in hosts.split(","))
    path = parts.path.strip("/")
    if path and db is not None and path != db:
        _fail(f"store URL {shown!r} names database {path} in its path and {db} in ?db=")
    return StoreURL(
        url,
        "cluster" if cluster else "redis",
        nodes=nodes,
        username=username,
        password=password,
        db=_db(shown, path or db),
        tls=tls,
    )


def _sentinel(
    url: str,
    shown: str,
    scheme: str,
    hosts: str,
    path: str,
    query: dict[str, list[str]],
    username: str | None,
    password: str | None,
    tls: TLSOptions | None,
) -> StoreURL:
    nodes = tuple(_node(shown, item, _DEFAULT_SENTINEL_PORT) for item in hosts.split(","))
    _only(shown, query, ("sentinel_password",), scheme)
    names = [segment for segment in path.split("/") if segment]
    if len(names) > 2:
        _fail(f"store URL {shown!r}: expected .../service[/db] after the sentinels")
    if not names:
        _fail(f"sentinel URL {shown!r} needs a service name: .../mymaster")
    sentinel_password = query["sentinel_password"][0] if "sentinel_password" in query else None
    return StoreURL(
        url,
        "sentinel",
        nodes=nodes,
        service=names[0],
        username=username,
        password=password,
        db=_db(shown, names[1] if len(names) > 1 else None),
        sentinel_password=sentinel_password,
        tls=tls,
    )


def _fail(reason: str) -> NoReturn:
    raise ConfigError(reason, field="store")


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    return (unquote(user) or None), (unquote(password) if colon else None)


def _only(shown: str, query: dict[str, list[str]], allowed: tuple[str, ...], scheme: str) -> None:
    tls_names = _TLS_QUERY if scheme in _TLS_SCHEMES else ()
    unknown = sorted(set(query) - set(allowed) - set(tls_names))
    if not unknown:
        return
    if scheme in _STANDALONE:
        tls_hint = (
            "; with rediss:// also " + ", ".join(_TLS_QUERY)
            if scheme not in _TLS_SCHEMES
            else ", " + ", ".join(_TLS_QUERY)
        )
        _fail(
            f"store URL {shown!r} has unknown parameter(s) {', '.join(unknown)}; "
            f"a server's URL takes only ?db=N{tls_hint}"
        )
    _fail(f"store URL {shown!r} has unknown parameter(s) {', '.join(unknown)}")


def _tls_options(shown: str, scheme: str, query: dict[str, list[str]]) -> TLSOptions | None:
    if scheme not in _TLS_SCHEMES:
        return None
    values: dict[str, str] = {}
    for name in _TLS_QUERY:
        given = query.get(name, [])
        if len(given) > 1:
            _fail(f"store URL {shown!r} gives ?{name}= more than once")
        if given:
            values[name] = given[0]
    cert_reqs = values.get("ssl_cert_reqs", "required").lower()
    if cert_reqs not in _CERT_REQS:
        _fail(
            f"store URL {shown!r} has ssl_cert_reqs={values['ssl_cert_reqs']!r}; "
            "expected none, optional or required"
        )
    check = values.get("ssl_check_hostname", "false" if cert_reqs == "none" else "true")
    if check.lower() not in _BOOLEANS:
        _fail(f"store URL {shown!r} has ssl_check_hostname={check!r}; expected true or false")
    check_hostname = _BOOLEANS[check.lower()]
    if check_hostname and cert_reqs == "none":
        _fail(f"store URL {shown!r}: ssl_check_hostname=true needs a verified certificate")
    if "ssl_keyfile" in values and "ssl_certfile" not in values:
        _fail(f"store URL {shown!r} gives ssl_keyfile without ssl_certfile")
    return TLSOptions(
        ca_certs=values.get("ssl_ca_certs"),
        certfile=values.get("ssl_certfile"),
        keyfile=values.get("ssl_keyfile"),
        cert_reqs=cert_reqs,  # type: ignore[arg-type]  # checked against _CERT_REQS above
        check_hostname=check_hostname,
    )


def _node(shown: str, host_port: str, default_port: int) -> tuple[str, int]:
    """``host[:port]`` or ``[v6][:port]`` (no port: the default)."""
    if host_port.startswith("["):
        host, _, after = host_port[1:].partition("]")
        port = after[1:] if after.startswith(":") else ""
    elif ":" in host_port:
        host, _, port = host_port.rpartition(":")
    else:
        host, port = host_port, ""
    if port == "":
        return host or "localhost", default_port
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        _fail(f"store URL {shown!r} has port {port!r}; a port is a number from 1 to 65535")
    return host or "localhost", int(port)


def _db(shown: str, db: str | None) -> int:
    if db is None:
        return 0
    if db.isascii() and db.isdigit():
        return int(db)
    _fail(f"store URL {shown!r} has database {db!r}; a database is a whole number such as 0")
