"""Envoy's rate-limit service protocol (RLS v3): ``envoy.service.ratelimit.v3.
RateLimitService/ShouldRateLimit``, on grpcio's asyncio server, and the conversions between
its messages and the :class:`~.engine.Engine` (shared with the HTTP ``POST /json`` endpoint).

Stubs come from the ``xds-protos`` package (the ``service`` extra). Request semantics follow
envoyproxy/ratelimit: the request's ``hits_addend`` is every descriptor's cost (0 means 1);
a descriptor's own ``hits_addend``, when set, overrides it and may be 0 (check only); an
unknown domain, or a descriptor no rule matches, is OK. The store failing for a policy whose
failure mode is ``raise`` is a gRPC ``UNAVAILABLE`` error, so Envoy's ``failure_mode_deny``
decides.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from ..errors import StoreError
from ..http.headers import rate_limit_headers, retry_after
from ..policy import Policy
from .engine import MAX_UINT32, DescriptorIn, DescriptorStatus, Engine

__all__ = [
    "MAX_DESCRIPTORS",
    "MAX_ENTRIES",
    "BadRequestError",
    "RateLimitService",
    "add_to_server",
    "decide",
    "descriptors_of",
]

_log = logging.getLogger("ratewall.service")

Response = rls_pb2.RateLimitResponse
_OK: Final = Response.Code.Value("OK")
_OVER_LIMIT: Final = Response.Code.Value("OVER_LIMIT")
# envoy.type.v3.RateLimitUnit, the unit of a descriptor's limit override (no WEEK there).
_OVERRIDE_UNITS: Final = {1: "second", 2: "minute", 3: "hour", 4: "day", 5: "month", 6: "year"}
#: Bounds on one request: far above what Envoy sends, low enough that no request can make a
#: worker build an unbounded answer.
MAX_DESCRIPTORS: Final = 256
MAX_ENTRIES: Final = 64


class BadRequestError(ValueError):
    """A request the service cannot decide (gRPC ``INVALID_ARGUMENT``, HTTP 400)."""


def descriptors_of(request: Any) -> list[DescriptorIn]:
    """The descriptors of a ``RateLimitRequest`` with their costs (Envoy's rules)."""
    if not request.domain:
        raise BadRequestError("rate limit domain must not be empty")
    if not request.descriptors:
        raise BadRequestError("rate limit descriptor list must not be empty")
    if len(request.descriptors) > MAX_DESCRIPTORS:
        raise BadRequestError(
            f"{len(request.descriptors)} descriptors in one request; at most {MAX_DESCRIPTORS}"
        )
    default_cost = max(1, request.hits_addend)
    found = []
    for position, descriptor in enumerate(request.descriptors):
        if len(descriptor.entries) > MAX_ENTRIES:
            raise BadRequestError(
                f"descriptors[{position}] has {len(descriptor.entries)} entries; "
                f"at most {MAX_ENTRIES}"
            )
        cost = descriptor.hits_addend.value if descriptor.HasField("hits_addend") else default_cost
        override = None
        if descriptor.HasField("limit"):
            unit = _OVERRIDE_UNITS.get(descriptor.limit.unit)
            if unit is None:
                raise BadRequestError(f"descriptors[{position}].limit.unit is not a known unit")
            override = (descriptor.limit.requests_per_unit, unit)
        entries = tuple((entry.key, entry.value) for entry in descriptor.entries)
        found.append(DescriptorIn(entries, cost, override))
    return found


async def decide(engine: Engine, request: Any, *, headers: bool = True) -> Any:
    """The ``RateLimitResponse`` to a ``RateLimitRequest``. Raises :class:`BadRequestError`
    for a request it cannot decide and :class:`~ratewall.StoreError` when the store fails
    for a policy whose failure mode is ``raise``."""
    outcomes = await engine.should_rate_limit(request.domain, descriptors_of(request))
    response = Response(overall_code=_OK)
    statuses = response.statuses
    for outcome in outcomes:
        status = statuses.add(code=_OVER_LIMIT if outcome.over_limit else _OK)
        if outcome.over_limit:
            response.overall_code = _OVER_LIMIT
        if outcome.rule is None and outcome.decision is None:
            continue  # no limit applies
        if outcome.rule is not None and outcome.rule.unlimited:
            status.limit_remaining = MAX_UINT32
            continue
        limit = status.current_limit
        limit.requests_per_unit = min(outcome.limit, MAX_UINT32)
        limit.unit = Response.RateLimit.Unit.Value((outcome.unit or "unknown").upper())
        if outcome.rule is not None and outcome.rule.name:
            limit.name = outcome.rule.name
        status.limit_remaining = min(max(outcome.remaining, 0), MAX_UINT32)
        status.duration_until_reset.FromNanoseconds(round(max(outcome.reset_after, 0.0) * 1e9))
    if headers:
        _add_headers(response, outcomes, engine.rules.policies)
    return response


def _add_headers(response: Any, outcomes: Sequence[DescriptorStatus], policies: Any) -> None:
    """The IETF RateLimit fields (and Retry-After when refused) for Envoy to pass on."""
    decisions = [o.decision for o in outcomes if o.decision is not None]
    if not decisions:
        return
    known: dict[str, Policy] = dict(policies)
    for outcome in outcomes:
        decision, rule = outcome.decision, outcome.rule
        if decision is not None and decision.policy not in known and rule is not None:
            known[decision.policy] = Policy(max(decision.limit, 1), max(rule.window, 0.001))
    try:
        fields = rate_limit_headers(decisions, known)
    except ValueError:  # a name that cannot be a structured-field string: no fields
        return
    add = response.response_headers_to_add
    for name, value in fields:
        add.append(base_pb2.HeaderValue(key=name.lower(), value=value))
    refused = [d for d in decisions if not d.allowed]
    if refused:
        add.append(base_pb2.HeaderValue(key="retry-after", value=str(retry_after(refused))))


class RateLimitService(rls_pb2_grpc.RateLimitServiceServicer):  # type: ignore[misc]
    """The gRPC servicer; every error becomes a status, never a crashed worker."""

    def __init__(self, engine: Engine, *, headers: bool = True) -> None:
        self._engine = engine
        self._headers = headers

    async def ShouldRateLimit(self, request: Any, context: Any) -> Any:  # noqa: N802 - proto name
        try:
            return await decide(self._engine, request, headers=self._headers)
        except BadRequestError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except StoreError as error:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except Exception:  # noqa: BLE001 - a bug answers INTERNAL and leaves the worker serving
            _log.exception("ShouldRateLimit failed")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the service log")
        raise AssertionError("unreachable: context.abort raises")  # pragma: no cover


def add_to_server(server: Any, engine: Engine, *, headers: bool = True) -> None:
    rls_pb2_grpc.add_RateLimitServiceServicer_to_server(
        RateLimitService(engine, headers=headers), server
    )
