"""REST plumbing every aimesh service shares.

FastAPI services (registry, lake, jobs) are built by :func:`service_app`, which installs
:func:`install_error_handlers` and checks every caller's key (:mod:`aimesh.rest.guard`);
the bare-ASGI hot-path services (model service, gateway) use the helpers of ``asgi.py``.
Either way every error is ``{"error": message, "code": code}`` with the status of the one table in
``status.py``, and every service's ``/openapi.json`` documents those errors by the one rule of
``openapi.py``. Every one serves its ``/docs`` page with
``docs.py``: Swagger UI from installed files, never from a CDN. Every one stands behind the
same edge: ``guard.py`` (browser origins, Host names, JSON bodies typed and bounded) and
``exposure.py`` (no keyless bind beyond loopback without ``--insecure``); the FastAPI services
also bound their requests in flight with ``inflight.py``. Every one tells
readiness from liveness the same way: ``readiness.py``.
"""

from aimesh.rest.asgi import (
    JSON,
    REQUEST_ID,
    ASGIScope,
    Message,
    MethodNotAllowed,
    Receive,
    RouteNotFound,
    Send,
    allow,
    declared_length,
    error_body,
    header,
    internal_error,
    read_body,
    respond,
)
from aimesh.rest.callers import SCOPE_KEY, Caller, identity, route_scope, scope_of
from aimesh.rest.docs import DOCS_ASSETS_URL, DocsAsset, docs_asset, swagger_page
from aimesh.rest.errors import install_error_handlers, log_failure, request_id_of
from aimesh.rest.exposure import auth_configured, check_bind, is_loopback
from aimesh.rest.guard import (
    SAFE_METHODS,
    Guard,
    GuardedApp,
    check_infer_type,
    check_json_type,
    host_name,
    is_infer_type,
    is_json_type,
)
from aimesh.rest.inflight import InFlight, Slot
from aimesh.rest.openapi import OPERATION_METHODS, document_errors, statuses_of
from aimesh.rest.probe import ProbeApp, guard_of, serve_probe
from aimesh.rest.readiness import Check, Readiness, ReadinessReport, bus_check
from aimesh.rest.service import announced, service_app
from aimesh.rest.status import HTTP_STATUS, error_headers, retry_after, shown_message, status_of

__all__ = [
    "DOCS_ASSETS_URL",
    "HTTP_STATUS",
    "JSON",
    "OPERATION_METHODS",
    "REQUEST_ID",
    "SAFE_METHODS",
    "SCOPE_KEY",
    "ASGIScope",
    "Caller",
    "Check",
    "DocsAsset",
    "Guard",
    "GuardedApp",
    "InFlight",
    "Message",
    "MethodNotAllowed",
    "ProbeApp",
    "Readiness",
    "ReadinessReport",
    "Receive",
    "RouteNotFound",
    "Send",
    "Slot",
    "allow",
    "announced",
    "auth_configured",
    "bus_check",
    "check_bind",
    "check_infer_type",
    "check_json_type",
    "declared_length",
    "docs_asset",
    "document_errors",
    "error_body",
    "error_headers",
    "guard_of",
    "header",
    "host_name",
    "identity",
    "install_error_handlers",
    "internal_error",
    "is_infer_type",
    "is_json_type",
    "is_loopback",
    "log_failure",
    "read_body",
    "request_id_of",
    "respond",
    "retry_after",
    "route_scope",
    "scope_of",
    "serve_probe",
    "service_app",
    "shown_message",
    "status_of",
    "statuses_of",
    "swagger_page",
]
