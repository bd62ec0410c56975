"""Rate-limit descriptors: which rule a request's descriptor meets. Pure: no I/O.

Envoy sends a *domain* and a list of *descriptors*, each an ordered list of ``(key, value)``
entries such as ``[("source_cluster", "proxy"), ("destination_cluster", "fake")]``. Rules are
a tree per domain. Matching walks a descriptor's entries down the tree exactly as
envoyproxy/ratelimit does:

- at each level try the node ``key_value`` (exact value), then the level's wildcard
  patterns in file order (``value: "api*"``, ``*`` matching any run of characters), then the
  bare ``key`` (the default for any value of that key);
- a rule applies only on the node reached by the *last* entry: a descriptor with more
  entries than the tree is deep matches nothing, and one with fewer meets no rule either;
- the first node that has no children ends the walk;
- an exact node without a rule does not fall back to the default (an allowlist entry).

Two sources compile into the same tree (:class:`DomainTable`):

- the ``domains`` section of a ratewall config, whose rules name ratewall policies (any
  algorithm) with :func:`parse_domains`;
- an envoyproxy/ratelimit YAML file, unchanged, with :func:`parse_envoy_config`, whose
  ``rate_limit: {unit, requests_per_unit}`` become fixed-window policies of their own.

After matching, ``replaces`` drops every matched rule whose name another matched rule
replaces, and ``unlimited`` rules answer OK without touching the store
(:meth:`DomainTable.resolve`).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from urllib.parse import quote

from .errors import ConfigError
from .policy import Policy

__all__ = [
    "ENVOY_FIELDS",
    "UNIT_SECONDS",
    "DomainTable",
    "Match",
    "Node",
    "Rule",
    "identity_of",
    "load_envoy_config",
    "merge_tables",
    "parse_domains",
    "parse_envoy_config",
    "unit_for_window",
]

#: envoyproxy/ratelimit's units and their window in seconds (its ``UnitToDivider``: a month
#: is 30 days, a year 365).
UNIT_SECONDS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "second": 1,
        "minute": 60,
        "hour": 3_600,
        "day": 86_400,
        "week": 604_800,
        "month": 30 * 86_400,
        "year": 365 * 86_400,
    }
)

#: Every field an envoyproxy/ratelimit file may use (its ``validKeys``), at any level.
ENVOY_FIELDS: Final = frozenset(
    {
        "domain",
        "key",
        "value",
        "descriptors",
        "rate_limit",
        "unit",
        "requests_per_unit",
        "unlimited",
        "shadow_mode",
        "quota_mode",
        "name",
        "replaces",
        "detailed_metric",
        "value_to_metric",
        "share_threshold",
        "metadata",
    }
)

_DOMAIN_ENTRY_FIELDS: Final = (
    "key",
    "value",
    "policy",
    "unlimited",
    "shadow_mode",
    "name",
    "replaces",
    "share_threshold",
    "descriptors",
)
_NAME: Final = re.compile(r"[A-Za-z0-9._@-]{1,64}")
_EXAMPLE: Final = "{rl: [{key: user, policy: per_user}]}"


@dataclass(frozen=True, slots=True)
class Rule:
    """What a descriptor that reaches this node is checked against.

    ``policy`` names the ratewall policy that decides it (``None`` for ``unlimited`` rules
    and for envoy rules of 0 requests per unit, which refuse everything: ``blocked``).
    ``name`` is what ``replaces`` lists refer to and what Envoy sees as the limit's name;
    ``path`` says where the rule is (``rl.source_cluster_proxy.destination_cluster``).
    ``limit`` and ``window`` describe the rule to Envoy (``current_limit``).
    """

    path: str
    policy: str | None = None
    name: str = ""
    shadow: bool = False
    unlimited: bool = False
    blocked: bool = False
    replaces: frozenset[str] = frozenset()
    limit: int = 0
    window: float = 0.0


@dataclass(frozen=True, slots=True)
class Node:
    """One level of a domain's tree: the rule at this node and the next level's nodes,
    keyed ``key_value`` (exact), ``key`` (default) or a wildcard pattern ``key_val*``."""

    rule: Rule | None = None
    children: Mapping[str, Node] = field(default_factory=dict)
    #: The next level's wildcard keys (``key_api*``) split on ``*``, in file order.
    wildcards: tuple[tuple[str, tuple[str, ...]], ...] = ()
    #: With ``share_threshold``: every value matching the pattern shares one counter.
    shared_value: str | None = None


@dataclass(frozen=True, slots=True)
class Match:
    """A descriptor's rule and the identity its counter is kept under."""

    rule: Rule
    identity: str


