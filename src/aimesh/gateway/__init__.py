"""The gateway: the single entry point in front of every service.

It routes OIP v2 REST and gRPC calls to a healthy model instance found by watching the
discovery bucket (least outstanding requests across replicas), proxies ``/api/<service>``
(the registry first), aggregates one request over several models, checks API keys and scopes (the
:class:`aimesh.auth.Keyring` every service uses; the caller's key is forwarded, and checked
again upstream), rate and size limits, and serves one OpenAPI document and Prometheus
metrics.

The core (:class:`RoutingTable`, :class:`Router`, :class:`LeastOutstanding`,
the aggregate merge and
:func:`call_upstream`) has no HTTP or gRPC in it; ``rest.py`` and ``grpc.py`` adapt it;
``server.py`` runs both.
"""

from aimesh.gateway.aggregate import (
    Aggregation,
    Member,
    ModelFailure,
    Outcome,
    merge,
    outcome_of,
    parse_aggregate,
)
from aimesh.gateway.catalog import RegistryCatalog
from aimesh.gateway.http1 import HttpClient, HttpPool, UpstreamResponse
from aimesh.gateway.instances import InstancePolicy, LeastOutstanding, Upstream
from aimesh.gateway.metrics import GatewayMetrics
from aimesh.gateway.rest import GatewayApp
from aimesh.gateway.routing import ModelCatalog, Router, RoutingTable, Target
from aimesh.gateway.server import run_gateway, serve
from aimesh.gateway.upstream import NotSent, call_upstream

__all__ = [
    "Aggregation",
    "GatewayApp",
    "GatewayMetrics",
    "HttpClient",
    "HttpPool",
    "InstancePolicy",
    "LeastOutstanding",
    "Member",
    "ModelCatalog",
    "ModelFailure",
    "NotSent",
    "Outcome",
    "RegistryCatalog",
    "Router",
    "RoutingTable",
    "Target",
    "Upstream",
    "UpstreamResponse",
    "call_upstream",
    "merge",
    "outcome_of",
    "parse_aggregate",
    "run_gateway",
    "serve",
]
