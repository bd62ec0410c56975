"""The client's address: the socket peer, or what trusted proxies say it is.

Forwarded headers (``X-Forwarded-For``, RFC 7239 ``Forwarded``) are client-controlled text
until a trusted proxy vouches for them, so they are parsed defensively: right to left,
bounded (:data:`MAX_VALUE_LENGTH`, :data:`MAX_PROXY_HOPS`), stopping at the first hop that is
not a valid address.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from ..config import ClientIPSettings, Config, ForwardedHeader, IPNetwork
from .request import HttpRequest

__all__ = [
    "MAX_PROXY_HOPS",
    "MAX_VALUE_LENGTH",
    "ClientIP",
    "ForwardedHeader",
    "client_ip_from_config",
]

MAX_VALUE_LENGTH: Final = 4096
"""How many characters of forwarded-address headers (and of the peer address) are parsed."""

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_MAX_ADDRESS_TEXT: Final = 64  # "[" + 45-character IPv6 + "]:" + port, with room to spare
MAX_PROXY_HOPS: Final = 32
"""How many forwarded hops :class:`ClientIP` walks at most before it stops trusting."""


@functools.lru_cache(maxsize=4096)
def _parse_address(text: str) -> IPAddress | None:
    """An address from an X-Forwarded-For entry or a Forwarded ``for=`` value, else ``None``.

    Accepts ``192.0.2.1``, ``192.0.2.1:8080``, ``2001:db8::1``, ``[2001:db8::1]`` and
    ``[2001:db8::1]:8080``; drops IPv6 zone ids; normalises IPv4-mapped IPv6 to IPv4.
    Anything else (``unknown``, ``_hidden``, host names, garbage) is ``None``.
    """
    text = text.strip()
    if not text or len(text) > _MAX_ADDRESS_TEXT:
        return None
    try:
        if text.startswith("["):
            end = text.find("]")
            rest = text[end + 1 :]
            if end < 0 or (rest and not (rest[0] == ":" and rest[1:].isdigit())):
                return None
            address: IPAddress = ipaddress.IPv6Address(text[1:end].partition("%")[0])
        elif text.count(":") == 1:
            host, _, port = text.partition(":")
            if not port.isdigit():
                return None
            address = ipaddress.IPv4Address(host)
        else:
            address = ipaddress.ip_address(text.partition("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _forwarded_elements(line: str) -> list[str | None]:
    """The ``for=`` values of one RFC 7239 ``Forwarded`` field line, left to right.

    An element without ``for`` is ``None`` (unknown hop). A syntax error ends the line with
    one ``None``: everything from the broken element on is untrustworthy.
    """
    elements: list[str | None] = []
    position, length = 0, len(line)
    current: str | None = None
    while True:
        # One pair: token "=" (token / quoted-string).
        while position < length and line[position] in " \t":
            position += 1
        start = position
        while position < length and line[position] not in '=;, \t"':
            position += 1
        name = line[start:position].lower()
        if not name or position >= length or line[position] != "=":
            elements.append(None)
            return elements
        position += 1
        if position < length and line[position] == '"':
            position += 1
            chars: list[str] = []
            while position < length and line[position] != '"':
                if line[position] == "\\" and position + 1 < length:
                    position += 1
                chars.append(line[position])
                position += 1
            if position >= length:  # unterminated quoted string
                elements.append(None)
                return elements
            position += 1
            value = "".join(chars)
        else:
            start = position
            while position < length and line[position] not in ';, \t"':
                position += 1
            value = line[start:position]
            if not value:
                elements.append(None)
                return elements
        if name == "for":
            current = value
        while position < length and line[position] in " \t":
            position += 1
        if position >= length:
            elements.append(current)
            return elements
        separator = line[position]
        position += 1
        if separator == ",":
            elements.append(current)
            current = None
            # Empty list members ("a, , b") are allowed by the list syntax.
            while position < length and line[position] in " \t,":
                position += 1
            if position >= length:
                return elements
        elif separator != ";":
            elements.append(None)
            return elements


def _forwarded_chain(lines: Iterable[str], header: ForwardedHeader) -> list[str | None]:
    """Every hop of the forwarded header, left (client side) to right (nearest proxy)."""
    chain: list[str | None] = []
    for line in lines:
        if header == "forwarded":
            chain.extend(_forwarded_elements(line))
        else:
            entries = [entry.strip() for entry in line.split(",")]
            if entries == [""]:
                continue
            chain.extend(entry or None for entry in entries)
    return chain


def _tail(lines: tuple[str, ...], budget: int) -> list[str]:
    """The last ``budget`` characters' worth of field lines, each line cut at its left on an
    element boundary: a proxy chain is read from the right, so the left is what may go."""
    kept: list[str] = []
    for line in reversed(lines):
        if budget <= 0:
            break
        if len(line) > budget:
            kept.append(line[-budget:].partition(",")[2])
            budget = 0
        else:
            kept.append(line)
            budget -= len(line)
    kept.reverse()
    return kept


# Parsing and grouping addresses with ipaddress costs microseconds; the same peers and clients
# come back again and again. Bounded caches: an attacker can churn them, never grow them.
@functools.lru_cache(maxsize=4096)
def _grouped(address: IPAddress, prefix: int) -> str:
    if prefix == address.max_prefixlen:
        return str(address)
    return str(ipaddress.ip_network((address, prefix), strict=False))


_UNSEEN: Final = object()
_MAX_PEERS: Final = 4096


def _peer_identity(client: str | None, ipv4_prefix: int, ipv6_prefix: int) -> str | None:
    """What :class:`ClientIP` trusting no proxy answers for a peer: its address grouped by
    prefix; a peer that is not an IP address is its own identity; no peer is ``None``."""
    peer_text = (client or "").strip()[:MAX_VALUE_LENGTH]
    peer = _parse_address(peer_text) if peer_text else None
    if peer is None:
        return peer_text or None
    return _grouped(peer, ipv6_prefix if peer.version == 6 else ipv4_prefix)


@dataclass(frozen=True, slots=True)
class ClientIP:
    """The client's IP address, grouped into a network for IPv6 (and optionally IPv4).

    By default only the socket peer counts: forwarded headers are ignored, because any client
    can send them. Behind reverse proxies, list them in ``trusted_proxies`` (addresses or CIDR
    networks; ``"unix"`` trusts a peer on a unix socket, which has no address). Only when the
    peer is trusted is the forwarded header read, right to left: each hop that is a trusted
    proxy is skipped, and the first untrusted address is the client. A hop that is not a
    valid address (``unknown``, an obfuscated ``_hidden`` name, garbage) stops the walk: the
    client is then the last trusted hop, never a value nobody trustworthy vouched for. If every
    hop is trusted, the leftmost is the client.

    ``header`` names the one forwarded header your proxies maintain: ``"x-forwarded-for"``
    (default) or RFC 7239 ``"forwarded"``. Only that one is read: reading a header the proxies
    pass through untouched would let clients choose their address.

    IPv6 clients are grouped by ``ipv6_prefix`` (default /64, the block one subscriber
    usually gets, so rotating addresses inside it gains nothing); ``ipv4_prefix`` (default
    32) can group IPv4 too. IPv4-mapped IPv6 (``::ffff:192.0.2.1``) is treated as IPv4. The
    identity is the address (``192.0.2.1``) or the network (``2001:db8:1:2::/64``).

    A peer that is not an IP address (a unix socket path, a test client's name) is trusted
    only as ``"unix"`` and is its own identity unless a trusted header names the client; no
    peer at all gives ``None``.
    """

    trusted_proxies: Sequence[str] = ()
    ipv6_prefix: int = 64
    ipv4_prefix: int = 32
    header: ForwardedHeader = "x-forwarded-for"
    _networks: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)
    _trust_unix: bool = field(init=False, repr=False, compare=False)
    _trusts_nobody: bool = field(init=False, repr=False, compare=False)
    # Trusting no proxy, the identity depends on the peer alone: the recent peers' identities.
    _peers: dict[str | None, str | None] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The config file's client_ip section checks the same settings: one set of rules.
        settings = ClientIPSettings(
            self.trusted_proxies,
            self.header,
            self.ipv6_prefix,
            self.ipv4_prefix,
        )
        networks = settings.networks()
        object.__setattr__(self, "trusted_proxies", settings.trusted_proxies)
        object.__setattr__(self, "_networks", networks)
        object.__setattr__(self, "_trust_unix", len(networks) != len(settings.trusted_proxies))
        object.__setattr__(self, "_trusts_nobody", not settings.trusted_proxies)
        object.__setattr__(self, "_peers", {})

    def __call__(self, request: HttpRequest) -> str | None:
        if self._trusts_nobody:
            return self._of_peer(request.client)
        peer_text, client = self._resolve(request)
        if client is None:
            # A peer that is not an IP address (none, a unix socket path, a test client's
            # name) is its own identity when nothing better is known.
            return peer_text or None
        return self._group(client)

    def address(self, request: HttpRequest) -> IPAddress | None:
        """The client's address itself (not grouped by prefix), found as for the identity:
        the peer, or what trusted proxies say; ``None`` when no IP address is known."""
        return self._resolve(request)[1]

    def _resolve(self, request: HttpRequest) -> tuple[str, IPAddress | None]:
        """The peer as sent (bounded) and the client address, if one is known."""
        peer_text = (request.client or "").strip()[:MAX_VALUE_LENGTH]
        peer = _parse_address(peer_text) if peer_text else None
        if self._trusts_nobody:
            return peer_text, peer
        # A peer that is not an IP address is trusted only as "unix".
        trusted = self._is_trusted(peer) if peer is not None else self._trust_unix
        client = peer
        if trusted:
            lines = _tail(request.header_values(self.header), MAX_VALUE_LENGTH)
            hops = _forwarded_chain(lines, self.header)
            for hop in reversed(hops[-MAX_PROXY_HOPS:]):
                address = _parse_address(hop) if hop is not None else None
                if address is None:
                    break  # unknown / obfuscated / garbage: stop at the last trusted hop
                client = address
                if not self._is_trusted(address):
                    break
        return peer_text, client

    def _of_peer(self, client: str | None) -> str | None:
        """The identity of a request whose :attr:`~HttpRequest.client` is ``client``, when no
        proxy is trusted (``_trusts_nobody``): it depends on the peer alone."""
        identity = self._peers.get(client, _UNSEEN)
        if identity is _UNSEEN:
            identity = _peer_identity(client, self.ipv4_prefix, self.ipv6_prefix)
            if len(self._peers) >= _MAX_PEERS:  # bounded: peers can churn, never grow it
                self._peers.clear()
            self._peers[client] = identity
        return identity  # type: ignore[return-value]

    def _is_trusted(self, address: IPAddress) -> bool:
        return any(
            address in network for network in self._networks if network.version == address.version
        )

    def _group(self, address: IPAddress) -> str:
        prefix = self.ipv6_prefix if address.version == 6 else self.ipv4_prefix
        return _grouped(address, prefix)

    def describe(self) -> str:
        return "the client address"


def client_ip_from_config(config: Config) -> ClientIP | None:
    """The :class:`ClientIP` of ``config``'s ``client_ip`` section, if it has one."""
    settings = config.client_ip
    if settings is None:
        return None
    return ClientIP(
        settings.trusted_proxies, settings.ipv6_prefix, settings.ipv4_prefix, settings.header
    )