def identity_of(values: Sequence[str]) -> str:
    """The identity of a descriptor's counter, from its entries' values.

    One entry: the value itself, so that ``user=alice`` under policy ``per_user`` is the
    same counter as ``limiter.check("alice", "per_user")``. Several: the values
    percent-encoded and joined by ``/`` (``proxy/fake``), which no two lists share.
    """
    if len(values) == 1:
        return values[0]
    return "/".join(quote(value, safe="") for value in values)


def _wildcard_match(parts: tuple[str, ...], text: str) -> bool:
    """``text`` matches the pattern split on ``*`` into ``parts`` (``*``: any run)."""
    if len(parts) == 1:
        return parts[0] == text
    first, last = parts[0], parts[-1]
    if not text.startswith(first) or not text.endswith(last):
        return False
    if len(text) < sum(map(len, parts)):
        return False
    middle = text[len(first) : len(text) - len(last)]
    for part in parts[1:-1]:
        found = middle.find(part)
        if found < 0:
            return False
        middle = middle[found + len(part) :]
    return True


@dataclass(frozen=True, slots=True)
class DomainTable:
    """Every domain's tree, compiled once; :meth:`match` and :meth:`resolve` look up.

    ``policies`` are the policies the rules need that are not in the ratewall config (those
    an envoyproxy/ratelimit file implies), by name.
    """

    domains: Mapping[str, Node]
    policies: Mapping[str, Policy] = field(default_factory=dict)
    source: str = "<domains>"

    def match(self, domain: str, entries: Sequence[tuple[str, str]]) -> Match | None:
        """The rule of one descriptor of ``domain`` (None: no rule, the descriptor is OK)."""
        node = self.domains.get(domain)
        if node is None or not entries:
            return None
        last = len(entries) - 1
        found: Rule | None = None
        values: list[str] = []
        for depth, (key, value) in enumerate(entries):
            exact = f"{key}_{value}"
            following = node.children.get(exact)
            if following is None:
                for pattern, parts in node.wildcards:
                    if _wildcard_match(parts, exact):
                        following = node.children[pattern]
                        break
            if following is None:
                following = node.children.get(key)
            if following is None:
                return None
            values.append(following.shared_value if following.shared_value is not None else value)
            if depth == last and following.rule is not None:
                found = following.rule
            if not following.children:
                break
            node = following
        if found is None:
            return None
        return Match(found, identity_of(values))

    def resolve(
        self, domain: str, descriptors: Sequence[Sequence[tuple[str, str]]]
    ) -> list[Match | None]:
        """One :class:`Match` or None per descriptor, after ``replaces``: a matched rule
        whose name another matched rule replaces is dropped (None), as in the Go service."""
        matches = [self.match(domain, entries) for entries in descriptors]
        replaced: set[str] = set()
        for found in matches:
            if found is not None:
                replaced.update(found.rule.replaces)
        if not replaced:
            return matches
        return [
            None if found is not None and found.rule.name in replaced else found
            for found in matches
        ]

    def rules(self) -> Iterable[Rule]:
        """Every rule of every domain, depth first in file order."""

        def walk(node: Node) -> Iterable[Rule]:
            if node.rule is not None:
                yield node.rule
            for child in node.children.values():
                yield from walk(child)

        for node in self.domains.values():
            yield from walk(node)


