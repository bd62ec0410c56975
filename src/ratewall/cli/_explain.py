"""``ratewall explain METHOD PATH``: what the HTTP middleware would do with a request, and
why: the route it matches, each policy it meets, the identity derived for it (trusted
proxies applied), the Redis key, and the decision a check would give now (a peek)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from collections.abc import Sequence
from typing import Any

from ..admin import redacted
from ..config import Config, load_config
from ..errors import ConfigError, StoreError
from ..http.client_ip import ClientIP, client_ip_from_config
from ..http.engine import HttpEngine
from ..http.log_throttle import LogThrottle
from ..http.request import HttpRequest
from ..http.routes import Route, RouteLimit, RouteTable, routes_from_config
from ..http.steps import AskLimiter, Respond
from ..keys import KeyBuilder
from ..limiter import RateLimiter
from ._admin import (
    CommandError,
    add_store_options,
    decision_fields,
    describe_decision,
    guarded,
    print_json,
    shared_store_url,
    tier_option,
    variant_of,
)
from ._common import EXIT_OK, ip_address

__all__ = ["register"]


def register(commands: Any) -> None:
    explain = commands.add_parser(
        "explain",
        help="show the route, identities, keys and decisions a request would meet",
        description="Explain how the config's routes treat a request: the route it matches, "
        "every policy it meets with the identity derived for it (headers, path parameters, "
        "the client address behind trusted proxies), the Redis key, and what a check would "
        "answer now (a peek: nothing is consumed). Without a shared store the decisions are "
        "left out. Exit status 1 if the store does not answer, 2 for a bad config or input.",
    )
    explain.add_argument("method", metavar="METHOD", help="the HTTP method, such as POST")
    explain.add_argument("path", metavar="PATH", help="the request path, such as /login")
    explain.add_argument(
        "-H",
        "--header",
        dest="headers",
        action="append",
        default=[],
        metavar='"NAME: VALUE"',
        help="a request header (repeat for more, or for a header sent several times)",
    )
    explain.add_argument(
        "--client-ip",
        default=None,
        type=ip_address,
        metavar="IP",
        help="the address the server sees the request come from (the socket peer: a proxy's "
        "address when behind one)",
    )
    tier_option(explain)
    add_store_options(explain)
    explain.add_argument("--json", action="store_true", help="print one JSON object")
    explain.set_defaults(handler=guarded(_explain))


def _explain(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    try:
        table = routes_from_config(config)
    except ConfigError as error:
        if error.field != "routes":
            raise
        raise CommandError(
            f"explain needs the config's routes, and {config.source} has no 'routes' section"
        ) from None
    client_ip = client_ip_from_config(config) or ClientIP()
    request = HttpRequest(
        args.method.upper(), _path(args.path), _headers(args.headers), client=args.client_ip
    )
    notes = _Notes()
    engine = HttpEngine(
        table, config.policies, client_ip=client_ip, log=LogThrottle(notes.logger, interval=0)
    )
    url = shared_store_url(args, config, "explain")
    report = _report(config, table, engine, request)
    _variants(config, report, args.tier)
    if url is None:
        report["notes"].append(
            "no shared store, so no decisions: the memory store lives inside each application "
            "process (pass --store URL, the store the application uses, to see them)"
        )
    else:
        report["store"] = redacted(url)
        _peek_all(config, url, args.timeout, report)
    report["notes"] = notes.messages + report["notes"]
    if args.json:
        print_json(report)
    else:
        for line in _lines(report):
            print(line)
    return EXIT_OK


def _path(text: str) -> str:
    path = text.partition("?")[0]  # routes match the path alone, as the middleware does
    if not path.startswith("/") and path != "*":
        raise CommandError(f"PATH must start with '/', got {text!r}")
    return path


def _headers(specs: Sequence[str]) -> dict[str, list[str]]:
    headers: dict[str, list[str]] = {}
    for spec in specs:
        name, colon, value = spec.partition(":")
        name = name.strip()
        if not colon or not name or any(c.isspace() for c in name):
            raise CommandError(f'a header is "Name: value", got {spec!r}')
        headers.setdefault(name.lower(), []).append(value.strip())
    return headers


class _Notes(logging.Handler):
    """Collects what the engine would log for this request (a failed identity source, a
    limit skipped for lack of any identity) to show it, instead of printing log lines."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []
        # Outside the logging tree: nothing propagates to the root logger's handlers.
        self.logger = logging.Logger("ratewall.explain")
        self.logger.addHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _report(
    config: Config, table: RouteTable, engine: HttpEngine, request: HttpRequest
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "client_ip": request.client,
        "route": None,
        "store": None,
        "outcome": "not_limited",
        "allowed": True,
        "policies": [],
        "notes": [],
    }
    found = table.match(request.method, request.path)
    if found is None:
        report["notes"].append("no route matches: the request is not rate limited")
        return report
    route, params = found
    report["route"] = {"index": table.routes.index(route), "match": _match_text(route)}
    if not route.limits:
        report["outcome"] = "exempt"
        report["notes"].append("the route has no policies: it exempts the request")
        return report
    step = engine.start(request)
    with_params = request._with_path_params(params) if params else request
    checked: dict[str, tuple[str, int, str | None]] = {}
    if isinstance(step, AskLimiter):
        checked = {
            item[1]: (item[0], item[2], item[3] if len(item) > 3 else None) for item in step.items
        }
        report["outcome"] = "checked"
    elif isinstance(step, Respond):
        report["outcome"] = f"rejected_{step.status}"
        report["allowed"] = False
    else:
        report["outcome"] = "all_skipped"
    keys = KeyBuilder(config.key_prefix)
    for limit in route.limits:
        entry = _limit_entry(
            limit,
            with_params,
            engine,
            checked.get(limit.policy),
            rejected=isinstance(step, Respond),
        )
        if entry["identity"] is not None:
            entry["key"] = keys.key(entry["identity"], limit.policy)
            entry["digest"] = entry["key"].split("{", 1)[1].startswith("~")
        report["policies"].append(entry)
    if isinstance(step, Respond):
        report["notes"].append(
            f"the middleware answers {step.status} {step.reason} before any check: a policy "
            "that requires its identity (on_missing_identity: reject) found none"
        )
    return report


