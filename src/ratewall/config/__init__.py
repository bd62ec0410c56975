"""Config files: the policies, and the settings that say where and how they are enforced.

A file is JSON (``.json``), YAML (``.yaml``/``.yml``, always loaded safely) or TOML
(``.toml``), chosen by its extension. It comes in one of two forms.

The **short form** is a mapping of policy names to policies::

    {"login": {"limit": 5, "window": 60}}

The **long form** puts that mapping under ``policies`` and may add settings::

    {
      "policies": {"login": {"limit": 5, "window": "1m"}},
      "store": "redis://127.0.0.1:6379/0",
      "key_prefix": "ratelimit",
      "local_cache_size": 10000,
      "timeout": "50ms",
      "failure_mode": "open",
      "metrics": "prometheus"
    }

How the form is decided, with no guessing: a file is in the long form exactly when its top
level has a ``policies`` key. Then every other top-level key must be one of :data:`SETTINGS`.
Otherwise every top-level key is a policy name. A policy may be *named* like a setting
(``store``, ``timeout``, ...) as long as its value is a policy mapping; a setting's value
written in the short form (``"timeout": 0.1``) is an error that says to use the long form.

Settings:

``store``
    A store URL whose scheme is one of :data:`STORE_SCHEMES`. Not set: the program decides
    (``RateLimiter.from_config`` uses its ``store`` argument, else ``memory://``). No
    environment variable is read: a program that wants one passes
    ``os.environ.get("RATEWALL_STORE")`` as ``store`` itself.
``key_prefix``
    The first part of every Redis key (default ``ratelimit``).
``local_cache_size``
    How many identities' known denials the in-process cache remembers; ``0`` turns it off.
``timeout``
    How long one store call may take: seconds (any positive number) or a duration string
    such as ``"50ms"``. Default 50 ms.
``failure_mode``
    What policies without their own ``failure_mode`` do when the store fails: ``raise``
    (default), ``open``, ``closed`` or ``local``.
``shadow``
    ``true`` puts every policy without its own ``shadow`` in shadow mode: decided and
    counted, never refused (see :class:`~ratewall.Policy`).
``metrics``
    Export ratewall's own metrics: ``prometheus`` (prometheus-client's default registry) or
    ``otel`` (opentelemetry-api's meter provider). Not set: no metrics (see docs/metrics.md).
``breaker``
    ``{threshold: 3, cooldown: 1s}`` (the defaults): after ``threshold`` consecutive store
    failures, calls fail fast with the policy's failure mode for ``cooldown``, then one
    probes the store (:class:`Breaker`).
``batching``
    ``{max_in_flight: 2, max_batch: 512}`` (the defaults): how an ``AsyncRateLimiter`` on
    Redis/Valkey batches concurrent decisions into script calls (:class:`Batching`).
``domains``
    Rate-limit descriptors for ``ratewall serve`` (Envoy's rate-limit service protocol):
    domain names mapped to trees of ``{key, value, policy}`` entries naming this file's
    policies; see :func:`ratewall.descriptors.parse_domains`.

A policy's own fields are :class:`~ratewall.Policy`'s: ``limit``, ``window``, ``algorithm``,
``burst``, ``failure_mode``, ``lease``, ``local_nodes``, ``shadow``, ``exempt`` (a list of
identities), ``overrides`` (identities to ``{limit, window, burst}``) and ``tiers`` (names to
the same).

Every error is a :class:`~ratewall.ConfigError` naming the file, the dotted path of the field
(``policies.login.limit``, in both forms) and what to do about it. A file is checked whole:
the error raised is the first problem found and its ``errors`` holds every problem, sorted
by field path (``ratewall check-config`` prints them all). A near miss of a known field name
gets a suggestion (``unknown top-level field 'polices' (did you mean 'policies'?)``).
The file is compiled once into an immutable :class:`Config`; reloading means loading a new
one.

The package's modules each do one job: ``_formats`` reads a file into data (JSON, YAML,
TOML, duplicate keys rejected), ``_settings`` parses that data (the two forms, the settings,
the policies), ``_store`` the settings of the store (URL, timeout, breaker, batching),
``_http`` the ``routes`` and ``client_ip`` sections, and ``_fields`` holds the helpers
every error uses (how a value is described, how a field path is written, ``Problems``
gathering every error of a file).
"""

from .._urls import STORE_SCHEMES
from ._fields import MAX_REPORTED
from ._formats import EXTENSIONS
from ._http import (
    FORWARDED_HEADERS,
    HEADER_NAME,
    HTTP_METHOD,
    ON_MISSING_IDENTITY,
    PARAM_NAME,
    PATH_CAPTURE,
    ClientIPSettings,
    ForwardedHeader,
    IdentityKind,
    IPNetwork,
    LimitEntry,
    OnMissingIdentity,
    RouteEntry,
    TierEntry,
    check_header_name,
    check_param_name,
    exempt_network,
    parse_identity_spec,
    path_captures,
    trusted_proxy_network,
    validate_routes,
)
from ._settings import DEFAULT_LOCAL_CACHE_SIZE, SETTINGS, Config, load_config, parse_config
from ._store import (
    DEFAULT_TIMEOUT,
    MAX_TIMEOUT,
    NO_BATCHING_SETTINGS,
    NO_BREAKER_SETTINGS,
    Batching,
    Breaker,
    validate_store_url,
)

__all__ = [
    "DEFAULT_LOCAL_CACHE_SIZE",
    "DEFAULT_TIMEOUT",
    "EXTENSIONS",
    "FORWARDED_HEADERS",
    "HEADER_NAME",
    "HTTP_METHOD",
    "MAX_REPORTED",
    "MAX_TIMEOUT",
    "NO_BATCHING_SETTINGS",
    "NO_BREAKER_SETTINGS",
    "ON_MISSING_IDENTITY",
    "PARAM_NAME",
    "PATH_CAPTURE",
    "SETTINGS",
    "STORE_SCHEMES",
    "Batching",
    "Breaker",
    "ClientIPSettings",
    "Config",
    "ForwardedHeader",
    "IPNetwork",
    "IdentityKind",
    "LimitEntry",
    "OnMissingIdentity",
    "RouteEntry",
    "TierEntry",
    "check_header_name",
    "check_param_name",
    "exempt_network",
    "load_config",
    "parse_config",
    "parse_identity_spec",
    "path_captures",
    "trusted_proxy_network",
    "validate_routes",
    "validate_store_url",
]
