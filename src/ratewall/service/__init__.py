"""``ratewall serve``: a standalone rate-limit service speaking Envoy's rate-limit service
protocol (RLS v3, gRPC) and HTTP/JSON, and a client for it.

Importing this package is cheap: the server (grpcio, xds-protos, uvicorn: the ``service``
extra) loads only when one of its names is used.

Run it from code::

    from ratewall.service import ServiceOptions, serve
    serve(ServiceOptions(config="limits.yaml", store="redis://127.0.0.1:6379/0"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..descriptors import DomainTable, load_envoy_config, parse_domains, parse_envoy_config

if TYPE_CHECKING:
    from .client import AsyncServiceClient, ServiceClient
    from .runner import ServiceOptions, serve

__all__ = [
    "AsyncServiceClient",
    "DomainTable",
    "ServiceClient",
    "ServiceOptions",
    "load_envoy_config",
    "parse_domains",
    "parse_envoy_config",
    "serve",
]

_LAZY = {
    "AsyncServiceClient": "client",
    "ServiceClient": "client",
    "ServiceOptions": "runner",
    "serve": "runner",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(f"{__name__}.{module}"), name)