def unit_for_window(window: float) -> str | None:
    """The envoy unit whose length is exactly ``window`` seconds, if any."""
    for unit, seconds in UNIT_SECONDS.items():
        if window == seconds:
            return unit
    return None


# --- the ratewall form: a ``domains`` section ------------------------------------------------


def parse_domains(
    data: object, *, source: str, policies: Mapping[str, Policy], at: str = "domains"
) -> DomainTable:
    """The ``domains`` section of a ratewall config: a mapping of domain names to lists of
    descriptor entries, each with ``key`` (required), optionally ``value`` (an exact value or
    a ``*`` pattern; absent: any value of the key), and either ``policy`` (a name from
    ``policies``) or ``unlimited: true``, plus ``shadow_mode``, ``name``, ``replaces`` (a list
    of rule names), ``share_threshold`` and nested ``descriptors``. Errors name the field,
    such as ``domains.rl[0].descriptors[1].policy``."""
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(
            f"must be a mapping of domain names to lists of descriptor entries, e.g. {_EXAMPLE}",
            source=source,
            field=at,
        )
    domains: dict[str, Node] = {}
    for domain, entries in data.items():
        if not isinstance(domain, str) or not domain:
            raise ConfigError(
                f"domain names must be non-empty strings, got {domain!r}", source=source, field=at
            )
        domains[domain] = _ratewall_level(
            entries, f"{at}.{domain}", domain, source=source, policies=policies
        )
    return DomainTable(MappingProxyType(domains), source=source)


def _ratewall_level(
    entries: object, at: str, path: str, *, source: str, policies: Mapping[str, Policy]
) -> Node:
    if not isinstance(entries, list | tuple):
        raise ConfigError(
            "must be a list of descriptor entries, each like {key: user, policy: per_user}",
            source=source,
            field=at,
        )
    children: dict[str, Node] = {}
    for index, entry in enumerate(entries):
        here = f"{at}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError(
                "must be a mapping like {key: user, policy: per_user}", source=source, field=here
            )
        for name in entry:
            if name not in _DOMAIN_ENTRY_FIELDS:
                raise ConfigError(
                    f"unknown field {name!r}; expected one of {', '.join(_DOMAIN_ENTRY_FIELDS)}",
                    source=source,
                    field=f"{here}.{name}",
                )
        key = _entry_key(entry, here, source)
        node_key = _node_key(entry, key, here, source)
        if node_key in children:
            raise ConfigError(
                f"duplicate descriptor {node_key!r} at this level; merge the two entries",
                source=source,
                field=here,
            )
        node_path = f"{path}.{node_key}"
        rule = _ratewall_rule(entry, here, node_path, source=source, policies=policies)
        nested = (
            _ratewall_level(
                entry["descriptors"],
                f"{here}.descriptors",
                node_path,
                source=source,
                policies=policies,
            )
            if "descriptors" in entry
            else Node()
        )
        children[node_key] = Node(
            rule, nested.children, nested.wildcards, _shared(entry, node_key, key, here, source)
        )
    return _level(children)


