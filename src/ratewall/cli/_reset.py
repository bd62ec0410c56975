"""``ratewall reset IDENTITY POLICY`` (or ``IDENTITY --all-policies``): remove what the store
holds for an identity, and say exactly what was removed."""

from __future__ import annotations

import argparse
from typing import Any

from ..admin import describe_state, redacted
from ..algorithms import rule_for
from ._admin import CommandError, add_store_options, guarded, print_json, session
from ._common import EXIT_OK
from ._inspect import state_lines

__all__ = ["register"]


def register(commands: Any) -> None:
    reset = commands.add_parser(
        "reset",
        help="remove one identity's state for a policy (or for every policy)",
        description="Remove what the store holds for IDENTITY under POLICY (or, with "
        "--all-policies, under every policy of the config), reading and removing each key in "
        "one atomic step, and print what was removed. Needs the shared store (Redis/Valkey).",
    )
    reset.add_argument("identity", metavar="IDENTITY", help="the identity, as the app passes it")
    reset.add_argument("policy", metavar="POLICY", nargs="?", help="a policy of the config")
    reset.add_argument(
        "--all-policies", action="store_true", help="reset IDENTITY under every policy"
    )
    add_store_options(reset)
    reset.add_argument("--json", action="store_true", help="print one JSON object")
    reset.set_defaults(handler=guarded(_reset))


def _reset(args: argparse.Namespace) -> int:
    if (args.policy is None) == (not args.all_policies):
        raise CommandError("name one POLICY, or pass --all-policies (not both)")
    removed: list[dict[str, Any]] = []
    with session(args, "reset") as open_session:
        policies = open_session.config.policies
        for name in [args.policy] if args.policy is not None else list(policies):
            policy = policies[name]
            key = open_session.key(args.identity, name)
            state = open_session.store.take(key, policy.algorithm)
            fields = describe_state(state, rule_for(policy))
            removed.append({"policy": name, "key": key, "removed": state.exists, "state": fields})
        url = open_session.url
    if args.json:
        print_json({"identity": args.identity, "store": redacted(url), "keys": removed})
        return EXIT_OK
    for entry in removed:
        if entry["removed"]:
            print(f"removed {entry['key']} (policy {entry['policy']}), which held:")
            print("\n".join(f"  {line}" for line in state_lines(entry["state"])))
        else:
            print(f"nothing stored at {entry['key']} (policy {entry['policy']}): nothing removed")
    count = sum(1 for entry in removed if entry["removed"])
    print(
        f"{count} of {len(removed)} {'key' if len(removed) == 1 else 'keys'} removed from "
        f"{redacted(url)}"
    )
    if count:
        # Each limiter node's local deny cache answers refusals it already knows without
        # asking the store (ratewall.local_cache): a reset reaches it only when it expires.
        print(
            "note: limiter processes that cached a refusal for this identity keep refusing "
            "until that refusal's retry time; the store itself now starts afresh"
        )
    return EXIT_OK
