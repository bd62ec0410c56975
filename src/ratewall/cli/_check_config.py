"""``ratewall check-config FILE``: validate a config file and print what it defines.

``FILE`` is a ratewall config, or an envoyproxy/ratelimit config (``--envoy-config FILE``,
repeatable; a YAML file whose top level has a string ``domain`` is recognised as one too)."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .._urls import redacted
from ..config import (
    MAX_REPORTED,
    NO_BATCHING_SETTINGS,
    NO_BREAKER_SETTINGS,
    Config,
    load_config,
)
from ..errors import ConfigError
from ._common import EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    from ..descriptors import DomainTable

__all__ = ["describe_config", "describe_domains", "describe_errors", "register"]


def register(commands: Any) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the policies it defines",
        description="Validate a config file (.json, .yaml/.yml or .toml) and print its "
        "policies and settings. If it is invalid, print every error (sorted by field path, "
        f"at most {MAX_REPORTED}; within one policy, the first found) and exit with status 2.",
    )
    check.add_argument("file", metavar="FILE", nargs="?", help="the config file to check")
    check.add_argument(
        "--envoy-config",
        action="append",
        default=[],
        metavar="FILE",
        help="an envoyproxy/ratelimit YAML config to check (repeatable)",
    )
    check.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    from ..descriptors import load_envoy_config

    envoy_files = list(args.envoy_config)
    if args.file is None and not envoy_files:
        raise ConfigError("the following arguments are required: FILE (or --envoy-config FILE)")
    if args.file is not None and _is_envoy_config(args.file):
        envoy_files.insert(0, args.file)
    elif args.file is not None:
        try:
            config = load_config(args.file)
        except ConfigError as error:
            if len(error.errors) == 1:
                raise  # main prints it, as for every command
            for line in describe_errors(error):
                print(line, file=sys.stderr)
            return EXIT_USAGE
        for line in describe_config(config):
            print(line)
        if config.domains is not None:
            for line in describe_domains(config.domains):
                print(line)
    if envoy_files:
        table: DomainTable = load_envoy_config(envoy_files)
        rules = len(list(table.rules()))
        print(
            f"OK: {table.source} (envoyproxy/ratelimit form) defines "
            f"{rules} {'rule' if rules == 1 else 'rules'}"
        )
        for line in describe_domains(table):
            print(line)
    return EXIT_OK


def describe_errors(error: ConfigError) -> list[str]:
    """The lines ``check-config`` prints for an invalid file: every error, sorted by field
    path (at most :data:`~ratewall.config.MAX_REPORTED`), then how many there were."""
    shown = error.errors[:MAX_REPORTED]
    lines = [f"ratewall: error: {each}" for each in shown]
    hidden = len(error.errors) - len(shown)
    more = f" (the first {len(shown)} shown)" if hidden else ""
    lines.append(f"ratewall: {len(error.errors)} errors in {error.source}{more}")
    return lines


def _is_envoy_config(path: str) -> bool:
    """A YAML file whose top level has a string ``domain`` (no ratewall config does)."""
    if not path.lower().endswith((".yaml", ".yml")):
        return False
    import yaml

    try:
        with open(path, encoding="utf-8-sig") as file:
            data = yaml.safe_load(file)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False  # load_config reports it
    return isinstance(data, dict) and isinstance(data.get("domain"), str)


def describe_domains(table: DomainTable) -> list[str]:
    """One line per descriptor rule: where it is and what it applies."""
    lines = []
    for rule in table.rules():
        if rule.unlimited:
            what = "unlimited"
        elif rule.blocked:
            what = "0 requests (refuses all)"
        else:
            policy = table.policies.get(rule.policy or "")
            what = f"policy {rule.policy}" + (f" ({policy.describe()})" if policy else "")
        extras = [f"name {rule.name}"] if rule.name and rule.name != rule.policy else []
        if rule.shadow:
            extras.append("shadow mode")
        if rule.replaces:
            extras.append(f"replaces {', '.join(sorted(rule.replaces))}")
        lines.append(f"descriptor {rule.path} -> {what}" + "".join(f"; {e}" for e in extras))
    return lines


_NO_STORE = "(not set: the program chooses, memory:// by default)"


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
            "store = "
            + (
                redacted(config.store)
                if config.store
                else "(not set: the program chooses, memory:// by default)"
            ),
            f"key_prefix = {config.key_prefix}",
            f"local_cache_size = {config.local_cache_size}",
            f"timeout = {config.timeout * 1000:g}ms",
        ]
    )
    if config.breaker != NO_BREAKER_SETTINGS:
        lines.append(
            f"breaker = opens after {config.breaker.threshold} consecutive failures, "
            f"fails fast for {config.breaker.cooldown * 1000:g}ms"
        )
    if config.batching != NO_BATCHING_SETTINGS:
        lines.append(
            f"batching = {config.batching.max_in_flight} script calls in flight, "
            f"at most {config.batching.max_batch} decisions each (asyncio limiters)"
        )
    for route in config.routes or ():
        names = [p if isinstance(p, str) else p.get("policy") for p in route.get("policies", ())]
        extras = []
        tier = route.get("tier")
        if tier is not None:
            extras.append(f"tier from {tier['header']}: {', '.join(tier['allowed'])}")
        if route.get("exempt_networks"):
            extras.append(f"exempt {', '.join(route.get('exempt_networks', []))}")
        lines.append(
            f"route {route.get('match')} -> {', '.join(map(str, names)) or '(exempt)'}"
            + (f" ({'; '.join(extras)})" if extras else "")
        )
    return lines
