"""What the admin commands (``inspect``, ``reset``, ``explain``, ``top``) share: the options
``--config``/``--store``/``--timeout``, finding the policy and the store, and turning
failures into an exit status with a message that never shows the store's password."""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import redis
from redis.exceptions import RedisClusterException

from ..admin import AdminStore, redacted
from ..config import Config, load_config
from ..decision import Decision
from ..errors import StoreError
from ..keys import KeyBuilder
from ..limiter import RateLimiter
from ..policy import Policy
from ._common import EXIT_STORE, EXIT_USAGE, Handler, store_url

__all__ = [
    "DEFAULT_TIMEOUT",
    "CommandError",
    "Session",
    "Variant",
    "add_store_options",
    "decision_fields",
    "describe_decision",
    "guarded",
    "memory_store_error",
    "policy_of",
    "print_json",
    "seconds",
    "session",
    "shared_store_url",
    "tier_option",
    "variant_of",
]

#: The store timeout of admin commands: they are not on a request's path, so the 50 ms a
#: config usually allows each decision would only make them flaky on a busy store.
DEFAULT_TIMEOUT: Final = 2.0
_DETAIL: Final = 300  # characters of a store error's text shown


class CommandError(Exception):
    """A failure to report on stderr, with the exit status it deserves."""

    def __init__(self, message: str, status: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.status = status


def add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, metavar="FILE", help="the config file of the limiter"
    )
    parser.add_argument(
        "--store",
        type=store_url,
        default=None,
        metavar="URL",
        help="the store to read, such as redis://127.0.0.1:6379/0 (default: the config's)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="how long the store may take to answer (default %(default)ss); "
        "exit status 1 if it does not",
    )


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"must be seconds in (0, 3600], got {text}")
    return value


def guarded(handler: Callable[[argparse.Namespace], int]) -> Handler:
    """``handler`` with its :class:`CommandError` and :class:`~ratewall.StoreError` reported
    as ``ratewall: error: ...`` and their exit status (store failures: 1)."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except CommandError as error:
            print(f"ratewall: error: {error}", file=sys.stderr)
            return error.status
        except StoreError as error:
            print(f"ratewall: error: {_store_message(args, error)}", file=sys.stderr)
            return EXIT_STORE

    return run


def _store_message(args: argparse.Namespace, error: StoreError) -> str:
    url = getattr(args, "resolved_store", None)
    cause = error.__cause__
    # The limiter's own StoreError text shows the URL as given, password included.
    detail = f"{type(cause).__name__}: {_short(str(cause))}" if cause else _short(str(error))
    where = f"the store {redacted(url)}" if url else "the store"
    return f"{where} did not answer within {args.timeout:g}s ({detail})"


def _short(text: str) -> str:
    """An error's text without the client's repr that some redis-py errors append (it names
    every connection option), at most :data:`_DETAIL` characters, passwords hidden."""
    text = redacted(text.partition(" : <")[0])
    return text if len(text) <= _DETAIL else text[: _DETAIL - 3] + "..."


def policy_of(config: Config, name: str) -> Policy:
    """The policy ``name``, or exit 2 naming the known ones."""
    policy = config.policies.get(name)
    if policy is None:
        known = ", ".join(config.policies) or "(none)"
        raise CommandError(f"unknown policy {name!r} in {config.source}; known policies: {known}")
    return policy


def shared_store_url(args: argparse.Namespace, config: Config, command: str) -> str | None:
    """The store URL to use (``--store``, else the config's), ``None`` for the memory store
    (each application process has its own: another process cannot see it)."""
    url: str | None = args.store or config.store
    if url is None or url.startswith("memory://"):
        return None
    args.resolved_store = url
    return url


def memory_store_error(command: str) -> CommandError:
    return CommandError(
        f"{command} needs a shared store, and this config uses the memory store, which lives "
        "inside each application process (no other process can read or change it); pass "
        "--store URL, or set 'store' in the config, to reach the Redis/Valkey server the "
        "application uses"
    )


def tier_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tier",
        default=None,
        metavar="NAME",
        help="the tier the application passes (check(..., tier=NAME)): show its limits",
    )


@dataclass(frozen=True, slots=True)
class Variant:
    """Which of a policy's limits decide for one identity (SPEC §8): ``exempt`` (always
    allowed, nothing stored), else its ``override``, else the ``tier`` asked for, else the
    ``policy``'s own. ``limits`` are those in force; ``shadow`` whether refusals pass."""

    kind: str
    tier: str | None
    limits: Policy
    shadow: bool

    def fields(self) -> dict[str, Any]:
        return {
            "variant": self.kind,
            "tier": self.tier,
            "shadow": self.shadow,
            "limits": self.limits.describe(),
        }

    def describe(self, identity: str) -> str:
        if self.kind == "exempt":
            return f"exempt: {identity!r} is always allowed, nothing is stored"
        text = {
            "override": f"the override for {identity!r}",
            "tier": f"the tier {self.tier!r}",
            "policy": "the policy's own limits",
        }[self.kind]
        if self.kind == "override" and self.tier is not None:
            text += f" (it wins over the tier {self.tier!r})"
        text += f": {self.limits.describe()}"
        if self.shadow:
            text += "; shadow mode: a refusal is counted but the request passes"
        return text


