"""``ratewall inspect IDENTITY POLICY``: the state the store holds for one identity and
policy, decoded, and what a check would answer now (a peek: nothing is consumed)."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from typing import Any

from ..admin import KeyState, describe_state, redacted
from ..algorithms import rule_for
from ..decision import Decision
from ..policy import Policy
from ._admin import (
    add_store_options,
    decision_fields,
    describe_decision,
    guarded,
    print_json,
    seconds,
    session,
    tier_option,
    variant_of,
)
from ._common import EXIT_OK

__all__ = ["register", "state_lines"]

_INSTANTS = frozenset({"window_end", "window_start", "last_refill", "tat"})
_DURATIONS = frozenset({"window_ends_in", "tat_ahead"})
_ENTRIES_SHOWN = 10  # a sliding log's newest entries listed in human output (JSON: all)


def register(commands: Any) -> None:
    inspect = commands.add_parser(
        "inspect",
        help="show one identity's stored state for a policy and what a check would answer",
        description="Read the state the store holds for IDENTITY under POLICY, decode it "
        "(count and window end, tokens and last refill, TAT, log entries, TTL: per "
        "algorithm), and peek at what a check would answer now, consuming nothing. Needs "
        "the shared store (Redis/Valkey). Exit status 1 if the store does not answer.",
    )
    inspect.add_argument("identity", metavar="IDENTITY", help="the identity, as the app passes it")
    inspect.add_argument("policy", metavar="POLICY", help="a policy of the config")
    tier_option(inspect)
    add_store_options(inspect)
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(handler=guarded(_inspect))


def _inspect(args: argparse.Namespace) -> int:
    with session(args, "inspect") as open_session:
        policy = open_session.config.policies[args.policy]
        variant = variant_of(args.policy, policy, args.identity, args.tier)
        key = open_session.key(args.identity, args.policy)
        state = open_session.store.read(key, policy.algorithm)
        decision = open_session.peek(args.identity, args.policy, tier=args.tier)
        fields = describe_state(state, rule_for(variant.limits))
        url = open_session.url
    if args.json:
        print_json(
            {
                "policy": args.policy,
                "identity": args.identity,
                "key": key,
                "store": redacted(url),
                "algorithm": policy.algorithm,
                **variant.fields(),
                **decision_fields(decision),
                "state": fields,
            }
        )
        return EXIT_OK
    lines = _report(args.identity, args.policy, policy, key, url, fields, state, decision)
    lines.insert(2, f"applies:  {variant.describe(args.identity)}")
    for line in lines:
        print(line)
    return EXIT_OK


def _report(
    identity: str,
    name: str,
    policy: Policy,
    key: str,
    url: str,
    fields: dict[str, Any],
    state: KeyState,
    decision: Decision,
) -> list[str]:
    lines = [
        f"policy:   {name}: {policy.describe()}",
        f"identity: {identity}",
        f"key:      {key}"
        + ("  (a digest: the identity cannot be read back from it)" if "{~" in key else ""),
        f"store:    {redacted(url)}",
        "state:",
        *(f"  {line}" for line in state_lines(fields)),
        f"now:      {describe_decision(decision)}",
    ]
    if state.note is not None:
        lines.append(f"note:     the key {state.note}")
    return lines


def state_lines(fields: dict[str, Any]) -> list[str]:
    """The decoded fields of :func:`ratewall.admin.describe_state`, one per line."""
    if not fields["exists"]:
        return ["no key: nothing stored, the quota is full"]
    ttl = fields["ttl"]
    lines = [f"type {fields['type']}, ttl {seconds(ttl) if ttl is not None else 'none'}"]
    shown = {"exists", "type", "ttl", "note", "entries"}
    lines += [
        f"{name}: {_value(name, value)}" for name, value in fields.items() if name not in shown
    ]
    entries = fields.get("entries")
    if entries is not None:
        live = sum(1 for entry in entries if entry["live"])
        lines.append(f"entries: {len(entries)} ({live} in the window)")
        hidden = len(entries) - _ENTRIES_SHOWN
        if hidden > 0:
            lines.append(f"  ... {hidden} older entries (all of them with --json)")
        for entry in entries[-_ENTRIES_SHOWN:]:
            where = "in the window" if entry["live"] else "expired"
            lines.append(f"  at {_instant(entry['at'])}: cost {entry['cost']}, {where}")
    return lines


def _value(name: str, value: Any) -> str:
    if name in _INSTANTS:
        return _instant(value)
    if name in _DURATIONS:
        return seconds(value)
    return str(value)


def _instant(unix: float) -> str:
    """A server time in seconds since the epoch, as UTC to the microsecond (and as given)."""
    when = datetime.fromtimestamp(unix, tz=UTC).isoformat(timespec="microseconds")
    return f"{when.replace('+00:00', 'Z')} ({unix})"