def _ratewall_rule(
    entry: Mapping[str, object],
    at: str,
    path: str,
    *,
    source: str,
    policies: Mapping[str, Policy],
) -> Rule | None:
    shadow = _flag(entry, "shadow_mode", at, source)
    unlimited = _flag(entry, "unlimited", at, source)
    name = entry.get("name")
    if name is not None and (not isinstance(name, str) or not name):
        raise ConfigError("must be a non-empty string", source=source, field=f"{at}.name")
    replaces = _replaces(entry.get("replaces", ()), f"{at}.replaces", source, own=name)
    if "policy" in entry:
        if unlimited:
            raise ConfigError(
                "an entry has either a policy or unlimited: true, not both",
                source=source,
                field=f"{at}.unlimited",
            )
        policy_name = entry["policy"]
        if not isinstance(policy_name, str) or policy_name not in policies:
            known = ", ".join(policies) or "(none)"
            raise ConfigError(
                f"unknown policy {policy_name!r}; known policies: {known}",
                source=source,
                field=f"{at}.policy",
            )
        policy = policies[policy_name]
        return Rule(
            path,
            policy_name,
            name if isinstance(name, str) else policy_name,
            shadow=shadow,
            replaces=replaces,
            limit=policy.capacity,
            window=policy.window,  # type: ignore[arg-type]  # a float after validation
        )
    if unlimited:
        if shadow:
            raise ConfigError(
                "shadow_mode needs a policy: an unlimited entry never refuses",
                source=source,
                field=f"{at}.shadow_mode",
            )
        return Rule(path, None, name or "", unlimited=True, replaces=replaces)
    for needs_rule in ("shadow_mode", "name", "replaces"):
        if needs_rule in entry:
            raise ConfigError(
                f"{needs_rule} needs a policy (or unlimited: true) on the same entry",
                source=source,
                field=f"{at}.{needs_rule}",
            )
    return None  # an allowlist entry, or a level that only leads to nested entries


# --- the envoyproxy/ratelimit form ------------------------------------------------------------


def load_envoy_config(
    paths: Sequence[str], *, failure_mode: str = "raise", prefix: str = "envoy"
) -> DomainTable:
    """Read envoyproxy/ratelimit YAML files (one domain each) into one table."""
    import yaml

    tables = []
    for path in paths:
        try:
            with open(path, encoding="utf-8-sig") as file:
                text = file.read()
        except FileNotFoundError:
            raise ConfigError("no such file; check the path", source=path) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read the file: {exc}", source=path) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"is not valid YAML: {exc}", source=path) from None
        tables.append(
            parse_envoy_config(data, source=path, failure_mode=failure_mode, prefix=prefix)
        )
    return merge_tables(tables)