def _variants(config: Config, report: dict[str, Any], tier: str | None) -> None:
    """Which limits of each checked policy decide for its identity (exempt, an override, the
    tier, the policy's own), and whether it is in shadow mode. The tier is ``--tier`` when
    given, else the one the route picked from the request (its ``tier`` setting)."""
    for entry in report["policies"]:
        if entry["identity"] is None:
            continue
        policy = config.policies[entry["policy"]]
        chosen = tier if tier is not None else entry.get("tier")
        own_tier = chosen if chosen is not None and chosen in policy.tiers else None
        if tier is not None and own_tier is None:
            report["notes"].append(
                f"policy {entry['policy']!r} defines no tier {tier!r}: shown with its own limits"
            )
        variant = variant_of(entry["policy"], policy, entry["identity"], own_tier)
        entry.update(variant.fields())
        entry["applies"] = variant.describe(entry["identity"])


def _match_text(route: Route) -> str:
    return f"{route.method} {route.path}"


def _describe(source: object) -> str:
    describe = getattr(source, "describe", None)
    text = describe() if callable(describe) else None
    return text if isinstance(text, str) else repr(source)


def _limit_entry(
    limit: RouteLimit,
    request: HttpRequest,
    engine: HttpEngine,
    checked: tuple[str, int, str | None] | None,
    *,
    rejected: bool,
) -> dict[str, Any]:
    """One policy of the route: whose identity it counts, found how (from the engine's
    own answer, ``checked``), with the client-address reasoning when it comes into play."""
    entry: dict[str, Any] = {
        "policy": limit.policy,
        "identity": None,
        "identity_source": _describe(limit.identity),
        "derived": "skipped",
        "client_address": None,
        "key": None,
        "digest": None,
        "cost": limit.cost,
        "tier": None,
    }
    try:
        value = limit.identity(request)
    except Exception:  # noqa: BLE001 - the engine logged it; _Notes shows that
        value = None
    if checked is None:
        address = engine.client_ip.address(request) if limit.exempt_networks else None
        if address is not None and any(
            address in network
            for network in limit.exempt_networks
            if not isinstance(network, str) and network.version == address.version
        ):
            entry["derived"] = "exempt_network"
            entry["client_address"] = _address_trace(engine.client_ip, request)
            return entry
        missing = not (isinstance(value, str) and value.strip())
        if missing and limit.on_missing_identity == "reject":
            entry["derived"] = "missing_reject"
        elif rejected:
            entry["derived"] = "not_checked"
        return entry
    identity, cost, tier = checked
    entry["identity"], entry["cost"], entry["tier"] = identity, cost, tier
    if isinstance(value, str) and value.strip() == identity:
        entry["derived"] = "source"
        if isinstance(limit.identity, ClientIP):
            entry["client_address"] = _address_trace(limit.identity, request)
    else:
        entry["derived"] = "client_address_fallback"
        entry["client_address"] = _address_trace(engine.client_ip, request)
    return entry


