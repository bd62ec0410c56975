"""``ratewall check-config FILE``: validate a config file and print what it defines."""

from __future__ import annotations

import argparse
from typing import Any

from ..config import Config, load_config
from ._common import EXIT_OK

__all__ = ["describe_config", "register"]


def register(commands: Any) -> None:
    check = commands.add_parser(
        "check-config",
        help="validate a config file and print the policies it defines",
        description="Validate a config file (.json, .yaml/.yml or .toml) and print its "
        "policies and settings. Exit status 2 if it is invalid.",
    )
    check.add_argument("file", metavar="FILE", help="the config file to check")
    check.set_defaults(handler=_check_config)


def _check_config(args: argparse.Namespace) -> int:
    config = load_config(args.file)
    for line in describe_config(config):
        print(line)
    return EXIT_OK


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
            f"store = {config.store or '(not set: the program chooses, memory:// by default)'}",
            f"key_prefix = {config.key_prefix}",
            f"local_cache_size = {config.local_cache_size}",
            f"timeout = {config.timeout * 1000:g}ms",
        ]
    )
    for route in config.routes or ():
        names = [p if isinstance(p, str) else p.get("policy") for p in route.get("policies", ())]
        lines.append(f"route {route.get('match')} -> {', '.join(map(str, names)) or '(exempt)'}")
    return lines