def parse_envoy_config(
    data: object, *, source: str, failure_mode: str = "raise", prefix: str = "envoy"
) -> DomainTable:
    """An envoyproxy/ratelimit config document, unchanged: ``domain`` and ``descriptors``.

    Each ``rate_limit: {unit, requests_per_unit}`` becomes a fixed-window policy of its own
    (named ``<prefix>.<domain>.<path>``, or a digest of that when it does not fit a policy
    name) with ``failure_mode``. Errors follow the Go service's (empty key, duplicate
    composite key, invalid unit, unit with ``unlimited``, ``replaces`` naming itself) and
    also reject what it ignores silently: unknown fields (its ``validKeys``) and values of
    the wrong type.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            "must be an envoyproxy/ratelimit config: a mapping with domain and descriptors",
            source=source,
        )
    _envoy_fields(data, "", source)
    domain = data.get("domain")
    if not isinstance(domain, str) or not domain:
        raise ConfigError("config file cannot have empty domain", source=source, field="domain")
    policies: dict[str, Policy] = {}
    root = _envoy_level(
        data.get("descriptors") or [],
        "descriptors",
        domain,
        source=source,
        policies=policies,
        failure_mode=failure_mode,
        prefix=prefix,
    )
    return DomainTable(MappingProxyType({domain: root}), MappingProxyType(policies), source=source)


def _envoy_fields(mapping: Mapping[object, object], at: str, source: str) -> None:
    for name in mapping:
        if not isinstance(name, str) or name not in ENVOY_FIELDS:
            raise ConfigError(
                f"config error, unknown key {name!r}",
                source=source,
                field=f"{at}.{name}" if at else str(name),
            )


def _envoy_level(
    entries: object,
    at: str,
    path: str,
    *,
    source: str,
    policies: dict[str, Policy],
    failure_mode: str,
    prefix: str,
) -> Node:
    if not isinstance(entries, list | tuple):
        raise ConfigError("must be a list of descriptors", source=source, field=at)
    children: dict[str, Node] = {}
    for index, entry in enumerate(entries):
        here = f"{at}[{index}]"
        if not isinstance(entry, Mapping):
            raise ConfigError("must be a mapping with a key", source=source, field=here)
        _envoy_fields(entry, here, source)
        key = _entry_key(entry, here, source, message="descriptor has empty key")
        node_key = _node_key(entry, key, here, source)
        node_path = f"{path}.{node_key}"
        if node_key in children:
            raise ConfigError(
                f"duplicate descriptor composite key {node_path!r}", source=source, field=here
            )
        for flag in ("shadow_mode", "quota_mode", "detailed_metric", "value_to_metric"):
            _flag(entry, flag, here, source)
        if "metadata" in entry and not isinstance(entry["metadata"], Mapping | None):
            raise ConfigError("must be a mapping", source=source, field=f"{here}.metadata")
        rule = _envoy_rule(entry, here, node_path, source, policies, failure_mode, prefix)
        nested = _envoy_level(
            entry.get("descriptors") or [],
            f"{here}.descriptors",
            node_path,
            source=source,
            policies=policies,
            failure_mode=failure_mode,
            prefix=prefix,
        )
        children[node_key] = Node(
            rule, nested.children, nested.wildcards, _shared(entry, node_key, key, here, source)
        )
    return _level(children)


def _envoy_rule(
    entry: Mapping[str, object],
    at: str,
    path: str,
    source: str,
    policies: dict[str, Policy],
    failure_mode: str,
    prefix: str,
) -> Rule | None:
    raw = entry.get("rate_limit")
    if raw is None:
        return None
    here = f"{at}.rate_limit"
    if not isinstance(raw, Mapping):
        raise ConfigError(
            "must be a mapping with unit and requests_per_unit", source=source, field=here
        )
    _envoy_fields(raw, here, source)
    unlimited = _flag(raw, "unlimited", here, source)
    unit = raw.get("unit")
    if unit is not None and not isinstance(unit, str):
        raise ConfigError("must be a string such as minute", source=source, field=f"{here}.unit")
    valid_unit = isinstance(unit, str) and unit.lower() in UNIT_SECONDS
    if unlimited and valid_unit:
        raise ConfigError(
            "should not specify rate limit unit when unlimited", source=source, field=f"{here}.unit"
        )
    if not unlimited and not valid_unit:
        raise ConfigError(
            f"invalid rate limit unit {unit!r}; expected one of {', '.join(UNIT_SECONDS)}",
            source=source,
            field=f"{here}.unit",
        )
    requests = raw.get("requests_per_unit", 0)
    if type(requests) is not int or not 0 <= requests <= 0xFFFFFFFF:
        raise ConfigError(
            f"must be a whole number from 0 to 4294967295, got {requests!r}",
            source=source,
            field=f"{here}.requests_per_unit",
        )
    name = raw.get("name", "")
    if not isinstance(name, str):
        raise ConfigError("must be a string", source=source, field=f"{here}.name")
    replaces_raw = raw.get("replaces") or []
    if not isinstance(replaces_raw, list):
        raise ConfigError("must be a list of {name: ...}", source=source, field=f"{here}.replaces")
    names = []
    for index, item in enumerate(replaces_raw):
        if not isinstance(item, Mapping) or set(item) - {"name"}:
            raise ConfigError(
                "must be a mapping {name: ...}", source=source, field=f"{here}.replaces[{index}]"
            )
        names.append(item.get("name"))
    replaces = _replaces(names, f"{here}.replaces", source, own=name or None)
    shadow = bool(entry.get("shadow_mode", False))
    if unlimited:
        return Rule(path, None, name, shadow=shadow, unlimited=True, replaces=replaces)
    window = UNIT_SECONDS[str(unit).lower()]
    if requests == 0:
        return Rule(path, None, name, shadow=shadow, blocked=True, replaces=replaces, window=window)
    policy_name = _policy_name(prefix, path)
    if policy_name in policies:  # two paths whose names shortened to one digest: not in practice
        raise ConfigError(
            f"two rules share the policy name {policy_name!r}", source=source, field=at
        )
    policies[policy_name] = Policy(requests, window, failure_mode=failure_mode)
    return Rule(
        path,
        policy_name,
        name,
        shadow=shadow,
        replaces=replaces,
        limit=requests,
        window=window,
    )


def _policy_name(prefix: str, path: str) -> str:
    """A policy name for an envoy rule: readable when the path fits, else a digest. Stable
    across processes and reloads, so workers share counters and a reload keeps them."""
    readable = f"{prefix}.{path}"
    if _NAME.fullmatch(readable):
        return readable
    digest = hashlib.blake2b(path.encode("utf-8", "surrogatepass"), digest_size=10).hexdigest()
    return f"{prefix}.{digest}"


def merge_tables(tables: Iterable[DomainTable]) -> DomainTable:
    """One table of several, whose domains (and implied policies) must not overlap."""
    domains: dict[str, Node] = {}
    policies: dict[str, Policy] = {}
    sources: list[str] = []
    for table in tables:
        for domain, node in table.domains.items():
            if domain in domains:
                raise ConfigError(
                    f"duplicate domain {domain!r}: it is also defined in {', '.join(sources)}",
                    source=table.source,
                    field="domain",
                )
            domains[domain] = node
        policies.update(table.policies)
        sources.append(table.source)
    return DomainTable(
        MappingProxyType(domains), MappingProxyType(policies), source=", ".join(sources)
    )


# --- shared by both forms ---------------------------------------------------------------------


def _entry_key(
    entry: Mapping[str, object], at: str, source: str, *, message: str = "is required"
) -> str:
    key = entry.get("key")
    if not isinstance(key, str) or not key:
        raise ConfigError(
            message if key in (None, "") else f"must be a string, got {key!r}",
            source=source,
            field=f"{at}.key",
        )
    return key


def _node_key(entry: Mapping[str, object], key: str, at: str, source: str) -> str:
    value = entry.get("value")
    if value is None or value == "":
        return key
    if not isinstance(value, str):
        raise ConfigError(
            f"must be a string (quote numbers: value: '{value}')",
            source=source,
            field=f"{at}.value",
        )
    return f"{key}_{value}"


def _shared(
    entry: Mapping[str, object], node_key: str, key: str, at: str, source: str
) -> str | None:
    if not _flag(entry, "share_threshold", at, source):
        return None
    if "*" not in node_key:
        raise ConfigError(
            "share_threshold can only be used with wildcard values (containing '*'), "
            f"but found key {node_key!r}",
            source=source,
            field=f"{at}.share_threshold",
        )
    return node_key[len(key) + 1 :]


def _level(children: dict[str, Node]) -> Node:
    wildcards = tuple((name, tuple(name.split("*"))) for name in children if "*" in name)
    return Node(None, MappingProxyType(children), wildcards)


def _flag(entry: Mapping[str, object], name: str, at: str, source: str) -> bool:
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise ConfigError(
            f"must be true or false, got {value!r}", source=source, field=f"{at}.{name}"
        )
    return value


def _replaces(names: object, at: str, source: str, *, own: str | None) -> frozenset[str]:
    if not isinstance(names, list | tuple):
        raise ConfigError("must be a list of rule names", source=source, field=at)
    for index, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise ConfigError(
                "should not have an empty replaces entry", source=source, field=f"{at}[{index}]"
            )
        if name == own:
            raise ConfigError(
                "replaces should not contain name of same descriptor",
                source=source,
                field=f"{at}[{index}]",
            )
    return frozenset(names)