def _trusted(client_ip: ClientIP, peer: str) -> bool:
    try:
        address = ipaddress.ip_address(peer.strip("[]"))
    except ValueError:
        return "unix" in client_ip.trusted_proxies
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # as ClientIP reads it
    for spec in client_ip.trusted_proxies:
        if spec == "unix":
            continue
        network = ipaddress.ip_network(spec, strict=False)
        if network.version == address.version and address in network:
            return True
    return False


def _address_trace(client_ip: ClientIP, request: HttpRequest) -> str:
    """How the client address was found, in words."""
    peer = request.client
    header = "X-Forwarded-For" if client_ip.header == "x-forwarded-for" else "Forwarded"
    sent = request.header_values(client_ip.header)
    if peer is None:
        return "no client address given (pass --client-ip: the socket peer's address)"
    if not client_ip.trusted_proxies:
        ignored = f"; {header} ignored: the config trusts no proxy" if sent else ""
        return f"the socket peer {peer}{ignored}"
    if not _trusted(client_ip, peer):
        ignored = f"; {header} ignored" if sent else ""
        return f"the socket peer {peer}, not a trusted proxy{ignored}"
    if not sent:
        return f"the socket peer {peer}: a trusted proxy, but it sent no {header}"
    trusted = ", ".join(client_ip.trusted_proxies)
    return (
        f"{header} {', '.join(sent)!r} from the trusted proxy {peer}, read right to left "
        f"past trusted hops (trusted: {trusted})"
    )


def _peek_all(config: Config, url: str, timeout: float, report: dict[str, Any]) -> None:
    """Each checked policy's decision now, from a limiter on the store, which must answer
    a ping even when there is nothing to peek (else StoreError: exit 1)."""
    with RateLimiter.from_config(config, store=url, timeout=timeout) as limiter:
        limiter.ping()
        for entry in report["policies"]:
            if entry["identity"] is None:
                continue
            decision = limiter.peek(
                entry["identity"], entry["policy"], entry["cost"], tier=entry.get("tier")
            )
            if decision.degraded:
                raise StoreError("the peek failed over to the policy's failure mode")
            entry.update(decision_fields(decision))
            entry["decision"] = describe_decision(decision, entry["cost"])
    checked = [entry for entry in report["policies"] if "allowed" in entry]
    if report["outcome"] == "checked":
        report["allowed"] = all(entry["allowed"] for entry in checked)
        report["refused_by"] = [entry["policy"] for entry in checked if not entry["allowed"]]


_DERIVED = {
    "source": "from {source}",
    "client_address_fallback": "{source} is missing: counted against the client address "
    "instead (on_missing_identity: ip)",
    "skipped": "{source} is missing: the policy is skipped",
    "missing_reject": "{source} is missing: the request is refused with 400 "
    "(on_missing_identity: reject)",
    "not_checked": "not checked: another policy refuses the request with 400 first",
    "exempt_network": "not limited: the client address is in the route's exempt_networks",
}


def _lines(report: dict[str, Any]) -> list[str]:
    lines = [f"request   {report['method']} {report['path']}"]
    lines.append(f"client    {report['client_ip'] or '(none: pass --client-ip)'}")
    route = report["route"]
    lines.append(
        f"route     #{route['index']} {route['match']}" if route else "route     (none matches)"
    )
    if report["store"]:
        lines.append(f"store     {report['store']}")
    for entry in report["policies"]:
        tier = f", tier {entry['tier']}" if entry.get("tier") else ""
        lines.append(f"policy    {entry['policy']} (cost {entry['cost']}{tier})")
        derived = _DERIVED[entry["derived"]].format(source=entry["identity_source"])
        identity = entry["identity"]
        lines.append(f"  identity  {identity if identity is not None else '-'} ({derived})")
        if entry["client_address"]:
            lines.append(f"  address   {entry['client_address']}")
        if entry["key"]:
            digest = " (a digest of the identity)" if entry["digest"] else ""
            lines.append(f"  key       {entry['key']}{digest}")
        if "applies" in entry:
            lines.append(f"  applies   {entry['applies']}")
        if "decision" in entry:
            lines.append(f"  now       {entry['decision']}")
    if report.get("refused_by"):
        lines.append(
            f"verdict   429 Too Many Requests, refused by {', '.join(report['refused_by'])} "
            "(all or nothing: a refused request consumes none of its policies)"
        )
    elif report["outcome"] == "checked" and report["store"]:
        lines.append("verdict   allowed by every policy")
    if report["store"] and report["outcome"] == "checked":
        lines.append("          (decisions are peeks: nothing was consumed)")
    lines.extend(f"note      {note}" for note in report["notes"])
    return lines