def variant_of(name: str, policy: Policy, identity: str, tier: str | None) -> Variant:
    """What decides for ``identity`` under policy ``name`` in ``tier``; an unknown tier
    exits 2 naming the policy's tiers."""
    if tier is not None and tier not in policy.tiers:
        known = ", ".join(sorted(policy.tiers)) or "none"
        raise CommandError(f"unknown tier {tier!r} for policy {name!r}; its tiers: {known}")
    if identity in policy.exempt:
        return Variant("exempt", tier, policy, False)
    if identity in policy.overrides:
        limits: Policy = policy.overrides[identity]
        return Variant("override", tier, limits, limits.shadow)
    if tier is not None:
        limits = policy.tiers[tier]
        return Variant("tier", tier, limits, limits.shadow)
    return Variant("policy", None, policy, policy.shadow)


@dataclass(frozen=True, slots=True)
class Session:
    """An admin command's view of one store: the config, a real limiter on the store (for
    peeks and key names) and a redis-py connection (for raw state)."""

    config: Config
    url: str
    limiter: RateLimiter
    store: AdminStore

    def key(self, identity: str, policy: str) -> str:
        return KeyBuilder(self.config.key_prefix).key(identity, policy)

    def peek(self, identity: str, policy: str, cost: int = 1, tier: str | None = None) -> Decision:
        decision = self.limiter.peek(identity, policy, cost, tier=tier)
        if decision.degraded:  # the policy fails open or closed: the store did not answer
            raise StoreError("the peek failed over to the policy's failure mode")
        return decision


@contextmanager
def session(args: argparse.Namespace, command: str) -> Iterator[Session]:
    """The config, and connections to its shared store that answered a ping (else
    :class:`~ratewall.StoreError`, exit 1); :class:`CommandError` for the memory store."""
    config = load_config(args.config)
    if getattr(args, "policy", None) is not None:
        policy_of(config, args.policy)
    url = shared_store_url(args, config, command)
    if url is None:
        raise memory_store_error(command)
    try:
        # A cluster client connects as it is made (to learn the slots).
        limiter = RateLimiter.from_config(config, store=url, timeout=args.timeout)
    except (redis.RedisError, RedisClusterException, OSError) as error:
        raise StoreError(str(error)) from error
    try:
        limiter.ping()
        with AdminStore(url, timeout=args.timeout) as store:
            yield Session(config, url, limiter, store)
    finally:
        limiter.close()


def decision_fields(decision: Decision) -> dict[str, Any]:
    return {
        "allowed": decision.allowed,
        "limit": decision.limit,
        "remaining": decision.remaining,
        "reset_after": decision.reset_after,
        "retry_after": decision.retry_after,
        "shadowed": decision.shadowed,
    }


def describe_decision(decision: Decision, cost: int = 1) -> str:
    units = "unit" if cost == 1 else "units"
    if decision.source == "exempt":
        return "a check now would be ALLOWED: the identity is exempt (nothing is counted)"
    if decision.shadowed:
        return (
            f"a check of {cost} {units} now would be REFUSED, but the policy is in shadow mode: "
            f"the request passes ({decision.remaining} of {decision.limit} left; full again in "
            f"{seconds(decision.reset_after)})"
        )
    if decision.allowed:
        return (
            f"a check of {cost} {units} now would be ALLOWED, leaving {decision.remaining} of "
            f"{decision.limit}; full again in {seconds(decision.reset_after)}"
        )
    return (
        f"a check of {cost} {units} now would be REFUSED ({decision.remaining} of "
        f"{decision.limit} left); retry in {seconds(decision.retry_after or 0)}, full again "
        f"in {seconds(decision.reset_after)}"
    )


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}s".replace(".000s", "s")


def print_json(data: object) -> None:
    print(json.dumps(data, indent=2, ensure_ascii=False))
