"""``ratewall top --policy P``: the identities closest to or over their limit, found with a
bounded ``SCAN`` (never ``KEYS``), whose cost the output states."""

from __future__ import annotations

import argparse
from typing import Any

from ..admin import DEFAULT_SCAN_LIMIT, ScanResult, identity_in_key, policy_pattern, rank, redacted
from ..algorithms import rule_for
from ._admin import add_store_options, guarded, print_json, seconds, session
from ._common import EXIT_OK, integer

__all__ = ["register"]


def register(commands: Any) -> None:
    top = commands.add_parser(
        "top",
        help="list the identities closest to or over a policy's limit",
        description="Find a policy's keys with a bounded SCAN (never KEYS: at most about "
        "--scan-limit keys are examined, so a large store is sampled, not walked), decode "
        "each one's state and list the identities closest to or over the limit first. Digest "
        "identities cannot be reversed: their keys are shown. Needs the shared store.",
    )
    top.add_argument("--policy", required=True, metavar="P", help="a policy of the config")
    top.add_argument(
        "--limit", type=_positive, default=10, metavar="N", help="rows to show (default 10)"
    )
    top.add_argument(
        "--scan-limit",
        type=_positive,
        default=DEFAULT_SCAN_LIMIT,
        metavar="KEYS",
        help="examine about this many keys at most (default %(default)s)",
    )
    add_store_options(top)
    top.add_argument("--json", action="store_true", help="print one JSON object")
    top.set_defaults(handler=guarded(_top))


def _positive(text: str) -> int:
    number = integer(text)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _top(args: argparse.Namespace) -> int:
    with session(args, "top") as open_session:
        config = open_session.config
        policy = config.policies[args.policy]
        pattern = policy_pattern(config.key_prefix, args.policy)
        scan = open_session.store.scan(pattern, limit=args.scan_limit)
        keys = [k for k in scan.keys if identity_in_key(k, config.key_prefix, args.policy)]
        states, trips = open_session.store.read_many(keys, policy.algorithm)
        url = open_session.url
    live = [state for state in states if state.exists]
    rows: list[dict[str, Any]] = []
    for position, (state, outcome) in enumerate(rank(live, rule_for(policy))[: args.limit], 1):
        written, digest = identity_in_key(state.key, config.key_prefix, args.policy) or ("", True)
        rows.append(
            {
                "rank": position,
                "key": state.key,
                "identity": None if digest else written,
                "digest": digest,
                "allowed": outcome.allowed,
                # Units a request could take now: a check of 1 reports what is left after it.
                "available": outcome.remaining + 1 if outcome.allowed else outcome.remaining,
                "limit": policy.capacity,
                "reset_after": outcome.reset / 1_000_000,
                "retry_after": None if outcome.allowed else outcome.retry / 1_000_000,
                "ttl": state.ttl,
            }
        )
    cost = _cost(scan, pattern, len(keys), trips)
    if args.json:
        print_json(
            {
                "policy": args.policy,
                "store": redacted(url),
                "scan": {
                    "pattern": pattern,
                    "calls": scan.calls,
                    "count": scan.count,
                    "scan_limit": scan.limit,
                    "complete": scan.complete,
                    "nodes": scan.nodes,
                    "dbsize": scan.dbsize,
                    "keys_found": len(keys),
                    "read_round_trips": trips,
                },
                "cost": cost,
                "entries": rows,
            }
        )
        return EXIT_OK
    print(f"policy {args.policy}: {policy.describe()}; store {redacted(url)}")
    print(f"cost: {cost}")
    if not rows:
        print(
            "no identity of this policy holds state"
            + ("" if scan.complete else " among the keys examined")
        )
        return EXIT_OK
    print(f"{'RANK':>4}  {'LEFT':>12}  {'FULL IN':>9}  {'TTL':>9}  IDENTITY")
    for row in rows:
        available = f"{row['available']}/{row['limit']}" + ("" if row["allowed"] else " refused")
        who = row["identity"] or f"{row['key']} (digest)"
        ttl = seconds(row["ttl"])
        print(
            f"{row['rank']:>4}  {available:>12}  {seconds(row['reset_after']):>9}  {ttl:>9}  {who}"
        )
    if any(row["digest"] for row in rows):
        print(
            "(digest): the identity was not plain (A-Z a-z 0-9 . _ @ -, at most 64 characters), "
            "so the key holds a one-way digest of it; it cannot be turned back into the identity"
        )
    return EXIT_OK


def _cost(scan: ScanResult, pattern: str, found: int, trips: int) -> str:
    """What the SCAN and the reads cost, and how much of the keyspace they covered."""
    examined = scan.calls * scan.count
    total = f" of {scan.dbsize}" if scan.dbsize is not None else ""
    where = f" on {scan.nodes} primaries" if scan.nodes > 1 else ""
    if scan.complete:
        coverage = f"the whole keyspace{total and f' ({scan.dbsize} keys)'} was walked"
    else:
        coverage = (
            f"stopped at --scan-limit {scan.limit}: about {examined}{total} keys examined, so "
            "this ranks only the keys seen (raise --scan-limit to see more)"
        )
    return (
        f"{scan.calls} SCAN {'call' if scan.calls == 1 else 'calls'} (MATCH {pattern} COUNT "
        f"{scan.count}){where}: {coverage}; {found} {'key' if found == 1 else 'keys'} of the "
        f"policy found, read in {trips} pipelined round {'trip' if trips == 1 else 'trips'}"
    )
